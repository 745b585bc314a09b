/* test_log.c -- core/log: every line is one JSON object in one write of at
 * most PIPE_BUF bytes, so lines written at once by several threads into a
 * pipe never splice, however long or escape-heavy the message. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <ripple/log.h>

#define WRITERS 4
#define LINES 50

static int saved_stderr = -1;
static int pipe_fd[2];

/* stderr becomes the write end of a pipe; the test reads the other. */
static void to_pipe(void)
{
    cr_assert_eq(pipe(pipe_fd), 0);
    saved_stderr = dup(STDERR_FILENO);
    cr_assert_geq(saved_stderr, 0);
    cr_assert_geq(dup2(pipe_fd[1], STDERR_FILENO), 0);
    close(pipe_fd[1]);
}

static void restore(void)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
}

/* A message that escapes to twice its length: quotes and backslashes. */
static void *writer(void *arg)
{
    char msg[3000];

    for (size_t i = 0; i < sizeof(msg) - 1; i++)
        msg[i] = i % 2 ? '"' : '\\';
    msg[sizeof(msg) - 1] = '\0';
    log_scope((const char *)arg);
    for (int i = 0; i < LINES; i++)
        log_info("%s", msg);
    return NULL;
}

static void *reader(void *arg)
{
    size_t cap = (size_t)WRITERS * LINES * PIPE_BUF, len = 0;
    char *all = malloc(cap + 1);
    ssize_t n;

    cr_assert_not_null(all);
    while ((n = read(pipe_fd[0], all + len, cap - len)) > 0)
        len += (size_t)n;
    all[len] = '\0';
    *(char **)arg = all;
    return NULL;
}

Test(log, lines_from_threads_into_a_pipe_never_splice)
{
    static const char *const scopes[WRITERS] = {"users", "orders", "inventory", "payments"};
    pthread_t w[WRITERS], r;
    char *all = NULL, *line, *save = NULL;
    int lines = 0;

    to_pipe();
    cr_assert_eq(pthread_create(&r, NULL, reader, &all), 0);
    for (int i = 0; i < WRITERS; i++)
        cr_assert_eq(pthread_create(&w[i], NULL, writer, (void *)scopes[i]), 0);
    for (int i = 0; i < WRITERS; i++)
        pthread_join(w[i], NULL);
    restore(); /* the pipe's last write end: the reader sees its end */
    pthread_join(r, NULL);
    close(pipe_fd[0]);
    for (line = strtok_r(all, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        json_error_t err;
        json_t *rec = json_loads(line, 0, &err);

        cr_assert_not_null(rec, "line %d is not one JSON object (%s): %.200s", lines, err.text,
                           line);
        cr_assert_lt(strlen(line) + 1, (size_t)PIPE_BUF + 1, "a line of %zu bytes", strlen(line));
        cr_assert_not_null(json_string_value(json_object_get(rec, "msg")));
        json_decref(rec);
        lines++;
    }
    cr_assert_eq(lines, WRITERS * LINES);
    free(all);
}
