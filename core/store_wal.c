/* store_wal.c -- a VFS that writes a WAL commit's frames in one write. See
 * store_wal.h.
 *
 * A WAL file opened through this VFS is a struct wal_file: SQLite's handle
 * (base), the buffer, and the underlying VFS's own handle (real) in the
 * memory that follows. Any other file is opened by the underlying VFS
 * directly into the memory SQLite gave us (szOsFile covers both layouts),
 * so its methods are the underlying ones and cost nothing extra. */
#include "store_wal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#define WAL_FRAME_HEADER 24 /* bytes before each page in a WAL frame */

struct wal_file {
    sqlite3_file base;
    sqlite3_file *real;   /* the underlying VFS's handle, after this struct */
    unsigned char *buf;   /* owned; STORE_WAL_BUFFER bytes, allocated at first use */
    sqlite3_int64 buf_at; /* the file offset of buf[0] */
    size_t buf_len;
    /* The end of what this handle has written, buffered or not, since the
     * WAL's header (offset 0) was last written: only writes from there on
     * are appends. */
    sqlite3_int64 end;
    /* The last frame header written was a commit frame's: every write
     * until the next header completes the transaction (its page, or the
     * part of it after a sync when SQLite pads to a sector). */
    int commit;
    uint64_t written; /* bytes SQLite has written through this handle */
};

static sqlite3_vfs *root; /* the underlying VFS: borrowed, lives for the process */
static sqlite3_vfs wal_vfs;

/* Writes the buffer out. The bytes are dropped whether or not that
 * succeeded: they are frames of the transaction in progress (a commit's
 * are written before its xWrite returns), which fails with them. */
static int flush(struct wal_file *f)
{
    int rc = SQLITE_OK;

    for (size_t done = 0, n; done < f->buf_len && rc == SQLITE_OK; done += n) {
        n = f->buf_len - done;
        if (n > STORE_WAL_WRITE_MAX)
            n = STORE_WAL_WRITE_MAX;
        rc = f->real->pMethods->xWrite(f->real, f->buf + done, (int)n,
                                       f->buf_at + (sqlite3_int64)done);
    }
    f->buf_len = 0;
    return rc;
}

/* flush() for a call other than xWrite. SQLite rolls back the whole
 * transaction after an I/O error, but only the statement after
 * SQLITE_FULL (when it has a statement journal), which would let the
 * transaction go on without the frames just dropped: so any failure here
 * is an I/O error. */
static int flush_for(struct wal_file *f)
{
    return flush(f) == SQLITE_OK ? SQLITE_OK : SQLITE_IOERR_WRITE;
}

static int wal_close(sqlite3_file *file)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc = flush(f);
    int rc2 = f->real->pMethods->xClose(f->real);

    free(f->buf);
    f->buf = NULL;
    return rc != SQLITE_OK ? rc : rc2;
}

static int wal_read(sqlite3_file *file, void *out, int n, sqlite3_int64 at)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc = flush_for(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, out, n, at);
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Writes through, after what is buffered. */
static int write_through(struct wal_file *f, const void *data, int n, sqlite3_int64 at)
{
    int rc = flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xWrite(f->real, data, n, at);
}

static int wal_write(sqlite3_file *file, const void *data, int n, sqlite3_int64 at)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc, header = n == WAL_FRAME_HEADER;

    /* A frame's header is the only 24-byte write (the WAL header is 32
     * bytes, a page 512 at least); bytes 4-7 are the database's size in
     * pages after a commit, and zero in the other frames. */
    if (header)
        f->commit = be32((const unsigned char *)data + 4) != 0;
    if (at == 0)
        f->end = 0; /* the WAL's header: the file starts over */
    /* Only appends are buffered. A write over what was written already --
     * SQLite rewriting a page it spilled earlier in the transaction, or the
     * frame headers' checksums up to the commit frame's
     * (walRewriteChecksums) -- goes through at once, after the buffer: the
     * file's bytes change in the order SQLite wrote them, and the commit's
     * last bytes are in the file when it publishes the commit. */
    if (at < f->end || n <= 0 || (size_t)n > STORE_WAL_WRITE_MAX) {
        rc = write_through(f, data, n, at);
    } else {
        if (f->buf_len > 0 && (at != f->buf_at + (sqlite3_int64)f->buf_len ||
                               f->buf_len + (size_t)n > STORE_WAL_BUFFER)) {
            if ((rc = flush(f)) != SQLITE_OK)
                return rc;
        }
        if (f->buf == NULL && (f->buf = malloc(STORE_WAL_BUFFER)) == NULL) {
            rc = write_through(f, data, n, at);
        } else {
            if (f->buf_len == 0)
                f->buf_at = at;
            memcpy(f->buf + f->buf_len, data, (size_t)n);
            f->buf_len += (size_t)n;
            /* After a commit frame's header, any write completes it. */
            rc = f->commit && !header ? flush(f) : SQLITE_OK;
        }
    }
    if (rc == SQLITE_OK && at + n > f->end)
        f->end = at + n;
    if (rc == SQLITE_OK && n > 0)
        f->written += (uint64_t)n;
    return rc;
}

static int wal_truncate(sqlite3_file *file, sqlite3_int64 size)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc = flush_for(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int wal_sync(sqlite3_file *file, int flags)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc = flush_for(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int wal_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc = flush_for(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int wal_lock(sqlite3_file *file, int level)
{
    struct wal_file *f = (struct wal_file *)file;

    return f->real->pMethods->xLock(f->real, level);
}

static int wal_unlock(sqlite3_file *file, int level)
{
    struct wal_file *f = (struct wal_file *)file;

    return f->real->pMethods->xUnlock(f->real, level);
}

static int wal_check_reserved_lock(sqlite3_file *file, int *out)
{
    struct wal_file *f = (struct wal_file *)file;

    return f->real->pMethods->xCheckReservedLock(f->real, out);
}

/* No flush: no file control reads the file's bytes, and SQLite ignores the
 * result of some (a size hint), which would hide a failed flush. */
static int wal_file_control(sqlite3_file *file, int op, void *arg)
{
    struct wal_file *f = (struct wal_file *)file;

    return f->real->pMethods->xFileControl(f->real, op, arg);
}

static int wal_sector_size(sqlite3_file *file)
{
    struct wal_file *f = (struct wal_file *)file;

    return f->real->pMethods->xSectorSize(f->real);
}

static int wal_device_characteristics(sqlite3_file *file)
{
    struct wal_file *f = (struct wal_file *)file;

    return f->real->pMethods->xDeviceCharacteristics(f->real);
}

/* The shared-memory and mmap methods are the database file's business, but
 * an io_methods of version 3 has them: passed through (or refused, as the
 * underlying VFS would if it had none). */
static int wal_shm_map(sqlite3_file *file, int page, int size, int extend, void volatile **out)
{
    struct wal_file *f = (struct wal_file *)file;

    if (f->real->pMethods->iVersion < 2 || f->real->pMethods->xShmMap == NULL)
        return SQLITE_IOERR_SHMMAP;
    return f->real->pMethods->xShmMap(f->real, page, size, extend, out);
}

static int wal_shm_lock(sqlite3_file *file, int offset, int n, int flags)
{
    struct wal_file *f = (struct wal_file *)file;

    if (f->real->pMethods->iVersion < 2 || f->real->pMethods->xShmLock == NULL)
        return SQLITE_IOERR_SHMLOCK;
    return f->real->pMethods->xShmLock(f->real, offset, n, flags);
}

static void wal_shm_barrier(sqlite3_file *file)
{
    struct wal_file *f = (struct wal_file *)file;

    if (f->real->pMethods->iVersion >= 2 && f->real->pMethods->xShmBarrier != NULL)
        f->real->pMethods->xShmBarrier(f->real);
}

static int wal_shm_unmap(sqlite3_file *file, int delete_flag)
{
    struct wal_file *f = (struct wal_file *)file;

    if (f->real->pMethods->iVersion < 2 || f->real->pMethods->xShmUnmap == NULL)
        return SQLITE_OK;
    return f->real->pMethods->xShmUnmap(f->real, delete_flag);
}

static int wal_fetch(sqlite3_file *file, sqlite3_int64 at, int n, void **out)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc = flush_for(f);

    *out = NULL;
    if (rc != SQLITE_OK)
        return rc;
    if (f->real->pMethods->iVersion < 3 || f->real->pMethods->xFetch == NULL)
        return SQLITE_OK; /* no mapping: SQLite reads instead */
    return f->real->pMethods->xFetch(f->real, at, n, out);
}

static int wal_unfetch(sqlite3_file *file, sqlite3_int64 at, void *p)
{
    struct wal_file *f = (struct wal_file *)file;

    if (f->real->pMethods->iVersion < 3 || f->real->pMethods->xUnfetch == NULL)
        return SQLITE_OK;
    return f->real->pMethods->xUnfetch(f->real, at, p);
}

static const sqlite3_io_methods wal_methods = {
    .iVersion = 3,
    .xClose = wal_close,
    .xRead = wal_read,
    .xWrite = wal_write,
    .xTruncate = wal_truncate,
    .xSync = wal_sync,
    .xFileSize = wal_file_size,
    .xLock = wal_lock,
    .xUnlock = wal_unlock,
    .xCheckReservedLock = wal_check_reserved_lock,
    .xFileControl = wal_file_control,
    .xSectorSize = wal_sector_size,
    .xDeviceCharacteristics = wal_device_characteristics,
    .xShmMap = wal_shm_map,
    .xShmLock = wal_shm_lock,
    .xShmBarrier = wal_shm_barrier,
    .xShmUnmap = wal_shm_unmap,
    .xFetch = wal_fetch,
    .xUnfetch = wal_unfetch,
};

static int wal_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags,
                    int *out_flags)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc;

    (void)vfs;
    if (!(flags & SQLITE_OPEN_WAL))
        return root->xOpen(root, name, file, flags, out_flags);
    memset(f, 0, sizeof(*f));
    f->real = (sqlite3_file *)(f + 1);
    rc = root->xOpen(root, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK)
        return rc; /* base.pMethods stays NULL: nothing to close */
    f->base.pMethods = &wal_methods;
    return SQLITE_OK;
}

int store_wal_written(sqlite3_file *file, uint64_t *out)
{
    if (file == NULL || file->pMethods != &wal_methods)
        return -ENOENT;
    *out = ((struct wal_file *)file)->written;
    return 0;
}

int store_wal_register(void)
{
    int size;

    if (root != NULL)
        return 0;
    root = sqlite3_vfs_find(NULL);
    if (root == NULL)
        return -EIO;
    wal_vfs = *root; /* every other method is the underlying one's */
    wal_vfs.pNext = NULL;
    wal_vfs.zName = STORE_WAL_VFS;
    wal_vfs.xOpen = wal_open;
    size = (int)sizeof(struct wal_file) + root->szOsFile;
    wal_vfs.szOsFile = size > root->szOsFile ? size : root->szOsFile;
    if (sqlite3_vfs_register(&wal_vfs, 0) != SQLITE_OK) {
        root = NULL;
        return -ENOMEM;
    }
    return 0;
}
