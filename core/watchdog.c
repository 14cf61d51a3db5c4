/* The stall watchdog: a thread that notices a blocked loop.
 *
 * DESIGN
 * - The loop thread brackets every callback it runs (bt_loop_enter_cb /
 *   bt_loop_leave_cb in loop.c): cb_seq is odd while inside one,
 *   cb_start_ns is stamped at entry while loop->watchdog is set, cb_fn
 *   names the callback. Those three are atomics written only by the loop
 *   thread; the watchdog thread only reads them, so the loop pays nothing
 *   but one clock read per callback while the watchdog is on.
 * - The watchdog thread wakes every `tick` (a quarter of the threshold,
 *   between 1 and 25 ms). If it sees the same odd cb_seq for longer than
 *   the threshold, the loop is stuck in that callback: it logs at once
 *   (the loop cannot, it is busy), again each time the stall has doubled
 *   (200, 400, 800 ms... at the default threshold), and when cb_seq moves
 *   on it logs the end with the duration. It reads start and fn, then cb_seq again, so a
 *   callback that ended in between is not blamed for the next one.
 * - Lag: every 20 ms the thread stamps a probe task and pushes it to the
 *   loop's inbox (one probe in flight at most); the loop runs it and adds
 *   now - stamp to the histogram. Histogram counters are atomics (written
 *   by the loop thread, read by either).
 * - Shutdown: bt_watchdog_stop (or the loop closer at bt_loop_free) runs on
 *   the loop thread, tells the thread to stop under the mutex, joins it,
 *   and frees the state, unless a probe is still queued in the inbox; then
 *   the probe frees it when the loop runs it (bt_loop_free drains the inbox
 *   after its closers, so that always happens). After the join, only the
 *   loop thread touches probe_in_flight.
 * - Locks: only `mu`, for the stop flag and the condition variable the
 *   thread sleeps on. The log handler is called without it.
 */
#include "config.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#ifdef HAVE_DLFCN_H
#include <dlfcn.h>
#endif

#include <baton/watchdog.h>

#include "loop-internal.h"
#include "sized.h"

#define PROBE_INTERVAL_NS (20u * 1000 * 1000)
#define MS (1000u * 1000)

typedef struct watchdog {
    bt__task probe; /* first: the task pointer is the watchdog */
    bt_loop *loop;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop; /* under mu */
    bool dead; /* loop thread only: free when the probe runs */
    _Atomic bool probe_in_flight;
    _Atomic uint64_t probe_t0;
    _Atomic uint64_t threshold_ns;
    uint64_t ignore_seq; /* the callback that started the watchdog */
    _Atomic uint64_t stalls, longest_stall_ns;
    _Atomic uint64_t lag_samples, lag_sum_ns, lag_max_ns;
    _Atomic uint64_t lag_buckets[BT_WATCHDOG_BUCKETS];
} watchdog;

static const uint64_t bucket_us[BT_WATCHDOG_BUCKETS - 1] = {
    50,    100,   250,    500,    1000,   2500,    5000,    10000,
    25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
};

BT_EXPORT uint64_t bt_watchdog_bucket_limit(unsigned i)
{
    return i < BT_WATCHDOG_BUCKETS - 1 ? bucket_us[i] * 1000 : UINT64_MAX;
}

static void atomic_max(_Atomic uint64_t *a, uint64_t v)
{
    uint64_t cur = atomic_load_explicit(a, memory_order_relaxed);
    while (v > cur && !atomic_compare_exchange_weak(a, &cur, v))
        ;
}

/* ---- Naming a callback ----------------------------------------------- */

static void describe(const void *fn, char *buf, size_t len)
{
    if (fn == NULL) {
        snprintf(buf, len, "an unnamed callback");
        return;
    }
#ifdef HAVE_DLFCN_H
    Dl_info di;
    if (dladdr(fn, &di) != 0) {
        const char *file = di.dli_fname != NULL ? strrchr(di.dli_fname, '/') : NULL;
        file = file != NULL ? file + 1 : di.dli_fname != NULL ? di.dli_fname : "?";
        if (di.dli_sname != NULL && di.dli_saddr == fn)
            snprintf(buf, len, "%s (%s)", di.dli_sname, file);
        else if (di.dli_sname != NULL)
            snprintf(buf, len, "%s+0x%zx (%s)", di.dli_sname,
                     (size_t)((const char *)fn - (const char *)di.dli_saddr), file);
        else
            snprintf(buf, len, "%p (%s+0x%zx)", fn, file,
                     (size_t)((const char *)fn - (const char *)di.dli_fbase));
        return;
    }
#endif
    snprintf(buf, len, "%p", fn);
}

/* ---- The probe (runs on the loop thread) --------------------------------- */

static void watchdog_free(watchdog *wd)
{
    pthread_mutex_destroy(&wd->mu);
    pthread_cond_destroy(&wd->cv);
    bt_free(wd);
}

static void run_probe(bt__task *t)
{
    watchdog *wd = (watchdog *)t;
    uint64_t lag = bt_hrtime() - atomic_load_explicit(&wd->probe_t0, memory_order_relaxed);
    unsigned i = 0;
    while (i < BT_WATCHDOG_BUCKETS - 1 && lag >= bucket_us[i] * 1000)
        i++;
    atomic_fetch_add_explicit(&wd->lag_buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&wd->lag_sum_ns, lag, memory_order_relaxed);
    atomic_max(&wd->lag_max_ns, lag);
    atomic_fetch_add_explicit(&wd->lag_samples, 1, memory_order_relaxed);
    atomic_store_explicit(&wd->probe_in_flight, false, memory_order_release);
    if (wd->dead)
        watchdog_free(wd);
}

/* ---- The thread ------------------------------------------------------------ */

static uint64_t tick_ns(const watchdog *wd)
{
    uint64_t t = atomic_load_explicit(&wd->threshold_ns, memory_order_relaxed) / 4;
    if (t < 1 * MS)
        t = 1 * MS;
    if (t > 25 * MS)
        t = 25 * MS;
    return t;
}

static void *watchdog_main(void *arg)
{
    watchdog *wd = arg;
    bt_loop *loop = wd->loop;
#ifdef HAVE_PTHREAD_SETNAME_NP
    pthread_setname_np(pthread_self(), "baton-watchdog");
#endif
    uint64_t stalled_seq = 0, stalled_start = 0, next_report = 0, next_probe = bt_hrtime();
    const void *stalled_fn = NULL;
    char name[512];

    pthread_mutex_lock(&wd->mu);
    while (!wd->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t until = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + tick_ns(wd);
        ts.tv_sec = (time_t)(until / 1000000000u);
        ts.tv_nsec = (long)(until % 1000000000u);
        pthread_cond_timedwait(&wd->cv, &wd->mu, &ts);
        if (wd->stop)
            break;
        pthread_mutex_unlock(&wd->mu);

        uint64_t now = bt_hrtime();
        uint64_t seq = atomic_load_explicit(&loop->cb_seq, memory_order_acquire);
        if (stalled_seq != 0 && seq != stalled_seq) {
            /* The stalled callback has returned. */
            uint64_t d = now - stalled_start;
            atomic_max(&wd->longest_stall_ns, d);
            describe(stalled_fn, name, sizeof name);
            bt_log(BT_LOG_WARN, "loop blocked for %" PRIu64 " ms by %s: it has returned", d / MS,
                   name);
            stalled_seq = 0;
        }
        if ((seq & 1) && seq == stalled_seq && now >= next_report) {
            /* Still stuck: say so again, at doubling intervals, so a loop
             * stuck for minutes keeps saying it without flooding the log. */
            describe(stalled_fn, name, sizeof name);
            bt_log(BT_LOG_WARN, "loop blocked for %" PRIu64 " ms by %s: still running",
                   (now - stalled_start) / MS, name);
            next_report = stalled_start + 2 * (now - stalled_start);
        } else if ((seq & 1) && seq != stalled_seq && seq != wd->ignore_seq) {
            uint64_t start = atomic_load_explicit(&loop->cb_start_ns, memory_order_relaxed);
            const void *fn = atomic_load_explicit(&loop->cb_fn, memory_order_relaxed);
            atomic_thread_fence(memory_order_acquire);
            uint64_t thr = atomic_load_explicit(&wd->threshold_ns, memory_order_relaxed);
            if (atomic_load_explicit(&loop->cb_seq, memory_order_relaxed) == seq && start != 0 &&
                now > start && now - start >= thr) {
                stalled_seq = seq;
                stalled_start = start;
                stalled_fn = fn;
                next_report = start + 2 * (now - start);
                atomic_fetch_add_explicit(&wd->stalls, 1, memory_order_relaxed);
                describe(fn, name, sizeof name);
                bt_log(BT_LOG_WARN,
                       "loop blocked for %" PRIu64 " ms (threshold %" PRIu64
                       " ms) by %s: still running; move blocking work off the loop",
                       (now - start) / MS, thr / MS, name);
            }
        }
        if (now >= next_probe &&
            !atomic_load_explicit(&wd->probe_in_flight, memory_order_acquire)) {
            next_probe = now + PROBE_INTERVAL_NS;
            atomic_store_explicit(&wd->probe_t0, bt_hrtime(), memory_order_relaxed);
            atomic_store_explicit(&wd->probe_in_flight, true, memory_order_relaxed);
            wd->probe.run = run_probe;
            if (bt__loop_push(loop, &wd->probe) != 0)
                atomic_store_explicit(&wd->probe_in_flight, false, memory_order_relaxed);
        }
        pthread_mutex_lock(&wd->mu);
    }
    pthread_mutex_unlock(&wd->mu);
    return NULL;
}

/* ---- Control (loop thread) ----------------------------------------------------- */

static void watchdog_shutdown(bt_loop *loop)
{
    watchdog *wd = loop->watchdog;
    pthread_mutex_lock(&wd->mu);
    wd->stop = true;
    pthread_cond_signal(&wd->cv);
    pthread_mutex_unlock(&wd->mu);
    pthread_join(wd->thread, NULL);
    loop->watchdog = NULL;
    if (atomic_load_explicit(&wd->probe_in_flight, memory_order_acquire))
        wd->dead = true; /* the queued probe frees it */
    else
        watchdog_free(wd);
}

static void watchdog_closer(void *arg)
{
    watchdog_shutdown(arg);
}

BT_EXPORT int bt_watchdog_start(bt_loop *loop, uint64_t threshold_ms)
{
    if (loop == NULL)
        return BT_EINVAL;
    if (loop->watchdog != NULL)
        return BT_EALREADY;
    if (loop->closing)
        return BT_ESHUTDOWN;
    watchdog *wd = bt_calloc(1, sizeof *wd);
    if (wd == NULL)
        return BT_ENOMEM;
    wd->loop = loop;
    atomic_init(&wd->threshold_ns, (threshold_ms ? threshold_ms : BT_WATCHDOG_DEFAULT_MS) * MS);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&wd->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&wd->mu, NULL);
    if (bt_loop_add_closer(loop, watchdog_closer, loop) != 0) {
        watchdog_free(wd);
        return BT_ENOMEM;
    }
    /* Stamp from now on; a callback we are inside of now was never
     * stamped, so the thread must not judge it. */
    loop->watchdog = wd;
    uint64_t seq = atomic_load_explicit(&loop->cb_seq, memory_order_relaxed);
    wd->ignore_seq = (seq & 1) ? seq : 0;
    int rc = pthread_create(&wd->thread, NULL, watchdog_main, wd);
    if (rc != 0) {
        loop->watchdog = NULL;
        bt_loop_remove_closer(loop, watchdog_closer, loop);
        watchdog_free(wd);
        return -rc;
    }
    return 0;
}

BT_EXPORT int bt_watchdog_stop(bt_loop *loop)
{
    if (loop == NULL)
        return BT_EINVAL;
    if (loop->watchdog == NULL)
        return BT_ENOENT;
    bt_loop_remove_closer(loop, watchdog_closer, loop);
    watchdog_shutdown(loop);
    return 0;
}

BT_EXPORT bool bt_watchdog_is_running(const bt_loop *loop)
{
    return loop != NULL && loop->watchdog != NULL;
}

BT_EXPORT int bt_watchdog_set_threshold(bt_loop *loop, uint64_t threshold_ms)
{
    if (loop == NULL)
        return BT_EINVAL;
    watchdog *wd = loop->watchdog;
    if (wd == NULL)
        return BT_ENOENT;
    atomic_store(&wd->threshold_ns, (threshold_ms ? threshold_ms : BT_WATCHDOG_DEFAULT_MS) * MS);
    return 0;
}

BT_EXPORT int bt_watchdog_get_stats(const bt_loop *loop, bt_watchdog_stats *out)
{
    if (loop == NULL || out == NULL)
        return BT_EINVAL;
    const watchdog *wd = loop->watchdog;
    if (wd == NULL)
        return BT_ENOENT;
    if (bt__sized_check(out->size, BT__SIZE_V1(bt_watchdog_stats, lag_buckets),
                        "bt_watchdog_get_stats", "bt_watchdog_stats",
                        "BT_SIZED(bt_watchdog_stats)") != 0)
        return BT_EINVAL;
    bt_watchdog_stats st = { 0 };
    st.threshold_ns = atomic_load(&wd->threshold_ns);
    st.stalls = atomic_load(&wd->stalls);
    st.longest_stall_ns = atomic_load(&wd->longest_stall_ns);
    st.lag_samples = atomic_load(&wd->lag_samples);
    st.lag_sum_ns = atomic_load(&wd->lag_sum_ns);
    st.lag_max_ns = atomic_load(&wd->lag_max_ns);
    for (unsigned i = 0; i < BT_WATCHDOG_BUCKETS; i++)
        st.lag_buckets[i] = atomic_load(&wd->lag_buckets[i]);
    bt__sized_write(out, out->size, &st, sizeof st);
    return 0;
}

static void fmt_ns(char *buf, size_t len, uint64_t ns)
{
    if (ns >= 1000000000u)
        snprintf(buf, len, "%.1f s", (double)ns / 1e9);
    else if (ns >= MS)
        snprintf(buf, len, "%.1f ms", (double)ns / 1e6);
    else
        snprintf(buf, len, "%" PRIu64 " us", ns / 1000);
}

BT_EXPORT char *bt_watchdog_histogram(const bt_loop *loop)
{
    bt_watchdog_stats st = BT_SIZED(bt_watchdog_stats);
    if (bt_watchdog_get_stats(loop, &st) != 0)
        return NULL;
    char mean[32], max[32], longest[32], thr[32];
    fmt_ns(mean, sizeof mean, st.lag_samples ? st.lag_sum_ns / st.lag_samples : 0);
    fmt_ns(max, sizeof max, st.lag_max_ns);
    fmt_ns(longest, sizeof longest, st.longest_stall_ns);
    fmt_ns(thr, sizeof thr, st.threshold_ns);
    size_t cap = 4096, used = 0;
    char *out = bt_malloc(cap);
    if (out == NULL)
        return NULL;
    used += (size_t)snprintf(out + used, cap - used,
                             "loop lag: %" PRIu64 " samples, mean %s, max %s\n"
                             "stalls over %s: %" PRIu64 " (longest %s)\n",
                             st.lag_samples, mean, max, thr, st.stalls, longest);
    int lo = -1, hi = -1;
    uint64_t peak = 0;
    for (int i = 0; i < BT_WATCHDOG_BUCKETS; i++) {
        if (st.lag_buckets[i]) {
            if (lo < 0)
                lo = i;
            hi = i;
            if (st.lag_buckets[i] > peak)
                peak = st.lag_buckets[i];
        }
    }
    for (int i = lo; lo >= 0 && i <= hi; i++) {
        char label[32];
        if (i == BT_WATCHDOG_BUCKETS - 1) {
            char lim[24];
            fmt_ns(lim, sizeof lim, bt_watchdog_bucket_limit((unsigned)i - 1));
            snprintf(label, sizeof label, ">= %s", lim);
        } else {
            char lim[24];
            fmt_ns(lim, sizeof lim, bt_watchdog_bucket_limit((unsigned)i));
            snprintf(label, sizeof label, "< %s", lim);
        }
        int bar = (int)(st.lag_buckets[i] * 40 / peak);
        if (bar == 0 && st.lag_buckets[i])
            bar = 1;
        char bars[41];
        memset(bars, '#', (size_t)bar);
        bars[bar] = '\0';
        used += (size_t)snprintf(out + used, cap - used, "  %10s | %-40s %" PRIu64 "\n", label,
                                 bars, st.lag_buckets[i]);
    }
    return out;
}
