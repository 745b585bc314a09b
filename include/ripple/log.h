/* log.h -- one JSON object per line on stderr: ts, level, service, msg, trace.
 *
 * The level, the host's label and the current scope are the only
 * process-wide state besides the loop. The `service` of a line is the
 * module the loop is working for (DESIGN.md §11: a host runs several
 * modules on one loop): every callback through which the loop enters one
 * module's objects -- its HTTP server, Redis connections, consumers, outbox,
 * timers -- sets the scope first with log_scope(). Without a scope a line
 * carries the host's label. The level is checked before anything is
 * formatted. Messages are formatted into a bounded buffer (longer ones are
 * cut, never overflowed) and JSON-escaped. Never pass tokens, passwords or
 * request bodies. Lines written while a W3C trace context is current
 * (ripple/trace.h) carry its trace id as `trace_id`. Loop thread only (a
 * thread-pool job must not log). */
#ifndef RIPPLE_LOG_H
#define RIPPLE_LOG_H

#include <ripple/common.h>

enum log_level { LOG_LEVEL_DEBUG = 0, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

#define LOG_MAX_LINE 2048 /* bytes of one formatted message before escaping */

/* Sets the host's label, written when no scope is set (copied, at most 31
 * bytes): the module's name in a host of one, "ripple" in a host of several. */
void log_set_service(const char *name);
/* Sets the scope: lines name this module until the next call. name is
 * borrowed and must live as long as the process logs (a module's name, in
 * static storage); NULL goes back to the host's label. Returns the previous
 * scope, so a caller may restore it. */
const char *log_scope(const char *name);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "debug", "info", "warn" or "error". Returns 0, or -EINVAL. */
CORE_MUST_CHECK int log_parse_level(const char *s, enum log_level *out);

/* Writes one line at level with an optional trace id (NULL for none). */
void log_write(enum log_level level, const char *trace, const char *fmt, ...) CORE_PRINTF(3, 4);

void log_debug(const char *fmt, ...) CORE_PRINTF(1, 2);
void log_info(const char *fmt, ...) CORE_PRINTF(1, 2);
void log_warn(const char *fmt, ...) CORE_PRINTF(1, 2);
void log_error(const char *fmt, ...) CORE_PRINTF(1, 2);

#endif
