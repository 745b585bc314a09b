/* db_fixture.h -- for the unit tests of the store: a fresh directory per
 * test, and one integer read from a database. */
#ifndef TESTS_UNIT_DB_FIXTURE_H
#define TESTS_UNIT_DB_FIXTURE_H

struct sqlite3;

/* Makes a new directory from tmpl (a path ending in XXXXXX, rewritten in
 * place, as mkdtemp does); fails the test if it cannot. */
void tmpdir_make(char *tmpl);

/* Removes dir and everything under it; expects it to succeed. */
void tmpdir_remove(const char *dir);

/* The first column of sql's first row as an integer, or -1 when there is
 * no row; fails the test if sql does not prepare. */
long db_int(struct sqlite3 *db, const char *sql);

/* db_int as another connection sees the database at path: opened
 * read-only through SQLite's own VFS ("unix"), closed again. */
long db_int_at(const char *path, const char *sql);

#endif
