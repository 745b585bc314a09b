/* stream_consumer.h -- consume one Redis stream through a consumer group.
 *
 * DESIGN.md §6. The group is the service's name, created at ID 0 with
 * MKSTREAM (BUSYGROUP is fine), so entries written before the first start are
 * read; a group lost later is recreated at the last entry this service
 * settled (kept in its database), not at 0. The consumer first re-reads its
 * own pending entries (ID 0), then new ones (>) with COUNT and BLOCK on a
 * Redis connection of its own.
 *
 * Each entry is parsed as an envelope (streams/) and checked against the
 * catalog. Synchronous handlers of one batch run inside ONE store
 * transaction, each under a savepoint: the entry's effects, the outbox rows
 * it appends and its inbox row (the event id, which de-duplicates
 * redeliveries) commit together, and XACK follows the commit. A malformed
 * entry, or one a handler rejects by a business rule, goes to <stream>.dlq
 * with the reason at once (the dead letter and the ack in one script, only
 * once Redis accepted the dead letter; a refused one keeps the entry pending
 * and is retried). A handler failure is counted in the database, leaves the
 * entry pending and stops the batch there (stream order holds); the batch
 * stays in hand and the entry is retried after a backoff, and dead-lettered
 * once its handler has failed max_deliveries times. A failure of the store
 * itself (disk full, a lock held elsewhere, an I/O error) counts for
 * nothing: the batch is rolled back, kept and retried. Redis' delivery count
 * only guards against a crash loop (max_deliveries_guard).
 *
 * Periodically: XAUTOCLAIM takes over entries idle past reclaim_idle_ms
 * (dead consumers'), acking ids whose entries were deleted; entries in hand
 * have their lease refreshed (a script claims with XCLAIM JUSTID only those
 * still ours), so a slow handler is not taken over and one that was is not
 * taken back; inbox rows past their retention are pruned; XINFO gives the
 * metrics stream_pending and stream_lag, and entries trimmed before the
 * group read them (stream_trimmed_unread_total, with an error log). A
 * resumed asynchronous handler applies only an entry still ours. NOGROUP
 * (the stream or group vanished) recreates the group. Every retry backs
 * off: never a hot loop. Loop thread only. */
#ifndef RIPPLE_STREAM_CONSUMER_H
#define RIPPLE_STREAM_CONSUMER_H

#include <ripple/common.h>
#include <ripple/ids.h>

struct service;
struct json_t;
struct stream_consumer; /* opaque */
struct stream_done;     /* completion token of an asynchronous handler */

struct stream_consumer_config {
    const char *stream; /* e.g. "users.commands"; copied */
    /* The declared types (a module's consumes; entries of other streams
     * are ignored), borrowed: an entry of a declared type is checked
     * against its spec and goes to its handler (or to on_msg when it has
     * none); an undeclared one is malformed on a *.commands stream and
     * skipped on a *.events one. NULL: every type goes to on_msg,
     * unchecked (tests and tools). */
    const struct stream_type *types;
    const char *start;             /* a new group starts at "0" (NULL too) or "$"; copied */
    unsigned batch;                /* XREADGROUP COUNT, 1..1024 */
    unsigned block_ms;             /* XREADGROUP BLOCK */
    unsigned reclaim_idle_ms;      /* XAUTOCLAIM min idle */
    unsigned max_deliveries;       /* handler failures, then the entry goes to the DLQ */
    unsigned max_deliveries_guard; /* Redis deliveries, then the DLQ (a crash loop) */
    unsigned inbox_retention_ms;   /* processed event ids kept this long */
};

#define STREAM_MSG_REASON 256

struct stream_msg {
    const char *stream;   /* borrowed, all of them, for the call only */
    const char *entry_id; /* the Redis entry id */
    const char *id;       /* event id: the de-duplication key */
    const char *type;
    const struct stream_type *decl; /* the module's declaration of type (its spec, handler) */
    const char *trace;              /* "" when absent */
    const char *traceparent;        /* the W3C trace context of this entry's handling: a child
                                       of the entry's own, or a new trace (current while the
                                       handler runs: ripple/trace.h) */
    const char *source;             /* "" when absent */
    struct json_t *data;            /* borrowed: json_incref() to keep it */
    unsigned deliveries;            /* Redis' delivery count: 1 on first delivery */
    unsigned failures;              /* this entry's handler failures recorded so far */
    int resumed;                    /* 1 when called again after stream_consumer_done */
    void *ctx;                      /* the handler's own, kept across an async step */
    struct stream_done *done;       /* keep it only when returning STREAM_CONSUMER_ASYNC */
    char reason[STREAM_MSG_REASON]; /* set by stream_msg_reject */
};

/* What a handler returns, besides 0 (done: commit, ack) and a negative
 * errno (failed: roll the entry back, count the failure, retry later; after
 * max_deliveries failures, dead-letter it). -EAGAIN is special: a dependency
 * is unavailable, which is no fault of the entry -- it is retried with
 * backoff for as long as it takes and never dead-lettered. So is a failure
 * whose cause SQLite reports as the store's (store_check_fault): whatever
 * the handler returned, it counts for nothing. */
#define STREAM_CONSUMER_ASYNC 1  /* kept msg->done; this stream waits for it */
#define STREAM_CONSUMER_REJECT 2 /* refused by a business rule: dead-letter with msg->reason */
#define STREAM_CONSUMER_SKIP 3   /* a type this service does not act on: ack */

/* Called inside an open store transaction (under a savepoint of its own):
 * the handler writes its effects and appends its outbox rows there. */
typedef int (*stream_consumer_msg_cb)(struct stream_msg *msg, void *data);
typedef void (*stream_consumer_closed_cb)(void *data);

/* Reading a message's payload, already checked against its declaration:
 * stream_msg_uuid copies field's UUID in canonical lower case into out and
 * returns 0 (-EINVAL when it is absent or no UUID); stream_msg_str returns
 * field's string (borrowed, for the call) or NULL; stream_msg_int returns
 * field's integer, or dflt when it is absent; stream_msg_trace returns the
 * message's trace, or NULL when it has none. */
CORE_MUST_CHECK int stream_msg_uuid(const struct stream_msg *msg, const char *field,
                                    char out[IDS_UUID_LEN + 1]);
const char *stream_msg_str(const struct stream_msg *msg, const char *field);
long long stream_msg_int(const struct stream_msg *msg, const char *field, long long dflt);
const char *stream_msg_trace(const struct stream_msg *msg);

/* Formats the reason into msg->reason and returns STREAM_CONSUMER_REJECT. */
int stream_msg_reject(struct stream_msg *msg, const char *fmt, ...) CORE_PRINTF(2, 3);

/* Copies cfg. Creates the inbox table when missing. Returns 0 and sets *out,
 * or a negative errno; on error nothing is allocated and no callback fires.
 * The consumer starts when the service's Redis comes up. */
CORE_MUST_CHECK int stream_consumer_new(struct service *svc,
                                        const struct stream_consumer_config *cfg,
                                        stream_consumer_msg_cb on_msg, void *data,
                                        struct stream_consumer **out);

typedef void (*stream_consumer_release_cb)(void *data);

/* The usual way: a consumer for each stream the module consumes
 * (module->consumes), configured from the service's settings, started when
 * the service's Redis first comes up and closed when it stops. Each entry
 * goes to its type's declared handler with data; an undeclared type is
 * malformed on a *.commands stream and skipped on a *.events one.
 * release(data), when not NULL, runs once every one of them is closed.
 * Exits with one line on failure (startup only). */
void service_consume(struct service *svc, void *data, stream_consumer_release_cb release);

/* One consumer of stream configured from the service's
 * settings (CONSUMER_BATCH, MAX_DELIVERIES, ...), started when the service's
 * Redis first comes up and closed when it stops; release(data), when not
 * NULL, runs once it is closed. Exits with one line on failure (startup
 * only). */
struct stream_consumer *stream_consumer_attach(struct service *svc, const char *stream,
                                               stream_consumer_msg_cb on_msg, void *data,
                                               stream_consumer_release_cb release);

/* Completes an asynchronous entry. rc == 0: once Redis confirms the entry
 * is still this consumer's, the handler is called again (msg->resumed = 1,
 * msg->ctx as left) inside a transaction to apply its effects -- unless the
 * entry was taken over or its event meanwhile processed, when it is never
 * called again; rc < 0: the entry failed (counted, pending, retried later;
 * -EAGAIN: retried, not counted). */
void stream_consumer_done(struct stream_done *done, int rc);

/* Finishes the batch in hand (waiting for an asynchronous entry), closes the
 * handles, frees sc, then calls closed_cb(data). */
void stream_consumer_close(struct stream_consumer *sc, stream_consumer_closed_cb closed_cb,
                           void *data);

#endif
