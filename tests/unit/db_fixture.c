/* db_fixture.c -- a fresh directory per test, and one integer read from a
 * database. See db_fixture.h. */
#include "db_fixture.h"

#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>

#include <sqlite3.h>

void tmpdir_make(char *tmpl)
{
    cr_assert_not_null(mkdtemp(tmpl), "mkdtemp %s", tmpl);
}

void tmpdir_remove(const char *dir)
{
    char cmd[320];

    if (snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir) < (int)sizeof(cmd))
        cr_expect_eq(system(cmd), 0, "%s", cmd);
}

long db_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    long v = -1;

    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(db));
    if (sqlite3_step(stmt) == SQLITE_ROW)
        v = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return v;
}

long db_int_at(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    long v;

    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, "unix"), SQLITE_OK, "%s", path);
    v = db_int(db, sql);
    sqlite3_close(db);
    return v;
}
