/* fuzz_auth.c -- libFuzzer target: bearer tokens through core/auth.c.
 *
 * Every input goes to auth_verify_header (as an Authorization value,
 * "Bearer <jwt>") and to auth_verify (as a bare token), with FUZZ_SECRET and
 * the fixed clock FUZZ_NOW. The corpus holds tokens signed with that secret
 * (valid ones, alg none, HS512, expired, not yet valid, bad claims). A
 * mutated token no longer carries a valid HMAC, so an input with a newline
 * is also read as "<header JSON>\n<payload JSON>": base64url-encoded and
 * signed here with FUZZ_SECRET, it reaches the claim checks whatever the
 * fuzzer did to the JSON. And a short input without NUL bytes is a sub for
 * auth_sign (libjwt): its token must verify to the same sub and role.
 *
 * Checks (auth.h): the only results are 0 and -EACCES; on -EACCES the claims
 * are all zero; on 0 sub is a non-empty C string shorter than AUTH_MAX_SUB,
 * exp is after now, is_service is 0 or 1, the same token fails under another
 * secret (the HMAC really was checked) and still passes one second before
 * exp, and the header and bare forms of one token agree. */
#include "fuzz.h"

#include <errno.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <ripple/auth.h>

static struct auth good, other;

static void init_once(void)
{
    static int done;

    if (done)
        return;
    FUZZ_CHECK(auth_init(&good, FUZZ_SECRET) == 0);
    FUZZ_CHECK(auth_init(&other, FUZZ_SECRET "-not-the-same") == 0);
    done = 1;
}

static int all_zero(const struct auth_claims *c)
{
    static const struct auth_claims zero;

    return memcmp(c, &zero, sizeof(zero)) == 0;
}

/* What a successful verification of token promises. */
static void check_accepted(const char *token, size_t len, const struct auth_claims *c)
{
    struct auth_claims again;
    size_t n = strnlen(c->sub, sizeof(c->sub));

    FUZZ_CHECK(n > 0 && n < sizeof(c->sub));
    FUZZ_CHECK(c->exp > FUZZ_NOW);
    FUZZ_CHECK(c->is_service == 0 || c->is_service == 1);
    FUZZ_CHECK(auth_verify(&other, token, len, FUZZ_NOW, &again) == -EACCES);
    FUZZ_CHECK(all_zero(&again));
    FUZZ_CHECK(auth_verify(&good, token, len, c->exp - 1, &again) == 0);
    FUZZ_CHECK(memcmp(&again, c, sizeof(again)) == 0);
    FUZZ_CHECK(auth_verify(&good, token, len, c->exp, &again) == -EACCES);
}

/* A token auth_verify took must pass as "Bearer <token>" with the same
 * claims. */
static void check_as_header(const char *token, size_t len, const struct auth_claims *c)
{
    struct auth_claims hc;
    char *value = malloc(len + 7);
    int rc;

    FUZZ_CHECK(value != NULL);
    memcpy(value, "Bearer ", 7);
    memcpy(value + 7, token, len);
    rc = auth_verify_header(&good, value, len + 7, FUZZ_NOW, &hc);
    FUZZ_CHECK(rc == 0 && memcmp(&hc, c, sizeof(hc)) == 0);
    free(value);
}

/* The token inside an Authorization value that auth_verify_header took:
 * what follows "Bearer" and its blanks, trailing blanks dropped. */
static void header_token(const char *v, size_t len, const char **tok, size_t *tok_len)
{
    size_t i = 6, end = len;

    while (i < end && (v[i] == ' ' || v[i] == '\t'))
        i++;
    while (end > i && (v[end - 1] == ' ' || v[end - 1] == '\t'))
        end--;
    *tok = v + i;
    *tok_len = end - i;
}

static size_t b64url(const unsigned char *src, size_t len, char *dst)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = 0, i = 0;

    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];

        dst[n++] = abc[v >> 18];
        dst[n++] = abc[(v >> 12) & 63];
        dst[n++] = abc[(v >> 6) & 63];
        dst[n++] = abc[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)src[i] << 16 | (i + 1 < len ? (uint32_t)src[i + 1] << 8 : 0);

        dst[n++] = abc[v >> 18];
        dst[n++] = abc[(v >> 12) & 63];
        if (i + 1 < len)
            dst[n++] = abc[(v >> 6) & 63];
    }
    return n;
}

/* "<header JSON>\n<payload JSON>" -> a token signed with FUZZ_SECRET. */
static void verify_signed(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    struct auth_claims c;
    size_t hlen, n;
    char *tok;
    int rc;

    if (nl == NULL)
        return;
    hlen = (size_t)(nl - data);
    tok = malloc(2 * size + 64); /* base64 of both parts, two dots, the MAC */
    FUZZ_CHECK(tok != NULL);
    n = b64url(data, hlen, tok);
    tok[n++] = '.';
    n += b64url(nl + 1, size - hlen - 1, tok + n);
    FUZZ_CHECK(HMAC(EVP_sha256(), FUZZ_SECRET, sizeof(FUZZ_SECRET) - 1, (unsigned char *)tok, n,
                    mac, &mac_len) != NULL);
    tok[n++] = '.';
    n += b64url(mac, mac_len, tok + n);
    rc = auth_verify(&good, tok, n, FUZZ_NOW, &c);
    FUZZ_CHECK(rc == 0 || rc == -EACCES);
    if (rc == 0) {
        check_accepted(tok, n, &c);
        check_as_header(tok, n, &c);
    } else {
        FUZZ_CHECK(all_zero(&c));
    }
    free(tok);
}

/* auth_sign, then auth_verify: the claims must come back as signed. */
static void sign_roundtrip(const uint8_t *data, size_t size)
{
    const char *role = size % 2 ? "service" : NULL;
    struct auth_claims c;
    char sub[AUTH_MAX_SUB], *tok;

    if (size == 0 || size >= sizeof(sub) || memchr(data, '\0', size) != NULL)
        return;
    memcpy(sub, data, size);
    sub[size] = '\0';
    /* libjwt refuses a sub that is not UTF-8 */
    if (auth_sign(&good, sub, role, 3600, &tok) != 0)
        return;
    FUZZ_CHECK(auth_verify(&good, tok, strlen(tok), FUZZ_NOW, &c) == 0);
    FUZZ_CHECK(strcmp(c.sub, sub) == 0 && c.is_service == (role != NULL));
    check_accepted(tok, strlen(tok), &c);
    free(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data; /* libFuzzer's exact-size copy: ASan sees overreads */
    struct auth_claims c, bc;
    const char *tok;
    size_t tok_len;
    int rc;

    init_once();
    rc = auth_verify_header(&good, s, size, FUZZ_NOW, &c);
    FUZZ_CHECK(rc == 0 || rc == -EACCES);
    if (rc != 0) {
        FUZZ_CHECK(all_zero(&c));
    } else {
        header_token(s, size, &tok, &tok_len);
        check_accepted(tok, tok_len, &c);
        FUZZ_CHECK(auth_verify(&good, tok, tok_len, FUZZ_NOW, &bc) == 0);
        FUZZ_CHECK(memcmp(&bc, &c, sizeof(c)) == 0);
    }

    rc = auth_verify(&good, s, size, FUZZ_NOW, &c);
    FUZZ_CHECK(rc == 0 || rc == -EACCES);
    if (rc != 0) {
        FUZZ_CHECK(all_zero(&c));
    } else {
        check_accepted(s, size, &c);
        check_as_header(s, size, &c);
    }
    verify_signed(data, size);
    sign_roundtrip(data, size);
    return 0;
}
