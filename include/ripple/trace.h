/* trace.h -- W3C trace context (traceparent) across HTTP and streams.
 *
 * A traceparent is "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"
 * (https://www.w3.org/TR/trace-context/). Every HTTP request may carry one;
 * a service keeps its trace id (or starts a new trace) and gives its own
 * work a new parent id. The runtime keeps the context of the work in hand
 * as the loop's "current" one -- set by the HTTP dispatcher around a
 * handler, by a consumer around an entry's handler -- so the outbox writes
 * it with each row it appends, the relay copies it into the entry's
 * `traceparent` field beside `trace`, the consumer of that entry continues
 * it, and every log line written meanwhile carries its trace id. Work that
 * continues later (a deferred HTTP answer, an asynchronous handler) sets it
 * again from what it kept (trace_set). Spans are not exported (no
 * OpenTelemetry C SDK is packaged for Debian 12): the ids are right, so an
 * exporter can be added. Loop thread only. */
#ifndef RIPPLE_TRACE_H
#define RIPPLE_TRACE_H

#include <stddef.h>

#include <ripple/common.h>

#define TRACE_PARENT_LEN 55 /* "00-" 32 "-" 16 "-" 2 */
#define TRACE_ID_LEN 32

/* Checks s[0..len) as a traceparent of version 00 (lower-case hex, ids not
 * all zeros) and copies it into out, NUL-terminated. Returns 0 or -EINVAL
 * (out is then ""). */
CORE_MUST_CHECK int trace_parse(const char *s, size_t len, char out[TRACE_PARENT_LEN + 1]);

/* A traceparent for work caused by parent: the same trace id and flags, a
 * new random parent id -- or, when parent is NULL or not valid, a new trace
 * (random trace id, sampled flag). */
void trace_child(const char *parent, char out[TRACE_PARENT_LEN + 1]);

/* The current context: tp (copied; NULL or "" clears it). */
void trace_set(const char *tp);
/* The current traceparent, or NULL when none is set. Borrowed: valid until
 * the next trace_set. */
const char *trace_current(void);
/* The current trace id (32 hex digits, NUL-terminated), or NULL. */
const char *trace_current_id(void);

#endif
