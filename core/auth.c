/* auth.c -- JWT HS256: signing through libjwt, verification done here.
 *
 * Signing uses libjwt (jwt_new/jwt_set_alg/jwt_encode_str). Verification does
 * not go through jwt_decode: libjwt 1.10 picks the algorithm from the token's
 * own header (so an HS384/HS512 token signed with our secret would pass) and
 * skips the signature check when no key is given. Instead the token is split
 * on its two dots, the header is base64url-decoded and parsed with jansson,
 * and its alg must be exactly "HS256" before anything else is looked at. Then
 * the HMAC-SHA256 of "header.payload" under our secret is base64url-encoded
 * and compared, in constant time, with the signature segment; only after that
 * is the payload parsed and exp/sub/role read. Every failure is -EACCES.
 *
 * Work per token: one HMAC, two small jansson parses, no other heap use; all
 * buffers are on the stack, bounded by AUTH_MAX_TOKEN. No logging (a bad
 * token is the caller's 401, not an error of ours). The only state is the
 * optional cache of verified tokens (auth_cache_enable): a token seen
 * before is found by an FNV-1a hash of its bytes and confirmed by comparing
 * all of them, so a hit is exactly "this very token verified before"; its
 * claims are reused while exp and nbf still hold.
 *
 * Identities are compared here too (auth_user_id, auth_is_subject), on
 * canonical UUIDs from core/ids, so that no service compares a sub with
 * strcmp in one place and strcasecmp in another. */
#include <ripple/auth.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>
#include <jwt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define AUTH_SIG_B64_LEN 43 /* base64url of a 32-byte HMAC-SHA256, unpadded */

struct auth_cache_entry {
    uint64_t hash;
    size_t len; /* 0: empty */
    long nbf;   /* LONG_MIN when the token has none */
    struct auth_claims claims;
    char token[AUTH_CACHE_TOKEN];
};

struct auth_cache {
    uint64_t hits, misses;
    struct auth_cache_entry slot[AUTH_CACHE_SLOTS];
};
#define AUTH_MAX_TTL (10L * 365 * 24 * 3600)

int auth_init(struct auth *a, const char *secret)
{
    size_t n;

    if (a == NULL || secret == NULL)
        return -EINVAL;
    n = strlen(secret);
    if (n < AUTH_MIN_SECRET || n > AUTH_MAX_SECRET)
        return -EINVAL;
    memset(a, 0, sizeof(*a));
    memcpy(a->secret, secret, n);
    a->secret_len = n;
    return 0;
}

/* ---------------------------------------------------------------- signing */

static int sign_grants(jwt_t *jwt, const char *sub, const char *role, long now, long ttl_s)
{
    if (jwt_add_grant(jwt, "sub", sub) != 0 || jwt_add_grant_int(jwt, "iat", now) != 0 ||
        jwt_add_grant_int(jwt, "exp", now + ttl_s) != 0)
        return -ENOMEM;
    if (role != NULL && jwt_add_grant(jwt, "role", role) != 0)
        return -ENOMEM;
    return 0;
}

int auth_sign(const struct auth *a, const char *sub, const char *role, long ttl_s, char **out)
{
    long now = (long)time(NULL);
    jwt_t *jwt = NULL;
    size_t sub_len;
    int rc;

    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (a == NULL || a->secret_len < AUTH_MIN_SECRET || sub == NULL)
        return -EINVAL;
    sub_len = strlen(sub);
    if (sub_len == 0 || sub_len >= AUTH_MAX_SUB || ttl_s <= 0 || ttl_s > AUTH_MAX_TTL)
        return -EINVAL;
    if (role != NULL && *role == '\0')
        return -EINVAL;
    if (jwt_new(&jwt) != 0)
        return -ENOMEM;
    if (jwt_set_alg(jwt, JWT_ALG_HS256, a->secret, (int)a->secret_len) != 0) {
        rc = -EINVAL;
        goto out_free_jwt;
    }
    rc = sign_grants(jwt, sub, role, now, ttl_s);
    if (rc < 0)
        goto out_free_jwt;
    *out = jwt_encode_str(jwt); /* malloc'd by libjwt: the caller free()s it */
    if (*out == NULL)
        rc = -ENOMEM;
out_free_jwt:
    jwt_free(jwt);
    return rc;
}

/* --------------------------------------------------------------- base64url */

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes unpadded base64url src[0..len) into dst (cap bytes). Rejects any
 * other character, padding, an impossible length and non-zero spare bits,
 * so each byte string has exactly one accepted encoding. Returns the decoded
 * length, or -1. */
static long b64url_decode(const char *src, size_t len, unsigned char *dst, size_t cap)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t n = 0;

    if (len % 4 == 1 || (len / 4) * 3 + 2 > cap)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)src[i]);

        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            dst[n++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) /* spare low bits of the last character must be zero */
        return -1;
    return (long)n;
}

/* Encodes src (len bytes) as unpadded base64url into dst; dst needs
 * 4 * ceil(len / 3) bytes. Returns the encoded length. */
static size_t b64url_encode(const unsigned char *src, size_t len, char *dst)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        acc = (acc << 8) | src[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            dst[n++] = alphabet[(acc >> bits) & 0x3f];
        }
        acc &= (1u << bits) - 1;
    }
    if (bits > 0)
        dst[n++] = alphabet[(acc << (6 - bits)) & 0x3f];
    return n;
}

/* Decodes a base64url segment holding a JSON object. Returns a new reference
 * (json_decref it), or NULL. Duplicate keys are rejected, so a second "alg"
 * cannot hide behind the first. */
static json_t *decode_json_segment(const char *seg, size_t len)
{
    unsigned char buf[AUTH_MAX_TOKEN];
    json_error_t jerr;
    json_t *obj;
    long n = b64url_decode(seg, len, buf, sizeof(buf));

    if (n <= 0)
        return NULL;
    obj = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (obj != NULL && !json_is_object(obj)) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

/* ---------------------------------------------------------- verification */

static int string_equals(const json_t *v, const char *want)
{
    size_t n = strlen(want);

    return json_is_string(v) && json_string_length(v) == n &&
           memcmp(json_string_value(v), want, n) == 0;
}

/* The header must say alg "HS256" exactly; typ, when present, "JWT"; and no
 * "crit" extensions, which we would not understand. */
static int check_header(const char *seg, size_t len)
{
    /* base64url of {"alg":"HS256","typ":"JWT"}, what auth_sign (libjwt) emits:
     * these exact bytes need no decoding (saves a parse per request) */
    static const char usual[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
    const json_t *typ;
    json_t *hdr;
    int rc = -EACCES;

    if (len == sizeof(usual) - 1 && memcmp(seg, usual, len) == 0)
        return 0;
    hdr = decode_json_segment(seg, len);
    if (hdr == NULL)
        return -EACCES;
    if (!string_equals(json_object_get(hdr, "alg"), "HS256"))
        goto out_decref;
    typ = json_object_get(hdr, "typ");
    if (typ != NULL && (!json_is_string(typ) || json_string_length(typ) != 3 ||
                        strncasecmp(json_string_value(typ), "JWT", 3) != 0))
        goto out_decref;
    if (json_object_get(hdr, "crit") != NULL)
        goto out_decref;
    rc = 0;
out_decref:
    json_decref(hdr);
    return rc;
}

/* signed_part is "header.payload"; sig the third segment as sent. */
static int check_signature(const struct auth *a, const char *signed_part, size_t signed_len,
                           const char *sig, size_t sig_len)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    char want[AUTH_SIG_B64_LEN + 4];
    unsigned int mac_len = 0;

    if (sig_len != AUTH_SIG_B64_LEN)
        return -EACCES;
    if (HMAC(EVP_sha256(), a->secret, (int)a->secret_len, (const unsigned char *)signed_part,
             signed_len, mac, &mac_len) == NULL ||
        mac_len != 32)
        return -EACCES;
    if (b64url_encode(mac, mac_len, want) != AUTH_SIG_B64_LEN)
        return -EACCES;
    return CRYPTO_memcmp(want, sig, AUTH_SIG_B64_LEN) == 0 ? 0 : -EACCES;
}

static int read_sub(const json_t *v, struct auth_claims *claims)
{
    size_t n;

    if (!json_is_string(v))
        return -EACCES;
    n = json_string_length(v);
    /* jansson strings may hold \u0000: require it to be a plain C string */
    if (n == 0 || n >= AUTH_MAX_SUB || memchr(json_string_value(v), '\0', n) != NULL)
        return -EACCES;
    memcpy(claims->sub, json_string_value(v), n);
    claims->sub[n] = '\0';
    return 0;
}

static int check_claims(const char *seg, size_t len, long now, struct auth_claims *claims,
                        long *nbf_out)
{
    json_t *payload = decode_json_segment(seg, len);
    const json_t *exp, *nbf, *role;
    int rc = -EACCES;

    if (payload == NULL)
        return -EACCES;
    exp = json_object_get(payload, "exp");
    if (!json_is_integer(exp) || json_integer_value(exp) <= now ||
        json_integer_value(exp) > LONG_MAX)
        goto out_decref;
    nbf = json_object_get(payload, "nbf");
    if (nbf != NULL && (!json_is_integer(nbf) || json_integer_value(nbf) > now))
        goto out_decref;
    *nbf_out = nbf != NULL ? (long)json_integer_value(nbf) : LONG_MIN;
    role = json_object_get(payload, "role");
    if (role != NULL && !json_is_string(role))
        goto out_decref;
    if (read_sub(json_object_get(payload, "sub"), claims) < 0)
        goto out_decref;
    claims->exp = (long)json_integer_value(exp);
    claims->is_service = string_equals(role, "service");
    rc = 0;
out_decref:
    json_decref(payload);
    return rc;
}

/* ------------------------------------------------------------- the cache */

int auth_cache_enable(struct auth *a)
{
    if (a->cache == NULL && (a->cache = calloc(1, sizeof(*a->cache))) == NULL)
        return -ENOMEM;
    return 0;
}

void auth_cache_free(struct auth *a)
{
    free(a->cache);
    a->cache = NULL;
}

void auth_cache_counts(const struct auth *a, uint64_t *hits, uint64_t *misses)
{
    *hits = a->cache != NULL ? a->cache->hits : 0;
    *misses = a->cache != NULL ? a->cache->misses : 0;
}

static uint64_t fnv1a(const char *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* The entry holding exactly this token, or NULL. */
static struct auth_cache_entry *cache_find(struct auth_cache *c, uint64_t h, const char *token,
                                           size_t len)
{
    struct auth_cache_entry *e = &c->slot[h % AUTH_CACHE_SLOTS];

    if (e->len == len && e->hash == h && memcmp(e->token, token, len) == 0)
        return e;
    return NULL;
}

static void cache_put(struct auth_cache *c, uint64_t h, const char *token, size_t len, long nbf,
                      const struct auth_claims *claims)
{
    struct auth_cache_entry *e = &c->slot[h % AUTH_CACHE_SLOTS];

    e->hash = h;
    e->len = len;
    e->nbf = nbf;
    e->claims = *claims;
    memcpy(e->token, token, len);
}

/* ----------------------------------------------------------- verification */

static int verify_full(const struct auth *a, const char *token, size_t token_len, long now,
                       struct auth_claims *claims, long *nbf);

int auth_verify(const struct auth *a, const char *token, size_t token_len, long now,
                struct auth_claims *claims)
{
    struct auth_cache_entry *e;
    uint64_t h = 0;
    long nbf = LONG_MIN;
    int cacheable;

    if (claims != NULL)
        memset(claims, 0, sizeof(*claims));
    if (a == NULL || claims == NULL || token == NULL || token_len == 0 ||
        token_len > AUTH_MAX_TOKEN || a->secret_len < AUTH_MIN_SECRET)
        return -EACCES;
    cacheable = a->cache != NULL && token_len <= AUTH_CACHE_TOKEN;
    if (cacheable) {
        h = fnv1a(token, token_len);
        e = cache_find(a->cache, h, token, token_len);
        if (e != NULL && e->claims.exp > now && e->nbf <= now) {
            a->cache->hits++;
            *claims = e->claims;
            return 0;
        }
        a->cache->misses++;
    }
    if (verify_full(a, token, token_len, now, claims, &nbf) < 0)
        return -EACCES;
    if (cacheable)
        cache_put(a->cache, h, token, token_len, nbf, claims);
    return 0;
}

static int verify_full(const struct auth *a, const char *token, size_t token_len, long now,
                       struct auth_claims *claims, long *nbf)
{
    const char *dot1, *dot2;
    size_t head_len, body_len;
    int rc;

    dot1 = memchr(token, '.', token_len);
    if (dot1 == NULL)
        return -EACCES;
    dot2 = memchr(dot1 + 1, '.', token_len - (size_t)(dot1 + 1 - token));
    if (dot2 == NULL || memchr(dot2 + 1, '.', token_len - (size_t)(dot2 + 1 - token)) != NULL)
        return -EACCES;
    head_len = (size_t)(dot1 - token);
    body_len = (size_t)(dot2 - dot1 - 1);
    rc = check_header(token, head_len);
    if (rc == 0)
        rc = check_signature(a, token, (size_t)(dot2 - token), dot2 + 1,
                             token_len - (size_t)(dot2 + 1 - token));
    if (rc == 0)
        rc = check_claims(dot1 + 1, body_len, now, claims, nbf);
    if (rc != 0) {
        memset(claims, 0, sizeof(*claims));
        return -EACCES;
    }
    return 0;
}

int auth_verify_header(const struct auth *a, const char *value, size_t len, long now,
                       struct auth_claims *claims)
{
    size_t i = 6, end = len;

    if (claims != NULL)
        memset(claims, 0, sizeof(*claims));
    if (value == NULL || len <= 7 || strncasecmp(value, "Bearer", 6) != 0)
        return -EACCES;
    if (value[i] != ' ' && value[i] != '\t')
        return -EACCES;
    while (i < end && (value[i] == ' ' || value[i] == '\t'))
        i++;
    while (end > i && (value[end - 1] == ' ' || value[end - 1] == '\t'))
        end--;
    if (i == end)
        return -EACCES;
    return auth_verify(a, value + i, end - i, now, claims);
}

int auth_user_id(const struct auth_claims *who, char out[IDS_UUID_LEN + 1])
{
    if (who == NULL || who->is_service)
        return -EINVAL;
    return ids_canonical(who->sub, strnlen(who->sub, sizeof(who->sub)), out);
}

int auth_is_subject(const struct auth_claims *who, const char *id)
{
    char mine[IDS_UUID_LEN + 1], theirs[IDS_UUID_LEN + 1];

    if (id == NULL || auth_user_id(who, mine) < 0 || ids_canonical(id, strlen(id), theirs) < 0)
        return 0;
    return memcmp(mine, theirs, IDS_UUID_LEN) == 0;
}
