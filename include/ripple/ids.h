/* ids.h -- UUID strings for entities and events.
 *
 * Entities get random (v4) ids. Events get time-ordered (v7) ids: 48 bits
 * of milliseconds, then random bits, so the outbox's and the inbox's unique
 * indexes grow at their right edge instead of scattering page writes over
 * the whole B-tree. Both are canonical lower-case 36-byte strings. */
#ifndef RIPPLE_IDS_H
#define RIPPLE_IDS_H

#include <stddef.h>

#define IDS_UUID_LEN 36

/* Writes a new id and its NUL into out (IDS_UUID_LEN + 1 bytes). */
void ids_uuid4(char out[IDS_UUID_LEN + 1]);
void ids_uuid7(char out[IDS_UUID_LEN + 1]);
/* Fills buf with n bytes from a CSPRNG (OpenSSL's, drawn in blocks). */
void ids_random(void *buf, size_t n);
/* 1 when s[0..len) is a canonical UUID (hex digits in either case). */
int ids_is_uuid(const char *s, size_t len);
/* Copies the UUID s[0..len) lower-cased, with its NUL, into out: the one
 * spelling ids are stored and compared in. s may be NULL. Returns 0, or
 * -EINVAL when s is not a UUID. */
int ids_canonical(const char *s, size_t len, char out[IDS_UUID_LEN + 1]);

#endif
