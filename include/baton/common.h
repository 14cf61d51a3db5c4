/* Baton: errors, allocation, logging and time, shared by every area.
 *
 * Conventions that hold in every Baton header:
 * - Functions return 0 on success and a negative BT_E* code on failure.
 *   Constructors return NULL on failure and never a half-made object.
 * - "Thread:" says who may call. "loop thread" means the thread that runs
 *   the loop the object belongs to; "any thread" means any.
 * - "Returns: new reference" means the caller owns one reference and must
 *   drop it (bt_future_unref and the like); "borrowed" means it must not.
 * - When a call that takes a callback fails, the callback is never called.
 *
 * Ownership of futures given to a function
 * A function that builds a new future from futures you give it takes over
 * your reference to each of them: bt_future_then, bt_future_after,
 * bt_gather, bt_race, bt_any, bt_timeout and bt_group_add (their comments
 * say "takes over f (see common.h)"). Do not unref a future after giving
 * it; bt_future_ref it first if you keep using it, and give a future twice
 * (in one gather, say) only with two references. So nested calls are
 * correct as written, as with Rust's by-value combinators or jansson's
 * "steal" functions:
 *
 *     bt_future *f = bt_timeout(fetch_user(loop, 4), 2000);
 *
 * The taking over holds when the function fails, too (a NULL argument or
 * child, a child of another loop, out of memory): every non-NULL future
 * it was given is then cancelled if still pending and released, without
 * a warning about it. So the line above leaks nothing, whatever happens,
 * and a NULL from fetch_user simply makes f NULL.
 * Every other function borrows the futures it is given: the accessors,
 * bt_future_add_callback, bt_future_cancel, bt_future_set_from,
 * bt_loop_run_until and the like.
 *
 * Structs that can grow
 * Every public config or stats struct begins with `size_t size`, which the
 * caller sets to sizeof the struct, and Baton reads or writes the struct
 * only up to that size: fields past it take their defaults on input and
 * are not written on output. So fields can be appended in a later version
 * without breaking programs built against this header. Set size with the
 * struct's _init where it has one (bt_pool_config_init,
 * bt_pq_options_init: macros that pass your sizeof, and fill the
 * defaults), else with BT_SIZED:
 *
 *     bt_pool_stats st = BT_SIZED(bt_pool_stats);
 *     bt_pool_get_stats(pool, &st);
 *
 * A struct whose size is 0 (never initialised) or smaller than its first
 * version is refused: BT_EINVAL (NULL from a constructor) and a bt_log
 * line saying how to initialise it.
 */
#ifndef BATON_COMMON_H
#define BATON_COMMON_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(BATON_BUILDING) && defined(__GNUC__)
#define BT_EXPORT __attribute__((visibility("default")))
#else
#define BT_EXPORT
#endif

/* A zeroed struct of `type` with its size set (see "Structs that can grow"
 * above): `bt_loop_stats st = BT_SIZED(bt_loop_stats);`. */
#define BT_SIZED(type) ((type){ .size = sizeof(type) })

#if defined(__GNUC__)
#define BT_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define BT_PRINTF(fmt, args)
#endif

/* Error codes: negative errno values where errno has a fitting one, so
 * that a system call's failure can be passed on as -errno unchanged. */
#define BT_EPERM (-EPERM)
#define BT_ENOENT (-ENOENT)
#define BT_EIO (-EIO)
#define BT_EBADF (-EBADF)
#define BT_EAGAIN (-EAGAIN) /* a bounded queue is full; try later */
#define BT_ENOMEM (-ENOMEM)
#define BT_EACCES (-EACCES)
#define BT_EBUSY (-EBUSY)
#define BT_EEXIST (-EEXIST)
#define BT_EINVAL (-EINVAL)
#define BT_ENOSPC (-ENOSPC)
#define BT_EPIPE (-EPIPE)
#define BT_ERANGE (-ERANGE)
#define BT_EDEADLK (-EDEADLK) /* a wait that could never end */
#define BT_ENOSYS (-ENOSYS)
#define BT_EPROTO (-EPROTO)     /* the peer broke the protocol */
#define BT_EMSGSIZE (-EMSGSIZE) /* a size limit was exceeded */
#define BT_ENOTSUP (-ENOTSUP)
#define BT_EADDRINUSE (-EADDRINUSE)
#define BT_ENETUNREACH (-ENETUNREACH)
#define BT_ECONNABORTED (-ECONNABORTED)
#define BT_ECONNRESET (-ECONNRESET)
#define BT_ESHUTDOWN (-ESHUTDOWN) /* the object is shutting down */
#define BT_ETIMEDOUT (-ETIMEDOUT)
#define BT_ECONNREFUSED (-ECONNREFUSED)
#define BT_EHOSTUNREACH (-EHOSTUNREACH)
#define BT_EALREADY (-EALREADY)       /* already settled / already done */
#define BT_EINPROGRESS (-EINPROGRESS) /* still pending */
#define BT_ECANCELED (-ECANCELED)

/* Errors errno has no name for. Far below errno's range, like libuv's. */
#define BT_EDNS (-4001)  /* host name could not be resolved */
#define BT_ETLS (-4002)  /* TLS handshake or certificate verification */
#define BT_ESQL (-4003)  /* the database server reported an error */
#define BT_EHTTP (-4004) /* an HTTP-level failure (bad status, bad reply) */
#define BT_EJOB (-4005)  /* an offloaded job failed without a code */
#define BT_ETYPE (-4006) /* a value read as a type it does not have */

/* A short, static, English description of a BT_E* code. Never NULL; an
 * unknown code gives "unknown error". Thread: any. */
BT_EXPORT const char *bt_strerror(int code);

/* The name of a BT_E* code, such as "BT_ETIMEDOUT". Returns a static
 * string, never NULL and never to be freed: "0" for 0, "BT_E?" for an
 * unknown code. Thread: any. */
BT_EXPORT const char *bt_err_name(int code);

/* ---- Allocation -------------------------------------------------------
 * Every allocation Baton makes goes through these, so that a program (or a
 * test) can substitute its own allocator, or one that fails on purpose.
 * Memory that Baton hands to the caller to free is freed with bt_free. */
typedef void *(*bt_malloc_fn)(size_t size);
typedef void *(*bt_realloc_fn)(void *ptr, size_t size);
typedef void (*bt_free_fn)(void *ptr);

/* Replace the allocator: all three functions, or NULL for any of them to
 * restore malloc/realloc/free (a NULL for one restores all three). Call
 * before any other Baton call and before any thread is started; memory
 * from one allocator must not reach the other. Thread: any, but see
 * above. */
BT_EXPORT void bt_set_allocator(bt_malloc_fn m, bt_realloc_fn r, bt_free_fn f);

/* Thread: any. Return NULL when out of memory, like their libc twins;
 * what they return is the caller's, freed with bt_free (NULL is a no-op
 * for bt_free). A size of 0 allocates 1 byte, so NULL always means out of
 * memory. bt_strdup(NULL) returns NULL. */
BT_EXPORT void *bt_malloc(size_t size);
BT_EXPORT void *bt_calloc(size_t n, size_t size);
BT_EXPORT void *bt_realloc(void *ptr, size_t size);
BT_EXPORT void bt_free(void *ptr);
BT_EXPORT char *bt_strdup(const char *s);
/* printf into a new string. Returns: a new string to free with bt_free,
 * or NULL (out of memory, a NULL fmt, or a formatting error).
 * Thread: any. */
BT_EXPORT char *bt_asprintf(const char *fmt, ...) BT_PRINTF(1, 2);
BT_EXPORT char *bt_vasprintf(const char *fmt, va_list ap) BT_PRINTF(1, 0);

/* ---- Logging -----------------------------------------------------------
 * Baton reports the mistakes it catches (an unread error, a blocked loop,
 * work cancelled at shutdown) through one log handler. The default writes
 * "baton: LEVEL: message" to stderr for BT_LOG_WARN and above. */
typedef enum {
    BT_LOG_DEBUG = 0,
    BT_LOG_INFO = 1,
    BT_LOG_WARN = 2,
    BT_LOG_ERROR = 3,
} bt_log_level;

/* Called with a message that has no trailing newline; msg is only valid
 * during the call. May be called from any thread (the watchdog's, a
 * worker's), so the handler must be thread-safe. */
typedef void (*bt_log_cb)(bt_log_level level, const char *msg, void *arg);

/* Install a handler (NULL restores the default) and the lowest level that
 * reaches it. A call under way on another thread may still use the old
 * handler and arg, so keep an old arg alive until no Baton thread can be
 * logging (the loop and the pools stopped). Thread: any. */
BT_EXPORT void bt_log_set_handler(bt_log_cb cb, void *arg);
BT_EXPORT void bt_log_set_level(bt_log_level min_level);

/* Log through the handler (a NULL fmt is a no-op). Thread: any. */
BT_EXPORT void bt_log(bt_log_level level, const char *fmt, ...) BT_PRINTF(2, 3);

/* ---- Time ------------------------------------------------------------- */

/* Monotonic time in nanoseconds from an arbitrary origin. Thread: any. */
BT_EXPORT uint64_t bt_hrtime(void);

#ifdef __cplusplus
}
#endif
#endif
