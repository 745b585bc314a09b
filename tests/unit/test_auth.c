/* test_auth.c -- core/auth: HS256 only, exp and sub required, Bearer parsing.
 *
 * Tokens other than auth_sign's are forged here by hand (base64url + OpenSSL
 * HMAC), so each rejection test changes exactly one thing against a forged
 * token that the "forged_hs256_accepted" test shows is otherwise valid. */
#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <ripple/auth.h>

#define SECRET "0123456789abcdef0123456789abcdef-test-secret"
#define OTHER_SECRET "fedcba9876543210fedcba9876543210-other-secret"
#define TOKEN_CAP 16384

static struct auth a;

static void setup(void)
{
    cr_assert_eq(auth_init(&a, SECRET), 0);
}

TestSuite(auth, .init = setup);

static size_t b64url(const unsigned char *src, size_t len, char *dst)
{
    int n = EVP_EncodeBlock((unsigned char *)dst, src, (int)len);

    while (n > 0 && dst[n - 1] == '=')
        n--;
    for (int i = 0; i < n; i++) {
        if (dst[i] == '+')
            dst[i] = '-';
        else if (dst[i] == '/')
            dst[i] = '_';
    }
    dst[n] = '\0';
    return (size_t)n;
}

/* Builds b64(header).b64(payload).sig into out. md NULL: empty signature;
 * otherwise HMAC-md over the first two segments with secret. */
static void forge(char *out, const char *header, const char *payload, const EVP_MD *md,
                  const char *secret)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    size_t n = b64url((const unsigned char *)header, strlen(header), out);

    out[n++] = '.';
    n += b64url((const unsigned char *)payload, strlen(payload), out + n);
    out[n] = '.';
    if (md == NULL) {
        out[n + 1] = '\0';
        return;
    }
    cr_assert_not_null(
        HMAC(md, secret, (int)strlen(secret), (const unsigned char *)out, n, mac, &mac_len));
    b64url(mac, mac_len, out + n + 1);
}

static const char *hs256_header = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* A payload for sub "u1" that expires in an hour. */
static void good_payload(char *buf, size_t len)
{
    int n = snprintf(buf, len, "{\"sub\":\"u1\",\"exp\":%ld}", (long)time(NULL) + 3600);

    cr_assert(n > 0 && (size_t)n < len);
}

static int verify(const char *token, struct auth_claims *c)
{
    return auth_verify(&a, token, strlen(token), time(NULL), c);
}

static int verify_forged(const char *header, const char *payload, const EVP_MD *md,
                         const char *secret)
{
    static char tok[TOKEN_CAP];
    struct auth_claims c;

    forge(tok, header, payload, md, secret);
    return verify(tok, &c);
}

Test(auth, sign_verify_round_trip)
{
    struct auth_claims c;
    char *tok = NULL;
    long now = time(NULL);

    cr_assert_eq(auth_sign(&a, "user-42", NULL, 600, &tok), 0);
    cr_assert_not_null(tok);
    cr_assert_eq(verify(tok, &c), 0);
    cr_assert_str_eq(c.sub, "user-42");
    cr_assert_eq(c.is_service, 0);
    cr_assert(c.exp >= now + 600 && c.exp <= now + 602, "exp %ld", c.exp);
    free(tok);
}

Test(auth, token_need_not_be_nul_terminated)
{
    struct auth_claims c;
    char *tok = NULL;
    char buf[TOKEN_CAP];
    size_t n;

    cr_assert_eq(auth_sign(&a, "user-1", NULL, 60, &tok), 0);
    n = strlen(tok);
    memcpy(buf, tok, n);
    memcpy(buf + n, "garbage", 8);
    cr_assert_eq(auth_verify(&a, buf, n, time(NULL), &c), 0);
    cr_assert_str_eq(c.sub, "user-1");
    cr_assert_eq(auth_verify(&a, buf, n + 3, time(NULL), &c), -EACCES);
    free(tok);
}

Test(auth, service_role_sets_is_service)
{
    struct auth_claims c;
    char *tok = NULL;

    cr_assert_eq(auth_sign(&a, "service:orders", "service", 60, &tok), 0);
    cr_assert_eq(verify(tok, &c), 0);
    cr_assert_str_eq(c.sub, "service:orders");
    cr_assert_eq(c.is_service, 1);
    free(tok);
}

Test(auth, other_role_is_not_service)
{
    static char tok[TOKEN_CAP];
    struct auth_claims c;
    char payload[256];

    snprintf(payload, sizeof(payload), "{\"sub\":\"u\",\"role\":\"services\",\"exp\":%ld}",
             (long)time(NULL) + 60);
    forge(tok, hs256_header, payload, EVP_sha256(), SECRET);
    cr_assert_eq(verify(tok, &c), 0);
    cr_assert_eq(c.is_service, 0);
}

Test(auth, forged_hs256_accepted)
{
    char payload[256];

    good_payload(payload, sizeof(payload));
    cr_assert_eq(verify_forged(hs256_header, payload, EVP_sha256(), SECRET), 0);
    cr_assert_eq(verify_forged("{\"alg\":\"HS256\"}", payload, EVP_sha256(), SECRET), 0);
}

Test(auth, alg_none_rejected)
{
    char payload[256];

    good_payload(payload, sizeof(payload));
    cr_assert_eq(verify_forged("{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, NULL, NULL), -EACCES);
    /* "none" with a valid-looking HMAC appended is still "none" */
    cr_assert_eq(verify_forged("{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, EVP_sha256(), SECRET),
                 -EACCES);
    /* an HS256 header with the signature stripped */
    cr_assert_eq(verify_forged(hs256_header, payload, NULL, NULL), -EACCES);
}

Test(auth, hs384_and_hs512_with_same_secret_rejected)
{
    static char tok[TOKEN_CAP];
    char payload[256];
    jwt_t *jwt = NULL;

    good_payload(payload, sizeof(payload));
    forge(tok, "{\"alg\":\"HS384\",\"typ\":\"JWT\"}", payload, EVP_sha384(), SECRET);
    /* the forgery is sound: libjwt itself would accept it */
    cr_assert_eq(jwt_decode(&jwt, tok, (const unsigned char *)SECRET, (int)strlen(SECRET)), 0);
    jwt_free(jwt);
    cr_assert_eq(verify(tok, &(struct auth_claims){0}), -EACCES);
    cr_assert_eq(
        verify_forged("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", payload, EVP_sha512(), SECRET),
        -EACCES);
}

Test(auth, other_alg_labels_rejected)
{
    char payload[256];

    good_payload(payload, sizeof(payload));
    /* RS256 label over an HMAC (algorithm confusion) */
    cr_assert_eq(
        verify_forged("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", payload, EVP_sha256(), SECRET),
        -EACCES);
    cr_assert_eq(verify_forged("{\"alg\":\"hs256\"}", payload, EVP_sha256(), SECRET), -EACCES);
    cr_assert_eq(verify_forged("{\"alg\":\"HS256 \"}", payload, EVP_sha256(), SECRET), -EACCES);
    cr_assert_eq(verify_forged("{\"typ\":\"JWT\"}", payload, EVP_sha256(), SECRET), -EACCES);
    cr_assert_eq(verify_forged("{\"alg\":[\"HS256\"]}", payload, EVP_sha256(), SECRET), -EACCES);
    /* a second "alg" must not hide behind the first */
    cr_assert_eq(
        verify_forged("{\"alg\":\"HS256\",\"alg\":\"none\"}", payload, EVP_sha256(), SECRET),
        -EACCES);
    cr_assert_eq(
        verify_forged("{\"alg\":\"HS256\",\"typ\":\"JWE\"}", payload, EVP_sha256(), SECRET),
        -EACCES);
    cr_assert_eq(verify_forged("[\"HS256\"]", payload, EVP_sha256(), SECRET), -EACCES);
}

Test(auth, wrong_secret_rejected)
{
    struct auth other;
    struct auth_claims c;
    char *tok = NULL;
    char payload[256];

    good_payload(payload, sizeof(payload));
    cr_assert_eq(verify_forged(hs256_header, payload, EVP_sha256(), OTHER_SECRET), -EACCES);
    cr_assert_eq(auth_init(&other, OTHER_SECRET), 0);
    cr_assert_eq(auth_sign(&other, "u1", NULL, 60, &tok), 0);
    cr_assert_eq(verify(tok, &c), -EACCES);
    free(tok);
}

Test(auth, expired_rejected)
{
    struct auth_claims c;
    char *tok = NULL;
    long now = time(NULL);

    cr_assert_eq(auth_sign(&a, "u1", NULL, 60, &tok), 0);
    cr_assert_eq(auth_verify(&a, tok, strlen(tok), now + 30, &c), 0);
    cr_assert_eq(auth_verify(&a, tok, strlen(tok), c.exp, &c), -EACCES); /* exp == now */
    cr_assert_eq(auth_verify(&a, tok, strlen(tok), now + 3600, &c), -EACCES);
    free(tok);
}

Test(auth, exp_missing_or_not_an_integer_rejected)
{
    char payload[256];
    long exp = (long)time(NULL) + 3600;

    cr_assert_eq(verify_forged(hs256_header, "{\"sub\":\"u1\"}", EVP_sha256(), SECRET), -EACCES);
    snprintf(payload, sizeof(payload), "{\"sub\":\"u1\",\"exp\":\"%ld\"}", exp);
    cr_assert_eq(verify_forged(hs256_header, payload, EVP_sha256(), SECRET), -EACCES);
    snprintf(payload, sizeof(payload), "{\"sub\":\"u1\",\"exp\":%ld.5}", exp);
    cr_assert_eq(verify_forged(hs256_header, payload, EVP_sha256(), SECRET), -EACCES);
    snprintf(payload, sizeof(payload), "{\"sub\":\"u1\",\"exp\":null}");
    cr_assert_eq(verify_forged(hs256_header, payload, EVP_sha256(), SECRET), -EACCES);
}

Test(auth, sub_missing_or_bad_rejected)
{
    char payload[512];
    long exp = (long)time(NULL) + 3600;
    char longsub[AUTH_MAX_SUB + 1];

    snprintf(payload, sizeof(payload), "{\"exp\":%ld}", exp);
    cr_assert_eq(verify_forged(hs256_header, payload, EVP_sha256(), SECRET), -EACCES);
    snprintf(payload, sizeof(payload), "{\"sub\":\"\",\"exp\":%ld}", exp);
    cr_assert_eq(verify_forged(hs256_header, payload, EVP_sha256(), SECRET), -EACCES);
    snprintf(payload, sizeof(payload), "{\"sub\":42,\"exp\":%ld}", exp);
    cr_assert_eq(verify_forged(hs256_header, payload, EVP_sha256(), SECRET), -EACCES);
    snprintf(payload, sizeof(payload), "{\"sub\":\"a\\u0000b\",\"exp\":%ld}", exp);
    cr_assert_eq(verify_forged(hs256_header, payload, EVP_sha256(), SECRET), -EACCES);
    memset(longsub, 'x', AUTH_MAX_SUB);
    longsub[AUTH_MAX_SUB] = '\0';
    snprintf(payload, sizeof(payload), "{\"sub\":\"%s\",\"exp\":%ld}", longsub, exp);
    cr_assert_eq(verify_forged(hs256_header, payload, EVP_sha256(), SECRET), -EACCES);
    longsub[AUTH_MAX_SUB - 1] = '\0'; /* the longest that fits */
    snprintf(payload, sizeof(payload), "{\"sub\":\"%s\",\"exp\":%ld}", longsub, exp);
    cr_assert_eq(verify_forged(hs256_header, payload, EVP_sha256(), SECRET), 0);
}

/* Replaces the character at pos with another base64url character. */
static void flip(char *tok, size_t pos)
{
    tok[pos] = tok[pos] == 'A' ? 'B' : 'A';
}

Test(auth, tampered_payload_rejected)
{
    struct auth_claims c;
    char *tok = NULL;
    char *dot1, *dot2;

    cr_assert_eq(auth_sign(&a, "user-1", NULL, 60, &tok), 0);
    dot1 = strchr(tok, '.');
    dot2 = strchr(dot1 + 1, '.');
    flip(tok, (size_t)(dot1 + 1 - tok) + (size_t)(dot2 - dot1) / 2);
    cr_assert_eq(verify(tok, &c), -EACCES);
    cr_assert_str_eq(c.sub, "", "claims are cleared on failure");
    free(tok);
}

Test(auth, tampered_signature_rejected)
{
    struct auth_claims c;
    char *tok = NULL;
    size_t n;

    cr_assert_eq(auth_sign(&a, "user-1", NULL, 60, &tok), 0);
    n = strlen(tok);
    flip(tok, n - 5);
    cr_assert_eq(verify(tok, &c), -EACCES);
    tok[n - 1] = '\0'; /* truncated signature */
    cr_assert_eq(verify(tok, &c), -EACCES);
    free(tok);
}

Test(auth, malformed_tokens_rejected)
{
    struct auth_claims c;
    char *tok = NULL;
    char buf[TOKEN_CAP];

    cr_assert_eq(auth_sign(&a, "user-1", NULL, 60, &tok), 0);
    snprintf(buf, sizeof(buf), "%s.", tok); /* four segments */
    cr_assert_eq(verify(buf, &c), -EACCES);
    snprintf(buf, sizeof(buf), "%s=", tok); /* padding */
    cr_assert_eq(verify(buf, &c), -EACCES);
    cr_assert_eq(verify("", &c), -EACCES);
    cr_assert_eq(verify("..", &c), -EACCES);
    cr_assert_eq(verify("abc", &c), -EACCES);
    cr_assert_eq(auth_verify(&a, tok, 0, time(NULL), &c), -EACCES);
    cr_assert_eq(auth_verify(&a, NULL, 10, time(NULL), &c), -EACCES);
    free(tok);
}

Test(auth, oversize_token_rejected)
{
    static char tok[TOKEN_CAP];
    static char payload[TOKEN_CAP];
    long exp = (long)time(NULL) + 3600;
    int n;

    /* a valid token just under the limit passes ... */
    n = snprintf(payload, sizeof(payload), "{\"sub\":\"u1\",\"exp\":%ld,\"pad\":\"%2900s\"}", exp,
                 "");
    cr_assert(n > 0);
    forge(tok, hs256_header, payload, EVP_sha256(), SECRET);
    cr_assert(strlen(tok) <= AUTH_MAX_TOKEN, "len %zu", strlen(tok));
    cr_assert_eq(verify(tok, &(struct auth_claims){0}), 0);
    /* ... and the same one past it does not */
    snprintf(payload, sizeof(payload), "{\"sub\":\"u1\",\"exp\":%ld,\"pad\":\"%3100s\"}", exp, "");
    forge(tok, hs256_header, payload, EVP_sha256(), SECRET);
    cr_assert(strlen(tok) > AUTH_MAX_TOKEN, "len %zu", strlen(tok));
    cr_assert_eq(verify(tok, &(struct auth_claims){0}), -EACCES);
}

Test(auth, init_checks_secret_length)
{
    struct auth x;
    char big[AUTH_MAX_SECRET + 2];

    cr_assert_eq(auth_init(&x, "0123456789abcdef0123456789abcde"), -EINVAL); /* 31 bytes */
    cr_assert_eq(auth_init(&x, ""), -EINVAL);
    cr_assert_eq(auth_init(&x, NULL), -EINVAL);
    cr_assert_eq(auth_init(&x, "0123456789abcdef0123456789abcdef"), 0); /* 32 bytes */
    cr_assert_eq(x.secret_len, 32);
    memset(big, 'k', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    cr_assert_eq(auth_init(&x, big), -EINVAL);
    big[AUTH_MAX_SECRET] = '\0';
    cr_assert_eq(auth_init(&x, big), 0);
}

Test(auth, sign_checks_arguments)
{
    char unchanged[] = "unchanged";
    char *tok = unchanged;

    cr_assert_eq(auth_sign(&a, "", NULL, 60, &tok), -EINVAL);
    cr_assert_null(tok);
    cr_assert_eq(auth_sign(&a, NULL, NULL, 60, &tok), -EINVAL);
    cr_assert_eq(auth_sign(&a, "u1", NULL, 0, &tok), -EINVAL);
    cr_assert_eq(auth_sign(&a, "u1", NULL, -5, &tok), -EINVAL);
}

static int verify_header(const char *value, struct auth_claims *c)
{
    return auth_verify_header(&a, value, value != NULL ? strlen(value) : 0, time(NULL), c);
}

Test(auth, bearer_header_parsing)
{
    struct auth_claims c;
    char *tok = NULL;
    char buf[TOKEN_CAP];

    cr_assert_eq(auth_sign(&a, "user-7", NULL, 60, &tok), 0);
    snprintf(buf, sizeof(buf), "Bearer %s", tok);
    cr_assert_eq(verify_header(buf, &c), 0);
    cr_assert_str_eq(c.sub, "user-7");
    snprintf(buf, sizeof(buf), "bearer %s", tok);
    cr_assert_eq(verify_header(buf, &c), 0);
    snprintf(buf, sizeof(buf), "BEARER   %s  ", tok);
    cr_assert_eq(verify_header(buf, &c), 0);
    snprintf(buf, sizeof(buf), "Basic %s", tok);
    cr_assert_eq(verify_header(buf, &c), -EACCES);
    snprintf(buf, sizeof(buf), "Bearer%s", tok);
    cr_assert_eq(verify_header(buf, &c), -EACCES);
    snprintf(buf, sizeof(buf), "Bearer %s extra", tok);
    cr_assert_eq(verify_header(buf, &c), -EACCES);
    cr_assert_eq(verify_header("Bearer", &c), -EACCES);
    cr_assert_eq(verify_header("Bearer ", &c), -EACCES);
    cr_assert_eq(verify_header("Bearer x", &c), -EACCES);
    cr_assert_eq(verify_header("bearer x", &c), -EACCES);
    cr_assert_eq(verify_header("Basic x", &c), -EACCES);
    cr_assert_eq(verify_header("", &c), -EACCES);
    cr_assert_eq(verify_header(NULL, &c), -EACCES);
    free(tok);
}

/* ---------------------------------------------------------------------------
 * Identities: one comparison, on canonical UUIDs
 * ------------------------------------------------------------------------- */

#define UID_LOWER "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
#define UID_UPPER "0A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D"
#define UID_MIXED "0a1B2c3D-4e5F-4A6b-8c7D-9e0F1a2B3c4D"
#define UID_OTHER "11111111-2222-4333-8444-555555555555"

static struct auth_claims claims_for(const char *sub, int is_service)
{
    struct auth_claims c = {.is_service = is_service, .exp = 1};

    snprintf(c.sub, sizeof(c.sub), "%s", sub);
    return c;
}

Test(auth, user_id_is_the_canonical_sub)
{
    static const char *const subs[] = {UID_LOWER, UID_UPPER, UID_MIXED};
    char out[IDS_UUID_LEN + 1];

    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        struct auth_claims c = claims_for(subs[i], 0);

        cr_assert_eq(auth_user_id(&c, out), 0, "%s", subs[i]);
        cr_assert_str_eq(out, UID_LOWER);
    }
}

Test(auth, user_id_refuses_services_and_non_uuids)
{
    static const char *const subs[] = {"user-7", "", UID_LOWER "x", UID_LOWER " ",
                                       "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4g"};
    struct auth_claims svc = claims_for(UID_LOWER, 1);
    char out[IDS_UUID_LEN + 1];

    cr_assert_eq(auth_user_id(&svc, out), -EINVAL);
    cr_assert_eq(auth_user_id(NULL, out), -EINVAL);
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
        struct auth_claims c = claims_for(subs[i], 0);

        cr_assert_eq(auth_user_id(&c, out), -EINVAL, "\"%s\"", subs[i]);
    }
}

/* The same user in any case of sub and id, both ways; users, payments and
 * orders all ask this one function. */
Test(auth, is_subject_ignores_uuid_case)
{
    static const char *const spellings[] = {UID_LOWER, UID_UPPER, UID_MIXED};

    for (size_t i = 0; i < 3; i++) {
        struct auth_claims c = claims_for(spellings[i], 0);

        for (size_t k = 0; k < 3; k++)
            cr_assert(auth_is_subject(&c, spellings[k]), "sub %s, id %s", spellings[i],
                      spellings[k]);
        cr_assert_not(auth_is_subject(&c, UID_OTHER));
    }
}

Test(auth, is_subject_is_nobody_for_services_and_non_uuids)
{
    struct auth_claims svc = claims_for(UID_LOWER, 1);
    struct auth_claims odd = claims_for("user-7", 0);
    struct auth_claims user = claims_for(UID_LOWER, 0);

    cr_assert_not(auth_is_subject(&svc, UID_LOWER), "a service token is not a user");
    cr_assert_not(auth_is_subject(&odd, "user-7"), "equal strings that are not UUIDs");
    cr_assert_not(auth_is_subject(NULL, UID_LOWER));
    cr_assert_not(auth_is_subject(&user, NULL));
    cr_assert_not(auth_is_subject(&user, ""));
    cr_assert_not(auth_is_subject(&user, UID_LOWER "0"));
    cr_assert_not(auth_is_subject(&user, "0a1b2c3d4e5f4a6b8c7d9e0f1a2b3c4d"));
}

/* ----------------------------------------------------- the token cache */

static struct auth ca; /* an auth with a cache, per test */

static void cache_setup(void)
{
    cr_assert_eq(auth_init(&ca, SECRET), 0);
    cr_assert_eq(auth_cache_enable(&ca), 0);
}

static void cache_teardown(void)
{
    auth_cache_free(&ca);
}

TestSuite(auth_cache, .init = cache_setup, .fini = cache_teardown);

static void counts_are(uint64_t hits, uint64_t misses)
{
    uint64_t h, m;

    auth_cache_counts(&ca, &h, &m);
    cr_assert_eq(h, hits, "hits %llu, want %llu", (unsigned long long)h, (unsigned long long)hits);
    cr_assert_eq(m, misses, "misses %llu, want %llu", (unsigned long long)m,
                 (unsigned long long)misses);
}

Test(auth_cache, a_token_seen_again_is_a_hit_with_the_same_claims)
{
    struct auth_claims first, again;
    char *tok = NULL;
    long now = time(NULL);

    cr_assert_eq(auth_sign(&ca, "service:orders", "service", 600, &tok), 0);
    cr_assert_eq(auth_verify(&ca, tok, strlen(tok), now, &first), 0);
    counts_are(0, 1);
    cr_assert_eq(auth_verify(&ca, tok, strlen(tok), now, &again), 0);
    counts_are(1, 1);
    cr_assert_str_eq(again.sub, "service:orders");
    cr_assert_eq(again.is_service, 1);
    cr_assert_eq(again.exp, first.exp);
    free(tok);
}

Test(auth_cache, a_cached_token_still_expires)
{
    struct auth_claims c;
    char *tok = NULL;
    long now = time(NULL);

    cr_assert_eq(auth_sign(&ca, "user-1", NULL, 60, &tok), 0);
    cr_assert_eq(auth_verify(&ca, tok, strlen(tok), now, &c), 0);
    cr_assert_eq(auth_verify(&ca, tok, strlen(tok), now + 59, &c), 0);
    cr_assert_eq(auth_verify(&ca, tok, strlen(tok), now + 61, &c), -EACCES);
    cr_assert_str_eq(c.sub, "", "claims are cleared on failure");
    free(tok);
}

Test(auth_cache, a_cached_token_is_not_valid_before_its_nbf)
{
    static char tok[TOKEN_CAP];
    char payload[128];
    struct auth_claims c;
    long now = time(NULL);

    snprintf(payload, sizeof(payload), "{\"sub\":\"u1\",\"nbf\":%ld,\"exp\":%ld}", now + 100,
             now + 3600);
    forge(tok, hs256_header, payload, EVP_sha256(), SECRET);
    cr_assert_eq(auth_verify(&ca, tok, strlen(tok), now, &c), -EACCES);
    cr_assert_eq(auth_verify(&ca, tok, strlen(tok), now + 200, &c), 0); /* cached now */
    cr_assert_eq(auth_verify(&ca, tok, strlen(tok), now + 50, &c), -EACCES);
    cr_assert_eq(auth_verify(&ca, tok, strlen(tok), now + 300, &c), 0);
}

Test(auth_cache, it_is_keyed_by_the_whole_token)
{
    struct auth_claims c;
    char *tok = NULL;
    long now = time(NULL);
    size_t n;

    cr_assert_eq(auth_sign(&ca, "user-1", NULL, 600, &tok), 0);
    n = strlen(tok);
    cr_assert_eq(auth_verify(&ca, tok, n, now, &c), 0); /* cached */
    /* every single-byte change anywhere, and every prefix, is rejected */
    for (size_t i = 0; i < n; i++) {
        char saved = tok[i];

        tok[i] = (char)(saved == 'A' ? 'B' : 'A');
        cr_assert_eq(auth_verify(&ca, tok, n, now, &c), -EACCES, "byte %zu changed", i);
        tok[i] = saved;
        cr_assert_eq(auth_verify(&ca, tok, i + 1 < n ? i + 1 : n - 1, now, &c), -EACCES,
                     "prefix of %zu bytes", i + 1);
    }
    cr_assert_eq(auth_verify(&ca, tok, n, now, &c), 0, "the cached token itself broke");
    cr_assert_str_eq(c.sub, "user-1");
    free(tok);
}

Test(auth_cache, it_is_bounded_and_evicts_without_mixing_claims)
{
    enum { N = 3 * AUTH_CACHE_SLOTS };
    static char *toks[N];
    struct auth_claims c;
    char sub[32];
    long now = time(NULL);

    for (int i = 0; i < N; i++) {
        snprintf(sub, sizeof(sub), "user-%d", i);
        cr_assert_eq(auth_sign(&ca, sub, NULL, 600, &toks[i]), 0);
        cr_assert_eq(auth_verify(&ca, toks[i], strlen(toks[i]), now, &c), 0);
    }
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            snprintf(sub, sizeof(sub), "user-%d", i);
            cr_assert_eq(auth_verify(&ca, toks[i], strlen(toks[i]), now, &c), 0);
            cr_assert_str_eq(c.sub, sub, "token %d answered with another token's claims", i);
        }
    }
    for (int i = 0; i < N; i++)
        free(toks[i]);
}

Test(auth_cache, a_token_longer_than_a_slot_is_verified_every_time)
{
    static char tok[TOKEN_CAP];
    char payload[AUTH_CACHE_TOKEN + 128], pad[AUTH_CACHE_TOKEN + 1];
    struct auth_claims c;
    long now = time(NULL);

    memset(pad, 'p', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = '\0';
    snprintf(payload, sizeof(payload), "{\"sub\":\"u1\",\"pad\":\"%s\",\"exp\":%ld}", pad,
             now + 3600);
    forge(tok, hs256_header, payload, EVP_sha256(), SECRET);
    cr_assert_gt(strlen(tok), AUTH_CACHE_TOKEN);
    cr_assert_eq(auth_verify(&ca, tok, strlen(tok), now, &c), 0);
    cr_assert_eq(auth_verify(&ca, tok, strlen(tok), now, &c), 0);
    counts_are(0, 0);
}
