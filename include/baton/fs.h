/* Baton: file operations on the blocking lane (Python's aiofiles).
 *
 * Each call copies its arguments, runs the system calls on a worker of the
 * default pool's blocking lane, and returns a future on loop (new
 * reference; NULL only for a NULL loop or out of memory). A NULL path, a
 * negative fd, or NULL data with len > 0 give a future that has already
 * failed with BT_EINVAL. Failures carry
 * the system's errno as a BT_E* code (BT_ENOENT, BT_EACCES, ...) and a
 * message that names the path. Cancelling a queued operation removes it;
 * a running one completes (a system call cannot be interrupted) and its
 * outcome is discarded (an opened fd is closed, a buffer freed).
 *
 *   bt_future *f = bt_fs_read_file(loop, "/etc/hostname", 0);
 *   ... once settled: bt_fs_buf *b = bt_future_value(f); b->data, b->len
 *
 * All functions: Thread: the loop's.
 */
#ifndef BATON_FS_H
#define BATON_FS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include <baton/common.h>
#include <baton/future.h>
#include <baton/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The value of bt_fs_read_file and bt_fs_read: len bytes at data, followed
 * by a NUL that is not counted (so text can be used as a C string). Owned
 * by the future; take it with bt_future_take_value and free it with
 * bt_fs_buf_free. */
typedef struct {
    size_t len;
    char *data;
} bt_fs_buf;

/* Free a buffer taken from a future. NULL is a no-op. Thread: any. */
BT_EXPORT void bt_fs_buf_free(bt_fs_buf *buf);

/* Read a whole file. max_size bounds it (0: no bound); a bigger file fails
 * with BT_EMSGSIZE. Value: bt_fs_buf *. */
BT_EXPORT bt_future *bt_fs_read_file(bt_loop *loop, const char *path, size_t max_size);

/* Replace a file atomically: write a temporary file in the same folder,
 * fsync it, rename it over path and fsync the folder, so a reader sees the
 * old content or the new, never a mix, even after a crash. data is copied.
 * mode is used for a new file (0: 0644). Value: NULL. */
BT_EXPORT bt_future *bt_fs_write_file(bt_loop *loop, const char *path, const void *data, size_t len,
                                      unsigned mode);

/* open(2): flags and mode as open's (O_CLOEXEC is always added).
 * Value: the fd; take it with bt_fs_take_fd. An fd nobody took is closed
 * when the future is freed. */
BT_EXPORT bt_future *bt_fs_open(bt_loop *loop, const char *path, int flags, unsigned mode);

/* The fd of a settled bt_fs_open future, which the caller then owns (and
 * closes, with bt_fs_close or close(2)). Returns the fd, or the future's
 * error code, BT_EALREADY if it was taken, BT_EINVAL. Thread: the loop's. */
BT_EXPORT int bt_fs_take_fd(bt_future *f);

/* Read up to len bytes at offset (a negative offset: at the file
 * position). Fewer bytes at end of file, 0 at its end. Value: bt_fs_buf *. */
BT_EXPORT bt_future *bt_fs_read(bt_loop *loop, int fd, size_t len, int64_t offset);

/* Write all len bytes at offset (negative: at the file position); data is
 * copied. Value: size_t * (bytes written: len). */
BT_EXPORT bt_future *bt_fs_write(bt_loop *loop, int fd, const void *data, size_t len,
                                 int64_t offset);

/* close(2). Value: NULL. */
BT_EXPORT bt_future *bt_fs_close(bt_loop *loop, int fd);

/* stat(2). Value: struct stat * (owned by the future). */
BT_EXPORT bt_future *bt_fs_stat(bt_loop *loop, const char *path);

#ifdef __cplusplus
}
#endif
#endif
