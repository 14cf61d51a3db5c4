/* Baton: fibers, for sequential async code (bt_async / bt_await).
 *
 * bt_async(loop, fn, arg) runs fn on a fiber: a stack of its own on the
 * loop's thread. Inside, bt_await(f, &value) suspends the fiber until f
 * settles and returns its outcome, while the loop runs everything else:
 *
 *     static bt_future *handler(bt_loop *loop, void *arg)
 *     {
 *         bt_pq_result *r;
 *         int rc = bt_await(bt_pq_query(pool, "SELECT 1", 0, NULL), (void **)&r);
 *         if (rc != 0)
 *             return bt_future_new_error(loop, rc, "%s", bt_await_error());
 *         ...
 *         return bt_future_new_value(loop, NULL, NULL);
 *     }
 *     bt_future *f = bt_async(loop, handler, NULL);
 *
 * Rules (docs/fibers.md has the long form)
 * - A fiber runs on its loop's thread only, and is suspended only inside
 *   bt_await. Between two awaits nothing else runs on the loop: state the
 *   fiber reads there is as consistent as in a callback.
 * - Everything on the fiber's stack stays valid across an await; pointers
 *   into it may be handed to futures the fiber awaits, with one exception:
 *   a pool job. A cancelled fiber's await returns at once, and the fiber
 *   unwinds, while a job already running goes on; so give a job its own
 *   copy (bt_to_thread_owned / bt_pool_submit_owned), never a pointer into
 *   the fiber's stack.
 * - Cancelling the future bt_async returned makes the pending bt_await
 *   (and every later one) return BT_ECANCELED at once, and cancels what it
 *   was awaiting. The fiber unwinds by returning; its future then settles
 *   cancelled. bt_loop_free cancels suspended fibers the same way and runs
 *   them until they return.
 * - Stacks are fixed-size (bt_loop_set_fiber_stack), with a 64 KiB guard: an
 *   overflow kills the process with a message naming the fiber's function.
 * - Never await on a pool worker (a bt_to_thread job): it is no fiber, and
 *   bt_await returns BT_EINVAL there.
 */
#ifndef BATON_FIBER_H
#define BATON_FIBER_H

#include <stdbool.h>
#include <stddef.h>

#include <baton/common.h>
#include <baton/compose.h>
#include <baton/future.h>
#include <baton/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Run fn(loop, arg) on a new fiber of loop's thread, starting on a later
 * turn of the loop. fn returns a future (new reference) whose outcome
 * becomes the fiber's: bt_future_new_value(...), bt_future_new_error(...)
 * or any future (a pending one is adopted: cancelling the fiber's future
 * then cancels it). A NULL return fails the fiber with BT_ENOMEM. A fiber
 * cancelled before it started never runs fn.
 * Returns: new reference, or NULL (a NULL loop or fn, not on the loop's
 * thread, the loop is being freed, out of memory or of address space for
 * the stack; fn will not be called). Thread: the loop's. */
BT_EXPORT bt_future *bt_async(bt_loop *loop, bt_start_fn fn, void *arg);

/* Suspend the current fiber until f settles. Takes over the caller's
 * reference to f, whatever the outcome. Returns 0 when f has a value:
 * with value non-NULL the value moves to *value (the caller frees it as
 * f's producer documents), with value NULL it is destroyed. Otherwise
 * returns f's error code (its message in bt_await_error), or BT_ECANCELED
 * when f was cancelled or when the fiber itself was cancelled (then f is
 * cancelled too, if still pending). *value is NULL unless 0 is returned.
 * A NULL f, a future of another loop: BT_EINVAL. Outside a fiber:
 * BT_EINVAL and an ERROR log line, never a crash (f is still consumed).
 * Out of memory: BT_ENOMEM. Thread: a fiber of f's loop. */
BT_EXPORT int bt_await(bt_future *f, void **value);

/* The message of the current fiber's last failed bt_await: the producer's
 * message, "cancelled", or why the arguments were refused. Returns:
 * borrowed, valid until the next bt_await on this fiber or its end; NULL
 * if the last await succeeded, or outside a fiber. Thread: the fiber's. */
BT_EXPORT const char *bt_await_error(void);

/* True when called on a fiber (from fn or anything it calls). Thread: any. */
BT_EXPORT bool bt_in_fiber(void);

/* The stack size of the loop's fibers started from now on, in bytes,
 * rounded up to whole pages; at least 16 KiB. The fiber's own record (a
 * few hundred bytes) sits at the top of it. The default is
 * BT_FIBER_STACK_DEFAULT (see docs/fibers.md for what was measured).
 * Stacks are mapped lazily: a fiber costs the pages it touches, plus one
 * 64 KiB guard of address space. Returns 0, or BT_EINVAL (a NULL loop, a
 * size under 16 KiB or over 1 GiB). Thread: the loop's. */
#define BT_FIBER_STACK_DEFAULT (64u * 1024u)
BT_EXPORT int bt_loop_set_fiber_stack(bt_loop *loop, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif
