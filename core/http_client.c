/* http_client.c -- libcurl's multi-socket API on the service loop. See
 * http_client.h.
 *
 * Handles: one uv_timer for curl's timeouts, one uv_poll per socket curl
 * asks us to watch (struct sock, freed in its close callback), and one
 * uv_timer per call (struct call) used for the retry backoff and to deliver
 * answers that do not come from curl (cache hits, an open breaker) on a
 * later loop turn. A call is freed in its timer's close callback, after its
 * user callback has fired exactly once. The client is freed when every
 * handle it owns has closed.
 *
 * Name resolution does not block the loop: Debian 12's libcurl4-openssl
 * (7.88.1) is built with the threaded resolver -- curl_version_info() reports
 * CURL_VERSION_ASYNCHDNS, with no c-ares -- so curl resolves a target's host
 * on a thread of its own while the multi handle keeps being driven from the
 * loop. (The Redis connection, whose hiredis 0.14 resolves synchronously,
 * resolves with uv_getaddrinfo instead: see redis.c.) http_client_new warns
 * once should a build of libcurl without it ever be linked. */
#include <ripple/http_client.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include <ripple/log.h>
#include <ripple/metrics.h>

#define CACHE_BUCKETS 256
#define CIRCUIT_CLOSED 0
#define CIRCUIT_OPEN 1
#define CIRCUIT_HALF_OPEN 2

struct target {
    char name[32];
    int state;
    unsigned failures;   /* consecutive */
    uint64_t open_until; /* uv_now ms */
    int probing;         /* the half-open probe is in flight */
    double gauge;        /* circuit_state, read at render time */
};

struct cache_entry {
    struct cache_entry *next;          /* bucket chain */
    struct cache_entry *older, *newer; /* age list, for eviction */
    char *url;
    int status;
    char *body;
    size_t len;
    uint64_t stored_at, expires_at; /* uv_now ms */
};

struct sock {
    uv_poll_t poll;
    struct http_client *c;
    curl_socket_t fd;
};

struct call {
    struct http_client *c;
    struct target *t;
    struct call *prev, *next; /* calls in flight */
    uv_timer_t timer;
    CURL *easy;
    struct curl_slist *headers;
    char *method, *url, *body;
    size_t body_len;
    int idempotent, probe, done;
    unsigned cache_ttl_ms, cache_negative_ttl_ms, cache_stale_ms;
    unsigned attempts;
    uint64_t deadline; /* uv_now ms */
    http_client_cb cb;
    void *data;
    /* the answer of the current attempt */
    char *resp;
    size_t resp_len, resp_cap;
    int too_large;
    struct http_client_response res; /* what cb gets */
};

struct http_client {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    struct http_client_config cfg;
    struct metrics *metrics;
    struct target targets[HTTP_CLIENT_MAX_TARGETS];
    size_t ntargets;
    struct cache_entry *cache[CACHE_BUCKETS];
    struct cache_entry *oldest, *newest;
    size_t ncache;
    struct call *calls;
    size_t handles; /* open: the timer, socks, call timers */
    int closing;
    http_client_closed_cb closed_cb;
    void *closed_data;
};

static void start_attempt(struct call *k);
static void maybe_freed(struct http_client *c);

/* ---------------------------------------------------------------------------
 * Metrics and breakers
 * ------------------------------------------------------------------------- */

static void count(struct http_client *c, const struct target *t, const char *result)
{
    char labels[128];
    struct metrics_counter *m;

    if (c->metrics == NULL)
        return;
    snprintf(labels, sizeof(labels), "target=\"%s\",result=\"%s\"", t->name, result);
    m = metrics_counter(c->metrics, "http_client_requests_total",
                        "Outbound HTTP requests, by target and result.", labels);
    if (m != NULL)
        metrics_counter_add(m, 1);
}

static double gauge_circuit(void *data)
{
    return ((struct target *)data)->gauge;
}

static struct target *target_get(struct http_client *c, const char *name)
{
    char labels[64];
    struct target *t;

    for (size_t i = 0; i < c->ntargets; i++) {
        if (strcmp(c->targets[i].name, name) == 0)
            return &c->targets[i];
    }
    if (c->ntargets == HTTP_CLIENT_MAX_TARGETS || strlen(name) >= sizeof(t->name) ||
        strpbrk(name, "\"\\\n") != NULL)
        return NULL;
    t = &c->targets[c->ntargets++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    snprintf(labels, sizeof(labels), "target=\"%s\"", name);
    if (c->metrics != NULL &&
        metrics_gauge(c->metrics, "circuit_state",
                      "Circuit breaker per target: 0 closed, 1 open, 2 half-open.", labels,
                      gauge_circuit, t) < 0)
        log_warn("http_client: no circuit_state gauge for %s", name);
    return t;
}

static void breaker_set(struct target *t, int state)
{
    if (t->state != state)
        log_warn("http_client: circuit to %s is now %s", t->name,
                 state == CIRCUIT_OPEN     ? "open"
                 : state == CIRCUIT_CLOSED ? "closed"
                                           : "half-open");
    t->state = state;
    t->gauge = state;
}

/* Gives back the half-open probe slot k holds, if any. */
static void breaker_release(struct call *k)
{
    if (k->probe) {
        k->t->probing = 0;
        k->probe = 0;
    }
}

static void breaker_result(struct http_client *c, struct call *k, int failed)
{
    struct target *t = k->t;

    breaker_release(k);
    if (!failed) {
        t->failures = 0;
        breaker_set(t, CIRCUIT_CLOSED);
        return;
    }
    t->failures++;
    if (t->state == CIRCUIT_HALF_OPEN || t->failures >= c->cfg.breaker_failures) {
        t->open_until = uv_now(c->loop) + c->cfg.breaker_cooldown_ms;
        breaker_set(t, CIRCUIT_OPEN);
    }
}

/* 1 when the breaker lets a request through now (and takes the probe slot
 * when half-open). */
static int breaker_admits(struct http_client *c, struct call *k)
{
    struct target *t = k->t;

    if (t->state == CIRCUIT_OPEN && uv_now(c->loop) >= t->open_until)
        breaker_set(t, CIRCUIT_HALF_OPEN);
    if (t->state == CIRCUIT_CLOSED)
        return 1;
    if (t->state == CIRCUIT_HALF_OPEN && !t->probing) {
        t->probing = 1;
        k->probe = 1;
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * The cache
 * ------------------------------------------------------------------------- */

static size_t url_hash(const char *s)
{
    size_t h = 5381;

    while (*s)
        h = h * 33 + (unsigned char)*s++;
    return h % CACHE_BUCKETS;
}

static struct cache_entry *cache_find(struct http_client *c, const char *url)
{
    for (struct cache_entry *e = c->cache[url_hash(url)]; e != NULL; e = e->next) {
        if (strcmp(e->url, url) == 0)
            return e;
    }
    return NULL;
}

static void cache_unlink(struct http_client *c, struct cache_entry *e)
{
    struct cache_entry **p = &c->cache[url_hash(e->url)];

    while (*p != e)
        p = &(*p)->next;
    *p = e->next;
    if (e->older)
        e->older->newer = e->newer;
    else
        c->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        c->newest = e->older;
    c->ncache--;
    free(e->url);
    free(e->body);
    free(e);
}

static void cache_store(struct http_client *c, const struct call *k, int status, unsigned ttl)
{
    struct cache_entry *e = cache_find(c, k->url);
    size_t h = url_hash(k->url);

    if (e != NULL)
        cache_unlink(c, e);
    if (c->ncache >= c->cfg.max_cache_entries && c->oldest != NULL)
        cache_unlink(c, c->oldest);
    e = calloc(1, sizeof(*e));
    if (e == NULL)
        return;
    e->url = strdup(k->url);
    e->body = malloc(k->resp_len + 1);
    if (e->url == NULL || e->body == NULL) {
        free(e->url);
        free(e->body);
        free(e);
        return;
    }
    memcpy(e->body, k->resp ? k->resp : "", k->resp_len);
    e->body[k->resp_len] = '\0';
    e->len = k->resp_len;
    e->status = status;
    e->stored_at = uv_now(c->loop);
    e->expires_at = e->stored_at + ttl;
    e->next = c->cache[h];
    c->cache[h] = e;
    e->older = c->newest;
    if (c->newest)
        c->newest->newer = e;
    else
        c->oldest = e;
    c->newest = e;
    c->ncache++;
}

/* A fresh entry, or (stale_ok) a 2xx entry younger than cache_stale_ms. */
static const struct cache_entry *cache_lookup(struct http_client *c, const struct call *k,
                                              int stale_ok)
{
    const struct cache_entry *e;
    uint64_t now = uv_now(c->loop);

    if (strcmp(k->method, "GET") != 0 || (k->cache_ttl_ms == 0 && k->cache_negative_ttl_ms == 0))
        return NULL;
    e = cache_find(c, k->url);
    if (e == NULL)
        return NULL;
    if (now < e->expires_at)
        return e;
    if (stale_ok && e->status < 300 && now - e->stored_at < k->cache_stale_ms)
        return e;
    return NULL;
}

/* ---------------------------------------------------------------------------
 * Finishing a call
 * ------------------------------------------------------------------------- */

static void on_call_closed(uv_handle_t *h)
{
    struct call *k = h->data;
    struct http_client *c = k->c;

    curl_slist_free_all(k->headers);
    free(k->method);
    free(k->url);
    free(k->body);
    free(k->resp);
    free(k);
    c->handles--;
    maybe_freed(c);
}

static void call_release(struct call *k)
{
    struct http_client *c = k->c;

    if (k->easy != NULL) {
        curl_multi_remove_handle(c->multi, k->easy);
        curl_easy_cleanup(k->easy);
        k->easy = NULL;
    }
    uv_close((uv_handle_t *)&k->timer, on_call_closed);
}

/* Fires the user callback with k->res, once, then releases k. k leaves the
 * list of calls in flight first, so a callback that closes the client
 * cannot finish it twice. */
static void call_finish(struct call *k, const char *result)
{
    struct http_client *c = k->c;

    k->done = 1;
    if (k->prev)
        k->prev->next = k->next;
    else
        c->calls = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->prev = k->next = NULL;
    k->res.attempts = k->attempts;
    if (k->res.error_msg == NULL)
        k->res.error_msg = "";
    if (k->res.body == NULL) {
        k->res.body = k->resp ? k->resp : "";
        k->res.body_len = k->resp ? k->resp_len : 0;
    }
    count(k->c, k->t, result);
    k->cb(&k->res, k->data);
    call_release(k);
}

static void answer_from_cache(struct call *k, const struct cache_entry *e, int stale)
{
    memset(&k->res, 0, sizeof(k->res));
    k->res.status = e->status;
    k->res.body = e->body;
    k->res.body_len = e->len;
    k->res.from_cache = stale ? 2 : 1;
    call_finish(k, stale ? "stale" : "cache_hit");
}

static int now_is_stale(const struct call *k, const struct cache_entry *e)
{
    return uv_now(k->c->loop) >= e->expires_at;
}

/* Fails k with error, unless a stale cached answer can stand in. */
static void fail(struct call *k, int error, const char *msg, const char *result)
{
    const struct cache_entry *e = cache_lookup(k->c, k, 1);

    if (e != NULL) {
        answer_from_cache(k, e, now_is_stale(k, e));
        return;
    }
    memset(&k->res, 0, sizeof(k->res));
    k->res.error = error;
    k->res.error_msg = msg;
    call_finish(k, result);
}

/* ---------------------------------------------------------------------------
 * Attempts
 * ------------------------------------------------------------------------- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct call *k = userdata;
    size_t n = size * nmemb;

    if (n > k->c->cfg.max_response_bytes - k->resp_len) {
        k->too_large = 1;
        return 0; /* curl fails the transfer with CURLE_WRITE_ERROR */
    }
    if (k->resp_len + n + 1 > k->resp_cap) {
        size_t cap = k->resp_cap ? k->resp_cap * 2 : 1024;
        char *p;

        while (cap < k->resp_len + n + 1)
            cap *= 2;
        p = realloc(k->resp, cap);
        if (p == NULL)
            return 0;
        k->resp = p;
        k->resp_cap = cap;
    }
    memcpy(k->resp + k->resp_len, ptr, n);
    k->resp_len += n;
    k->resp[k->resp_len] = '\0';
    return n;
}

static int setup_easy(struct call *k, unsigned timeout_ms)
{
    CURL *e = curl_easy_init();

    if (e == NULL)
        return -ENOMEM;
    curl_easy_setopt(e, CURLOPT_URL, k->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, k);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, k);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, k->headers);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (!k->idempotent) {
        /* curl re-sends a request on its own when a reused connection turns
         * out dead; only a fresh connection keeps a POST from arriving twice */
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
    }
    if (strcmp(k->method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (strcmp(k->method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, k->method);
        if (k->body != NULL) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, k->body);
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)k->body_len);
        }
    }
    k->easy = e;
    return 0;
}

static void on_call_timer(uv_timer_t *t)
{
    struct call *k = t->data;

    if (k->c->cfg.log_scope != NULL)
        log_scope(k->c->cfg.log_scope);
    const struct cache_entry *e = k->attempts == 0 ? cache_lookup(k->c, k, 0) : NULL;

    if (e != NULL) {
        answer_from_cache(k, e, 0);
        return;
    }
    start_attempt(k);
}

static void start_attempt(struct call *k)
{
    struct http_client *c = k->c;
    uint64_t now = uv_now(c->loop);
    unsigned timeout = c->cfg.timeout_ms;

    if (c->closing) {
        fail(k, -ECANCELED, "client closing", "canceled");
        return;
    }
    if (now >= k->deadline) {
        fail(k, -ETIMEDOUT, "deadline passed", "timeout");
        return;
    }
    if (!breaker_admits(c, k)) {
        fail(k, -EAGAIN, "circuit open", "circuit_open");
        return;
    }
    if (k->deadline - now < timeout)
        timeout = (unsigned)(k->deadline - now);
    k->resp_len = 0;
    k->too_large = 0;
    k->attempts++;
    if (setup_easy(k, timeout) < 0 || curl_multi_add_handle(c->multi, k->easy) != CURLM_OK) {
        breaker_release(k); /* the target was not asked: no verdict on it */
        fail(k, -ENOMEM, "cannot start a transfer", "error");
    }
}

/* How an attempt went: error 0 with a status, or a negative errno. */
static int classify(struct call *k, CURLcode rc, long status, const char **msg)
{
    switch (rc) {
    case CURLE_OK:
        *msg = "";
        return 0;
    case CURLE_OPERATION_TIMEDOUT:
        *msg = "timed out";
        return -ETIMEDOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
        *msg = curl_easy_strerror(rc);
        return -ECONNREFUSED;
    case CURLE_WRITE_ERROR:
        if (k->too_large) {
            *msg = "response too large";
            return -EMSGSIZE;
        }
        /* fall through */
    default:
        (void)status;
        *msg = curl_easy_strerror(rc);
        return -EIO;
    }
}

static unsigned backoff_for(const struct call *k)
{
    unsigned base = k->c->cfg.backoff_ms << (k->attempts - 1 < 8 ? k->attempts - 1 : 8);

    return base / 2 + (unsigned)(random() % (base / 2 + 1));
}

static const char *result_label(int error, long status)
{
    if (error == -ETIMEDOUT)
        return "timeout";
    if (error == -ECONNREFUSED)
        return "connect_error";
    if (error == -EMSGSIZE)
        return "too_large";
    if (error < 0)
        return "error";
    return status >= 500 ? "5xx" : status >= 400 ? "4xx" : "2xx";
}

/* An attempt ended: retry, or answer. */
static void attempt_done(struct call *k, CURLcode rc)
{
    struct http_client *c = k->c;
    long status = 0;
    const char *msg;
    int error, retryable, failed;
    unsigned wait;

    curl_easy_getinfo(k->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(c->multi, k->easy);
    curl_easy_cleanup(k->easy);
    k->easy = NULL;
    error = classify(k, rc, status, &msg);
    retryable = error == -ETIMEDOUT || error == -ECONNREFUSED ||
                (error == 0 && (status == 502 || status == 503 || status == 504));
    /* The breaker counts what the target did wrong: no answer, or a 5xx;
     * not our own mistakes (-EIO: a bad URL, an unsupported scheme). */
    failed = retryable || (error == 0 && status >= 500);
    breaker_result(c, k, failed);
    if (retryable && k->idempotent && k->attempts < c->cfg.attempts && !c->closing) {
        wait = backoff_for(k);
        if (uv_now(c->loop) + wait < k->deadline && k->t->state != CIRCUIT_OPEN) {
            count(c, k->t, result_label(error, status));
            uv_timer_start(&k->timer, on_call_timer, wait, 0);
            return;
        }
    }
    if (error < 0 || (failed && status >= 500)) {
        if (error == 0) {
            const struct cache_entry *e = cache_lookup(c, k, 1);

            if (e != NULL) {
                answer_from_cache(k, e, now_is_stale(k, e));
                return;
            }
            memset(&k->res, 0, sizeof(k->res));
            k->res.status = (int)status;
            call_finish(k, result_label(0, status));
            return;
        }
        fail(k, error, msg, result_label(error, status));
        return;
    }
    if (k->cache_ttl_ms > 0 && status >= 200 && status < 300 && strcmp(k->method, "GET") == 0)
        cache_store(c, k, (int)status, k->cache_ttl_ms);
    else if (k->cache_negative_ttl_ms > 0 && status == 404 && strcmp(k->method, "GET") == 0)
        cache_store(c, k, (int)status, k->cache_negative_ttl_ms);
    memset(&k->res, 0, sizeof(k->res));
    k->res.status = (int)status;
    call_finish(k, result_label(0, status));
}

/* ---------------------------------------------------------------------------
 * libcurl's multi-socket callbacks
 * ------------------------------------------------------------------------- */

static void check_done(struct http_client *c)
{
    CURLMsg *m;
    int left;

    while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
        struct call *k = NULL;

        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&k);
        if (k != NULL)
            attempt_done(k, m->data.result);
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct sock *s = h->data;
    int flags = 0, running;

    if (s->c->cfg.log_scope != NULL)
        log_scope(s->c->cfg.log_scope);
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(s->c->multi, s->fd, flags, &running);
    check_done(s->c);
}

static void on_sock_closed(uv_handle_t *h)
{
    struct sock *s = h->data;
    struct http_client *c = s->c;

    free(s);
    c->handles--;
    maybe_freed(c);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp)
{
    struct http_client *c = userp;
    struct sock *s = socketp;
    int events = 0;

    (void)easy;
    if (action == CURL_POLL_REMOVE) {
        if (s != NULL) {
            curl_multi_assign(c->multi, fd, NULL);
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, on_sock_closed);
        }
        return 0;
    }
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL || uv_poll_init_socket(c->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->c = c;
        s->fd = fd;
        s->poll.data = s;
        c->handles++;
        curl_multi_assign(c->multi, fd, s);
    }
    if (action & CURL_POLL_IN)
        events |= UV_READABLE;
    if (action & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, on_poll);
    return 0;
}

static void on_timeout(uv_timer_t *t)
{
    struct http_client *c = t->data;
    int running;

    if (c->cfg.log_scope != NULL)
        log_scope(c->cfg.log_scope);
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(c);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct http_client *c = userp;

    (void)multi;
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---------------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------------- */

int http_client_new(uv_loop_t *loop, const struct http_client_config *cfg, struct metrics *metrics,
                    struct http_client **out)
{
    struct http_client *c;

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -EIO;
    if (!(curl_version_info(CURLVERSION_NOW)->features & CURL_VERSION_ASYNCHDNS))
        log_warn("http_client: this libcurl resolves host names synchronously: a slow DNS "
                 "stalls the loop (use IP addresses in *_URL settings)");
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->multi = curl_multi_init();
    if (c->multi == NULL) {
        free(c);
        return -ENOMEM;
    }
    c->loop = loop;
    c->cfg = *cfg;
    if (c->cfg.attempts == 0)
        c->cfg.attempts = 1;
    if (c->cfg.backoff_ms < 2)
        c->cfg.backoff_ms = 2;
    if (c->cfg.breaker_failures == 0)
        c->cfg.breaker_failures = 5;
    if (c->cfg.max_cache_entries == 0)
        c->cfg.max_cache_entries = 10000;
    c->metrics = metrics;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->handles = 1;
    *out = c;
    return 0;
}

static struct call *call_new(struct http_client *c, const struct http_client_request *req)
{
    struct call *k = calloc(1, sizeof(*k));

    if (k == NULL)
        return NULL;
    k->c = c;
    k->method = strdup(req->method);
    k->url = strdup(req->url);
    if (req->body != NULL) {
        k->body = malloc(req->body_len + 1);
        if (k->body != NULL) {
            memcpy(k->body, req->body, req->body_len);
            k->body[req->body_len] = '\0';
        }
        k->body_len = req->body_len;
    }
    for (size_t i = 0; i < HTTP_CLIENT_MAX_HEADERS && req->headers[i] != NULL; i++) {
        struct curl_slist *l = curl_slist_append(k->headers, req->headers[i]);

        if (l == NULL)
            break;
        k->headers = l;
    }
    k->headers = curl_slist_append(k->headers, "Expect:"); /* no 100-continue round trip */
    if (k->method == NULL || k->url == NULL || (req->body != NULL && k->body == NULL) ||
        k->headers == NULL) {
        curl_slist_free_all(k->headers);
        free(k->method);
        free(k->url);
        free(k->body);
        free(k);
        return NULL;
    }
    return k;
}

int http_client_send(struct http_client *c, const struct http_client_request *req,
                     http_client_cb cb, void *data)
{
    struct target *t;
    struct call *k;

    if (c->closing)
        return -ECANCELED;
    t = target_get(c, req->target);
    if (t == NULL)
        return -ENOSPC;
    k = call_new(c, req);
    if (k == NULL)
        return -ENOMEM;
    k->t = t;
    k->idempotent = req->idempotent;
    k->cache_ttl_ms = req->cache_ttl_ms;
    k->cache_negative_ttl_ms = req->cache_negative_ttl_ms;
    k->cache_stale_ms = req->cache_stale_ms;
    k->deadline = uv_now(c->loop) + c->cfg.deadline_ms;
    k->cb = cb;
    k->data = data;
    uv_timer_init(c->loop, &k->timer);
    k->timer.data = k;
    c->handles++;
    k->next = c->calls;
    if (c->calls)
        c->calls->prev = k;
    c->calls = k;
    /* Fresh cached answers, like everything else, arrive on a later turn. */
    uv_timer_start(&k->timer, on_call_timer, 0, 0);
    return 0;
}

int http_client_circuit(const struct http_client *c, const char *target)
{
    for (size_t i = 0; i < c->ntargets; i++) {
        if (strcmp(c->targets[i].name, target) == 0)
            return c->targets[i].state;
    }
    return -1;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct http_client *c = h->data;

    c->handles--;
    maybe_freed(c);
}

static void maybe_freed(struct http_client *c)
{
    http_client_closed_cb cb;
    void *data;

    if (!c->closing || c->handles > 0)
        return;
    for (size_t i = 0; i < CACHE_BUCKETS; i++) {
        struct cache_entry *e = c->cache[i], *next;

        for (; e != NULL; e = next) {
            next = e->next;
            free(e->url);
            free(e->body);
            free(e);
        }
    }
    for (size_t i = 0; i < c->ntargets && c->metrics != NULL; i++)
        metrics_gauge_detach(c->metrics, &c->targets[i]);
    cb = c->closed_cb;
    data = c->closed_data;
    free(c);
    if (cb)
        cb(data);
}

void http_client_close(struct http_client *c, http_client_closed_cb done, void *data)
{
    c->closing = 1;
    c->closed_cb = done;
    c->closed_data = data;
    while (c->calls != NULL) {
        struct call *k = c->calls;

        memset(&k->res, 0, sizeof(k->res));
        k->res.error = -ECANCELED;
        k->res.error_msg = "client closing";
        call_finish(k, "canceled");
    }
    /* Closes curl's pooled connections: their sockets come back through
     * on_curl_socket as CURL_POLL_REMOVE and are closed there. */
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}
