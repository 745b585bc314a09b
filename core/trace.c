/* trace.c -- W3C trace context. See ripple/trace.h.
 *
 * The current context is a copy in thread-local storage (a host with
 * RIPPLE_THREADS=1 runs a loop per thread): one loop, one piece of
 * work at a time. Random ids come from the same CSPRNG pool as the event
 * ids (ids_random, core/ids.c). */
#include <ripple/trace.h>

#include <errno.h>
#include <string.h>

#include <ripple/ids.h>

static __thread char current[TRACE_PARENT_LEN + 1];
static __thread char current_id[TRACE_ID_LEN + 1];

/* Without branches: which kind of digit comes next in a random id is a
 * coin toss, and a mispredicted branch per digit cost more than the rest
 * of a parse. */
static int hex_digit(char c)
{
    unsigned u = (unsigned char)c;

    return (u - '0' < 10u) | (u - 'a' < 6u);
}

/* n lower-case hex digits at s, not all '0'. */
static int hex_id(const char *s, size_t n)
{
    int ok = 1, nonzero = 0;

    for (size_t i = 0; i < n; i++) {
        ok &= hex_digit(s[i]);
        nonzero |= s[i] != '0';
    }
    return ok & nonzero;
}

int trace_parse(const char *s, size_t len, char out[TRACE_PARENT_LEN + 1])
{
    out[0] = '\0';
    if (s == NULL || len != TRACE_PARENT_LEN || memcmp(s, "00-", 3) != 0 || s[35] != '-' ||
        s[52] != '-' || !hex_id(s + 3, 32) || !hex_id(s + 36, 16) || !hex_digit(s[53]) ||
        !hex_digit(s[54]))
        return -EINVAL;
    memcpy(out, s, TRACE_PARENT_LEN);
    out[TRACE_PARENT_LEN] = '\0';
    return 0;
}

/* n hex digits of fresh random bits (n <= 32), never all zeros. */
static void random_hex(char *out, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char raw[16], any;

    do { /* an id of all zeros is invalid: draw again */
        ids_random(raw, n / 2);
        any = 0;
        for (size_t i = 0; i < n / 2; i++)
            any |= raw[i];
    } while (any == 0);
    for (size_t i = 0; i < n / 2; i++) {
        out[2 * i] = digits[raw[i] >> 4];
        out[2 * i + 1] = digits[raw[i] & 0xf];
    }
}

void trace_child(const char *parent, char out[TRACE_PARENT_LEN + 1])
{
    char valid[TRACE_PARENT_LEN + 1];

    if (parent != NULL && trace_parse(parent, strlen(parent), valid) == 0) {
        memcpy(out, valid, TRACE_PARENT_LEN + 1);
    } else {
        /* 00-<trace id>-<span id>-01: version 00, flags sampled. */
        out[0] = '0';
        out[1] = '0';
        out[2] = '-';
        random_hex(out + 3, 32);
        out[35] = '-';
        out[52] = '-';
        out[53] = '0';
        out[54] = '1';
        out[55] = '\0';
    }
    random_hex(out + 36, 16);
}

void trace_set(const char *tp)
{
    if (tp == NULL || tp[0] == '\0' || trace_parse(tp, strlen(tp), current) < 0) {
        current[0] = '\0';
        current_id[0] = '\0';
        return;
    }
    memcpy(current_id, current + 3, TRACE_ID_LEN);
    current_id[TRACE_ID_LEN] = '\0';
}

const char *trace_current(void)
{
    return current[0] != '\0' ? current : NULL;
}

const char *trace_current_id(void)
{
    return current_id[0] != '\0' ? current_id : NULL;
}
