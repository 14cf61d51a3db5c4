/* Baton: composing futures (gather, race, any, timeout).
 *
 * asyncio.gather, asyncio.wait(FIRST_COMPLETED) and asyncio.wait_for, for
 * futures. Every combinator here:
 * - takes over the caller's reference to each future it is given (see
 *   "Ownership" in <baton/common.h>): do not unref them after the call,
 *   bt_future_ref one first to keep reading it, and give a future twice
 *   only with two references;
 * - returns a new reference to a new future, or NULL when an argument is
 *   NULL or memory ran out (no callback of the caller's is then involved,
 *   and every non-NULL future given is cancelled if pending and released);
 * - passes cancellation down: cancelling the combinator's future cancels
 *   every child still pending, so the request reaches each producer's hook
 *   (a pool job leaves its queue, a transfer is removed, a query gets a
 *   cancel request). A cancelled combinator settles once its children have
 *   all settled, so when it reports "cancelled", no child is still running
 *   with memory the caller passed in. One kind of child settles while its
 *   work goes on: a pool job that holds none of the caller's memory (no
 *   arg, or an arg given to the pool with bt_pool_submit_owned), which is
 *   abandoned on cancel (see pool.h); a job with a borrowed arg is waited
 *   for;
 * - reads the errors it consumes (a sibling's error that arrives after the
 *   combinator has settled is read and dropped, as asyncio does), so only
 *   errors that reach the caller can be reported as unread.
 * Thread: the loop's, for every function here.
 */
#ifndef BATON_COMPOSE_H
#define BATON_COMPOSE_H

#include <stddef.h>
#include <stdint.h>

#include <baton/common.h>
#include <baton/future.h>
#include <baton/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A function that starts some work and returns its future (new reference),
 * or NULL on failure. Used by bt_semaphore_run and the examples. */
typedef bt_future *(*bt_start_fn)(bt_loop *loop, void *arg);

/* ---- Results of a gather ------------------------------------------------
 * The value of a gather future is a bt_results: the children, in the order
 * given, each settled. The gather future owns it (bt_future_value borrows
 * it; bt_future_take_value takes it, and bt_results_free then frees it).
 * It holds a reference to each child future, so a child's value lives as
 * long as the results do; take one out with bt_results_take.
 * A NULL r reads as empty results (0 children, NULL for each pointer). */
typedef struct bt_results bt_results;

/* Number of children. 0 for NULL. */
BT_EXPORT size_t bt_results_count(const bt_results *r);

/* Child i's value. Returns: borrowed, valid while r lives and nobody takes
 * it; NULL if i is out of range or child i did not settle with a value. */
BT_EXPORT void *bt_results_value(const bt_results *r, size_t i);

/* Take ownership of child i's value (the caller must destroy it). Returns
 * the value, or NULL as bt_results_value. */
BT_EXPORT void *bt_results_take(bt_results *r, size_t i);

/* Child i's outcome as a code (0, an error code, or BT_ECANCELED); reading
 * an error marks it read. BT_ERANGE if i is out of range, BT_EINVAL for
 * NULL. In collect mode, a failed child's error that nobody reads is
 * reported when the results are freed, like any unread error. */
BT_EXPORT int bt_results_error(bt_results *r, size_t i);

/* Child i's error message ("cancelled" for a cancelled child), or NULL.
 * Marks the error read. Returns: borrowed, valid while r lives. */
BT_EXPORT const char *bt_results_error_message(bt_results *r, size_t i);

/* Child i itself (settled). Returns: borrowed, valid while r lives; NULL if
 * out of range. */
BT_EXPORT bt_future *bt_results_future(const bt_results *r, size_t i);

/* How many children did not settle with a value. 0 for NULL. */
BT_EXPORT size_t bt_results_failed(const bt_results *r);

/* Free results taken out of a gather future. NULL is a no-op. */
BT_EXPORT void bt_results_free(bt_results *r);

/* ---- gather -------------------------------------------------------------- */

typedef enum {
    /* The first child to fail settles the gather with that child's error
     * (code and message; a child cancelled by someone else counts as a
     * failure with BT_ECANCELED) and cancels every sibling still pending.
     * The gather settles at once: a sibling whose producer cannot stop at
     * once (a job already running) finishes later, in the background. Use a
     * task group (<baton/group.h>) to wait for it. */
    BT_GATHER_FAIL_FAST = 0,
    /* Wait for every child and report each outcome, value or error, in
     * the results (asyncio's return_exceptions=True). The gather itself
     * then always settles with a value, unless it is cancelled. */
    BT_GATHER_COLLECT = 1,
} bt_gather_mode;

/* A future of all n children's results, in order: its value is a
 * bt_results (see above). n == 0 gives a future that settles with empty
 * results. children may hold the same future twice (with a reference for
 * each). Takes over each child (see common.h), also on failure. Returns:
 * new reference, or NULL (NULL loop, NULL children with n > 0, a NULL
 * child, a child of another loop, an unknown mode, out of memory). */
BT_EXPORT bt_future *bt_gather(bt_loop *loop, bt_future *const *children, size_t n,
                               bt_gather_mode mode);

/* ---- race and any ------------------------------------------------------ */

/* The first child to settle decides: its value (moved out of the child) or
 * its error becomes the race's, and the others are cancelled. A child that
 * someone else cancelled fails the race with BT_ECANCELED. If several
 * children settle in the same turn, the one whose callback runs first wins
 * (the one that settled first). n == 0 gives a future failed with
 * BT_EINVAL. Takes over each child (see common.h), also on failure.
 * Returns: new reference, or NULL as bt_gather. */
BT_EXPORT bt_future *bt_race(bt_loop *loop, bt_future *const *children, size_t n);

/* The first child to settle with a value wins (its value is moved out of
 * it) and the others are cancelled. If every child fails, the result fails
 * with the first child's error code and a message that says all failed.
 * n == 0 gives a future failed with BT_EINVAL. Takes over each child (see
 * common.h), also on failure. Returns: new reference, or NULL as
 * bt_gather. */
BT_EXPORT bt_future *bt_any(bt_loop *loop, bt_future *const *children, size_t n);

/* ---- timeout --------------------------------------------------------------- */

/* asyncio.wait_for: a future that takes f's outcome if f settles within ms
 * milliseconds. Otherwise f is cancelled, and once it has settled the
 * result fails with BT_ETIMEDOUT ("timed out after N ms"). If f has already
 * settled when the timer fires (both in the same turn), f's outcome wins.
 * Cancelling the result cancels f. Takes over f (see common.h), also on
 * failure. Returns: new reference, or NULL (NULL f, out of memory). So
 * bt_timeout(fetch_user(loop, 4), 2000) is correct as written. */
BT_EXPORT bt_future *bt_timeout(bt_future *f, uint64_t ms);

#ifdef __cplusplus
}
#endif
#endif
