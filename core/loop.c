/* The loop: a libevent event_base plus two queues.
 *
 * DESIGN
 * - The ready FIFO (loop thread only) holds call_soon calls and the
 *   callbacks of settled futures. One libevent event, ready_ev, drains it.
 *   The first task scheduled in a pass activates ready_ev, so it runs in
 *   the same libevent pass (a worker's completion reaches its callback
 *   without another trip through epoll). Tasks scheduled while the FIFO is
 *   being drained wait for the next pass behind a zero timeout, so that a
 *   chain of call_soon calls cannot starve sockets and timers (asyncio runs
 *   only what was ready when the iteration began, for the same reason).
 * - The inbox (any thread -> loop) is Vyukov's intrusive multi-producer
 *   FIFO, its tail on a cache line of its own. A producer pushes a task
 *   with one exchange on the tail and one store that links the previous
 *   tail to it; the loop pops tasks in order, one at a time, so a burst
 *   of N completions is walked once, each prefetched while the one
 *   before it runs (a LIFO taken whole must first be reversed: a walk
 *   through N cold tasks before the first can run). A task is run only
 *   once its successor is linked, or once the stub has been pushed
 *   behind it, so no producer writes into a task that has already run.
 *   Between a producer's exchange and its link the queue is cut; the
 *   loop does not wait for the link (the producer may have been
 *   preempted in between), it comes back on the next libevent pass
 *   (yielding the CPU once that has happened 16 times in a row).
 *   While it runs the inbox, the loop runs the ready FIFO every 16 tasks
 *   and at the end: a completion's callbacks run while its future is
 *   still in the cache, not after thousands of others have pushed it out.
 * - Wakeups: `wake_wanted` is 1 when the loop has found the inbox empty
 *   and may sleep in epoll. The producer that turns it from 1 to 0
 *   writes the wakeup fd; the others skip the system call. The loop sets
 *   it when a drain finds the inbox empty and then looks once more; a
 *   producer pushes and then reads it. Both sides use sequentially
 *   consistent operations (a Dekker handshake), so either the producer
 *   sees 1 and writes, or the loop sees the task. The loop reads the fd
 *   before it drains, so a write is never left for a drain that has
 *   already passed; an eventfd on epoll is watched edge-triggered and
 *   never read (each write is a new edge, so a write during a drain
 *   wakes the loop once more). No lock is ever taken on this path.
 * - Freeing: a producer's push may hand over the task that ends the loop
 *   (an HTTP worker's shutdown, a pool's last completion), and the loop
 *   may be freed before that producer has written the wakeup fd. So a
 *   producer counts itself in `posters` from before it checks
 *   `closed_to_posts` to after its write, and bt_loop_free, once it has
 *   closed the loop to posts, waits for the count to reach 0.
 * - Spinning: while completions are expected from other threads (see
 *   bt__loop_expect) the loop polls the inbox for up to spin_ns before it
 *   sleeps in epoll, with `wake_wanted` at 0, so producers skip the write;
 *   only while its spin budget allows (bt__spin_budget: spinning no more
 *   than the share of its time that its pools set), and not after a pool
 *   had to wake a sleeping worker for it (bt__loop_peer_woken) until a
 *   completion comes back.
 */
#include "config.h"

#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>
#ifdef HAVE_SYS_EVENTFD_H
#include <sys/eventfd.h>
#endif

#include <baton/future.h>

#include "future-internal.h"
#include "loop-internal.h"
#include "sized.h"

#define BT_DEFAULT_SPIN_NS 30000u
#define INBOX_READY_EVERY 16   /* a power of two */
#define INBOX_PREFETCH_LINES 4 /* a pool job: 256 bytes on a cache line */
#define SPIN_STREAK_MAX 16
#define SPIN_PASS_NS 250000u /* libevent polls at least this often */
#define CUT_YIELD_AFTER 16   /* passes with the inbox cut before yielding */

/* ---- Wakeup fd --------------------------------------------------------- */

static int wake_open(bt_loop *loop)
{
#ifdef HAVE_SYS_EVENTFD_H
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd >= 0) {
        loop->wake_fd = loop->wake_wfd = fd;
        return 0;
    }
#endif
    int p[2];
    if (pipe(p) != 0)
        return -errno;
    for (int i = 0; i < 2; i++) {
        fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_NONBLOCK);
        fcntl(p[i], F_SETFD, FD_CLOEXEC);
    }
    loop->wake_fd = p[0];
    loop->wake_wfd = p[1];
    return 0;
}

static void wake_write(bt_loop *loop)
{
    uint64_t one = 1;
    ssize_t n;
    do
        n = write(loop->wake_wfd, &one, loop->wake_fd == loop->wake_wfd ? sizeof one : 1);
    while (n < 0 && errno == EINTR);
    /* EAGAIN means the counter or pipe is already full: the loop will wake. */
}

static void wake_drain(bt_loop *loop)
{
    char buf[64];
    if (loop->wake_fd == loop->wake_wfd) { /* an eventfd: one read resets it */
        ssize_t n;
        do
            n = read(loop->wake_fd, buf, sizeof(uint64_t));
        while (n < 0 && errno == EINTR);
        return;
    }
    while (read(loop->wake_fd, buf, sizeof buf) > 0)
        ;
}

/* ---- Inbox -------------------------------------------------------------- */

static void inbox_push(bt_loop *loop, bt__task *task)
{
    __atomic_store_n(&task->next, NULL, __ATOMIC_RELAXED);
    bt__task *prev = atomic_exchange(&loop->inbox_tail, task);
    __atomic_store_n(&prev->next, task, __ATOMIC_RELEASE);
}

int bt__loop_push_woke(bt_loop *loop, bt__task *task, bool *woke)
{
    *woke = false;
    /* Counted in before the look at `closed_to_posts`, out after the
     * wakeup write (both sequentially consistent, as is bt_loop_free's
     * store and wait): the task this pushes may be the one that ends the
     * loop, and bt_loop_free must not close the fd or free the loop under
     * a producer that has not finished. */
    atomic_fetch_add(&loop->posters, 1);
    int rc = BT_ESHUTDOWN;
    if (!atomic_load(&loop->closed_to_posts)) {
        inbox_push(loop, task);
        /* The exchange above and this load are both sequentially
         * consistent: see the DESIGN note on wakeups. */
        if (atomic_load(&loop->wake_wanted) && atomic_exchange(&loop->wake_wanted, 0)) {
            wake_write(loop);
            *woke = true;
        }
        rc = 0;
    }
    atomic_fetch_sub_explicit(&loop->posters, 1, memory_order_release);
    return rc;
}

int bt__loop_push(bt_loop *loop, bt__task *task)
{
    bool woke;
    return bt__loop_push_woke(loop, task, &woke);
}

/* Pop the oldest task, or NULL: *cut is set when tasks are queued but
 * cannot be reached yet (a producer is between its exchange and its
 * link). Loop thread. */
static bt__task *inbox_pop(bt_loop *loop, bool *cut)
{
    bt__task *stub = &loop->inbox_stub;
    bt__task *head = loop->inbox_head;
    bt__task *next = __atomic_load_n(&head->next, __ATOMIC_ACQUIRE);
    if (head == stub) {
        if (next == NULL) {
            *cut = atomic_load(&loop->inbox_tail) != stub;
            return NULL;
        }
        loop->inbox_head = head = next;
        next = __atomic_load_n(&head->next, __ATOMIC_ACQUIRE);
    }
    if (next == NULL) {
        /* head is the last task linked: it may run only once it is not the
         * tail any more (else a producer would link into it after it ran):
         * push the stub behind it. */
        if (atomic_load(&loop->inbox_tail) != head) {
            *cut = true;
            return NULL;
        }
        inbox_push(loop, stub);
        next = __atomic_load_n(&head->next, __ATOMIC_ACQUIRE);
        if (next == NULL) {
            *cut = true; /* a producer got in before the stub */
            return NULL;
        }
    }
    loop->inbox_head = next;
    return head;
}

/* Whether anything is queued (reachable or not). Loop thread. */
static bool inbox_busy(bt_loop *loop)
{
    return loop->inbox_head != &loop->inbox_stub ||
           atomic_load(&loop->inbox_tail) != &loop->inbox_stub;
}

static size_t ready_drain(bt_loop *loop);

/* Run everything in the inbox, oldest first. Returns how many ran. If the
 * queue is cut, comes back on the next libevent pass (*cut, if given, says
 * so) instead of waiting here for a producer that may not be running. */
static size_t inbox_drain_cut(bt_loop *loop, bool *cut_out)
{
    size_t n = 0;
    bool cut = false;
    for (;;) {
        bt__task *t;
        while ((t = inbox_pop(loop, &cut)) != NULL) {
            loop->peer_woken = false; /* what was awaited came back */
            /* Tasks are embedded at the start of their objects (a pool job
             * and its future): start loading the next one while this runs. */
            const char *ahead = (const char *)loop->inbox_head;
            for (int i = 0; i < INBOX_PREFETCH_LINES; i++)
                __builtin_prefetch(ahead + 64 * i, 1);
            bt__loop_run_task(loop, t, (const void *)t->run);
            /* Run what these tasks made ready (a settled future's
             * callbacks) every few tasks, while their memory is still in
             * the cache, rather than after a burst of thousands has pushed
             * it out. */
            if ((++n & (INBOX_READY_EVERY - 1)) == 0 && loop->ready_head != NULL)
                ready_drain(loop);
        }
        if (cut)
            break;
        /* Empty: let producers know they must wake us, then look again. */
        atomic_store(&loop->wake_wanted, 1);
        if (!inbox_busy(loop))
            break;
    }
    if (cut) {
        if (cut_out != NULL) {
            *cut_out = true;
        } else {
            /* Come back on the next pass. A producer cut off for long was
             * preempted between its two steps: give the CPU away rather
             * than poll epoll for its whole time slice. */
            if (++loop->cut_streak > CUT_YIELD_AFTER)
                sched_yield();
            event_active(loop->wake_ev, EV_READ, 0);
        }
    } else {
        loop->cut_streak = 0;
    }
    if (loop->ready_head != NULL)
        ready_drain(loop);
    loop->stats.posted_run += n;
    return n;
}

static size_t inbox_drain(bt_loop *loop)
{
    return inbox_drain_cut(loop, NULL);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bt_loop *loop = arg;
    loop->stats.wakeups++;
    if (!loop->wake_edge)
        wake_drain(loop);
    /* A base the program runs itself: break it, once per bt_loop_stop.
     * Under bt_loop_run the flag is left for run_impl to see and clear. */
    if (!loop->running && atomic_exchange(&loop->stop_requested, false))
        event_base_loopbreak(loop->base);
    inbox_drain(loop);
}

/* ---- Ready FIFO ------------------------------------------------------------- */

void bt__loop_schedule(bt_loop *loop, bt__task *task)
{
    task->next = NULL;
    if (loop->ready_tail != NULL)
        loop->ready_tail->next = task;
    else
        loop->ready_head = task;
    loop->ready_tail = task;
    if (!loop->ready_armed) {
        loop->ready_armed = true;
        event_active(loop->ready_ev, EV_TIMEOUT, 0);
    }
}

/* Run the tasks that were ready when the drain began. Returns how many. */
static size_t ready_drain(bt_loop *loop)
{
    bt__task *t = loop->ready_head;
    loop->ready_head = loop->ready_tail = NULL;
    size_t n = 0;
    while (t != NULL) {
        bt__task *next = t->next;
        bt__loop_run_task(loop, t, (const void *)t->run);
        t = next;
        n++;
    }
    return n;
}

static void on_ready(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bt_loop *loop = arg;
    /* Keep ready_armed set while draining: new tasks wait for the next pass. */
    ready_drain(loop);
    if (loop->ready_head != NULL) {
        static const struct timeval zero = { 0, 0 };
        event_add(loop->ready_ev, &zero);
    } else {
        loop->ready_armed = false;
    }
}

/* ---- Life ---------------------------------------------------------------- */

static bt_loop *loop_init(struct event_base *base, bool owns)
{
    bt_loop *loop = bt_calloc(1, sizeof *loop);
    if (loop == NULL)
        return NULL;
    loop->base = base;
    loop->owns_base = owns;
    bt__list_init(&loop->pending.head);
    atomic_init(&loop->thread, (uintptr_t)pthread_self());
    loop->spin_ns = BT_DEFAULT_SPIN_NS;
    loop->wake_fd = loop->wake_wfd = -1;
    loop->inbox_head = &loop->inbox_stub;
    atomic_init(&loop->inbox_tail, &loop->inbox_stub);
    atomic_init(&loop->wake_wanted, 1);
    atomic_init(&loop->posters, 0);
    if (wake_open(loop) != 0)
        goto fail;
    /* An eventfd on a backend with edge-triggered events (epoll) is never
     * read: each write wakes the loop once, and the counter (which only
     * a read resets) cannot overflow in 2^64 writes. A syscall costs 2.5
     * us on the hypervisor we measured on, a tenth of a slept round trip
     * to a worker. A pipe fills up unless read, and a level-triggered
     * backend would report the fd for ever: both are read. */
    loop->wake_edge =
        loop->wake_fd == loop->wake_wfd && (event_base_get_features(base) & EV_FEATURE_ET) != 0;
    loop->wake_ev = event_new(base, loop->wake_fd,
                              EV_READ | EV_PERSIST | (loop->wake_edge ? EV_ET : 0), on_wake, loop);
    loop->ready_ev = event_new(base, -1, 0, on_ready, loop);
    if (loop->wake_ev == NULL || loop->ready_ev == NULL || event_add(loop->wake_ev, NULL) != 0)
        goto fail;
    return loop;
fail:
    if (loop->wake_ev != NULL)
        event_free(loop->wake_ev);
    if (loop->ready_ev != NULL)
        event_free(loop->ready_ev);
    if (loop->wake_fd >= 0)
        close(loop->wake_fd);
    if (loop->wake_wfd >= 0 && loop->wake_wfd != loop->wake_fd)
        close(loop->wake_wfd);
    bt_free(loop);
    return NULL;
}

BT_EXPORT bt_loop *bt_loop_new(void)
{
    /* Precise timers (a timerfd on Linux): by default libevent waits in
     * whole milliseconds against a cached clock, and a repeating 1 ms
     * timer fired every 4.3 ms at p50 (measured, idle loop); with the flag
     * it is late by under 0.1 ms at p99. */
    struct event_base *base = NULL;
    struct event_config *cfg = event_config_new();
    if (cfg != NULL) {
        event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
        base = event_base_new_with_config(cfg);
        event_config_free(cfg);
    }
    if (base == NULL)
        base = event_base_new();
    if (base == NULL)
        return NULL;
    bt_loop *loop = loop_init(base, true);
    if (loop == NULL)
        event_base_free(base);
    return loop;
}

BT_EXPORT bt_loop *bt_loop_adopt(struct event_base *base)
{
    return base != NULL ? loop_init(base, false) : NULL;
}

BT_EXPORT struct event_base *bt_loop_base(const bt_loop *loop)
{
    return loop != NULL ? loop->base : NULL;
}

BT_EXPORT bool bt_loop_is_current(const bt_loop *loop)
{
    return loop != NULL &&
           atomic_load_explicit(&loop->thread, memory_order_relaxed) == (uintptr_t)pthread_self();
}

/* Pauses between two clock reads while the loop spins for completions (a
 * power of two). Measured on the 2-core test machine: a clock read
 * (clock_gettime through the vDSO) costs 80 to 90 ns, a pause about 60 ns;
 * reading the clock every 64 pauses costs about 2% of the spin and
 * overshoots its deadline by at most about 4 us. */
#define SPIN_CLOCK_EVERY 64u
_Static_assert((SPIN_CLOCK_EVERY & (SPIN_CLOCK_EVERY - 1)) == 0, "a power of two");

/* Poll the inbox for a while when a completion is due. Returns true if it
 * found and ran something. */
static bool spin_for_completions(bt_loop *loop)
{
    /* After a run of hits, let libevent poll sockets and timers once: after
     * SPIN_STREAK_MAX hits, or SPIN_PASS_NS after the first of them (each
     * hit runs the completions' callbacks too, which may take a while). */
    if (loop->spin_ns == 0 || loop->expected <= 0 || loop->ready_head != NULL ||
        loop->spin_streak >= SPIN_STREAK_MAX)
        return false;
    uint64_t now = bt_hrtime();
    if (loop->spin_streak == 0)
        loop->spin_since = now;
    else if (now - loop->spin_since >= SPIN_PASS_NS)
        return false;
    /* A pool that asked to spin every time (BT_POOL_SPIN_FULL) spins even
     * through a worker's wakeup, as its workers linger through the loop's. */
    bool skip = loop->peer_woken && loop->spin_share < BT__SPIN_SHARE_FULL;
    if (skip || !bt__spin_pays(&loop->spin_budget, loop->spin_share, loop->spin_ns)) {
        loop->wait_since = now; /* all of this wait in libevent */
        loop->wait_spun = 0;
        return false;
    }
    atomic_store(&loop->wake_wanted, 0);
    uint64_t deadline = now + loop->spin_ns;
    unsigned i = 0;
    while (!inbox_busy(loop)) {
        if ((++i & (SPIN_CLOCK_EVERY - 1)) == 0 && bt_hrtime() >= deadline)
            break;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    /* Going back to libevent, which may sleep: producers must wake us from
     * now on. Then look again: see the DESIGN note on wakeups. */
    atomic_store(&loop->wake_wanted, 1);
    uint64_t spun = bt_hrtime() - now;
    if (!inbox_busy(loop)) {
        loop->wait_since = now; /* the rest of the wait in libevent */
        loop->wait_spun = spun;
        return false;
    }
    bt__spin_account(&loop->spin_budget, spun, now + spun);
    inbox_drain(loop);
    loop->stats.spin_hits++;
    loop->spin_streak++;
    return true;
}

static int run_impl(bt_loop *loop, bt_future *until)
{
    if (loop == NULL)
        return BT_EINVAL;
    if (until != NULL && bt_future_loop(until) != loop)
        return BT_EINVAL; /* it would never settle here */
    if (loop->running || loop->closing)
        return BT_EBUSY;
    loop->running = true;
    atomic_store_explicit(&loop->thread, (uintptr_t)pthread_self(), memory_order_relaxed);
    if (until != NULL)
        bt_future_ref(until);
    /* Until the future's own callbacks have run too, so that what they
     * read (an error, a value) is read before run_until returns. */
    while (!atomic_load_explicit(&loop->stop_requested, memory_order_acquire) &&
           !(until != NULL && bt__future_callbacks_done(until))) {
        if (spin_for_completions(loop))
            continue;
        loop->spin_streak = 0;
        if (event_base_loop(loop->base, EVLOOP_ONCE) < 0)
            break;
        if (loop->wait_since != 0) { /* a wait for completions ended */
            bt__spin_account(&loop->spin_budget, loop->wait_spun, bt_hrtime());
            loop->wait_since = 0;
        }
    }
    loop->running = false;
    atomic_store(&loop->stop_requested, false);
    int rc = 0;
    if (until != NULL) {
        rc = bt_future_is_settled(until) ? 0 : BT_ESHUTDOWN;
        bt_future_unref(until);
    }
    return rc;
}

BT_EXPORT int bt_loop_run(bt_loop *loop)
{
    return run_impl(loop, NULL);
}

BT_EXPORT int bt_loop_run_until(bt_loop *loop, bt_future *f)
{
    if (f == NULL)
        return BT_EINVAL;
    return run_impl(loop, f);
}

BT_EXPORT void bt_loop_stop(bt_loop *loop)
{
    if (loop == NULL)
        return;
    /* Counted in `posters` like a post: the stop may end the loop, whose
     * thread may then free it before this has written the fd. Once the
     * loop is closed to posts it is not running: no write is needed. */
    atomic_fetch_add(&loop->posters, 1);
    atomic_store_explicit(&loop->stop_requested, true, memory_order_release);
    if (!atomic_load(&loop->closed_to_posts))
        wake_write(loop);
    atomic_fetch_sub_explicit(&loop->posters, 1, memory_order_release);
}

/* Run what is queued, until nothing is. */
static void drain_all(bt_loop *loop)
{
    for (;;) {
        bool cut = false;
        size_t n = inbox_drain_cut(loop, &cut);
        loop->ready_armed = true; /* schedule() must not touch ready_ev now */
        n += ready_drain(loop);
        if (n == 0 && !cut)
            break;
        if (n == 0)
            sched_yield(); /* a producer is between its two steps */
    }
    loop->ready_armed = false;
}

BT_EXPORT void bt_loop_free(bt_loop *loop)
{
    if (loop == NULL)
        return;
    if (loop->running || loop->closing) {
        bt_log(BT_LOG_ERROR, "bt_loop_free called on a running loop (from one of its callbacks?): "
                             "ignored; stop the loop and free it after bt_loop_run returns");
        return;
    }
    /* Closers first: they settle the futures of work they can still finish
     * or cancel, and may need the inbox for that. Draining may register new
     * closers (a job submitted from another thread is admitted from the
     * inbox): those run too, until none is left. */
    do {
        while (loop->closers != NULL) {
            bt__closer *c = loop->closers;
            loop->closers = c->next;
            c->fn(c->arg);
            bt_free(c);
        }
        drain_all(loop);
    } while (loop->closers);

    loop->closing = true;
    atomic_store(&loop->closed_to_posts, true);
    /* A producer that got in before the store finishes its push (the drain
     * below runs or cancels the task) and its wakeup write. */
    while (atomic_load(&loop->posters) != 0)
        sched_yield();
    size_t dropped = 0;
    size_t cancelled = bt__future_cancel_all(loop, &dropped);
    drain_all(loop);
    if (cancelled)
        bt_log(BT_LOG_WARN, "loop freed with %zu pending future%s: cancelled", cancelled,
               cancelled == 1 ? "" : "s");
    if (dropped)
        bt_log(BT_LOG_WARN,
               "%zu of them had been dropped while pending: nobody held or waited on them",
               dropped);
    /* The fibers were cancelled with their futures and have unwound in the
     * drain above: only their stacks are left. */
    if (loop->fiber_hooks != NULL)
        loop->fiber_hooks->free(loop);

    event_free(loop->wake_ev);
    event_free(loop->ready_ev);
    close(loop->wake_fd);
    if (loop->wake_wfd != loop->wake_fd)
        close(loop->wake_wfd);
    if (loop->owns_base)
        event_base_free(loop->base);
    bt_free(loop);
}

BT_EXPORT int bt_loop_get_stats(const bt_loop *loop, bt_loop_stats *out)
{
    if (loop == NULL || out == NULL)
        return BT_EINVAL;
    if (bt__sized_check(out->size, BT__SIZE_V1(bt_loop_stats, fiber_stack_bytes),
                        "bt_loop_get_stats", "bt_loop_stats", "BT_SIZED(bt_loop_stats)") != 0)
        return BT_EINVAL;
    bt_loop_stats st = loop->stats;
    st.pending = loop->pending.count;
    if (loop->fiber_hooks != NULL)
        loop->fiber_hooks->stats(loop, &st); /* else no fiber has run: the fields stay 0 */
    bt__sized_write(out, out->size, &st, sizeof st);
    return 0;
}

BT_EXPORT void bt_loop_set_spin(bt_loop *loop, uint64_t usec)
{
    if (loop != NULL)
        loop->spin_ns = usec * 1000;
}

/* ---- call_soon and post ------------------------------------------------------ */

typedef struct {
    bt__task task;
    bt_fn fn;
    void *arg;
    bt_loop *loop;
} call_task;

static void run_call(bt__task *t)
{
    call_task *c = (call_task *)t;
    bt_fn fn = c->fn;
    void *arg = c->arg;
    bt_loop *loop = c->loop;
    bt_free(c);
    /* Nested inside the task's bracket: only names fn for the watchdog. */
    bt_loop_enter_cb(loop, (const void *)fn);
    fn(arg);
    bt_loop_leave_cb(loop);
}

static call_task *call_new(bt_loop *loop, bt_fn fn, void *arg)
{
    call_task *c = bt_malloc(sizeof *c);
    if (c != NULL) {
        c->task.run = run_call;
        c->fn = fn;
        c->arg = arg;
        c->loop = loop;
    }
    return c;
}

BT_EXPORT int bt_loop_call_soon(bt_loop *loop, bt_fn fn, void *arg)
{
    if (loop == NULL || fn == NULL)
        return BT_EINVAL;
    if (loop->closing)
        return BT_ESHUTDOWN;
    call_task *c = call_new(loop, fn, arg);
    if (c == NULL)
        return BT_ENOMEM;
    bt__loop_schedule(loop, &c->task);
    return 0;
}

BT_EXPORT int bt_loop_post(bt_loop *loop, bt_fn fn, void *arg)
{
    if (loop == NULL || fn == NULL)
        return BT_EINVAL;
    call_task *c = call_new(loop, fn, arg);
    if (c == NULL)
        return BT_ENOMEM;
    int rc = bt__loop_push(loop, &c->task);
    if (rc != 0)
        bt_free(c);
    return rc;
}

/* ---- Closers --------------------------------------------------------------- */

BT_EXPORT int bt_loop_add_closer(bt_loop *loop, bt_fn fn, void *arg)
{
    if (loop == NULL || fn == NULL)
        return BT_EINVAL;
    if (loop->closing)
        return BT_ESHUTDOWN; /* the closers have run */
    bt__closer *c = bt_malloc(sizeof *c);
    if (c == NULL)
        return BT_ENOMEM;
    c->fn = fn;
    c->arg = arg;
    c->next = loop->closers;
    loop->closers = c;
    return 0;
}

BT_EXPORT int bt_loop_remove_closer(bt_loop *loop, bt_fn fn, void *arg)
{
    if (loop == NULL)
        return BT_EINVAL;
    for (bt__closer **p = &loop->closers; *p != NULL; p = &(*p)->next) {
        if ((*p)->fn == fn && (*p)->arg == arg) {
            bt__closer *c = *p;
            *p = c->next;
            bt_free(c);
            return 0;
        }
    }
    return BT_ENOENT;
}

/* ---- The watchdog's view ----------------------------------------------------- */

BT_EXPORT void bt_loop_enter_cb(bt_loop *loop, const void *fn)
{
    if (loop == NULL)
        return;
    if (loop->cb_depth++ == 0) {
        uint64_t s = atomic_load_explicit(&loop->cb_seq, memory_order_relaxed);
        if (loop->watchdog != NULL)
            atomic_store_explicit(&loop->cb_start_ns, bt_hrtime(), memory_order_relaxed);
        atomic_store_explicit(&loop->cb_seq, s + 1, memory_order_release);
    }
    atomic_store_explicit(&loop->cb_fn, fn, memory_order_relaxed);
}

BT_EXPORT void bt_loop_leave_cb(bt_loop *loop)
{
    if (loop == NULL || loop->cb_depth == 0)
        return;
    if (--loop->cb_depth == 0) {
        uint64_t s = atomic_load_explicit(&loop->cb_seq, memory_order_relaxed);
        atomic_store_explicit(&loop->cb_seq, s + 1, memory_order_release);
    }
}

/* ---- asyncio.run ----------------------------------------------------------------- */

BT_EXPORT int bt_run(bt_main_fn main_fn, void *arg)
{
    if (main_fn == NULL)
        return BT_EINVAL;
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return BT_ENOMEM;
    bt_future *f = main_fn(loop, arg);
    if (f == NULL) {
        bt_loop_free(loop);
        return BT_EINVAL;
    }
    int rc = bt_loop_run_until(loop, f);
    if (rc == 0) {
        bool unread = bt_future_get_state(f) == BT_FUTURE_ERROR && !f->error_read;
        rc = bt_future_error(f);
        if (unread)
            bt_log(BT_LOG_ERROR, "main future failed: %s (%s)", bt_future_error_message(f),
                   bt_err_name(rc));
    }
    bt_future_unref(f);
    bt_loop_free(loop);
    return rc;
}
