/* ids.c -- UUID strings. See ids.h.
 *
 * Random bits come from OpenSSL's RAND_bytes (a CSPRNG seeded from the
 * kernel). libuuid's uuid_generate_random re-seeds random(3) on every call,
 * which cost ~7% of a stream consumer's CPU. */
#include <ripple/ids.h>

#include <errno.h>
#include <string.h>
#include <sys/time.h>

#include <openssl/rand.h>

static void random_bytes(unsigned char *u, int n)
{
    struct timeval tv;

    if (RAND_bytes(u, n) == 1)
        return;
    /* The CSPRNG failed (it does not on Linux): ids must still differ. */
    gettimeofday(&tv, NULL);
    for (int i = 0; i < n; i++)
        u[i] ^=
            (unsigned char)((unsigned long)tv.tv_usec >> (i % 3 * 8)) ^ (unsigned char)(i * 151);
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

    random_bytes(u, sizeof(u));
    u[6] = (unsigned char)(0x40 | (u[6] & 0x0f)); /* version 4 */
    u[8] = (unsigned char)(0x80 | (u[8] & 0x3f)); /* RFC 4122 variant */
    format(u, out);
}

void ids_uuid7(char out[IDS_UUID_LEN + 1])
{
    struct timeval tv;
    unsigned long long ms;
    unsigned char u[16];

    random_bytes(u, sizeof(u));
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
