/* auth.h -- JWT HS256: signed with libjwt, verified here.
 *
 * Verification does not use jwt_decode, which trusts the token's own alg
 * header; it checks alg == "HS256" and the HMAC (constant time) itself.
 *
 * DESIGN.md §4/§8: tokens are HS256 only (alg "none" and every other alg are
 * rejected before any claim is read), `exp` is required and checked, `sub`
 * is required. A user token has sub = user id; a service token has
 * sub = "service:<name>" and role = "service". The secret is at least
 * AUTH_MIN_SECRET bytes. Pure functions over a struct auth: no handles, no
 * loop, safe to unit-test. */
#ifndef RIPPLE_AUTH_H
#define RIPPLE_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include <ripple/common.h>
#include <ripple/ids.h>

#define AUTH_MIN_SECRET 32
#define AUTH_MAX_SECRET 512
#define AUTH_MAX_TOKEN 4096 /* bytes of a bearer token we are willing to parse */
#define AUTH_MAX_SUB 128

struct auth_cache; /* opaque: auth_cache_enable */

struct auth {
    unsigned char secret[AUTH_MAX_SECRET];
    size_t secret_len;
    struct auth_cache *cache; /* NULL: every token is verified in full */
};

struct auth_claims {
    char sub[AUTH_MAX_SUB]; /* copied */
    int is_service;         /* role == "service" */
    long exp;               /* seconds since the epoch */
};

/* Copies secret. Returns 0, or -EINVAL when shorter than AUTH_MIN_SECRET or
 * longer than AUTH_MAX_SECRET. */
CORE_MUST_CHECK int auth_init(struct auth *a, const char *secret);

/* Signs an HS256 token with sub, exp = now + ttl_s and, when role is not
 * NULL, the role claim. *out is new: free() it. Returns 0 or -ENOMEM/-EINVAL. */
CORE_MUST_CHECK int auth_sign(const struct auth *a, const char *sub, const char *role, long ttl_s,
                              char **out);

/* Verifies token (token_len bytes, not necessarily NUL-terminated) and fills
 * *claims. Returns 0, or -EACCES for any bad token: malformed, wrong alg,
 * bad signature, missing or past exp, missing sub. now is seconds since the
 * epoch (pass time(NULL); tests pass other values). */
CORE_MUST_CHECK int auth_verify(const struct auth *a, const char *token, size_t token_len, long now,
                                struct auth_claims *claims);

/* Same, from an Authorization header value: "Bearer <token>" (scheme
 * case-insensitive). -EACCES when absent (value == NULL) or malformed. */
CORE_MUST_CHECK int auth_verify_header(const struct auth *a, const char *value, size_t len,
                                       long now, struct auth_claims *claims);

/* A cache of verified tokens, so a client sending the same token again
 * costs a hash and a compare instead of an HMAC and two JSON parses:
 * AUTH_CACHE_SLOTS entries, direct-mapped, each keyed by the whole token
 * (compared byte for byte, never by hash alone); only tokens that passed
 * verification enter it, and a hit still honours exp and nbf against now.
 * Tokens longer than AUTH_CACHE_TOKEN are verified in full every time.
 * With a cache the auth is no longer pure: one thread (the loop) only.
 * auth_cache_enable returns 0 or -ENOMEM; auth_cache_free drops it. */
#define AUTH_CACHE_SLOTS 256
#define AUTH_CACHE_TOKEN 512
CORE_MUST_CHECK int auth_cache_enable(struct auth *a);
void auth_cache_free(struct auth *a);
/* Verifications answered from the cache, and those done in full. */
void auth_cache_counts(const struct auth *a, uint64_t *hits, uint64_t *misses);

/* Identities: which user a token speaks for. User ids are UUIDs, and a UUID
 * names the same thing in upper or lower case (RFC 9562 §4), so the token's
 * sub and the id it is compared with are both canonicalised (ids_canonical)
 * first. Every service compares identities through these two, and nowhere
 * else. What a service token may see is each route's own rule. */

/* The user id of a user token, lower-cased, in out. Returns 0, or -EINVAL
 * for a service token, who == NULL, or a sub that is not a UUID. */
CORE_MUST_CHECK int auth_user_id(const struct auth_claims *who, char out[IDS_UUID_LEN + 1]);

/* 1 when who is a user token for user id (a UUID in either case; NULL or
 * anything else is nobody), 0 otherwise, service tokens included. */
int auth_is_subject(const struct auth_claims *who, const char *id);

#endif
