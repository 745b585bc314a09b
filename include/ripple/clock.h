/* clock.h -- wall-clock time in the forms the services store and send.
 *
 * Milliseconds and microseconds since the epoch (deadlines, outbox and
 * inbox stamps, the envelope's ts), and the ISO-8601 UTC text with
 * milliseconds that resources carry (created_at: 2026-11-26T04:24:11.123Z).
 * No state; safe from any thread. */
#ifndef RIPPLE_CLOCK_H
#define RIPPLE_CLOCK_H

#include <stddef.h>
#include <stdint.h>

#include <ripple/common.h>

#define CLOCK_ISO8601_LEN 24 /* 2026-11-26T04:24:11.123Z, without the NUL */

int64_t clock_now_ms(void);
int64_t clock_now_us(void);
/* Writes the current UTC time as 2026-11-26T04:24:11.123Z into buf (at
 * least CLOCK_ISO8601_LEN + 1 bytes). Returns 0 or a negative errno. */
CORE_MUST_CHECK int clock_iso8601(char *buf, size_t len);

#endif
