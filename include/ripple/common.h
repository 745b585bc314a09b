/* common.h -- the one grab-bag of ripple's core: container_of, ARRAY_SIZE and
 * the attribute macros. Nothing here allocates or has state.
 *
 * Installed, this header defines no common name a service's own code or
 * another library may define differently (container_of and ARRAY_SIZE are
 * the kernel's and valgrind's too): only RIPPLE_CONTAINER_OF and
 * RIPPLE_ARRAY_SIZE. The tree's own sources are built with
 * -DRIPPLE_SHORT_NAMES (the Makefile) and keep the short names. */
#ifndef RIPPLE_COMMON_H
#define RIPPLE_COMMON_H

#include <stddef.h>

#define RIPPLE_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define RIPPLE_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#ifdef RIPPLE_SHORT_NAMES
#define container_of(ptr, type, member) RIPPLE_CONTAINER_OF(ptr, type, member)
#define ARRAY_SIZE(a) RIPPLE_ARRAY_SIZE(a)
#endif

#define CORE_MUST_CHECK __attribute__((warn_unused_result))
#define CORE_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define CORE_UNUSED __attribute__((unused))
#define CORE_NORETURN __attribute__((noreturn))

#endif
