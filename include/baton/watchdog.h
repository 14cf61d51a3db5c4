/* Baton: the stall watchdog and the loop-lag histogram.
 *
 * The guide's first "common mistake" is blocking the event loop: a
 * time.sleep(5), a synchronous library call, a long computation inside a
 * callback stalls every other request. The watchdog is a thread that
 * watches one loop. When a callback runs past a threshold (default 100 ms)
 * it logs a WARN *while the loop is still blocked*, naming the callback
 * (its symbol through dladdr where the symbol is visible: link programs
 * with -rdynamic to name their own non-static functions; otherwise the
 * object and offset), again each time the stall has doubled, and once more
 * when the callback returns, with how long it ran. Both messages go through the log handler (bt_log), so a
 * program or a test can capture them.
 *
 * While it runs, the watchdog also measures loop lag the way Node's
 * monitorEventLoopDelay does: every 20 ms it posts a probe to the loop and
 * records how long the loop took to run it, in a histogram you can read
 * as numbers (bt_watchdog_get_stats) or as text (bt_watchdog_histogram).
 *
 * Off by default, like asyncio's debug mode: bt_watchdog_start turns it on,
 * bt_watchdog_stop off. bt_loop_free stops it. The loop sees callbacks run
 * by Baton itself and by integrations that bracket theirs with
 * bt_loop_enter_cb / bt_loop_leave_cb; a raw libevent callback on an
 * adopted base is invisible to it (its lag still shows in the histogram).
 * A stall is noticed within a quarter of the threshold after it passes the
 * threshold (at most 25 ms later); the reported end duration is accurate
 * to that same tick.
 */
#ifndef BATON_WATCHDOG_H
#define BATON_WATCHDOG_H

#include <stdbool.h>
#include <stdint.h>

#include <baton/common.h>
#include <baton/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BT_WATCHDOG_DEFAULT_MS 100

/* Histogram buckets: bucket i counts lags below bt_watchdog_bucket_limit(i)
 * nanoseconds (and at or above the previous limit); the last bucket has no
 * upper limit. */
#define BT_WATCHDOG_BUCKETS 16

typedef struct {
    size_t size;           /* sizeof this struct, set by the caller (common.h) */
    uint64_t threshold_ns; /* current threshold */
    uint64_t stalls;       /* callbacks caught running past it */
    uint64_t longest_stall_ns;
    uint64_t lag_samples; /* probes that ran */
    uint64_t lag_sum_ns;
    uint64_t lag_max_ns;
    uint64_t lag_buckets[BT_WATCHDOG_BUCKETS];
} bt_watchdog_stats;

/* Start watching loop with a threshold of threshold_ms milliseconds (0 means
 * BT_WATCHDOG_DEFAULT_MS). Starts one thread. Returns 0, BT_EALREADY if the
 * watchdog is already on (use bt_watchdog_set_threshold), BT_EINVAL for a
 * NULL loop, BT_ESHUTDOWN once bt_loop_free has begun, BT_ENOMEM or the
 * pthread_create error as a BT_E* code. Thread: the loop's. */
BT_EXPORT int bt_watchdog_start(bt_loop *loop, uint64_t threshold_ms);

/* Change the threshold (0 means the default). Returns 0, BT_ENOENT if the
 * watchdog is off, BT_EINVAL. Thread: the loop's. */
BT_EXPORT int bt_watchdog_set_threshold(bt_loop *loop, uint64_t threshold_ms);

/* Stop the watchdog and join its thread. Returns 0, BT_ENOENT if it was
 * off, BT_EINVAL. The statistics are gone with it. Thread: the loop's. */
BT_EXPORT int bt_watchdog_stop(bt_loop *loop);

/* True while the watchdog is on; false for NULL. Thread: the loop's. */
BT_EXPORT bool bt_watchdog_is_running(const bt_loop *loop);

/* Copy the statistics into *out (the caller's; set out->size first with
 * BT_SIZED, see common.h). Returns 0, BT_ENOENT if the watchdog is off,
 * BT_EINVAL for a NULL loop or out or an unset size. Thread: the loop's. */
BT_EXPORT int bt_watchdog_get_stats(const bt_loop *loop, bt_watchdog_stats *out);

/* Upper limit of bucket i in nanoseconds; UINT64_MAX for the last bucket
 * and beyond. Thread: any. */
BT_EXPORT uint64_t bt_watchdog_bucket_limit(unsigned i);

/* The lag histogram and stall counts as readable multi-line text.
 * Returns: a new string to free with bt_free, or NULL (watchdog off, out of
 * memory). Thread: the loop's. */
BT_EXPORT char *bt_watchdog_histogram(const bt_loop *loop);

#ifdef __cplusplus
}
#endif
#endif
