/* Baton: futures.
 *
 * A future is pending, then settles exactly once with one of: a value, an
 * error (a BT_E* code and a message), or cancellation. It belongs to a loop;
 * it is settled and its callbacks run on that loop's thread, always from the
 * loop, never inside the call that registered them (a callback added to an
 * already-settled future runs on a later turn). Callbacks run in the order
 * they were added.
 *
 * Ownership
 * - Futures are reference counted. bt_future_ref / bt_future_unref may be
 *   called from any thread; everything else is loop-thread only.
 * - A function that builds a future from futures you give it (then, after,
 *   the combinators, bt_group_add) takes over your reference to them; all
 *   other functions borrow. See "Ownership" in <baton/common.h>.
 * - While a future is pending its loop holds a reference of its own, so a
 *   producer may keep a plain pointer until it settles the future, and a
 *   consumer may drop its reference without the future vanishing under the
 *   producer. The loop drops that reference after the callbacks have run.
 * - A value is a void pointer with a destructor (which may be NULL). The
 *   future owns the value and calls the destructor when it is freed, unless
 *   a consumer took the value with bt_future_take_value.
 *
 * Cancellation
 * - bt_future_cancel is a request. If the producer installed a cancel hook
 *   with bt_future_on_cancel, the hook runs; a producer that can stop at
 *   once settles the future cancelled inside the hook, one that cannot
 *   (a job already running) settles it later. Either way, once cancel has
 *   been requested the future settles as cancelled: a value or error that
 *   arrives afterwards is discarded (the value's destructor runs).
 * - Without a hook, the future is settled cancelled at once.
 *
 * Mistakes it reports (through the log handler, at WARN)
 * - A future freed with an error nobody read (bt_future_error,
 *   bt_future_error_message or a combinator that consumed it).
 * - Pending futures left when the loop is freed (they are cancelled).
 */
#ifndef BATON_FUTURE_H
#define BATON_FUTURE_H

#include <stdbool.h>

#include <baton/common.h>
#include <baton/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    BT_FUTURE_PENDING = 0,
    BT_FUTURE_VALUE,
    BT_FUTURE_ERROR,
    BT_FUTURE_CANCELLED,
} bt_future_state;

/* Destroys a future's value. */
typedef void (*bt_destroy_fn)(void *value);

/* A settle callback. f is borrowed and settled; take a reference to keep
 * it past the call. */
typedef void (*bt_future_cb)(bt_future *f, void *arg);

/* ---- Life ------------------------------------------------------------- */

/* A new pending future on loop. Returns: new reference, or NULL (out of
 * memory, or the loop is being freed). Thread: the loop's. */
BT_EXPORT bt_future *bt_future_new(bt_loop *loop);

/* Already-settled futures, for returning a plain value or error where a
 * future is expected. bt_future_new_value takes ownership of value even
 * when it fails (the destructor runs). Returns: new reference, or NULL
 * (a NULL loop, out of memory, or the loop is being freed).
 * Thread: the loop's. */
BT_EXPORT bt_future *bt_future_new_value(bt_loop *loop, void *value, bt_destroy_fn dtor);
BT_EXPORT bt_future *bt_future_new_error(bt_loop *loop, int code, const char *fmt, ...)
    BT_PRINTF(3, 4);

/* Thread: any. bt_future_ref returns f. NULL is a no-op for both. */
BT_EXPORT bt_future *bt_future_ref(bt_future *f);
BT_EXPORT void bt_future_unref(bt_future *f);

/* The future's loop. Returns: borrowed; dangling once the loop is freed
 * (a future may outlive its loop, settled, to be read and unreferenced);
 * NULL for a NULL future. Thread: any. */
BT_EXPORT bt_loop *bt_future_loop(const bt_future *f);

/* ---- Producer side ------------------------------------------------------
 * Each returns 0, or BT_EALREADY if the future had already settled (the
 * value is then destroyed: ownership passed in either way), or BT_EINVAL
 * for a NULL future. Settling runs no callback inside the call: callbacks
 * are scheduled for the loop. Thread: the loop's. */

BT_EXPORT int bt_future_set_value(bt_future *f, void *value, bt_destroy_fn dtor);
/* code must be negative (a BT_E* code; a code >= 0 is a producer bug and
 * fails the future with BT_EINVAL instead); fmt may be NULL, which uses
 * bt_strerror(code). The message is copied. */
BT_EXPORT int bt_future_set_error(bt_future *f, int code, const char *fmt, ...) BT_PRINTF(3, 4);
BT_EXPORT int bt_future_set_errorv(bt_future *f, int code, const char *fmt, va_list ap)
    BT_PRINTF(3, 0);
BT_EXPORT int bt_future_set_cancelled(bt_future *f);

/* Move the outcome of src (settled) into f: value (taken from src), error
 * (marks src's error read) or cancellation. Returns as the setters; a
 * NULL src fails f with BT_EINVAL ("no source future") and returns 0. */
BT_EXPORT int bt_future_set_from(bt_future *f, bt_future *src);

/* The producer's cancel hook, called once on the loop thread when
 * bt_future_cancel is first called on the pending future (or when its loop
 * is freed). One hook per future; a second call replaces it. A NULL f is
 * a no-op. Thread: the loop's. */
typedef void (*bt_cancel_hook)(bt_future *f, void *arg);
BT_EXPORT void bt_future_on_cancel(bt_future *f, bt_cancel_hook hook, void *arg);

/* True once cancellation was requested; false for NULL. Thread: any (an
 * atomic read), so a worker can poll it through its job. */
BT_EXPORT bool bt_future_cancel_requested(const bt_future *f);

/* ---- Consumer side -------------------------------------------------- */

/* Thread: any (an atomic read of the state). A NULL future reads as
 * BT_FUTURE_PENDING, and is not settled. */
BT_EXPORT bt_future_state bt_future_get_state(const bt_future *f);
BT_EXPORT bool bt_future_is_settled(const bt_future *f);

/* The outcome as a code: 0 for a value, the error code for an error,
 * BT_ECANCELED when cancelled, BT_EINPROGRESS while pending, BT_EINVAL for
 * NULL. Reading an error marks it as read. */
BT_EXPORT int bt_future_error(bt_future *f);

/* The error message (for an error; for a cancelled future "cancelled", or
 * what its producer said, e.g. "cancelled; the job is still running on the
 * pool"), or NULL if the future
 * has none. Marks the error as read. Returns: borrowed, valid while f
 * lives. NULL for a NULL future. Thread: the loop's. */
BT_EXPORT const char *bt_future_error_message(bt_future *f);

/* The value. Returns: borrowed, valid while f lives and nobody takes it;
 * NULL if the future has no value (pending, failed, cancelled, taken, or
 * a NULL future). Thread: the loop's. */
BT_EXPORT void *bt_future_value(const bt_future *f);

/* Take ownership of the value: the future will not destroy it, and the
 * caller must (with the destructor it was set with). Returns the value
 * (NULL if none, already taken, or a NULL future). Thread: the loop's. */
BT_EXPORT void *bt_future_take_value(bt_future *f);

/* Run cb(f, arg) on the loop thread once f settles (next turn if it already
 * has). Returns 0, BT_EINVAL (a NULL f or cb), BT_ENOMEM (cb will not be
 * called).
 * Thread: the loop's. */
BT_EXPORT int bt_future_add_callback(bt_future *f, bt_future_cb cb, void *arg);

/* Request cancellation (see the top of this file). Returns 0 if the request
 * was made, BT_EALREADY if f had already settled, BT_EINVAL for NULL.
 * Thread: the loop's. */
BT_EXPORT int bt_future_cancel(bt_future *f);

/* ---- Chaining --------------------------------------------------------- */

/* The function of a chain: receives the settled source future (borrowed)
 * and returns a future (new reference) whose outcome becomes the chain's.
 * To return a plain value, return bt_future_new_value(...); to fail,
 * bt_future_new_error(...). Returning NULL fails the chain with BT_ENOMEM.
 * The chain takes the returned future's value, so return a future of your
 * own, not one that other consumers share. */
typedef bt_future *(*bt_then_fn)(bt_future *src, void *arg);

/* When f has a value, call fn(f, arg) and adopt the future it returns. If f
 * fails or is cancelled, fn is not called and the result takes f's outcome
 * (reading f's error). Cancelling the result cancels f, or the future fn
 * returned. Takes over f (see common.h), also on failure: f is then
 * cancelled if pending and released. Returns: new reference, or NULL (a
 * NULL f or fn, out of memory; fn will not be called). So
 * bt_future_then(bt_gather(...), fn, arg) is correct as written.
 * Thread: the loop's. */
BT_EXPORT bt_future *bt_future_then(bt_future *f, bt_then_fn fn, void *arg);

/* Like bt_future_then, but fn is called on any outcome. Takes over f (see
 * common.h). */
BT_EXPORT bt_future *bt_future_after(bt_future *f, bt_then_fn fn, void *arg);

#ifdef __cplusplus
}
#endif
#endif
