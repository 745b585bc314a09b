/* outbox.h -- events written with the state change, published after commit.
 *
 * DESIGN.md §7. outbox_append inserts a row into the service's outbox table
 * inside the caller's open store transaction, so the event exists if and only
 * if the state change committed. After every commit the relay is woken in the
 * same loop iteration (a uv_check handle, not a poll): it reads pending rows
 * in seq order, pipelines XADD ... MAXLEN ~ <maxlen> with the envelope fields
 * of DESIGN.md §5, and once Redis has answered records published exactly
 * the rows it accepted -- by a watermark, one outbox_passes row per pass
 * (outbox.c), not a write per row. A row Redis refuses for a reason no
 * retry fixes (WRONGTYPE, NOPERM, an ERR) is set aside with its reason --
 * counted (outbox_refused_total), logged once -- and the rows after it keep
 * flowing; an operator re-queues it (scripts/outbox requeue). A row refused
 * for now (OOM, BUSY, READONLY, ...) or whose reply was lost stops the pass
 * there and is retried after a backoff. While Redis is down, rows wait and drain in
 * order on reconnect and at start. An accepted row is not sent again, even
 * while recording the acceptance fails (a full disk: the mark is retried with
 * backoff); only a crash between XADD and the mark publishes a row twice, and
 * consumers de-duplicate by event id.
 *
 * SQLite has one writer, so seq order is commit order and the relay never
 * skips a row that committed late. Published rows are pruned after
 * OUTBOX_RETENTION_MS in small batches; set-aside rows are kept. Metrics:
 * outbox_backlog, outbox_set_aside, outbox_oldest_unpublished_age_seconds,
 * outbox_publish_latency_seconds (append to XADD reply), outbox_published_total,
 * outbox_refused_total, outbox_publish_failures_total and
 * outbox_mark_failures_total. Loop thread only. */
#ifndef RIPPLE_OUTBOX_H
#define RIPPLE_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include <ripple/common.h>
#include <ripple/ids.h>

struct service;
struct json_t;
struct stream_type;
struct outbox; /* opaque */

struct outbox_config {
    const char *source;         /* the service name, the envelope's `source`; copied */
    const char *log_scope;      /* the module whose lines these are (log.h); borrowed, static */
    unsigned batch;             /* rows sent and not yet recorded, at most, 1..1024 */
    unsigned long maxlen;       /* XADD MAXLEN ~; 0 for none */
    unsigned long max_backlog;  /* outbox_overloaded() past this many unpublished rows */
    unsigned long retention_ms; /* published rows are kept this long */
    /* The module's declared types (ripple/streams.h), borrowed: append
     * refuses any other type, and a payload that breaks its spec. NULL:
     * anything goes (tests and tools). */
    const struct stream_type *emits;
};

/* Creates the outbox table when missing, prepares its statements, and hooks
 * the relay to the store's commits and to the service's Redis connection.
 * Returns 0 and sets *out, or a negative errno (nothing allocated). */
CORE_MUST_CHECK int outbox_new(struct service *svc, const struct outbox_config *cfg,
                               struct outbox **out);

/* Appends an event. Must be called inside an open store transaction
 * (-EINVAL otherwise). The module must have declared type on stream, and
 * data must meet its spec: otherwise -EINVAL and an error line (a bug in
 * the module, never the wire's fault). data is borrowed (serialized now);
 * trace may be NULL. The new event id is written to event_id when it is not
 * NULL. Returns 0 or a negative errno (-EIO from SQLite, -ENOMEM). */
CORE_MUST_CHECK int outbox_append(struct outbox *ob, const char *stream, const char *type,
                                  const struct json_t *data, const char *trace,
                                  char event_id[IDS_UUID_LEN + 1]);

/* outbox_append of declared type t with data, which it steals (NULL, from a
 * failed json_pack, is -ENOMEM): build the payload, append, release in one
 * call. */
CORE_MUST_CHECK int outbox_emit(struct outbox *ob, const struct stream_type *t, struct json_t *data,
                                const char *trace, char event_id[IDS_UUID_LEN + 1]);

/* The stream entry id Redis gave the event, once published (and until the
 * row is pruned). Returns 0, -ENOENT (unknown or not yet published) or
 * -ENOSPC. */
CORE_MUST_CHECK int outbox_entry_id(struct outbox *ob, const char *event_id, char *buf, size_t len);

/* Pending rows: committed, neither accepted by Redis nor set aside. */
uint64_t outbox_backlog(const struct outbox *ob);
/* Rows set aside (Redis refused them for good), waiting to be re-queued. */
uint64_t outbox_set_aside(const struct outbox *ob);
/* 1 when the backlog is past max_backlog: HTTP writes should answer 503. */
int outbox_overloaded(const struct outbox *ob);

/* Stops the relay: waits for the XADDs in flight (a halted Redis connection
 * answers them at once with NULL) and, while Redis is up, tries to drain
 * the backlog for up to flush_ms; then closes its handles, frees ob and calls
 * done(data). Rows left unpublished stay in the table and are published at
 * the next start. */
typedef void (*outbox_closed_cb)(void *data);
void outbox_close(struct outbox *ob, unsigned flush_ms, outbox_closed_cb done, void *data);

#endif
