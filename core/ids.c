/* ids.c -- UUID strings and random bytes. See ids.h.
 *
 * Random bits come from OpenSSL's RAND_bytes (a CSPRNG seeded from the
 * kernel), drawn IDS_POOL bytes at a time: one call costs a lock, a getpid
 * (a system call, and a slow one on a paravirtualized machine) and a DRBG
 * step whether it asks for 8 bytes or 4096, and a consumed event wants 40
 * (its trace and span ids, its event's id). The pool is per thread and forgotten in a forked child,
 * so two processes never hand out the same bytes. libuuid's
 * uuid_generate_random re-seeds random(3) on every call, which cost ~7% of
 * a stream consumer's CPU. */
#include <ripple/ids.h>

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/time.h>

#include <openssl/rand.h>

#define IDS_POOL 4096

static __thread unsigned char pool[IDS_POOL];
static __thread size_t pool_left; /* the unused bytes are the last pool_left */
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void forget_pool(void)
{
    pool_left = 0; /* the child's only thread: the one that forked */
}

static void pool_init(void)
{
    (void)pthread_atfork(NULL, NULL, forget_pool);
}

static void fallback_bytes(unsigned char *u, size_t n)
{
    struct timeval tv;

    /* The CSPRNG failed (it does not on Linux): ids must still differ. */
    gettimeofday(&tv, NULL);
    for (size_t i = 0; i < n; i++)
        u[i] ^=
            (unsigned char)((unsigned long)tv.tv_usec >> (i % 3 * 8)) ^ (unsigned char)(i * 151);
}

void ids_random(void *buf, size_t n)
{
    unsigned char *u = buf;

    pthread_once(&pool_once, pool_init);
    if (n > IDS_POOL) {
        if (RAND_bytes(u, (int)n) != 1)
            fallback_bytes(u, n);
        return;
    }
    if (pool_left < n) {
        if (RAND_bytes(pool, IDS_POOL) != 1)
            fallback_bytes(pool, IDS_POOL);
        pool_left = IDS_POOL;
    }
    memcpy(u, pool + IDS_POOL - pool_left, n);
    memset(pool + IDS_POOL - pool_left, 0, n); /* handed out once, then gone */
    pool_left -= n;
}

static void format(const unsigned char u[16], char out[IDS_UUID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    char *p = out;

    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[u[i] >> 4];
        *p++ = hex[u[i] & 0xf];
    }
    *p = '\0';
}

void ids_uuid4(char out[IDS_UUID_LEN + 1])
{
    unsigned char u[16];

    ids_random(u, sizeof(u));
    u[6] = (unsigned char)(0x40 | (u[6] & 0x0f)); /* version 4 */
    u[8] = (unsigned char)(0x80 | (u[8] & 0x3f)); /* RFC 4122 variant */
    format(u, out);
}

void ids_uuid7(char out[IDS_UUID_LEN + 1])
{
    struct timeval tv;
    unsigned long long ms;
    unsigned char u[16];

    ids_random(u, sizeof(u));
    gettimeofday(&tv, NULL);
    ms = (unsigned long long)tv.tv_sec * 1000ULL + (unsigned long long)tv.tv_usec / 1000ULL;
    for (int i = 0; i < 6; i++)
        u[i] = (unsigned char)(ms >> (8 * (5 - i)));
    u[6] = (unsigned char)(0x70 | (u[6] & 0x0f)); /* version 7 */
    u[8] = (unsigned char)(0x80 | (u[8] & 0x3f)); /* RFC 4122 variant */
    format(u, out);
}

int ids_is_uuid(const char *s, size_t len)
{
    if (len != IDS_UUID_LEN)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return 0;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return 0;
        }
    }
    return 1;
}

int ids_canonical(const char *s, size_t len, char out[IDS_UUID_LEN + 1])
{
    if (s == NULL || !ids_is_uuid(s, len))
        return -EINVAL;
    for (size_t i = 0; i < IDS_UUID_LEN; i++)
        out[i] = (char)(s[i] >= 'A' && s[i] <= 'F' ? s[i] - 'A' + 'a' : s[i]);
    out[IDS_UUID_LEN] = '\0';
    return 0;
}
