/* tmpdir.h -- a fresh directory per test, and its removal. */
#ifndef TESTS_COMMON_TMPDIR_H
#define TESTS_COMMON_TMPDIR_H

/* Makes a new directory from tmpl (a path ending in XXXXXX, rewritten in
 * place, as mkdtemp does); fails the test if it cannot. */
void tmpdir_make(char *tmpl);

/* Removes dir and everything under it; expects it to succeed. */
void tmpdir_remove(const char *dir);

#endif
