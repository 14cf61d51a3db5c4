/* Baton: the event loop.
 *
 * A bt_loop wraps one libevent event_base and belongs to the thread that
 * runs it. Every function here is loop-thread only unless it says "any
 * thread". The any-thread doors are bt_loop_post, bt_loop_stop and
 * bt_loop_wakeup.
 */
#ifndef BATON_LOOP_H
#define BATON_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include <baton/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;
typedef struct bt_loop bt_loop;
typedef struct bt_future bt_future;

/* A plain callback: call_soon, post, closers. */
typedef void (*bt_fn)(void *arg);

/* Create a loop with a new event_base of its own.
 * Thread: any; the loop then belongs to the thread that runs it.
 * Returns: a new loop to free with bt_loop_free, or NULL (out of memory, or
 * the system refused an eventfd). */
BT_EXPORT bt_loop *bt_loop_new(void);

/* Create a loop on an event_base the caller already has, so a libevent
 * program can take Baton in gradually. The base stays the caller's: Baton
 * adds two internal events to it and removes them in bt_loop_free, which
 * does not free the base. The program may keep running the base itself
 * (event_base_dispatch); Baton's callbacks run from it.
 * Thread: the base's thread. Returns: a new loop to free with
 * bt_loop_free, or NULL (a NULL base, out of memory). */
BT_EXPORT bt_loop *bt_loop_adopt(struct event_base *base);

/* The loop's event_base. Returns: borrowed, valid until bt_loop_free;
 * NULL for a NULL loop. */
BT_EXPORT struct event_base *bt_loop_base(const bt_loop *loop);

/* Run the loop until bt_loop_stop is called. Thread: the loop's (the
 * calling thread becomes the loop's thread). Returns 0, or BT_EINVAL for a
 * NULL loop, BT_EBUSY if the loop is already running or is being freed. */
BT_EXPORT int bt_loop_run(bt_loop *loop);

/* Run the loop until f has settled and the callbacks it had then have run
 * (or bt_loop_stop is called). f is borrowed. Returns 0 once f has settled
 * (read its outcome with bt_future_error), BT_ESHUTDOWN if the loop was
 * stopped first, BT_EINVAL for NULL or a future of another loop, BT_EBUSY
 * if already running. Thread: the loop's. */
BT_EXPORT int bt_loop_run_until(bt_loop *loop, bt_future *f);

/* Make bt_loop_run / bt_loop_run_until return after the current callback.
 * NULL is a no-op. Thread: any. */
BT_EXPORT void bt_loop_stop(bt_loop *loop);

/* True if the calling thread is the loop's thread; false for NULL.
 * Thread: any. */
BT_EXPORT bool bt_loop_is_current(const bt_loop *loop);

/* Free the loop. Work still pending is not dropped: closers run (the
 * offload pool cancels queued jobs and waits for running ones), every
 * pending future is cancelled and its callbacks run, posted and scheduled
 * calls run, and the count of what was cancelled is logged at WARN.
 * Timers (bt_timer) are the caller's: free them before the loop.
 * Thread: the loop's, while the loop is not running (called from one of
 * its callbacks it logs an error and does nothing). NULL is a no-op. */
BT_EXPORT void bt_loop_free(bt_loop *loop);

/* Call fn(arg) on the loop thread on a later turn, after the callbacks
 * already scheduled. Returns 0, BT_EINVAL, BT_ENOMEM, or BT_ESHUTDOWN once
 * bt_loop_free has started (fn is then never called). Thread: the loop's. */
BT_EXPORT int bt_loop_call_soon(bt_loop *loop, bt_fn fn, void *arg);

/* Call fn(arg) on the loop thread, from any thread. Wakes the loop; a burst
 * of posts costs one wakeup, not one each. Calls from one thread run in the
 * order they were posted. Returns 0, BT_EINVAL, BT_ENOMEM, or BT_ESHUTDOWN
 * once bt_loop_free has passed its closers (fn is then never called).
 * Posts made while the closers run still run. The loop's memory is gone
 * once bt_loop_free returns, so a program must stop its posting threads
 * before that, typically from a closer (see bt_loop_add_closer): a post
 * that races the end of bt_loop_free is a use after free. A post that is
 * under way when bt_loop_free starts is waited for: fn may itself end the
 * loop (stop it, so that its thread frees it at once) without racing the
 * poster's wakeup. Thread: any. */
BT_EXPORT int bt_loop_post(bt_loop *loop, bt_fn fn, void *arg);

/* Register fn(arg) to run at the start of bt_loop_free, before pending
 * futures are cancelled (the offload pool uses it to cancel its jobs). Runs
 * in reverse order of registration; closers registered while the closers
 * run (or while what they post drains) run too. Returns 0, BT_EINVAL for
 * a NULL loop or fn, BT_ENOMEM, or BT_ESHUTDOWN once the closers are done
 * (fn is then never called). Thread: the loop's. */
BT_EXPORT int bt_loop_add_closer(bt_loop *loop, bt_fn fn, void *arg);
/* Remove a closer added with the same fn and arg. Returns 0, BT_ENOENT if
 * there is none, or BT_EINVAL for a NULL loop. Thread: the loop's. */
BT_EXPORT int bt_loop_remove_closer(bt_loop *loop, bt_fn fn, void *arg);

/* Counters, for tests and metrics: copies them into *out (the caller's).
 * Set out->size first (BT_SIZED, see common.h). Returns 0, or BT_EINVAL for
 * a NULL loop or out or an unset size. Thread: the loop's. */
typedef struct {
    size_t size;                /* sizeof this struct, set by the caller (common.h) */
    uint64_t wakeups;           /* times the wakeup fd woke the loop */
    uint64_t posted_run;        /* tasks from other threads run */
    uint64_t spin_hits;         /* completions caught while spinning */
    uint64_t pending;           /* futures pending now */
    uint64_t fibers_alive;      /* fibers started and not yet returned */
    uint64_t fiber_stack_bytes; /* address space mapped for fiber stacks,
                                   in use or kept for reuse (resident
                                   memory is the pages touched) */
} bt_loop_stats;
BT_EXPORT int bt_loop_get_stats(const bt_loop *loop, bt_loop_stats *out);

/* How long the loop polls for completions it expects from worker threads
 * before it sleeps in the kernel (default 30 us; 0 turns it off). Spinning
 * trades a little CPU for a lower round-trip latency. NULL is a no-op.
 * Thread: the loop's. */
BT_EXPORT void bt_loop_set_spin(bt_loop *loop, uint64_t usec);

/* ---- Timers ----------------------------------------------------------- */

typedef struct bt_timer bt_timer;
typedef void (*bt_timer_cb)(bt_timer *timer, void *arg);

/* A timer that calls cb(timer, arg) on the loop thread. Stopped until
 * bt_timer_start. Returns: a new timer to free with bt_timer_free before
 * its loop is freed, or NULL (a NULL loop or cb, out of memory).
 * Thread: the loop's, as for every timer function. */
BT_EXPORT bt_timer *bt_timer_new(bt_loop *loop, bt_timer_cb cb, void *arg);

/* Fire after timeout_ms, then every repeat_ms if repeat_ms > 0. Restarting
 * a running timer resets it. Returns 0, BT_EINVAL (NULL, or a timer
 * already freed from inside its own callback), or BT_ENOMEM if libevent
 * could not add the event. */
BT_EXPORT int bt_timer_start(bt_timer *t, uint64_t timeout_ms, uint64_t repeat_ms);
/* Stop the timer (it stays allocated, and can be started again). NULL is
 * a no-op. */
BT_EXPORT void bt_timer_stop(bt_timer *t);
/* True while the timer is started and has not fired for the last time;
 * false for NULL. */
BT_EXPORT bool bt_timer_is_active(const bt_timer *t);
/* Stops and frees; safe inside the timer's own callback. NULL is a no-op. */
BT_EXPORT void bt_timer_free(bt_timer *t);

/* A future that settles with a NULL value after ms milliseconds.
 * Cancelling it stops the timer. Returns: new reference, or NULL (a NULL
 * loop, out of memory, the loop is being freed). Thread: the loop's. */
BT_EXPORT bt_future *bt_sleep(bt_loop *loop, uint64_t ms);

/* ---- asyncio.run ------------------------------------------------------ */

/* The main function of bt_run: returns a future (new reference), or NULL
 * on failure. */
typedef bt_future *(*bt_main_fn)(bt_loop *loop, void *arg);

/* Create a loop, call main(loop, arg), run the loop until the future it
 * returns settles, then free the loop (cancelling whatever is left).
 * Returns 0 when the future settled with a value (the value is destroyed),
 * the future's error code when it failed (its message is logged at ERROR
 * unless the main function or its callbacks read it), BT_ECANCELED when it
 * was cancelled, BT_ESHUTDOWN if something called bt_loop_stop first,
 * BT_ENOMEM if the loop could not be made, BT_EINVAL if main returned NULL.
 * Thread: any; the calling thread runs the loop. */
BT_EXPORT int bt_run(bt_main_fn main_fn, void *arg);

/* ---- For integrations ------------------------------------------------
 * Code that runs callbacks from its own libevent events (an HTTP server's
 * handler, a socket callback) brackets them with these, so the stall
 * watchdog can see the loop turn and name the callback. Cheap: two relaxed
 * atomic stores each. A NULL loop is a no-op, and so is a leave without
 * an enter. Thread: the loop's. */
BT_EXPORT void bt_loop_enter_cb(bt_loop *loop, const void *fn);
BT_EXPORT void bt_loop_leave_cb(bt_loop *loop);

#ifdef __cplusplus
}
#endif
#endif
