/* The loop's insides, shared by core/ and offload/ (never installed). */
#ifndef BATON_LOOP_INTERNAL_H
#define BATON_LOOP_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include <baton/loop.h>

#include "list.h"

/* A unit of work queued on a loop: intrusive, so that futures and pool
 * jobs can embed one and be queued without an allocation. */
typedef struct bt__task bt__task;
typedef void (*bt__task_fn)(bt__task *task);
struct bt__task {
    bt__task *next;
    bt__task_fn run;
};

typedef struct bt__closer {
    struct bt__closer *next;
    bt_fn fn;
    void *arg;
} bt__closer;

/* What core/fiber.c lends a loop on which a fiber has run: the loop calls
 * these and never names fiber.c, so the calls run one way (fibers are
 * built on the loop and futures, not the reverse). */
typedef struct bt__loop_fiber_hooks {
    /* Fill the fiber fields of *out. Loop thread. */
    void (*stats)(const bt_loop *loop, bt_loop_stats *out);
    /* Release the loop's fiber stacks, at the end of bt_loop_free (every
     * fiber has been cancelled and run to its end by then; one that has
     * not is reported and its stack freed without unwinding). Loop thread. */
    void (*free)(bt_loop *loop);
} bt__loop_fiber_hooks;

/* A spin budget: a waiter (a loop waiting for its jobs' completions, a
 * worker waiting for jobs) spins before it sleeps only while that pays.
 * Spinning saves the wakeup (5 to 50 us on a loaded 2-core machine) but
 * burns a core for as long as it lasts: in a ping-pong both sides spin
 * all the time (2 cores, where libuv uses 0.9). So a waiter keeps two
 * decayed sums, the time it spun and the time that went by (its whole
 * time: waiting, asleep, working), and spins only while spun <= share% of
 * the time: the share is the most of a core its spinning may take. A
 * ping-pong then spins through some round trips (about 1.5 us each) and
 * sleeps through the others (tens of microseconds): the slept ones take
 * most of the time, the spun ones (at the default share) are most of
 * the trips. A caller that knows when the awaited work arrived also keeps
 * `gap` (recent waits before it arrived, excluding the wakeup) and sleeps
 * at once when they outlast the spin: sporadic work never pays for a
 * spin. share 100
 * (BT__SPIN_SHARE_FULL) spins every time, as before the budget. Written
 * by one thread at a time (the loop; a lane's lingering worker under the
 * lane's lock). */
typedef struct bt__spin_budget {
    uint64_t spun, total; /* ns, halved past BT__SPIN_WINDOW_NS in all */
    uint64_t last;        /* when the time was last accounted */
    uint64_t gap;         /* ns, a moving average (1/8 weight) */
} bt__spin_budget;

#define BT__SPIN_SHARE_FULL 100u
/* The sums follow the last few milliseconds: a change of traffic is seen
 * within about that. A longer pause counts as this long, so that an idle
 * second does not pay for a long spin afterwards. */
#define BT__SPIN_WINDOW_NS 4000000u

/* Whether to spin (up to limit_ns) before sleeping this time. */
static inline bool bt__spin_pays(const bt__spin_budget *b, unsigned share, uint64_t limit_ns)
{
    if (share >= BT__SPIN_SHARE_FULL)
        return true;
    if (b->gap > limit_ns)
        return false;
    return b->spun * 100 <= b->total * share;
}

/* One wait ended at now, spun ns of it spinning: account it, and the time
 * since the last one. */
static inline void bt__spin_account(bt__spin_budget *b, uint64_t spun, uint64_t now)
{
    uint64_t dt = now > b->last ? now - b->last : 0;
    b->last = now;
    if (dt > BT__SPIN_WINDOW_NS)
        dt = BT__SPIN_WINDOW_NS;
    b->spun += spun;
    b->total += dt > spun ? dt : spun;
    if (b->total > BT__SPIN_WINDOW_NS) {
        b->spun /= 2;
        b->total /= 2;
    }
}

/* The work awaited arrived gap ns after the wait began. */
static inline void bt__spin_gap(bt__spin_budget *b, uint64_t gap)
{
    b->gap = b->gap - b->gap / 8 + gap / 8;
}

typedef struct bt__future_list {
    bt__list head; /* through bt_future.pend, newest first */
    size_t count;
} bt__future_list;

struct bt_loop {
    struct event_base *base;
    bool owns_base;
    bool running;
    bool closing;                 /* bt_loop_free has started */
    _Atomic bool closed_to_posts; /* bt_loop_post refuses from now on */
    _Atomic bool stop_requested;
    /* The thread that runs it, as pthread_self() (an integer on Linux):
     * written by that thread, compared from any, so atomic. */
    _Atomic uintptr_t thread;
    unsigned spin_streak; /* spin hits since libevent last ran */
    uint64_t spin_since;  /* when the first of them began */
    unsigned cb_depth;    /* nesting of bt_loop_enter_cb */

    /* Loop-thread FIFO of tasks to run on the next pass (call_soon and
     * future callbacks). */
    bt__task *ready_head;
    bt__task *ready_tail;
    struct event *ready_ev;
    bool ready_armed;

    /* Cross-thread inbox: an intrusive multi-producer FIFO (Vyukov's):
     * a producer exchanges `inbox_tail` for its task, then links the old
     * tail to it; the loop pops from `inbox_head` in order, without the
     * reversal a LIFO needs. `inbox_stub` stands in when it is empty. The
     * wakeup fd is written by the producer that turns `wake_wanted` from
     * 1 to 0: the loop sets it when it has found the inbox empty and may
     * sleep, and clears it while it spins on the inbox. */
    char pad_inbox[64]; /* the tail and `wake_wanted` have a line
                                    of their own: producers write it on
                                    every push, so no field the loop uses
                                    for anything else may share it */
    _Atomic(bt__task *) inbox_tail;
    _Atomic int wake_wanted;
    /* Producers between their look at `closed_to_posts` and their last
     * touch of the loop (the push and the wakeup write): bt_loop_free
     * waits for none to be left before it frees the inbox and the fd. */
    _Atomic unsigned posters;
    char pad_inbox_end[64];
    bt__task *inbox_head; /* loop thread only */
    unsigned cut_streak;  /* drains in a row that found it cut */
    bt__task inbox_stub;
    int wake_fd;  /* eventfd; wake_wfd == wake_fd */
    int wake_wfd; /* the write end (a pipe where no eventfd) */
    /* The fd is an eventfd watched edge-triggered: every write is an
     * edge, so the loop never reads it (one system call less per
     * wakeup). Else it is read empty at each wakeup. */
    bool wake_edge;
    struct event *wake_ev;

    /* Completions the loop expects from other threads (offloaded jobs in
     * flight). While non-zero and nothing else is ready, the loop spins for
     * up to spin_ns before it sleeps in the kernel. Loop thread only. */
    long expected;
    uint64_t spin_ns;
    /* The share of its waiting time the loop may spend spinning for
     * completions (bt__spin_budget), set by the pools it submits to (the
     * largest of theirs: bt__loop_spin_share); 0 until one does. */
    unsigned spin_share;
    bt__spin_budget spin_budget;
    /* A hand-over of this loop's woke a sleeping worker: the completion
     * is a wakeup away, so the loop sleeps instead of spinning through
     * it (bt__loop_peer_woken). Cleared when a completion comes back. */
    bool peer_woken;
    uint64_t wait_since; /* a wait for completions went on in libevent: */
    uint64_t wait_spun;  /* since when, and how long it spun first */

    bt_loop_stats stats;
    bt__future_list pending; /* every pending future of this loop */
    bt__closer *closers;

    /* What the loop thread is running now, for the stall watchdog:
     * cb_seq is odd while inside a callback. Written by the loop thread
     * only, read by the watchdog thread. */
    _Atomic uint64_t cb_seq;
    _Atomic(const void *) cb_fn;
    _Atomic uint64_t cb_start_ns;
    void *watchdog; /* owned by core/watchdog.c when on */
    void *fibers;   /* owned by core/fiber.c once used */
    /* Set by core/fiber.c with `fibers`, NULL while no fiber has run. */
    const bt__loop_fiber_hooks *fiber_hooks;
};

/* Queue a task on the loop's ready FIFO. Loop thread only. */
void bt__loop_schedule(bt_loop *loop, bt__task *task);

/* Push a task from any thread; wakes the loop if needed. The task's memory
 * must stay valid until it runs. Returns 0 or BT_ESHUTDOWN. */
int bt__loop_push(bt_loop *loop, bt__task *task);

/* bt__loop_push, and *woke tells whether the push had to wake the loop
 * (it was asleep, or about to sleep, in libevent): a pushing thread that
 * expects an answer learns whether the loop is spinning for it. */
int bt__loop_push_woke(bt_loop *loop, bt__task *task, bool *woke);

/* Tell the loop that n more (or, negative, fewer) completions are on their
 * way from other threads. Loop thread (where jobs are submitted and
 * settled): no atomic operation on the hot path. */
static inline void bt__loop_expect(bt_loop *loop, long n)
{
    loop->expected += n;
}

/* A hand-over had to wake a sleeping worker for jobs this loop awaits:
 * their completions come a wakeup later, so until one comes back the
 * loop sleeps in epoll rather than spin for them. Spinning through a
 * wakeup costs a core for its whole length and saves nothing, and on a
 * small machine the woken worker may be queued on the loop's own core:
 * the spin would delay it by the spin's whole length (measured: a job
 * every 100 us to 1 ms came back after 44 us at p50, 17 us without the
 * spin). Loop thread. */
static inline void bt__loop_peer_woken(bt_loop *loop)
{
    loop->peer_woken = true;
}

/* A pool that submits to this loop asks it to spin for completions for
 * up to share% of its waiting time (BT__SPIN_SHARE_FULL: every time); the
 * largest share asked wins. Loop thread. */
static inline void bt__loop_spin_share(bt_loop *loop, unsigned share)
{
    if (share > loop->spin_share)
        loop->spin_share = share;
}

/* Run one task with the watchdog's bracket around it. */
static inline void bt__loop_run_task(bt_loop *loop, bt__task *t, const void *name)
{
    bt_loop_enter_cb(loop, name);
    t->run(t);
    bt_loop_leave_cb(loop);
}

#endif
