/* common.h -- the one grab-bag of ripple's core: container_of, ARRAY_SIZE and
 * the attribute macros. Nothing here allocates or has state. */
#ifndef CORE_COMMON_H
#define CORE_COMMON_H

#include <stddef.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define CORE_MUST_CHECK __attribute__((warn_unused_result))
#define CORE_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define CORE_UNUSED __attribute__((unused))
#define CORE_NORETURN __attribute__((noreturn))

#endif
