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
    int commit; /* the last header buffered was a commit frame's */
};

static sqlite3_vfs *root; /* the underlying VFS: borrowed, lives for the process */
static sqlite3_vfs wal_vfs;

/* Writes the buffer out. The bytes are dropped whether or not that
 * succeeded: after a failure SQLite abandons the frames (see store_wal.h). */
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
    f->commit = 0;
    return rc;
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
    int rc = flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, out, n, at);
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int wal_write(sqlite3_file *file, const void *data, int n, sqlite3_int64 at)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc;

    /* Only what follows the buffer joins it; and what would not fit in an
     * empty buffer goes out as it is, after what came before it. */
    if (f->buf_len > 0 && (at != f->buf_at + (sqlite3_int64)f->buf_len ||
                           f->buf_len + (size_t)n > STORE_WAL_BUFFER)) {
        if ((rc = flush(f)) != SQLITE_OK)
            return rc;
    }
    if (n <= 0 || (size_t)n > STORE_WAL_WRITE_MAX)
        return f->real->pMethods->xWrite(f->real, data, n, at);
    if (f->buf == NULL && (f->buf = malloc(STORE_WAL_BUFFER)) == NULL)
        return f->real->pMethods->xWrite(f->real, data, n, at);
    if (f->buf_len == 0)
        f->buf_at = at;
    memcpy(f->buf + f->buf_len, data, (size_t)n);
    f->buf_len += (size_t)n;
    /* A frame's header is the only 24-byte write (the WAL header is 32
     * bytes, a page 512 at least); bytes 4-7 are the database's size in
     * pages after a commit, and zero in the other frames. The commit
     * frame's page is the next write: then the transaction is whole. */
    if (n == WAL_FRAME_HEADER) {
        f->commit = be32((const unsigned char *)data + 4) != 0;
        return SQLITE_OK;
    }
    return f->commit ? flush(f) : SQLITE_OK;
}

static int wal_truncate(sqlite3_file *file, sqlite3_int64 size)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc = flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int wal_sync(sqlite3_file *file, int flags)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc = flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int wal_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc = flush(f);

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

static int wal_file_control(sqlite3_file *file, int op, void *arg)
{
    struct wal_file *f = (struct wal_file *)file;
    int rc = flush(f);

    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileControl(f->real, op, arg);
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
    int rc = flush(f);

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
