/* http_server.c -- HTTP/1.1 on the service loop. See http_server.h.
 *
 * A connection owns two handles (the TCP stream and one timer) and at most
 * one request at a time: llhttp pauses at the end of every message, the
 * request goes to the handler, and parsing resumes only once its response is
 * queued. Bytes that arrived behind a paused message (pipelining) are kept in
 * conn->pending and reads stop until they are consumed, so memory per
 * connection is bounded by the head buffer, the body limit and one read.
 *
 * Reads land in one buffer shared by the server (the loop hands a read to
 * exactly one callback, which consumes or copies it before returning).
 * Writes try uv_try_write first and queue only what the kernel did not take.
 *
 * Lifetime: a connection is freed when both of its handles have closed and
 * no handler holds its request. A handler that answers after the client left
 * (a deferred response) therefore never touches freed memory; its
 * http_respond frees the connection instead of writing.
 *
 * Closing after an error answer is a lingering close: the write side is
 * shut down after the answer, and input is read and dropped for a short
 * while, so the client reads the answer instead of a reset. */
#include <ripple/http_server.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include <ripple/log.h>

#define LINGER_MS 2000             /* reading and dropping input after a final answer */
#define LINGER_MAX_BYTES (1 << 20) /* ... at most this much of it */
#define RESPONSE_HEAD_BYTES 512    /* status line + our headers, without extras */
#define LISTEN_BACKLOG 1024
#define BODY_KEEP_BYTES ((size_t)64 * 1024) /* a larger body buffer is freed after its answer */

enum conn_state {
    CONN_IDLE,    /* between requests: idle timeout */
    CONN_HEAD,    /* reading request line + headers: header timeout, in all */
    CONN_BODY,    /* reading the body: body timeout in all, header timeout per read */
    CONN_HANDLER, /* the request is with its handler */
    CONN_LINGER,  /* final answer sent; dropping input until EOF or timeout */
};

struct http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    struct http_server_config cfg;
    char host[64];
    http_request_cb on_request;
    http_response_cb on_response;
    void *data;
    http_hold_cb hold; /* http_server_hold_answers */
    void *hold_data;
    struct http_conn *conns; /* every allocated connection, open or detached */
    size_t nconns;           /* allocated */
    size_t nopen;            /* handles not yet closed */
    int listening, closing, listener_closed;
    http_server_closed_cb closed_cb;
    void *closed_data;
    char read_buf[HTTP_SERVER_READ_BYTES];
};

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    struct http_server *srv;
    struct http_conn *prev, *next;
    llhttp_t parser;
    struct http_request req;
    enum conn_state state;
    unsigned pending_closes; /* of tcp and timer */
    unsigned closing : 1;    /* uv_close called */
    unsigned in_handler : 1; /* req is with a handler */
    unsigned in_parse : 1;   /* conn_feed is on the stack */
    unsigned reading : 1;
    unsigned keep_alive : 1; /* of the request in hand */
    unsigned final : 1;      /* the answer in hand is the last on this connection */
    unsigned blocked : 1;    /* reads stopped for back-pressure */
    unsigned reject : 1;     /* over max_connections: answer 503 and close */
    unsigned begun : 1;      /* a request has begun on this connection */
    int error_status;        /* set by a parser callback that failed */
    uint64_t body_deadline;  /* uv_now() ms by which the body must be in */

    /* head: request target, then per header a lower-cased name and a value,
     * each NUL-terminated. Fixed capacity, allocated on first use. */
    char *head;
    size_t head_len, head_cap;
    size_t head_bytes; /* raw bytes of request line + headers, for the limit */
    struct http_header *hdrs;
    size_t nhdrs;
    size_t url_len;
    int in_value; /* the last header callback was for a value */

    char *body;
    size_t body_len, body_cap;

    /* An answer held until its writes are durable: status, content type
     * (NUL-terminated, or none) and body, in one allocation. */
    char *held;
    int held_status;
    size_t held_ctype_len; /* 0: no content type */
    size_t held_len;

    char *pending; /* unparsed input behind a paused message */
    size_t pending_len, pending_off;
    size_t linger_bytes;
};

struct write_req {
    uv_write_t req;
    struct http_conn *conn;
    size_t len;
    char data[];
};

static const llhttp_settings_t parser_settings;

static void conn_close(struct http_conn *c);
static void conn_resume(struct http_conn *c);
static void conn_after_answer(struct http_conn *c);
static void conn_start_reading(struct http_conn *c);
static void server_maybe_done(struct http_server *srv);

/* ---------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------- */

const char *http_status_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

static void on_timer(uv_timer_t *t);

/* The module this server's lines (and its handlers' lines) belong to. */
static void scope(const struct http_server *srv)
{
    if (srv->cfg.log_scope != NULL)
        log_scope(srv->cfg.log_scope);
}

static void conn_timer(struct http_conn *c, unsigned ms)
{
    if (ms == 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* While a body arrives: the next read must come within header_timeout_ms,
 * and the whole body by body_deadline, whichever is sooner. Re-arming per
 * read alone would let a client trickle a byte at a time for ever. */
static void conn_body_timer(struct http_conn *c)
{
    uint64_t now = uv_now(c->srv->loop);
    uint64_t left = c->body_deadline > now ? c->body_deadline - now : 0;
    unsigned gap = c->srv->cfg.header_timeout_ms;

    /* past the deadline: fire on the next iteration (0 would stop it) */
    conn_timer(c, left >= gap ? gap : left > 0 ? (unsigned)left : 1);
}

/* ---------------------------------------------------------------------------
 * Writing
 * ------------------------------------------------------------------------- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status; /* the connection closes on EOF, error or the linger timer */
}

static void conn_linger(struct http_conn *c)
{
    c->state = CONN_LINGER;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_off = 0;
    c->blocked = 0;
    /* while the server stops, a short linger: the answer is out */
    conn_timer(c, c->srv->closing ? LINGER_MS / 10 : LINGER_MS);
    conn_start_reading(c);
}

static void on_write(uv_write_t *req, int status)
{
    struct write_req *w = container_of(req, struct write_req, req);
    struct http_conn *c = w->conn;

    free(w);
    if (c->closing)
        return;
    scope(c->srv);
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->blocked && c->tcp.write_queue_size < HTTP_SERVER_WRITE_HIGH_WATER / 2) {
        c->blocked = 0;
        conn_resume(c);
    }
}

/* Sends bufs in order: what the kernel takes now, the rest queued in one
 * write request. Returns 0 or a libuv error (the connection is then closed). */
static int conn_write(struct http_conn *c, uv_buf_t *bufs, unsigned nbufs)
{
    size_t total = 0, skip;
    struct write_req *w;
    uv_buf_t buf;
    int r;

    for (unsigned i = 0; i < nbufs; i++)
        total += bufs[i].len;
    r = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    if (r < 0 && r != UV_EAGAIN && r != UV_ENOSYS)
        goto out_close;
    skip = r > 0 ? (size_t)r : 0;
    if (skip == total)
        return 0;
    w = malloc(sizeof(*w) + total - skip);
    if (w == NULL) {
        r = UV_ENOMEM;
        goto out_close;
    }
    w->conn = c;
    w->len = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        size_t n = bufs[i].len;

        if (skip >= n) {
            skip -= n;
            continue;
        }
        memcpy(w->data + w->len, bufs[i].base + skip, n - skip);
        w->len += n - skip;
        skip = 0;
    }
    buf = uv_buf_init(w->data, (unsigned)w->len);
    r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (r < 0) {
        free(w);
        goto out_close;
    }
    if (c->tcp.write_queue_size > HTTP_SERVER_WRITE_HIGH_WATER)
        c->blocked = 1;
    return 0;

out_close:
    conn_close(c);
    return r;
}

/* Writes one complete response. */
/* Writes one complete response. A 1xx, 204 or 304 has neither a body nor
 * Content-Length (RFC 9110 §8.6); an answer to HEAD has the length of the
 * body it would have had, and no body. */
static int conn_send(struct http_conn *c, int status, const char *ctype, const char *extra,
                     size_t extra_len, const char *body, size_t len)
{
    char head[RESPONSE_HEAD_BYTES + HTTP_SERVER_EXTRA_HEADER_BYTES], clen[48] = "";
    int no_body = status < 200 || status == 204 || status == 304;
    uv_buf_t bufs[2];
    int n;

    if (!no_body)
        snprintf(clen, sizeof(clen), "Content-Length: %zu\r\n", len);
    if (no_body || c->parser.method == HTTP_HEAD)
        len = 0;
    n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\n%s%s%s%s%s%.*s\r\n", status,
                 http_status_reason(status), ctype ? "Content-Type: " : "", ctype ? ctype : "",
                 ctype ? "\r\n" : "", clen, c->final ? "Connection: close\r\n" : "", (int)extra_len,
                 extra);
    if (n < 0 || (size_t)n >= sizeof(head))
        return -ENOSPC;
    bufs[0] = uv_buf_init(head, (unsigned)n);
    bufs[1] = uv_buf_init((char *)body, (unsigned)len);
    return conn_write(c, bufs, len > 0 ? 2 : 1);
}

/* Answers a protocol error (limits, malformed input, timeouts) and closes. */
static void conn_fail(struct http_conn *c, int status)
{
    const char *code, *msg;
    char body[256];
    int n;

    switch (status) {
    case 408:
        code = "request_timeout";
        msg = c->state == CONN_BODY ? "request body not received in time"
                                    : "request headers not received in time";
        break;
    case 413:
        code = "payload_too_large", msg = "request body too large";
        break;
    case 431:
        code = "headers_too_large", msg = "request headers too large";
        break;
    case 500: /* the handler's own answer did not fit its head */
        code = "internal", msg = "internal error";
        break;
    case 503:
        code = "unavailable", msg = "too many connections";
        break;
    default:
        code = "bad_request", msg = "malformed HTTP request";
        status = 400;
        break;
    }
    n = snprintf(body, sizeof(body), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, msg);
    c->final = 1;
    if (conn_send(c, status, "application/json", "", 0, body, (size_t)n) == 0 && !c->closing)
        conn_linger(c);
}

/* ---------------------------------------------------------------------------
 * Parsing: llhttp callbacks fill the request in conn->head and conn->body
 * ------------------------------------------------------------------------- */

static int head_append(struct http_conn *c, const char *at, size_t len, int lower)
{
    if (c->head_len + len + 1 > c->head_cap) {
        c->error_status = 431;
        return -1;
    }
    if (lower) {
        for (size_t i = 0; i < len; i++) {
            unsigned char ch = (unsigned char)at[i];

            c->head[c->head_len + i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        }
    } else {
        memcpy(c->head + c->head_len, at, len);
    }
    c->head_len += len;
    return 0;
}

static int head_terminate(struct http_conn *c)
{
    c->head[c->head_len++] = '\0'; /* head_append kept room for it */
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct http_conn *c = p->data;
    struct http_server *srv = c->srv;

    if (c->head == NULL) {
        c->head_cap = srv->cfg.max_header_bytes + 1;
        c->head = malloc(c->head_cap);
        c->hdrs = malloc(sizeof(*c->hdrs) * srv->cfg.max_headers);
        if (c->head == NULL || c->hdrs == NULL) {
            c->error_status = 503;
            return -1;
        }
    }
    c->head_len = c->head_bytes = c->url_len = c->nhdrs = c->body_len = 0;
    c->in_value = 0;
    c->state = CONN_HEAD;
    /* The header deadline counts from the request's first byte; for a
     * connection's first request, from the accept (its timer runs since):
     * waiting before the first byte must not buy a second header timeout. */
    if (c->begun)
        conn_timer(c, srv->cfg.header_timeout_ms);
    c->begun = 1;
    return 0;
}

/* Counts raw header bytes (with the separators llhttp does not hand us). */
static int count_head(struct http_conn *c, size_t len)
{
    c->head_bytes += len;
    if (c->head_bytes > c->srv->cfg.max_header_bytes) {
        c->error_status = 431;
        return -1;
    }
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;

    if (count_head(c, len) < 0)
        return -1;
    c->url_len += len;
    return head_append(c, at, len, 0);
}

static int on_url_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;

    return count_head(c, 16) < 0 ? -1 : head_terminate(c); /* method, version, CRLF */
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;

    if (count_head(c, len) < 0)
        return -1;
    if (!c->in_value && c->nhdrs > 0 && c->hdrs[c->nhdrs - 1].value == NULL) {
        /* a later piece of the same name */
    } else {
        if (c->nhdrs == c->srv->cfg.max_headers) {
            c->error_status = 431;
            return -1;
        }
        c->hdrs[c->nhdrs].name = (const char *)(uintptr_t)c->head_len; /* offset for now */
        c->hdrs[c->nhdrs].name_len = 0;
        c->hdrs[c->nhdrs].value = NULL;
        c->hdrs[c->nhdrs].value_len = 0;
        c->nhdrs++;
        c->in_value = 0;
    }
    c->hdrs[c->nhdrs - 1].name_len += len;
    return head_append(c, at, len, 1);
}

static int on_header_field_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;

    if (count_head(c, 4) < 0) /* ": " and CRLF */
        return -1;
    head_terminate(c);
    c->hdrs[c->nhdrs - 1].value = (const char *)(uintptr_t)c->head_len;
    c->in_value = 1;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;

    if (count_head(c, len) < 0)
        return -1;
    c->hdrs[c->nhdrs - 1].value_len += len;
    return head_append(c, at, len, 0);
}

static int on_header_value_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;

    if (c->head_len + 1 > c->head_cap) {
        c->error_status = 431;
        return -1;
    }
    head_terminate(c);
    c->in_value = 0;
    return 0;
}

/* Turns the offsets kept while parsing into the request's pointers. */
static void request_fill(struct http_conn *c)
{
    struct http_request *r = &c->req;
    char *q;

    for (size_t i = 0; i < c->nhdrs; i++) {
        struct http_header *h = &c->hdrs[i];

        h->name = c->head + (uintptr_t)h->name;
        h->value = h->value ? c->head + (uintptr_t)h->value : "";
    }
    r->method = llhttp_method_name((llhttp_method_t)c->parser.method);
    r->path = c->head;
    q = memchr(c->head, '?', c->url_len);
    if (q != NULL) {
        *q = '\0';
        r->query = q + 1;
        r->path_len = (size_t)(q - c->head);
    } else {
        r->query = "";
        r->path_len = c->url_len;
    }
    r->headers = c->hdrs;
    r->nheaders = c->nhdrs;
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    size_t len;
    const char *expect;

    if (c->url_len == 0 || c->head_len == 0) {
        c->error_status = 400;
        return -1;
    }
    request_fill(c);
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->srv->cfg.max_body_bytes) {
        c->error_status = 413;
        return -1;
    }
    c->state = CONN_BODY;
    c->body_deadline = uv_now(c->srv->loop) + c->srv->cfg.body_timeout_ms;
    conn_body_timer(c);
    expect = http_request_header(&c->req, "expect", &len);
    if (expect != NULL && len == 12 && strncasecmp(expect, "100-continue", 12) == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);

        if (conn_write(c, &b, 1) < 0)
            return -1;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    size_t max = c->srv->cfg.max_body_bytes;

    if (len > max - c->body_len) {
        c->error_status = 413;
        return -1;
    }
    if (c->body_len + len + 1 > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 1024;
        char *b;

        while (cap < c->body_len + len + 1)
            cap *= 2;
        if (cap > max + 1)
            cap = max + 1;
        b = realloc(c->body, cap);
        if (b == NULL) {
            c->error_status = 503;
            return -1;
        }
        c->body = b;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    struct http_request *r = &c->req;

    r->body = c->body ? c->body : "";
    if (c->body)
        c->body[c->body_len] = '\0';
    r->body_len = c->body_len;
    c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---------------------------------------------------------------------------
 * Dispatch and the parse loop
 * ------------------------------------------------------------------------- */

static void conn_dispatch(struct http_conn *c)
{
    struct http_request *r = &c->req;
    struct http_server *srv = c->srv;

    r->start_ns = uv_hrtime();
    r->route = "unmatched";
    r->nparams = 0;
    r->data = NULL;
    r->extra_len_ = 0;
    r->param_used_ = 0;
    c->final = !c->keep_alive || srv->closing;
    c->state = CONN_HANDLER;
    c->in_handler = 1;
    conn_timer(c, 0);
    srv->on_request(r, srv->data);
}

/* Feeds data to the parser, dispatching each complete request. Stops at a
 * request that is not answered yet, at back-pressure, or when the connection
 * is done. Returns the number of bytes consumed. */
static size_t conn_feed(struct http_conn *c, const char *data, size_t len)
{
    size_t used = 0;

    c->in_parse = 1;
    while (used < len && !c->closing && c->state != CONN_LINGER) {
        llhttp_errno_t err = llhttp_execute(&c->parser, data + used, len - used);

        if (err == HPE_OK) {
            used = len;
            break;
        }
        if (err != HPE_PAUSED) {
            conn_fail(c, c->error_status ? c->error_status : 400);
            used = len;
            break;
        }
        used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
        llhttp_resume(&c->parser);
        conn_dispatch(c);
        if (c->in_handler || c->blocked || c->final)
            break;
    }
    c->in_parse = 0;
    return used;
}

/* Continues after an answer: the bytes behind it first, then the socket. */
static void conn_resume(struct http_conn *c)
{
    size_t used;

    if (c->closing || c->in_handler || c->blocked || c->state == CONN_LINGER)
        return;
    if (c->pending != NULL) {
        used = conn_feed(c, c->pending + c->pending_off, c->pending_len - c->pending_off);
        c->pending_off += used;
        if (c->pending_off < c->pending_len)
            return;
        free(c->pending);
        c->pending = NULL;
        c->pending_len = c->pending_off = 0;
        if (c->closing || c->in_handler || c->blocked || c->state == CONN_LINGER)
            return;
    }
    conn_start_reading(c);
}

/* ---------------------------------------------------------------------------
 * Reading
 * ------------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct http_conn *c = h->data;

    (void)suggested;
    *buf = uv_buf_init(c->srv->read_buf, sizeof(c->srv->read_buf));
}

/* Appends input that arrived behind the message in hand to c->pending.
 * Returns 0 or -ENOMEM. */
static int conn_keep_rest(struct http_conn *c, const char *rest, size_t len)
{
    size_t live = c->pending != NULL ? c->pending_len - c->pending_off : 0;
    char *p;

    if (c->pending_off > 0 && live > 0)
        memmove(c->pending, c->pending + c->pending_off, live);
    p = realloc(c->pending, live + len);
    if (p == NULL)
        return -ENOMEM;
    memcpy(p + live, rest, len);
    c->pending = p;
    c->pending_len = live + len;
    c->pending_off = 0;
    return 0;
}

static void conn_stop_reading(struct http_conn *c)
{
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct http_conn *c = s->data;
    size_t used;

    (void)buf; /* the server's shared buffer: nothing to free */
    if (nread == 0 || c->closing)
        return;
    scope(c->srv);
    if (nread < 0) {
        /* EOF or an error; with a request in hand this is how its handler
         * learns the client went away (http_request_aborted) */
        conn_close(c);
        return;
    }
    if (c->state == CONN_LINGER) {
        c->linger_bytes += (size_t)nread;
        if (c->linger_bytes > LINGER_MAX_BYTES)
            conn_close(c);
        return;
    }
    if (c->in_handler || c->blocked || c->pending != NULL) {
        /* Behind a message in hand (or unparsed input): keep reading while
         * a handler works, so a disconnect is noticed, but hold at most
         * about one read's worth, and parse nothing out of order. */
        if (conn_keep_rest(c, buf->base, (size_t)nread) < 0)
            conn_close(c);
        else if (c->blocked || c->pending_len >= HTTP_SERVER_READ_BYTES)
            conn_stop_reading(c);
        if (!c->closing && !c->in_handler && !c->blocked)
            conn_resume(c);
        return;
    }
    if (c->state == CONN_BODY)
        conn_body_timer(c);
    used = conn_feed(c, buf->base, (size_t)nread);
    if (c->closing || c->state == CONN_LINGER || (!c->in_handler && !c->blocked))
        return;
    if (used < (size_t)nread && conn_keep_rest(c, buf->base + used, (size_t)nread - used) < 0) {
        conn_close(c);
        return;
    }
    if (c->blocked || c->pending_len >= HTTP_SERVER_READ_BYTES)
        conn_stop_reading(c);
}

static void conn_start_reading(struct http_conn *c)
{
    if (c->reading || c->closing)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
        conn_close(c);
        return;
    }
    c->reading = 1;
}

/* ---------------------------------------------------------------------------
 * Connection lifetime
 * ------------------------------------------------------------------------- */

static void conn_free(struct http_conn *c)
{
    struct http_server *srv = c->srv;

    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    free(c->head);
    free(c->hdrs);
    free(c->body);
    free(c->pending);
    free(c->held);
    free(c);
    server_maybe_done(srv);
}

static void on_conn_close(uv_handle_t *h)
{
    struct http_conn *c = h->data;

    if (--c->pending_closes > 0)
        return;
    c->srv->nopen--;
    if (!c->in_handler)
        conn_free(c);
}

static void conn_close(struct http_conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->reading = 0;
    uv_close((uv_handle_t *)&c->tcp, on_conn_close);
    uv_close((uv_handle_t *)&c->timer, on_conn_close);
}

static void on_timer(uv_timer_t *t)
{
    struct http_conn *c = t->data;

    if (c->closing)
        return;
    scope(c->srv);
    if (c->state == CONN_HEAD || c->state == CONN_BODY) {
        log_debug("http: closing a connection whose request did not arrive in time");
        conn_fail(c, 408);
        return;
    }
    conn_close(c); /* idle, or the linger is over */
}

/* After a response is queued: the next request, or the end. */
static void conn_after_answer(struct http_conn *c)
{
    if (c->closing)
        return;
    if (c->final) {
        conn_linger(c);
        return;
    }
    if (c->body_cap > BODY_KEEP_BYTES) {
        /* one large upload must not pin its buffer for the connection's
         * life: the request that used it is answered (consumed) */
        free(c->body);
        c->body = NULL;
        c->body_cap = c->body_len = 0;
    }
    c->state = CONN_IDLE;
    conn_timer(c, c->srv->cfg.idle_timeout_ms);
    if (!c->in_parse)
        conn_resume(c);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct http_server *srv = listener->data;
    struct http_conn *c;

    scope(srv);
    if (status < 0 || srv->closing) {
        log_warn("http: accept failed: %s", uv_strerror(status));
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->pending_closes = 2;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    srv->nopen++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    c->req.conn_ = c;
    if (srv->nopen > srv->cfg.max_connections) {
        conn_fail(c, 503);
        return;
    }
    c->state = CONN_IDLE;
    conn_timer(c, srv->cfg.header_timeout_ms);
    conn_start_reading(c);
}

/* ---------------------------------------------------------------------------
 * Requests and responses
 * ------------------------------------------------------------------------- */

static const char unsaved_body[] =
    "{\"error\":{\"code\":\"unavailable\",\"message\":\"the database could not commit this "
    "request's writes: nothing was saved; retry\"}}";

static int respond(struct http_request *req, int status, const char *content_type, const char *body,
                   size_t len, int may_hold);

/* Answers 503 in place of an answer whose writes were not saved. */
static int respond_unsaved(struct http_request *req)
{
    req->extra_len_ = 0; /* the headers were for the answer that is not sent */
    if (http_add_header(req, "Retry-After", "1") < 0)
        log_debug("http: Retry-After did not fit");
    return respond(req, 503, "application/json", unsaved_body, sizeof(unsaved_body) - 1, 0);
}

static void on_released(void *arg, int ok)
{
    struct http_conn *c = arg;
    char *held = c->held;

    c->held = NULL;
    if (c->closing) { /* the client left meanwhile: release the request */
        free(held);
        http_respond(&c->req, 500, NULL, "", 0);
        return;
    }
    scope(c->srv);
    if (held == NULL) { /* conn_hold failed */
        respond_unsaved(&c->req);
    } else if (!ok) {
        log_warn("http: %s %s: the commit of its writes failed; answering 503", c->req.method,
                 c->req.path);
        respond_unsaved(&c->req);
    } else {
        respond(&c->req, c->held_status, c->held_ctype_len ? held : NULL,
                held + c->held_ctype_len + 1, c->held_len, 0);
    }
    free(held);
}

/* Keeps the answer until on_released; the request stays with its handler
 * meanwhile (so the connection waits, and outlives a close). */
static int conn_hold(struct http_conn *c, int status, const char *ctype, const char *body,
                     size_t len)
{
    size_t clen = ctype != NULL ? strlen(ctype) : 0;

    c->held = malloc(clen + 1 + len + 1);
    if (c->held == NULL)
        return -ENOMEM;
    if (clen > 0)
        memcpy(c->held, ctype, clen);
    c->held[clen] = '\0';
    if (len > 0)
        memcpy(c->held + clen + 1, body, len);
    c->held[clen + 1 + len] = '\0';
    c->held_status = status;
    c->held_ctype_len = clen;
    c->held_len = len;
    return 0;
}

int http_respond(struct http_request *req, int status, const char *content_type, const char *body,
                 size_t len)
{
    return respond(req, status, content_type, body, len, 1);
}

/* http_respond; may_hold 0 for an answer that was held already (or stands
 * in for one): it goes out now. */
static int respond(struct http_request *req, int status, const char *content_type, const char *body,
                   size_t len, int may_hold)
{
    struct http_conn *c = req->conn_;
    struct http_server *srv = c->srv;
    int rc;

    if (may_hold && srv->hold != NULL && !c->closing) {
        /* Before anything else: the answer may have to wait for a commit. */
        rc = srv->hold(srv->hold_data, on_released, c);
        if (rc == 0) {
            if (conn_hold(c, status, content_type, body, len) < 0)
                log_error("http: out of memory keeping an answer; it will be a 503");
            return 0;
        }
        if (rc < 0) {
            log_error("http: cannot hold an answer until its commit: %s", strerror(-rc));
            respond_unsaved(req);
            return 0;
        }
    }
    c->in_handler = 0;
    if (c->closing) {
        if (c->pending_closes == 0)
            conn_free(c);
        return -ECONNRESET;
    }
    if (srv->on_response)
        srv->on_response(req, status, (double)(uv_hrtime() - req->start_ns) / 1e9, srv->data);
    if (srv->closing)
        c->final = 1;
    rc = conn_send(c, status, content_type, req->extra_headers_, req->extra_len_, body, len);
    if (rc == -ENOSPC) {
        c->final = 1;
        conn_fail(c, 500);
        return 0;
    }
    conn_after_answer(c);
    return 0;
}

void http_server_hold_answers(struct http_server *srv, http_hold_cb hold, void *data)
{
    srv->hold = hold;
    srv->hold_data = data;
}

int http_add_header(struct http_request *req, const char *name, const char *value)
{
    size_t room = sizeof(req->extra_headers_) - req->extra_len_;
    int n;

    if (strpbrk(name, "\r\n:") != NULL || strpbrk(value, "\r\n") != NULL)
        return -EINVAL;
    n = snprintf(req->extra_headers_ + req->extra_len_, room, "%s: %s\r\n", name, value);
    if (n < 0 || (size_t)n >= room) {
        req->extra_headers_[req->extra_len_] = '\0';
        return -ENOSPC;
    }
    req->extra_len_ += (size_t)n;
    return 0;
}

int http_request_aborted(const struct http_request *req)
{
    return req->conn_->closing;
}

const char *http_request_header(const struct http_request *req, const char *lname, size_t *len)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        if (strcmp(req->headers[i].name, lname) == 0) {
            if (len)
                *len = req->headers[i].value_len;
            return req->headers[i].value;
        }
    }
    return NULL;
}

const char *http_request_param(const struct http_request *req, const char *name)
{
    for (size_t i = 0; i < req->nparams; i++) {
        if (strcmp(req->params[i].name, name) == 0)
            return req->params[i].value;
    }
    return NULL;
}

int http_request_add_param(struct http_request *req, const char *name, const char *value,
                           size_t len)
{
    struct http_param *p;

    if (req->nparams == HTTP_SERVER_MAX_PARAMS ||
        len + 1 > sizeof(req->param_buf_) - req->param_used_)
        return -ENOSPC;
    p = &req->params[req->nparams++];
    p->name = name;
    p->value = req->param_buf_ + req->param_used_;
    p->value_len = len;
    memcpy(req->param_buf_ + req->param_used_, value, len);
    req->param_buf_[req->param_used_ + len] = '\0';
    req->param_used_ += len + 1;
    return 0;
}

int http_request_query(const struct http_request *req, const char *name, char *buf, size_t len)
{
    size_t nlen = strlen(name);
    const char *p = req->query;

    while (*p) {
        const char *end = strchr(p, '&');
        size_t seg = end ? (size_t)(end - p) : strlen(p);

        if (seg > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
            size_t vlen = seg - nlen - 1;

            if (vlen + 1 > len)
                return -ENOSPC;
            memcpy(buf, p + nlen + 1, vlen);
            buf[vlen] = '\0';
            return (int)vlen;
        }
        p += seg + (end ? 1 : 0);
    }
    return -ENOENT;
}

/* ---------------------------------------------------------------------------
 * The server
 * ------------------------------------------------------------------------- */

int http_server_new(uv_loop_t *loop, const struct http_server_config *cfg,
                    http_request_cb on_request, http_response_cb on_response, void *data,
                    struct http_server **out)
{
    struct http_server *srv;

    if (cfg->max_header_bytes < 64 || cfg->max_headers == 0 || cfg->max_connections == 0 ||
        cfg->header_timeout_ms == 0 || cfg->body_timeout_ms == 0 || cfg->idle_timeout_ms == 0)
        return -EINVAL;
    srv = calloc(1, sizeof(*srv));
    if (srv == NULL)
        return -ENOMEM;
    if (snprintf(srv->host, sizeof(srv->host), "%s", cfg->host) >= (int)sizeof(srv->host)) {
        free(srv);
        return -EINVAL;
    }
    srv->loop = loop;
    srv->cfg = *cfg;
    srv->cfg.host = srv->host;
    srv->on_request = on_request;
    srv->on_response = on_response;
    srv->data = data;
    *out = srv;
    return 0;
}

int http_server_listen(struct http_server *srv)
{
    struct sockaddr_storage addr;
    int r;

    r = uv_ip4_addr(srv->host, (int)srv->cfg.port, (struct sockaddr_in *)&addr);
    if (r < 0)
        r = uv_ip6_addr(srv->host, (int)srv->cfg.port, (struct sockaddr_in6 *)&addr);
    if (r < 0)
        return r;
    if ((r = uv_tcp_init(srv->loop, &srv->listener)) < 0)
        return r;
    srv->listener.data = srv;
    srv->listening = 1;
    if ((r = uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0)) < 0 ||
        (r = uv_listen((uv_stream_t *)&srv->listener, LISTEN_BACKLOG, on_connection)) < 0)
        return r; /* the listener is closed by http_server_close */
    return 0;
}

unsigned http_server_port(const struct http_server *srv)
{
    struct sockaddr_storage addr;
    int len = sizeof(addr);

    if (!srv->listening || uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&addr, &len) < 0)
        return 0;
    if (addr.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&addr)->sin6_port);
    return ntohs(((struct sockaddr_in *)&addr)->sin_port);
}

size_t http_server_connections(const struct http_server *srv)
{
    return srv->nopen;
}

static void server_maybe_done(struct http_server *srv)
{
    http_server_closed_cb cb;
    void *data;

    if (!srv->closing || !srv->listener_closed || srv->nconns > 0 || srv->closed_cb == NULL)
        return;
    cb = srv->closed_cb;
    data = srv->closed_data;
    srv->closed_cb = NULL;
    free(srv);
    cb(data);
}

static void on_listener_close(uv_handle_t *h)
{
    struct http_server *srv = h->data;

    srv->listener_closed = 1;
    server_maybe_done(srv);
}

void http_server_close(struct http_server *srv, http_server_closed_cb closed_cb, void *data)
{
    struct http_conn *c, *next;

    srv->closing = 1;
    srv->closed_cb = closed_cb;
    srv->closed_data = data;
    if (srv->listening)
        uv_close((uv_handle_t *)&srv->listener, on_listener_close);
    else
        srv->listener_closed = 1;
    for (c = srv->conns; c != NULL; c = next) {
        next = c->next;
        /* A request in hand is finished and answered with Connection: close;
         * an answer still being sent is sent; everything else (idle,
         * half-received) is closed now. */
        if (c->in_handler)
            c->final = 1;
        else if (c->closing || c->state == CONN_LINGER)
            continue;
        else if (c->tcp.write_queue_size > 0)
            conn_linger(c);
        else
            conn_close(c);
    }
    server_maybe_done(srv);
}

void http_server_abort(struct http_server *srv)
{
    for (struct http_conn *c = srv->conns; c != NULL; c = c->next)
        conn_close(c);
}
