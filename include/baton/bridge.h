/* Baton: the sync bridge, from a plain thread into a loop.
 *
 * A thread-per-request program (a legacy handler, a library callback on a
 * thread of its own) calls into Baton and waits, like asyncio's
 * run_coroutine_threadsafe(coro, loop).result(timeout):
 *
 *   static bt_future *fetch_user(bt_loop *loop, void *arg)
 *   {
 *       return my_db_query(loop, arg);  // runs on the loop thread
 *   }
 *   bt_bridge_result r = BT_SIZED(bt_bridge_result);
 *   int rc = bt_bridge_call(loop, fetch_user, "42", 2000, &r);
 *   if (rc == 0) use(r.value); else fprintf(stderr, "%s\n", r.message);
 *   bt_bridge_result_clear(&r);
 *
 * Called from the loop's own thread it would wait for itself forever: it
 * returns BT_EDEADLK at once instead.
 */
#ifndef BATON_BRIDGE_H
#define BATON_BRIDGE_H

#include <stdint.h>

#include <baton/common.h>
#include <baton/future.h>
#include <baton/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What bt_bridge_call hands back. */
typedef struct {
    size_t size;        /* sizeof this struct, set by the caller (common.h) */
    void *value;        /* the future's value on success (now the caller's) */
    bt_destroy_fn dtor; /* its destructor (may be NULL) */
    char *message;      /* on failure: the error text (bt_free it) */
} bt_bridge_result;

/* Run fn(loop, arg) on the loop thread, then block the calling thread until
 * the future fn returns settles, or timeout_ms passes (0: no limit).
 * On a timeout the future is cancelled on the loop (its late value is
 * destroyed there) and the call returns BT_ETIMEDOUT.
 * Returns 0 (out->value holds the value, taken from the future), the
 * future's error code (out->message says why), BT_ECANCELED, BT_ETIMEDOUT,
 * BT_EDEADLK when called from the loop's own thread, BT_ESHUTDOWN when the
 * loop is being freed, BT_EINVAL for a NULL argument, an unset out->size
 * (BT_SIZED, see common.h; out is then untouched) or when fn returned
 * no future, BT_ENOMEM. out is always filled (zeroed first); release it
 * with bt_bridge_result_clear. The loop must be running (or run later) on
 * its own thread. Called from an offloaded job, the wait also ends when
 * the job is cancelled (its future, or its loop or pool shutting down):
 * BT_ECANCELED, so that a job waiting for its own loop cannot hold up
 * bt_loop_free. Thread: any except the loop's. */
BT_EXPORT int bt_bridge_call(bt_loop *loop, bt_main_fn fn, void *arg, uint64_t timeout_ms,
                             bt_bridge_result *out);

/* Destroy the value (with its destructor) and free the message; zeroes
 * r, all but its size. NULL is a no-op. Thread: any. */
BT_EXPORT void bt_bridge_result_clear(bt_bridge_result *r);

#ifdef __cplusplus
}
#endif
#endif
