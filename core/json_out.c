/* json_out.c -- JSON text into a bounded buffer. See json_out.h. */
#include <ripple/json_out.h>

#include <stdio.h>
#include <string.h>

void json_out_mem(struct json_out *b, const char *s, size_t n)
{
    if (b->overflow || n > b->cap - b->len) {
        b->overflow = 1;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void json_out_raw(struct json_out *b, const char *s)
{
    json_out_mem(b, s, strlen(s));
}

/* The runs between the characters that need an escape are copied whole. */
void json_out_str(struct json_out *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";

    if (s == NULL) {
        json_out_mem(b, "null", 4);
        return;
    }
    json_out_mem(b, "\"", 1);
    while (*s != '\0' && !b->overflow) {
        size_t run = 0;
        unsigned char c;

        while ((c = (unsigned char)s[run]) != '\0' && c >= 0x20 && c != '"' && c != '\\')
            run++;
        json_out_mem(b, s, run);
        s += run;
        if (c == '\0')
            break;
        if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};

            json_out_mem(b, esc, sizeof(esc));
        } else {
            char esc[2] = {'\\', (char)c};

            json_out_mem(b, esc, sizeof(esc));
        }
        s++;
    }
    json_out_mem(b, "\"", 1);
}

void json_out_int(struct json_out *b, long long v)
{
    char num[24];
    int n = snprintf(num, sizeof(num), "%lld", v);

    json_out_mem(b, num, (size_t)n);
}
