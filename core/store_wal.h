/* store_wal.h -- a VFS that writes a WAL commit's frames in one write.
 *
 * Private to core/store.c. SQLite writes each WAL frame with two calls of
 * the VFS's xWrite (its 24-byte header, then its page), each a pwrite(2):
 * a commit of n pages costs 2n system calls. This VFS ("ripple-wal") sits
 * over the process's default one and, for WAL files only, gathers writes
 * that follow each other in the file into one buffer, which it writes out:
 *
 *   - when the page of a commit frame (a header whose "database size" field
 *     is not zero) has been added: before xWrite returns, so before SQLite
 *     publishes the commit in the WAL index and before sqlite3_step returns
 *     SQLITE_DONE. A commit that returned is in the file, as without the
 *     VFS (synchronous = NORMAL: written, synced at checkpoints);
 *   - before anything that must see the file as written: a write elsewhere
 *     in it, a read, xSync, xTruncate, xFileSize, a file control, xClose;
 *   - when the buffer holds STORE_WAL_BUFFER bytes (a large transaction's
 *     pages spilled before its commit).
 *
 * It goes out in writes of STORE_WAL_WRITE_MAX bytes at most: a commit of
 * up to 15 pages of 4 KiB is one pwrite.
 *
 * Only appends are buffered: a write over bytes this handle wrote before
 * (SQLite rewriting a page it spilled earlier in the same transaction, or
 * walRewriteChecksums rewriting frame headers up to the commit frame's)
 * goes through at once, after the buffer. So the file's bytes change in
 * the order SQLite wrote them, and everything a commit wrote is in the
 * file before SQLite publishes it. A failed write fails the xWrite that
 * caused it with the underlying VFS's own code (SQLITE_FULL on a full
 * disk, SQLITE_IOERR_*), or the xRead, xSync, ... with SQLITE_IOERR_WRITE
 * (after which SQLite rolls the whole transaction back; after
 * SQLITE_FULL it may roll back only the statement). The buffered bytes
 * are dropped then: they are frames of the transaction that fails.
 * Every other file (the database, its -shm, journals) is the underlying
 * VFS's own file, untouched. */
#ifndef CORE_STORE_WAL_H
#define CORE_STORE_WAL_H

#include <stdint.h>

#include <sqlite3.h>

#define STORE_WAL_VFS "ripple-wal"
#define STORE_WAL_BUFFER ((size_t)256 * 1024) /* bytes, at most, held before a write */
/* The most one xWrite of the underlying VFS is given: SQLite's unix VFS
 * takes less than 128 KiB per call (it asserts so in a debug build, and
 * otherwise masks the length to 17 bits: a longer write comes out short,
 * which it reports as SQLITE_FULL). */
#define STORE_WAL_WRITE_MAX ((size_t)64 * 1024)

/* The bytes SQLite has written to the WAL file through this handle (frame
 * headers, pages, the WAL's own header), buffered or not, since it was
 * opened. Returns 0, or -ENOENT when file is NULL or not a WAL file of this
 * VFS. */
int store_wal_written(sqlite3_file *file, uint64_t *out);

/* Registers the VFS (not as the default) over the default VFS of the
 * moment. Idempotent. Returns 0 or -ENOMEM / -EIO (no default VFS). */
int store_wal_register(void);

#endif
