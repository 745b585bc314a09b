/* log.h -- one JSON object per line on stderr: ts, level, service, msg, trace.
 *
 * The level and the service name are the only process-wide state besides the
 * loop. The level is checked before anything is formatted. Messages are
 * formatted into a bounded buffer (longer ones are cut, never overflowed) and
 * JSON-escaped. Never pass tokens, passwords or request bodies. */
#ifndef CORE_LOG_H
#define CORE_LOG_H

#include "common.h"

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

#define LOG_MAX_LINE 2048 /* bytes of one formatted message before escaping */

/* Sets the service name written in every line (copied, at most 31 bytes). */
void log_set_service(const char *name);
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
