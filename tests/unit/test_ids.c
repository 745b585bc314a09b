/* test_ids.c -- core/ids: new ids, and the one canonical spelling of a UUID. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ripple/ids.h>

Test(ids, new_ids_are_canonical_and_versioned)
{
    char v4[IDS_UUID_LEN + 1], v7[IDS_UUID_LEN + 1], out[IDS_UUID_LEN + 1];

    ids_uuid4(v4);
    ids_uuid7(v7);
    cr_assert(ids_is_uuid(v4, strlen(v4)), "%s", v4);
    cr_assert(ids_is_uuid(v7, strlen(v7)), "%s", v7);
    cr_assert_eq(v4[14], '4', "%s", v4);
    cr_assert_eq(v7[14], '7', "%s", v7);
    cr_assert_eq(ids_canonical(v7, strlen(v7), out), 0);
    cr_assert_str_eq(out, v7, "a new id is already canonical");
}

Test(ids, canonical_lowers_the_hex_digits_only)
{
    const char *in = "0189ABCD-EF01-7ABC-8DEF-0123456789AF";
    char out[IDS_UUID_LEN + 1];

    memset(out, 'x', sizeof(out));
    cr_assert_eq(ids_canonical(in, strlen(in), out), 0);
    cr_assert_str_eq(out, "0189abcd-ef01-7abc-8def-0123456789af");
}

Test(ids, canonical_refuses_what_is_not_a_uuid)
{
    static const char *const bad[] = {
        "",
        "0189abcd-ef01-7abc-8def-0123456789a",   /* 35 */
        "0189abcd-ef01-7abc-8def-0123456789abc", /* 37 */
        "0189abcd_ef01-7abc-8def-0123456789af",  /* no dash */
        "0189abcg-ef01-7abc-8def-0123456789af",  /* g */
        "0189abcd-ef01-7abc-8def-0123456789aZ",  /* Z: not lowered into hex */
        "0189abcd-ef01-7abc-8def-0123456789a\xc3\xa9",
    };
    char out[IDS_UUID_LEN + 1];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(ids_canonical(bad[i], strlen(bad[i]), out), -EINVAL, "%s", bad[i]);
    cr_assert_eq(ids_canonical(NULL, 0, out), -EINVAL);
    /* the length given is what counts, not a NUL further on */
    cr_assert_eq(ids_canonical("0189abcd-ef01-7abc-8def-0123456789afff", 36, out), 0);
    cr_assert_str_eq(out, "0189abcd-ef01-7abc-8def-0123456789af");
}

static int by_text(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* The random pool hands each byte out once: ids drawn across many refills
 * never repeat, and a forked child does not hand out the bytes its parent
 * has yet to use. */
Test(ids, random_bytes_are_never_handed_out_twice)
{
    enum { N = 4000 };
    static char seen[N][IDS_UUID_LEN + 1];
    unsigned char parent[16], child[16];
    int fd[2], status;
    pid_t pid;

    for (int i = 0; i < N; i++) /* 16 bytes each: 250 refills of the pool */
        ids_uuid4(seen[i]);
    qsort(seen, N, sizeof(seen[0]), by_text);
    for (int i = 1; i < N; i++)
        cr_assert_str_neq(seen[i], seen[i - 1]);
    cr_assert_eq(pipe(fd), 0);
    ids_random(parent, 1); /* the pool is filled and in use at the fork */
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        ids_random(child, sizeof(child));
        _exit(write(fd[1], child, sizeof(child)) == (ssize_t)sizeof(child) ? 0 : 1);
    }
    ids_random(parent, sizeof(parent));
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert_eq(read(fd[0], child, sizeof(child)), (ssize_t)sizeof(child));
    cr_assert_neq(memcmp(parent, child, sizeof(parent)), 0, "the child repeated its parent");
    close(fd[0]);
    close(fd[1]);
}
