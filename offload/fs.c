/* File operations on the blocking lane: each one is a job that copies its
 * arguments, makes the system calls on a worker and sets the value. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <baton/fs.h>
#include <baton/pool.h>

typedef enum { OP_READ_FILE, OP_WRITE_FILE, OP_OPEN, OP_READ, OP_WRITE, OP_CLOSE, OP_STAT } fs_kind;

typedef struct {
    fs_kind kind;
    char *path;
    int fd;
    int flags;
    unsigned mode;
    size_t len;
    int64_t offset;
    char *data; /* for the writes: a copy */
} fs_op;

static void op_free(fs_op *op)
{
    bt_free(op->path);
    bt_free(op->data);
    bt_free(op);
}

BT_EXPORT void bt_fs_buf_free(bt_fs_buf *buf)
{
    if (buf == NULL)
        return;
    bt_free(buf->data);
    bt_free(buf);
}

static void buf_dtor(void *p)
{
    bt_fs_buf_free(p);
}

static void fd_dtor(void *p)
{
    int *fd = p;
    if (*fd >= 0)
        close(*fd);
    bt_free(fd);
}

static int sys_fail(bt_job *job, const char *what, const char *path)
{
    int e = errno ? errno : EIO;
    if (path)
        return bt_job_fail(job, -e, "%s %s: %s", what, path, strerror(e));
    return bt_job_fail(job, -e, "%s: %s", what, strerror(e));
}

static bt_fs_buf *buf_new(size_t cap)
{
    bt_fs_buf *b = bt_calloc(1, sizeof *b);
    if (b && (b->data = bt_malloc(cap + 1)) == NULL) {
        bt_free(b);
        b = NULL;
    }
    return b;
}

static int do_read_file(bt_job *job, fs_op *op)
{
    int fd = open(op->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sys_fail(job, "open", op->path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int rc = sys_fail(job, "stat", op->path);
        close(fd);
        return rc;
    }
    size_t max = op->len ? op->len : SIZE_MAX - 1;
    if (st.st_size > 0 && (uint64_t)st.st_size > max) {
        close(fd);
        return bt_job_fail(job, BT_EMSGSIZE, "%s is %lld bytes, more than the %zu allowed",
                           op->path, (long long)st.st_size, max);
    }
    /* st_size is a hint (procfs says 0): read until end of file. */
    size_t cap = st.st_size > 0 ? (size_t)st.st_size : 4096;
    bt_fs_buf *b = buf_new(cap);
    if (b == NULL) {
        close(fd);
        return bt_job_fail(job, BT_ENOMEM, "reading %s", op->path);
    }
    for (;;) {
        if (b->len == cap) {
            if (cap >= max) {
                bt_fs_buf_free(b);
                close(fd);
                return bt_job_fail(job, BT_EMSGSIZE, "%s is more than the %zu bytes allowed",
                                   op->path, max);
            }
            size_t ncap = cap * 2 > max ? max : cap * 2;
            char *d = bt_realloc(b->data, ncap + 1);
            if (d == NULL) {
                bt_fs_buf_free(b);
                close(fd);
                return bt_job_fail(job, BT_ENOMEM, "reading %s", op->path);
            }
            b->data = d;
            cap = ncap;
        }
        ssize_t n = read(fd, b->data + b->len, cap - b->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int rc = sys_fail(job, "read", op->path);
            bt_fs_buf_free(b);
            close(fd);
            return rc;
        }
        if (n == 0)
            break;
        b->len += (size_t)n;
        if (bt_job_cancelled(job))
            break; /* the outcome will be discarded anyway */
    }
    close(fd);
    b->data[b->len] = '\0';
    bt_job_set_value(job, b, buf_dtor);
    return 0;
}

static int write_all(int fd, const char *p, size_t len, int64_t offset)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = offset >= 0 ? pwrite(fd, p + done, len - done, (off_t)(offset + (int64_t)done))
                                : write(fd, p + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

static int do_write_file(bt_job *job, fs_op *op)
{
    char *tmp = bt_asprintf("%s.tmp.XXXXXX", op->path);
    char *dir = bt_strdup(op->path);
    if (tmp == NULL || dir == NULL) {
        bt_free(tmp);
        bt_free(dir);
        return bt_job_fail(job, BT_ENOMEM, "writing %s", op->path);
    }
    int rc = 0;
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = sys_fail(job, "create a temporary file for", op->path);
        goto out;
    }
    if (fchmod(fd, op->mode ? op->mode : 0644) != 0 || write_all(fd, op->data, op->len, -1) != 0 ||
        fsync(fd) != 0) {
        rc = sys_fail(job, "write", tmp);
        close(fd);
        unlink(tmp);
        goto out;
    }
    if (close(fd) != 0) {
        rc = sys_fail(job, "close", tmp);
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, op->path) != 0) {
        rc = sys_fail(job, "rename over", op->path);
        unlink(tmp);
        goto out;
    }
    /* Make the rename itself durable. */
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
out:
    bt_free(tmp);
    bt_free(dir);
    return rc;
}

static int fs_job(bt_job *job, void *arg)
{
    fs_op *op = arg;
    int rc = 0;
    errno = 0;
    switch (op->kind) {
    case OP_READ_FILE:
        rc = do_read_file(job, op);
        break;
    case OP_WRITE_FILE:
        rc = do_write_file(job, op);
        break;
    case OP_OPEN: {
        int *fd = bt_malloc(sizeof *fd);
        if (fd == NULL) {
            rc = bt_job_fail(job, BT_ENOMEM, "opening %s", op->path);
            break;
        }
        *fd = open(op->path, op->flags | O_CLOEXEC, (mode_t)op->mode);
        if (*fd < 0) {
            rc = sys_fail(job, "open", op->path);
            bt_free(fd);
            break;
        }
        bt_job_set_value(job, fd, fd_dtor);
        break;
    }
    case OP_READ: {
        bt_fs_buf *b = buf_new(op->len);
        if (b == NULL) {
            rc = bt_job_fail(job, BT_ENOMEM, "reading %zu bytes", op->len);
            break;
        }
        ssize_t n;
        do
            n = op->offset >= 0 ? pread(op->fd, b->data, op->len, (off_t)op->offset)
                                : read(op->fd, b->data, op->len);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            rc = sys_fail(job, "read", NULL);
            bt_fs_buf_free(b);
            break;
        }
        b->len = (size_t)n;
        b->data[n] = '\0';
        bt_job_set_value(job, b, buf_dtor);
        break;
    }
    case OP_WRITE: {
        size_t *n = bt_malloc(sizeof *n);
        if (n == NULL) {
            rc = bt_job_fail(job, BT_ENOMEM, "writing %zu bytes", op->len);
            break;
        }
        if (write_all(op->fd, op->data, op->len, op->offset) != 0) {
            rc = sys_fail(job, "write", NULL);
            bt_free(n);
            break;
        }
        *n = op->len;
        bt_job_set_value(job, n, bt_free);
        break;
    }
    case OP_CLOSE:
        if (close(op->fd) != 0 && errno != EINTR)
            rc = sys_fail(job, "close", NULL);
        break;
    case OP_STAT: {
        struct stat *st = bt_malloc(sizeof *st);
        if (st == NULL) {
            rc = bt_job_fail(job, BT_ENOMEM, "stat %s", op->path);
            break;
        }
        if (stat(op->path, st) != 0) {
            rc = sys_fail(job, "stat", op->path);
            bt_free(st);
            break;
        }
        bt_job_set_value(job, st, bt_free);
        break;
    }
    }
    return rc;
}

static void op_done(bt_future *f, void *arg)
{
    (void)f;
    op_free(arg);
}

/* Submit op (owned) on the default pool's blocking lane. */
static bt_future *op_submit(bt_loop *loop, fs_op *op)
{
    if (loop == NULL) {
        if (op)
            op_free(op);
        return NULL;
    }
    if (op == NULL)
        return bt_future_new_error(loop, BT_ENOMEM, "out of memory starting a file operation");
    bt_future *f = bt_to_thread(loop, fs_job, op);
    if (f == NULL || bt_future_add_callback(f, op_done, op) != 0) {
        /* Cannot free op while the job may still run: cancel, and let it
         * leak only in this out-of-memory corner. */
        if (f)
            bt_future_cancel(f);
        bt_log(BT_LOG_ERROR, "out of memory tracking a file operation");
    }
    return f;
}

static fs_op *op_new(fs_kind kind, const char *path)
{
    fs_op *op = bt_calloc(1, sizeof *op);
    if (op == NULL)
        return NULL;
    op->kind = kind;
    op->fd = -1;
    if (path && (op->path = bt_strdup(path)) == NULL) {
        bt_free(op);
        return NULL;
    }
    return op;
}

/* Give op its own copy of the caller's bytes (the job runs later, on a
 * worker). Returns op, or NULL after freeing it when out of memory. */
static fs_op *op_copy_data(fs_op *op, const void *data, size_t len)
{
    op->len = len;
    if ((op->data = bt_malloc(len ? len : 1)) == NULL) {
        op_free(op);
        return NULL;
    }
    if (len)
        memcpy(op->data, data, len);
    return op;
}

static bt_future *bad_arg(bt_loop *loop, const char *what)
{
    return loop ? bt_future_new_error(loop, BT_EINVAL, "%s", what) : NULL;
}

BT_EXPORT bt_future *bt_fs_read_file(bt_loop *loop, const char *path, size_t max_size)
{
    if (path == NULL)
        return bad_arg(loop, "bt_fs_read_file: no path");
    fs_op *op = op_new(OP_READ_FILE, path);
    if (op)
        op->len = max_size;
    return op_submit(loop, op);
}

BT_EXPORT bt_future *bt_fs_write_file(bt_loop *loop, const char *path, const void *data, size_t len,
                                      unsigned mode)
{
    if (path == NULL || (data == NULL && len > 0))
        return bad_arg(loop, "bt_fs_write_file: no path or no data");
    fs_op *op = op_new(OP_WRITE_FILE, path);
    if (op) {
        op->mode = mode;
        op = op_copy_data(op, data, len);
    }
    return op_submit(loop, op);
}

BT_EXPORT bt_future *bt_fs_open(bt_loop *loop, const char *path, int flags, unsigned mode)
{
    if (path == NULL)
        return bad_arg(loop, "bt_fs_open: no path");
    fs_op *op = op_new(OP_OPEN, path);
    if (op) {
        op->flags = flags;
        op->mode = mode;
    }
    return op_submit(loop, op);
}

BT_EXPORT int bt_fs_take_fd(bt_future *f)
{
    if (f == NULL)
        return BT_EINVAL;
    int rc = bt_future_error(f);
    if (rc != 0)
        return rc;
    int *fd = bt_future_take_value(f);
    if (fd == NULL)
        return BT_EALREADY;
    int v = *fd;
    bt_free(fd);
    return v;
}

BT_EXPORT bt_future *bt_fs_read(bt_loop *loop, int fd, size_t len, int64_t offset)
{
    if (fd < 0)
        return bad_arg(loop, "bt_fs_read: bad fd");
    fs_op *op = op_new(OP_READ, NULL);
    if (op) {
        op->fd = fd;
        op->len = len;
        op->offset = offset;
    }
    return op_submit(loop, op);
}

BT_EXPORT bt_future *bt_fs_write(bt_loop *loop, int fd, const void *data, size_t len,
                                 int64_t offset)
{
    if (fd < 0 || (data == NULL && len > 0))
        return bad_arg(loop, "bt_fs_write: bad fd or no data");
    fs_op *op = op_new(OP_WRITE, NULL);
    if (op) {
        op->fd = fd;
        op->offset = offset;
        op = op_copy_data(op, data, len);
    }
    return op_submit(loop, op);
}

BT_EXPORT bt_future *bt_fs_close(bt_loop *loop, int fd)
{
    if (fd < 0)
        return bad_arg(loop, "bt_fs_close: bad fd");
    fs_op *op = op_new(OP_CLOSE, NULL);
    if (op)
        op->fd = fd;
    return op_submit(loop, op);
}

BT_EXPORT bt_future *bt_fs_stat(bt_loop *loop, const char *path)
{
    if (path == NULL)
        return bad_arg(loop, "bt_fs_stat: no path");
    return op_submit(loop, op_new(OP_STAT, path));
}
