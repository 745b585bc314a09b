/* ids.c -- UUID strings. See ids.h. */
#include "ids.h"

#include <sys/time.h>
#include <uuid/uuid.h>

void ids_uuid4(char out[IDS_UUID_LEN + 1])
{
    uuid_t u;

    uuid_generate_random(u);
    uuid_unparse_lower(u, out);
}

void ids_uuid7(char out[IDS_UUID_LEN + 1])
{
    struct timeval tv;
    unsigned long long ms;
    uuid_t u;

    uuid_generate_random(u);
    gettimeofday(&tv, NULL);
    ms = (unsigned long long)tv.tv_sec * 1000ULL + (unsigned long long)tv.tv_usec / 1000ULL;
    for (int i = 0; i < 6; i++)
        u[i] = (unsigned char)(ms >> (8 * (5 - i)));
    u[6] = (unsigned char)(0x70 | (u[6] & 0x0f)); /* version 7 */
    u[8] = (unsigned char)(0x80 | (u[8] & 0x3f)); /* RFC 4122 variant */
    uuid_unparse_lower(u, out);
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
