/* stream_ledger.h -- what a stream consumer keeps in the service's database.
 *
 * Private to core/stream_consumer.c (DESIGN.md §6). Per stream, in the
 * service's own SQLite file, next to the effects of the entries:
 *
 *   inbox            the event ids processed (de-duplication), pruned after
 *                    the inbox retention;
 *   stream_failures  how many times an entry's handler failed and why: this
 *                    count, not Redis' delivery count, decides when an entry
 *                    goes to the dead-letter stream (MAX_DELIVERIES);
 *   stream_position  the highest entry id settled (a lost group is recreated
 *                    there, not at 0), and how many entries were reported
 *                    lost to trimming (so a restart does not report them
 *                    again).
 *
 * Every write is meant to run inside the consumer's transaction; reads run
 * anywhere. Statements are prepared once (store_prepare) and bound, never
 * formatted. Functions return 0 (or a count) or -EIO; the caller asks
 * store_check_fault whether the store itself failed. Loop thread only. */
#ifndef CORE_STREAM_LEDGER_H
#define CORE_STREAM_LEDGER_H

#include <stddef.h>
#include <stdint.h>

#include <ripple/common.h>

struct store;
struct stream_ledger; /* opaque */

/* A Redis stream entry id, ms-seq. */
struct stream_id {
    uint64_t ms, seq;
};

#define STREAM_ID_MAX 44 /* "ms-seq" of two 64-bit numbers, with the NUL */

/* Parses "ms-seq" (or "ms"). Returns 0 or -EINVAL. */
CORE_MUST_CHECK int stream_id_parse(const char *s, struct stream_id *out);
/* -1, 0, 1 as a is below, equal to, above b. */
int stream_id_cmp(const struct stream_id *a, const struct stream_id *b);
/* Writes "ms-seq" into buf (STREAM_ID_MAX bytes). */
void stream_id_format(const struct stream_id *id, char *buf, size_t len);

/* Creates the tables when missing and prepares the statements for stream
 * (copied). Returns 0 and sets *out (new: stream_ledger_free), or -EIO
 * (logged) or -ENOMEM. */
CORE_MUST_CHECK int stream_ledger_open(struct store *st, const char *stream,
                                       struct stream_ledger **out);
/* Frees l (its statements belong to the store). NULL is a no-op. */
void stream_ledger_free(struct stream_ledger *l);

/* Inbox: 1 when event_id was processed, 0 when not, -EIO. */
CORE_MUST_CHECK int stream_ledger_seen(struct stream_ledger *l, const char *event_id);
/* Claims event_id for processing in one statement (INSERT ... ON CONFLICT
 * DO NOTHING): 1 when claimed now, 0 when it was processed before (a
 * duplicate), -EIO. Inside the entry's savepoint: a handler that fails
 * rolls the claim back with its own writes. */
CORE_MUST_CHECK int stream_ledger_claim(struct stream_ledger *l, const char *event_id);

/* Handler failures of entry_id: *out is 0 when none was recorded. */
CORE_MUST_CHECK int stream_ledger_failures(struct stream_ledger *l, const char *entry_id,
                                           unsigned *out);
/* Records one more failure (why: its reason) and sets *failures to the new
 * count. */
CORE_MUST_CHECK int stream_ledger_fail(struct stream_ledger *l, const char *entry_id,
                                       const char *why, unsigned *failures);
/* Forgets the failures of a settled entry. */
CORE_MUST_CHECK int stream_ledger_forget(struct stream_ledger *l, const char *entry_id);

/* Deletes at most limit inbox rows and limit failure rows older than
 * before_ms (ms since the epoch). */
CORE_MUST_CHECK int stream_ledger_prune(struct stream_ledger *l, int64_t before_ms, unsigned limit);

/* The highest entry id settled; 0-0 when none was. */
CORE_MUST_CHECK int stream_ledger_position(struct stream_ledger *l, struct stream_id *out);
/* Moves the position up to id (never down). */
CORE_MUST_CHECK int stream_ledger_advance(struct stream_ledger *l, const struct stream_id *id);

/* Entries reported lost to trimming so far (0 when none), and setting it. */
CORE_MUST_CHECK int stream_ledger_trimmed(struct stream_ledger *l, uint64_t *out);
CORE_MUST_CHECK int stream_ledger_set_trimmed(struct stream_ledger *l, uint64_t reported);

#endif
