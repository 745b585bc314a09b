/* host.c -- one process hosting a set of modules. See host.h.
 *
 * Owns the loop (a uv_loop_t of its own: nothing in core/ uses the default
 * loop), the SIGTERM/SIGINT handles and the array of services. The
 * selection is checked in full before anything is read from the
 * environment; settings are all checked before any module starts; every
 * module has started before any listens. A stop is a count: each service
 * reports back once it has stopped, and the last one closes the signal
 * handles so the loop runs dry.
 *
 * With RIPPLE_THREADS=1 each module gets a loop of its own, run by a thread
 * of its own once every module has started and listens (all of that on the
 * main thread); the host's loop then holds the signals alone, a stop
 * reaches each module's loop through a uv_async, and the host joins the
 * threads. The little process-wide state core/ has is per thread (the log
 * scope, the trace context, the id pool) or set once before the threads
 * start (the log level, SQLite's configuration). */
#include <ripple/host.h>

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <uv.h>

#include <ripple/config.h>
#include <ripple/log.h>
#include <ripple/service.h>
#include <ripple/streams.h>

/* A module on a loop and a thread of its own (RIPPLE_THREADS=1). */
struct host_thread {
    struct host *h;
    struct service *svc;
    uv_loop_t loop;
    uv_async_t stop; /* the host's stop, handed to this loop */
    uv_thread_t tid;
    int started;
};

struct host {
    uv_loop_t loop; /* every module's, or with threads the signals' alone */
    uv_signal_t sigterm, sigint;
    uv_async_t done;            /* with threads: a module's thread has ended */
    uv_work_t pool_start;       /* with threads: starts libuv's pool from this thread */
    atomic_size_t threads_done; /* how many (or will not start) */
    const struct module *sel[HOST_MAX_MODULES]; /* borrowed */
    size_t n;
    struct service *svcs;        /* n of them */
    struct host_thread *threads; /* n of them with RIPPLE_THREADS=1, else NULL */
    size_t running;              /* services not yet stopped (one loop) */
    int stopping;
};

CORE_NORETURN static void host_fatal(const char *fmt, ...) CORE_PRINTF(1, 2);

static void host_fatal(const char *fmt, ...)
{
    va_list ap;

    fputs("ripple: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* ---------------------------------------------------------------------------
 * Which modules
 * ------------------------------------------------------------------------- */

/* "users, orders, ..." of every module linked in, for messages. */
static void known_list(const struct module *const *all, size_t n, char *buf, size_t len)
{
    size_t pos = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < n && pos < len; i++) {
        int w = snprintf(buf + pos, len - pos, "%s%s", i ? ", " : "", all[i]->name);

        if (w < 0)
            break;
        pos += (size_t)w;
    }
}

static int name_ok(const char *s)
{
    if (*s < 'a' || *s > 'z')
        return 0;
    for (; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-'))
            return 0;
    }
    return 1;
}

static const struct module *find(const struct module *const *all, size_t n, const char *name,
                                 size_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (strlen(all[i]->name) == len && strncmp(all[i]->name, name, len) == 0)
            return all[i];
    }
    return NULL;
}

/* Adds the module called name[0..len) (or every module, for "all"). */
static void pick(struct host *h, const struct module *const *all, size_t n, const char *name,
                 size_t len)
{
    char known[512];
    const struct module *m;

    if (len == 3 && strncmp(name, "all", 3) == 0) {
        for (size_t i = 0; i < n; i++)
            pick(h, all, n, all[i]->name, strlen(all[i]->name));
        return;
    }
    m = find(all, n, name, len);
    if (m == NULL) {
        known_list(all, n, known, sizeof(known));
        host_fatal("unknown module \"%.*s\"; this host knows: %s (or all)",
                   (int)(len > 64 ? 64 : len), name, known);
    }
    for (size_t i = 0; i < h->n; i++) {
        if (h->sel[i] == m)
            return; /* named twice (or by all and by name): hosted once */
    }
    if (h->n == HOST_MAX_MODULES)
        host_fatal("more than %d modules", HOST_MAX_MODULES);
    h->sel[h->n++] = m;
}

static void pick_list(struct host *h, const struct module *const *all, size_t n, const char *list)
{
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ", ");

        if (len > 0)
            pick(h, all, n, p, len);
        p += len;
        p += strspn(p, ", ");
    }
}

/* A module's declarations (ripple/streams.h) are sound, and each type it
 * consumes has a handler. */
static void check_catalog(const struct module *m)
{
    char err[256];

    if (streams_check_list(m->emits, err, sizeof(err)) < 0 ||
        streams_check_list(m->consumes, err, sizeof(err)) < 0)
        host_fatal("module %s: %s", m->name, err);
    for (const struct stream_type *t = m->consumes; t != NULL && t->stream != NULL; t++) {
        if (t->handler == NULL)
            host_fatal("module %s: it consumes %s on %s without a handler", m->name, t->type,
                       t->stream);
    }
}

static void check_modules(const struct module *const *all, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (all[i]->abi != MODULE_ABI)
            host_fatal("module %s was built for runtime ABI %u; this host runs ABI %u: rebuild it",
                       all[i]->name ? all[i]->name : "?", all[i]->abi, MODULE_ABI);
        if (all[i]->name == NULL || !name_ok(all[i]->name) || all[i]->start == NULL)
            host_fatal("module %zu has no valid name ([a-z][a-z0-9-]*) or no start function", i);
        check_catalog(all[i]);
    }
}

/* argv's names; else the binary's own name when it is a module's; else
 * RIPPLE_SERVICES; else the only module linked in. */
static void select_modules(struct host *h, int argc, char **argv, const struct module *const *all,
                           size_t n)
{
    const char *self = argc > 0 ? strrchr(argv[0], '/') : NULL;
    const char *env = getenv("RIPPLE_SERVICES");
    char known[512];

    check_modules(all, n);
    self = self ? self + 1 : argc > 0 ? argv[0] : "";
    for (int i = 1; i < argc; i++)
        pick_list(h, all, n, argv[i]);
    if (h->n == 0 && find(all, n, self, strlen(self)) != NULL)
        pick(h, all, n, self, strlen(self));
    if (h->n == 0 && env != NULL)
        pick_list(h, all, n, env);
    if (h->n == 0 && n == 1)
        pick(h, all, n, all[0]->name, strlen(all[0]->name));
    if (h->n == 0) {
        known_list(all, n, known, sizeof(known));
        host_fatal("name the modules to host, as arguments or in RIPPLE_SERVICES: all, or some "
                   "of %s",
                   known);
    }
}

/* ---------------------------------------------------------------------------
 * Process-wide settings
 * ------------------------------------------------------------------------- */

static void set_logging(const struct host *h)
{
    const char *s = getenv("LOG_LEVEL");
    enum log_level level = LOG_LEVEL_INFO;

    if (s != NULL && *s != '\0' && log_parse_level(s, &level) < 0)
        host_fatal("config: LOG_LEVEL=\"%.32s\" must be debug, info, warn or error", s);
    log_set_level(level);
    log_set_service(h->n == 1 ? h->sel[0]->name : "ripple");
}

/* Raises the soft limit on open files to the hard one (each connection is
 * a descriptor), and says so when the modules' HTTP_MAX_CONNECTIONS cannot
 * all be reached. */
static void raise_fd_limit(const struct host *h)
{
    unsigned long want = 64;
    struct rlimit rl;

    for (size_t i = 0; i < h->n; i++)
        want += h->svcs[i].cfg.http_max_connections + 32;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0 && getrlimit(RLIMIT_NOFILE, &rl) < 0)
            return;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
        log_warn("open files are limited to %llu, fewer than the %lu the modules' "
                 "HTTP_MAX_CONNECTIONS add up to (with their databases and Redis): past the "
                 "limit new connections are refused; raise `ulimit -n` or lower "
                 "<MODULE>_HTTP_MAX_CONNECTIONS",
                 (unsigned long long)rl.rlim_cur, want);
}

/* ---------------------------------------------------------------------------
 * Stopping
 * ------------------------------------------------------------------------- */

/* Everything has stopped: the signal handles go, so the host's loop runs
 * dry. Until then a repeated SIGTERM finds them there and is ignored (with
 * the default action back, it would kill the stop half way). */
static void close_signals(struct host *h)
{
    log_scope(NULL);
    uv_close((uv_handle_t *)&h->sigterm, NULL);
    uv_close((uv_handle_t *)&h->sigint, NULL);
    if (h->threads != NULL)
        uv_close((uv_handle_t *)&h->done, NULL);
}

static void on_stopped(struct service *svc, void *data)
{
    struct host *h = data;

    (void)svc;
    if (--h->running > 0)
        return;
    close_signals(h);
}

/* With threads: a module has stopped, on its own loop; closing the stop
 * handle lets that loop run dry. */
static void on_thread_stopped(struct service *svc, void *data)
{
    struct host_thread *t = data;

    (void)svc;
    uv_close((uv_handle_t *)&t->stop, NULL);
}

static void on_thread_stop(uv_async_t *a)
{
    struct host_thread *t = a->data;

    service_stop(t->svc, on_thread_stopped, t);
}

/* On the host's loop: some module threads have ended (sends coalesce, so
 * the count says how many). */
static void on_thread_done(uv_async_t *a)
{
    struct host *h = a->data;

    if (atomic_load(&h->threads_done) == h->n)
        close_signals(h);
}

static void host_stop(struct host *h)
{
    if (h->stopping)
        return;
    h->stopping = 1;
    if (h->threads != NULL) {
        /* Each module stops on its own loop; the threads say when done. */
        for (size_t i = 0; i < h->n; i++)
            (void)uv_async_send(&h->threads[i].stop);
        return;
    }
    h->running = h->n;
    for (size_t i = 0; i < h->n; i++)
        service_stop(&h->svcs[i], on_stopped, h);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct host *h = s->data;
    const char *name = signum == SIGTERM ? "SIGTERM" : "SIGINT";

    log_scope(NULL);
    if (h->stopping) {
        log_info("received %s again: still stopping", name);
        return;
    }
    log_info("received %s", name);
    host_stop(h);
}

static void on_stray_handle(uv_handle_t *handle, void *arg)
{
    (void)arg;
    if (!uv_is_closing(handle)) {
        log_warn("stop: closing a handle left open (type %s)", uv_handle_type_name(handle->type));
        uv_close(handle, NULL);
    }
}

/* ---------------------------------------------------------------------------
 * Running
 * ------------------------------------------------------------------------- */

/* Runs one module's loop until it has stopped and every handle is closed. */
static void run_loop(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    uv_walk(loop, on_stray_handle, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
}

static void thread_main(void *arg)
{
    struct host_thread *t = arg;

    /* Named after its module (cut to the kernel's 15 bytes): what top -H
     * and /proc/PID/task/TID/comm show. */
    (void)prctl(PR_SET_NAME, t->svc->module->name, 0, 0, 0);
    log_scope(t->svc->module->name);
    run_loop(&t->loop);
    atomic_fetch_add(&t->h->threads_done, 1);
    (void)uv_async_send(&t->h->done);
}

static void pool_noop(uv_work_t *w)
{
    (void)w;
}

static void pool_started(uv_work_t *w, int status)
{
    (void)w;
    (void)status;
}

/* RIPPLE_THREADS=1 in a host of several modules: a loop for each, made
 * here, run by threads_start. */
static void threads_init(struct host *h)
{
    const char *s = getenv("RIPPLE_THREADS");
    int rc;

    if (s == NULL || *s == '\0' || strcmp(s, "0") == 0)
        return;
    if (strcmp(s, "1") != 0)
        host_fatal("config: RIPPLE_THREADS=\"%.32s\" must be 0 (one loop for every module) or 1 "
                   "(a loop and a thread for each)",
                   s);
    if (h->n < 2)
        return;
    h->threads = calloc(h->n, sizeof(*h->threads));
    if (h->threads == NULL)
        host_fatal("out of memory");
    if ((rc = uv_async_init(&h->loop, &h->done, on_thread_done)) < 0)
        host_fatal("cannot create the host's loop handles: %s", uv_strerror(rc));
    h->done.data = h;
    /* libuv starts its pool (checkpoints, password hashes, DNS) on the first
     * work queued, and a thread is born with its creator's name: started
     * here, the pool is "ripple" in top -H, not the module that used it
     * first. */
    if ((rc = uv_queue_work(&h->loop, &h->pool_start, pool_noop, pool_started)) < 0)
        host_fatal("cannot start libuv's thread pool: %s", uv_strerror(rc));
    for (size_t i = 0; i < h->n; i++) {
        struct host_thread *t = &h->threads[i];

        t->h = h;
        t->svc = &h->svcs[i];
        if ((rc = uv_loop_init(&t->loop)) < 0 ||
            (rc = uv_async_init(&t->loop, &t->stop, on_thread_stop)) < 0)
            host_fatal("cannot create a loop for module %s: %s", h->sel[i]->name, uv_strerror(rc));
        t->stop.data = t;
    }
}

/* Starts every module's thread. Returns 0; or, when one cannot start
 * (threads running already: no exit), stops the host and returns the
 * error: the modules without a thread stop on this one, in threads_join. */
static int threads_start(struct host *h)
{
    for (size_t i = 0; h->threads != NULL && i < h->n; i++) {
        struct host_thread *t = &h->threads[i];
        int rc = uv_thread_create(&t->tid, thread_main, t);

        if (rc < 0) {
            log_error("cannot start the thread of module %s: %s: stopping every module",
                      h->sel[i]->name, uv_strerror(rc));
            atomic_fetch_add(&h->threads_done, h->n - i);
            if (atomic_load(&h->threads_done) == h->n)
                (void)uv_async_send(&h->done); /* none started: nothing else will */
            host_stop(h);
            return rc;
        }
        t->started = 1;
    }
    return 0;
}

/* Waits for every module's thread (and runs the loops of those that never
 * started: their stop is pending); returns 0, or -1 when a loop did not
 * close. */
static int threads_join(struct host *h)
{
    int failed = 0;

    for (size_t i = 0; h->threads != NULL && i < h->n; i++) {
        struct host_thread *t = &h->threads[i];
        int rc;

        if (t->started)
            uv_thread_join(&t->tid);
        else
            run_loop(&t->loop);
        service_release(t->svc);
        if ((rc = uv_loop_close(&t->loop)) < 0) {
            log_error("stop: the loop of %s did not close: %s", h->sel[i]->name, uv_strerror(rc));
            failed = -1;
        }
    }
    return failed;
}

static void start_all(struct host *h)
{
    int shared = h->n > 1;

    for (size_t i = 0; i < h->n; i++) {
        service_init(&h->svcs[i], h->threads ? &h->threads[i].loop : &h->loop, h->sel[i], shared);
        h->svcs[i].peers = h->svcs;
        h->svcs[i].n_peers = h->n;
    }
    for (size_t i = 0; i < h->n; i++) {
        int rc;

        log_scope(h->sel[i]->name);
        rc = h->sel[i]->start(&h->svcs[i]);
        if (rc < 0)
            service_fatal(&h->svcs[i], "cannot start: %s", strerror(-rc));
    }
    log_scope(NULL);
}

/* Listens on every module's port; on a failure, stops them all. Returns 0
 * or the failure. */
static int listen_all(struct host *h)
{
    for (size_t i = 0; i < h->n; i++) {
        int rc = service_start(&h->svcs[i]);

        if (rc < 0) {
            log_scope(NULL);
            log_error("%s could not start: stopping every module", h->sel[i]->name);
            host_stop(h);
            return rc;
        }
    }
    log_scope(NULL);
    if (h->n > 1)
        log_info("hosting %zu modules in one process, %s", h->n,
                 h->threads ? "each on a loop and a thread of its own" : "on one loop");
    return 0;
}

/* ---------------------------------------------------------------------------
 * The catalog of the modules linked in (--catalog, --check-catalog)
 * ------------------------------------------------------------------------- */

/* "name: kind; ..." of a payload, cut to len. */
static void describe_fields(const struct spec_field *fields, char *buf, size_t len)
{
    char one[256];
    size_t pos = 0;

    buf[0] = '\0';
    for (const struct spec_field *f = fields; f->name != NULL && pos < len; f++) {
        streams_describe(f, one, sizeof(one));
        pos += (size_t)snprintf(buf + pos, len - pos, "%s`%s%s` %s", f == fields ? "" : "; ",
                                f->name, f->optional ? "?" : "", one);
    }
}

/* The modules (of all n) that list (stream, type) in emits or consumes,
 * comma-separated; the first declaration found goes to *first. */
static void who(const struct module *const *all, size_t n, const struct stream_type *t,
                int consumes, char *buf, size_t len, const struct stream_type **first)
{
    size_t pos = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < n && pos < len; i++) {
        const struct stream_type *d =
            streams_find(consumes ? all[i]->consumes : all[i]->emits, t->stream, t->type);

        if (d == NULL)
            continue;
        if (first != NULL && *first == NULL)
            *first = d;
        pos += (size_t)snprintf(buf + pos, len - pos, "%s%s", pos ? ", " : "", all[i]->name);
    }
}

/* 1 when (stream, type) was printed already: declared by an earlier module. */
static int seen_before(const struct module *const *all, size_t i, int consumes,
                       const struct stream_type *t)
{
    for (size_t k = 0; k <= i; k++) {
        const struct stream_type *e = all[k]->emits, *c = all[k]->consumes;

        for (; e != NULL && e->stream != NULL && !(k == i && !consumes && e == t); e++) {
            if (strcmp(e->stream, t->stream) == 0 && strcmp(e->type, t->type) == 0)
                return 1;
        }
        if (k == i && !consumes)
            return 0;
        for (; c != NULL && c->stream != NULL && !(k == i && c == t); c++) {
            if (strcmp(c->stream, t->stream) == 0 && strcmp(c->type, t->type) == 0)
                return 1;
        }
    }
    return 0;
}

/* One row per (stream, type); returns the number of producer/consumer
 * spec disagreements found (printed to stderr). */
static int catalog_row(const struct module *const *all, size_t n, const struct stream_type *t)
{
    char emitters[256], consumers[256], data[2048], other[2048];
    const struct stream_type *spec = NULL, *consumed = NULL;
    const char *summary;
    int bad = 0;

    who(all, n, t, 0, emitters, sizeof(emitters), &spec);
    who(all, n, t, 1, consumers, sizeof(consumers), &consumed);
    summary = spec != NULL && spec->summary           ? spec->summary
              : consumed != NULL && consumed->summary ? consumed->summary
                                                      : "";
    if (spec == NULL)
        spec = consumed; /* a command nobody linked in emits: its consumer's spec */
    if (spec == NULL)
        return 0; /* not reached: t itself is declared */
    describe_fields(spec->fields, data, sizeof(data));
    for (size_t i = 0; i < n; i++) {
        const struct stream_type *c = streams_find(all[i]->consumes, t->stream, t->type);

        if (c == NULL)
            continue;
        describe_fields(c->fields, other, sizeof(other));
        if (strcmp(data, other) != 0) {
            fprintf(stderr, "catalog: %s %s: %s consumes {%s} but it is emitted as {%s}\n",
                    t->stream, t->type, all[i]->name, other, data);
            bad++;
        }
    }
    printf("| %s | `%s` | %s | %s | %s | %s |\n", t->stream, t->type, emitters[0] ? emitters : "-",
           consumers[0] ? consumers : "-", data, summary);
    return bad;
}

/* Markdown of every declared type of the modules linked in, stream by
 * stream; with check, a non-zero return when a consumer's spec of a type
 * differs from its producer's. */
static int print_catalog(const struct module *const *all, size_t n)
{
    int bad = 0;

    printf("| stream | type | emitted by | consumed by | data | |\n|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < n; i++) {
        for (const struct stream_type *t = all[i]->emits; t != NULL && t->stream != NULL; t++) {
            if (!seen_before(all, i, 0, t))
                bad += catalog_row(all, n, t);
        }
        for (const struct stream_type *t = all[i]->consumes; t != NULL && t->stream != NULL; t++) {
            if (!seen_before(all, i, 1, t))
                bad += catalog_row(all, n, t);
        }
    }
    return bad;
}

/* Runs the selected modules from start to stop; returns the exit status. */
static int host_run(struct host *h)
{
    int rc, failed;

    /* The signals first: one that comes while the modules start (their
     * migrations can take a while) waits for the loop, then stops them. */
    uv_signal_init(&h->loop, &h->sigterm);
    uv_signal_init(&h->loop, &h->sigint);
    h->sigterm.data = h->sigint.data = h;
    uv_signal_start(&h->sigterm, on_signal, SIGTERM);
    uv_signal_start(&h->sigint, on_signal, SIGINT);
    threads_init(h);
    start_all(h);
    raise_fd_limit(h);
    failed = listen_all(h) < 0;
    /* Every module was set up on this thread; its loop runs on its own
     * from here (thread creation orders those writes before its reads). */
    if (threads_start(h) < 0)
        failed = 1;

    run_loop(&h->loop);
    if (h->threads != NULL) {
        if (threads_join(h) < 0)
            failed = 1;
    } else {
        for (size_t i = 0; i < h->n; i++)
            service_release(&h->svcs[i]);
    }
    free(h->threads);
    free(h->svcs);
    rc = uv_loop_close(&h->loop);
    if (rc < 0) {
        log_error("stop: the loop did not close: %s", uv_strerror(rc));
        return 1;
    }
    return failed ? 1 : 0;
}

int host_main(int argc, char **argv, const struct module *const *modules, size_t n)
{
    struct host h;
    int rc;

    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        char known[512];

        known_list(modules, n, known, sizeof(known));
        printf("usage: %s [all | MODULE...]   (or RIPPLE_SERVICES=a,b)\n"
               "       %s --catalog   (the streams and types of every module linked in)\n"
               "modules: %s\n",
               argv[0], argv[0], known);
        return 2;
    }
    if (argc > 1 && strcmp(argv[1], "--catalog") == 0) {
        check_modules(modules, n);
        return print_catalog(modules, n) == 0 ? 0 : 1;
    }
    memset(&h, 0, sizeof(h));
    select_modules(&h, argc, argv, modules, n);
    set_logging(&h);
    if ((rc = uv_loop_init(&h.loop)) < 0)
        host_fatal("cannot create the loop: %s", uv_strerror(rc));
    srandom((unsigned)(uv_hrtime() ^ (uint64_t)getpid()));
    /* Writes to a socket the peer closed must fail with EPIPE, not kill us. */
    signal(SIGPIPE, SIG_IGN);
    h.svcs = calloc(h.n, sizeof(*h.svcs));
    if (h.svcs == NULL)
        host_fatal("out of memory");
    return host_run(&h);
}
