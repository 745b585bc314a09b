/* tmpdir.c -- a fresh directory per test, and its removal. See tmpdir.h. */
#include "tmpdir.h"

#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>

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
