/* The offload pool: lanes of worker threads whose jobs settle futures on
 * loops.
 *
 * DESIGN
 * - Submission (loop thread). A job goes first into its loop's batch for
 *   the lane (a bt__batch: an array of up to 64 jobs in the bt__attach,
 *   loop-thread only, no lock). The batch is handed over at the end of the
 *   loop turn (a flush task on the loop's ready FIFO) or as soon as it is
 *   full: pushed onto the lane's lock-free incoming stack with one CAS.
 *   The loop takes the lane's lock only to wake a sleeper when no worker
 *   lingers, for the blocking lane (which may need another thread), or
 *   when the lane has stopped. The lane's bound counts what was handed
 *   over (`depth`, read once per batch, no shared write per job) plus the
 *   loop's batch, so a full lane fails the future at once; it is exact for
 *   one loop, and several loops can overshoot it by their unflushed
 *   batches (64 each) at most.
 * - Submission from any other thread goes through the loop's inbox first
 *   (the "admit" task), so the future is made on its loop's thread.
 * - Workers. Each lane has one mutex, a futex word its idle workers sleep
 *   on (a condvar where there are no futexes), the incoming stack and a
 *   FIFO of batches. Under the lock a worker first splices the stack
 *   into the FIFO (one step per batch), then takes up to a quarter of its
 *   share of the queue (1 when it is short, so the tail of a burst is
 *   spread evenly), prefetching the jobs it took together. It runs them
 *   and pushes each finished job onto its loop's inbox as soon as it
 *   returns (bt__loop_push: one exchange, a wakeup only when the loop may
 *   sleep). A cancelled queued job leaves a NULL slot in its batch; spent
 *   batches go back to their loop's attach for reuse. Out of work, one
 *   worker per lane lingers (spins on `depth`) for linger_ns before it
 *   sleeps on the condvar, so a loop that submits one job at a time finds
 *   it awake, but only while lingering pays (the lane's spin budget:
 *   recent gaps between jobs shorter than the linger, and spinning no
 *   more than spin_share% of its time, or half that when its last
 *   completion had to wake its loop); the others sleep at once. A worker
 *   that takes jobs and leaves more behind wakes a sleeper itself.
 *   Wakeups: a worker about to sleep reads the lane's futex word, counts
 *   itself in `sleepers`, then looks at the stack once more; a loop
 *   pushes, then reads `sleepers` and `spinners` (all sequentially
 *   consistent), and to wake bumps the word and calls FUTEX_WAKE after
 *   unlocking, so a batch is never left with every worker asleep (a wake
 *   between the look and the sleep changed the word: the sleep returns at
 *   once). A loop whose hand-over woke a worker does not spin for the
 *   completion (bt__loop_peer_woken). CPU workers run at a higher nice
 *   value so loop threads preempt them.
 * - The loop side. A job in flight on a lane whose recent jobs are short
 *   counts in the loop's `expected`, so the loop spins briefly for its
 *   completion instead of sleeping in epoll, within its own spin budget
 *   (the largest spin_share of the pools it submits to; see
 *   bt__spin_budget in loop-internal.h). The completion task settles
 *   the future and runs its callbacks at once. The job and its future are
 *   one 256-byte block (job->fut): it goes back to the job cache of the
 *   thread that drops the future's last reference (a loop thread, as a
 *   rule).
 * - Lifetimes. The pool is reference counted: its owner, each attach, each
 *   worker thread and each job being admitted hold one, so the memory
 *   outlives bt_pool_free until the last loop lets go. An attach lives until
 *   its loop's closer; the closer cancels the loop's queued jobs and waits
 *   until `running` (jobs taken by workers and not yet pushed back) is 0,
 *   so no worker touches the loop after it is freed.
 * - Locks: a lane's mutex, then pool->mu; never two lanes at once. A worker
 *   never holds a lock while it runs a job or pushes a completion.
 *
 * Files, and the one direction of their calls: submit.c -> pool.c ->
 * job.c. job.c (with job-internal.h) owns a job's whole life: its block
 * and the per-thread cache, its run, its trip back to the loop, settling,
 * cancelling and abandoning; it knows nothing of lanes or attachments.
 * pool.c (this one, with pool-internal.h) owns pools, lanes and workers:
 * where a job is (batch, queue, running) and the lane's counters, the
 * cancel hook that asks the lane where a job is before job.c settles it,
 * the attachments' last counts, stats and the default pool. submit.c is
 * the public submission API on top: attachments, batches and their
 * hand-over, closers, bt_pool_submit and the one-liners.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#ifdef __linux__
#include <linux/futex.h>
#endif

#include "pool-internal.h"
#include "sized.h"

#define TAKE_MAX 16 /* jobs a worker takes at once, at most */
/* Pauses between two clock reads while a worker lingers (a power of two).
 * Measured on the 2-core test machine: a clock read costs 80 to 90 ns, a
 * pause about 60 ns; every 32 pauses, the clock is about 4% of the spin
 * and the 50 us linger overshoots by at most about 2 us. */
#define LINGER_CLOCK_EVERY 32u
_Static_assert((LINGER_CLOCK_EVERY & (LINGER_CLOCK_EVERY - 1)) == 0, "a power of two");
#define TIME_EACH_NS 2000 /* time jobs one by one when longer than this */
#define DEFAULT_BLOCKING_MAX 64
#define DEFAULT_IDLE_MS 10000
#define DEFAULT_QUEUE_MAX ((size_t)1 << 20)
#define DEFAULT_LINGER_US 50
#define DEFAULT_CPU_NICE 5
#define DEFAULT_SHUTDOWN_MS 5000

static _Thread_local bt__worker *current_worker;

static void default_forget(bt_pool *pool);

/* ---- Small helpers ------------------------------------------------------ */

/* Add to a counter only this thread writes: a plain relaxed load and
 * store, no read-modify-write, no cache line ping-pong. */
static void bump(_Atomic uint64_t *a, uint64_t v)
{
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

static void raise_max(_Atomic uint64_t *a, uint64_t v)
{
    if (v > atomic_load_explicit(a, memory_order_relaxed))
        atomic_store_explicit(a, v, memory_order_relaxed);
}

void bt__pool_ref(bt_pool *pool)
{
    atomic_fetch_add_explicit(&pool->refs, 1, memory_order_relaxed);
}

static void pool_destroy(bt_pool *pool)
{
    for (int i = 0; i < BT_LANE_COUNT; i++) {
        bt__lane *l = &pool->lane[i];
        pthread_mutex_destroy(&l->mu);
#ifndef BT__LANE_FUTEX
        pthread_cond_destroy(&l->cv);
#endif
    }
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv);
    bt_free(pool);
}

void bt__pool_unref(bt_pool *pool)
{
    if (atomic_fetch_sub_explicit(&pool->refs, 1, memory_order_acq_rel) == 1)
        pool_destroy(pool);
}

const char *bt__lane_name(bt_lane lane)
{
    return lane == BT_LANE_CPU ? "cpu" : "blocking";
}

/* Inside a job: its own flag, its loop's closer and its pool's shutdown
 * all ask it to stop. Here rather than in job.c: the last two are the
 * pool's and the attachment's, which job.c does not see. */
BT_EXPORT bool bt_job_cancelled(const bt_job *job)
{
    if (job == NULL)
        return false;
    return atomic_load_explicit(&job->cancelled, memory_order_relaxed) ||
           atomic_load_explicit(&job->att->closing, memory_order_relaxed) ||
           atomic_load_explicit(&job->pool->shutdown, memory_order_relaxed);
}

bool bt__pool_current_job_cancelled(void)
{
    bt_job *job = bt__job_current();
    return job != NULL && bt_job_cancelled(job);
}

bool bt__pool_in_job(void)
{
    return bt__job_current() != NULL;
}

/* ---- Workers ------------------------------------------------------------- */

static void *worker_main(void *arg);

/* Start n threads on a lane; lane->threads was already raised by n under
 * the lane's lock. Returns how many started. */
unsigned bt__lane_spawn(bt_pool *pool, bt__lane *lane, unsigned n)
{
    unsigned ok = 0;
    for (unsigned i = 0; i < n; i++) {
        bt__worker *w = bt_calloc(1, sizeof *w);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pool->cfg.stack_size)
            pthread_attr_setstacksize(&attr, pool->cfg.stack_size);
        pthread_t th;
        bool started = false;
        if (w) {
            w->lane = lane;
            w->pool = pool;
            bt__pool_ref(pool);
            atomic_fetch_add(&pool->live_threads, 1);
            pthread_mutex_lock(&lane->mu);
            w->index = lane->next_index++;
            w->next = lane->workers;
            lane->workers = w;
            lane->started++;
            pthread_mutex_unlock(&lane->mu);
            started = pthread_create(&th, &attr, worker_main, w) == 0;
            if (!started) {
                pthread_mutex_lock(&lane->mu);
                for (bt__worker **p = &lane->workers; *p; p = &(*p)->next)
                    if (*p == w) {
                        *p = w->next;
                        break;
                    }
                lane->started--;
                pthread_mutex_unlock(&lane->mu);
                atomic_fetch_sub(&pool->live_threads, 1);
                bt__pool_unref(pool);
                bt_free(w);
            }
        }
        pthread_attr_destroy(&attr);
        if (started) {
            ok++;
        } else {
            pthread_mutex_lock(&lane->mu);
            lane->threads--;
            pthread_mutex_unlock(&lane->mu);
        }
    }
    if (ok < n)
        bt_log(BT_LOG_WARN, "offload pool: started %u of %u %s threads", ok, n,
               bt__lane_name(lane->id));
    return ok;
}

/* How many blocking threads to add for the jobs now queued; called with
 * the lane's lock held, raises lane->threads by the answer. */
unsigned bt__lane_want_threads(bt__lane *lane)
{
    if (lane->stop)
        return 0;
    size_t queued = atomic_load_explicit(&lane->depth, memory_order_relaxed);
    unsigned add = 0;
    if (lane->id == BT_LANE_BLOCKING) {
        /* Sleepers being woken count: each will take a job. */
        size_t idle = (uint32_t)atomic_load(&lane->sleepers) +
                      atomic_load_explicit(&lane->spinners, memory_order_relaxed);
        if (queued > idle && lane->threads < lane->target) {
            size_t want = queued - idle;
            size_t room = lane->target - lane->threads;
            add = (unsigned)(want < room ? want : room);
        }
    } else if (lane->threads < lane->target) {
        add = lane->target - lane->threads;
    }
    lane->threads += add;
    return add;
}

void bt__lane_splice(bt__lane *lane)
{
    /* Sequentially consistent: a worker about to sleep counts itself in
     * `sleepers` and then looks here; a loop pushes and then reads
     * `sleepers` (see lane_flush in submit.c). */
    if (atomic_load(&lane->incoming) == NULL)
        return;
    bt__batch *b = atomic_exchange(&lane->incoming, NULL);
    bt__batch *newest = b, *fifo = NULL;
    while (b) { /* reverse: one step per hand-over, not per job */
        bt__batch *next = b->next;
        b->next = fifo;
        fifo = b;
        lane->submitted += b->live;
        b = next;
    }
    if (lane->tail)
        lane->tail->next = fifo;
    else
        lane->head = fifo;
    lane->tail = newest;
}

/* Take up to k queued jobs, oldest first, into jobs[] (their hand-over
 * times into submitted[]). Hand-overs this consumes go onto *spent, to be
 * given back without the lock: to their attach if a job was taken from
 * them (whose `running` then keeps the attach alive), else freed (in
 * *dead). Lane lock held. */
static size_t lane_take(bt__lane *lane, size_t k, bt_job **jobs, uint64_t *submitted,
                        bt__batch **spent, bt__batch **dead)
{
    size_t n = 0;
    while (n < k && lane->head) {
        bt__batch *b = lane->head;
        size_t took = 0;
        while (n < k && b->first < b->n) {
            bt_job *j = b->job[b->first++];
            if (j) {
                __builtin_prefetch(j, 1);
                submitted[n] = b->t_submit;
                jobs[n++] = j;
                took++;
            }
        }
        if (b->first == b->n) {
            lane->head = b->next;
            if (lane->head == NULL)
                lane->tail = NULL;
            bt__batch **to = took ? spent : dead;
            b->next = *to;
            *to = b;
        }
    }
    return n;
}

/* Free a list of hand-overs. */
static void batch_list_free(bt__batch *b)
{
    while (b) {
        bt__batch *next = b->next;
        bt_free(b);
        b = next;
    }
}

/* Give spent hand-overs back to their attaches' loops, for reuse. */
static void batches_return(bt__batch *b)
{
    while (b) {
        bt__batch *next = b->next;
        bt__attach *att = b->att;
        bt__batch *top = atomic_load_explicit(&att->returned, memory_order_relaxed);
        do
            b->next = top;
        while (!atomic_compare_exchange_weak_explicit(&att->returned, &top, b, memory_order_release,
                                                      memory_order_relaxed));
        b = next;
    }
}

/* Add w's counters to t: the one place that reads a worker's counters. */
static void worker_totals_add(bt__worker_totals *t, bt__worker *w)
{
    t->done += atomic_load(&w->done);
    t->failed += atomic_load(&w->failed);
    t->skipped += atomic_load(&w->skipped);
    t->queue_ns += atomic_load(&w->queue_ns);
    t->run_ns += atomic_load(&w->run_ns);
    uint64_t qm = atomic_load(&w->qwait_max), rm = atomic_load(&w->run_max);
    if (qm > t->qwait_max)
        t->qwait_max = qm;
    if (rm > t->run_max)
        t->run_max = rm;
}

/* Fold a retiring worker's counters into the lane. Lane lock held. */
static void worker_fold(bt__lane *lane, bt__worker *w)
{
    worker_totals_add(&lane->retired_totals, w);
    for (bt__worker **p = &lane->workers; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
}

static void worker_set_name(bt_pool *pool, bt__worker *w)
{
#ifdef __linux__
    /* On Linux, nice applies to one thread: CPU workers yield the CPU to
     * the loop threads (a timer on the loop fires on time while the CPU
     * lane is saturated). Raising one's own nice needs no privilege. */
    if (w->lane->id == BT_LANE_CPU && pool->cfg.cpu_nice > 0) {
        id_t tid = (id_t)syscall(SYS_gettid);
        errno = 0;
        int cur = getpriority(PRIO_PROCESS, tid);
        if (errno == 0 && cur < pool->cfg.cpu_nice)
            setpriority(PRIO_PROCESS, tid, pool->cfg.cpu_nice);
    }
    char name[16];
    /* Linux allows 15 characters: a 6-character prefix, the lane, 4 digits. */
    snprintf(name, sizeof name, "%.6s-%s-%u", pool->name,
             w->lane->id == BT_LANE_CPU ? "cpu" : "blk", w->index % 10000u);
    pthread_setname_np(pthread_self(), name);
#else
    (void)pool;
    (void)w;
#endif
}

/* Count one job in its worker's totals: done (and failed), or skipped.
 * Before the job goes back to its loop, so that stats read after its
 * future settled count it. */
static void worker_count(bt__worker *w, bool ran, bool failed)
{
    if (ran) {
        bump(&w->done, 1);
        if (failed)
            bump(&w->failed, 1);
    } else {
        bump(&w->skipped, 1);
    }
}

/* Account one job's times to its worker: qns waiting, run running (ran:
 * it was not skipped). */
static void worker_account_time(bt__worker *w, uint64_t qns, uint64_t run, bool ran)
{
    if (ran) {
        bump(&w->run_ns, run);
        raise_max(&w->run_max, run);
        /* A moving average (1/8 weight), racy between workers by design:
         * it decides whether loops spin for completions, and how often
         * workers read the clock. */
        uint64_t avg = atomic_load_explicit(&w->lane->avg_run_ns, memory_order_relaxed);
        atomic_store_explicit(&w->lane->avg_run_ns, avg - avg / 8 + run / 8, memory_order_relaxed);
    }
    bump(&w->queue_ns, qns);
    raise_max(&w->qwait_max, qns);
}

/* Run one job, or skip it if cancelled. No lock held. Returns whether it
 * ran; sets *failed. */
static bool worker_exec(bt_job *job, bool *failed)
{
    bool ran = bt__job_run(job, bt_job_cancelled(job));
    *failed = ran && job->code != 0;
    return ran;
}

/* Push a finished job back to its loop; the job is not touched after
 * that. Back at once, one exchange: holding finished jobs to push them
 * together saved nothing measurable, and would delay a completion by the
 * whole run of the next job (one that waits for that completion's
 * callback would wait for good).
 *
 * Unless the loop's closer abandoned its jobs at the shutdown deadline:
 * then the loop may be freed, and the job is dropped here. A Dekker
 * handshake with attach_abandon (submit.c), all sequentially consistent:
 * we publish pushing_to, then read `abandoned`; the closer sets
 * `abandoned`, then waits while any worker's pushing_to names its attach.
 * Either we see the flag, or the closer sees us and waits for our push to
 * end: never a push onto a freed loop. The store is on the worker's own
 * line: no sharing on the way. */
static void worker_push(bt__worker *w, bt_job *job)
{
    bt__attach *att = job->att;
    atomic_store(&w->pushing_to, att);
    if (atomic_load(&att->abandoned)) {
        atomic_store_explicit(&w->pushing_to, NULL, memory_order_release);
        bt__job_drop_abandoned(job);
        return;
    }
    if (bt__job_send_back(job, &w->woke_loop) != 0) {
        /* Only if a loop was freed without its closers running: nobody can
         * settle this future any more. */
        bt_log(BT_LOG_ERROR, "offload pool: a job finished after its loop closed");
        bt__job_free(job);
    }
    atomic_store_explicit(&w->pushing_to, NULL, memory_order_release);
}

/* Run the n jobs a worker took (handed over at submitted[i]), count each
 * before it goes back, and account their times. A clock read costs tens
 * of nanoseconds (more under a hypervisor): as much as a short job. So
 * jobs shorter than TIME_EACH_NS on average are timed as a batch, one
 * read at its end, each job's start and run time interpolated; longer
 * ones are timed one by one (the end of one is the start of the next). */
static void worker_run_batch(bt__worker *w, bt_job **jobs, const uint64_t *submitted, size_t n)
{
    uint64_t start = bt_hrtime();
    bool each =
        n == 1 || atomic_load_explicit(&w->lane->avg_run_ns, memory_order_relaxed) >= TIME_EACH_NS;
    bool ran[TAKE_MAX];
    for (size_t i = 0; i < n; i++) {
        bool failed;
        ran[i] = worker_exec(jobs[i], &failed);
        worker_count(w, ran[i], failed);
        if (each) {
            uint64_t end = bt_hrtime();
            worker_account_time(w, start > submitted[i] ? start - submitted[i] : 0, end - start,
                                ran[i]);
            start = end;
        }
        worker_push(w, jobs[i]);
    }
    if (each)
        return;
    uint64_t per = (bt_hrtime() - start) / n;
    for (size_t i = 0; i < n; i++) {
        uint64_t began = start + i * per;
        worker_account_time(w, began > submitted[i] ? began - submitted[i] : 0, per, ran[i]);
    }
}

/* After lowering some attach's `running`: a loop's closer may be waiting
 * for it to reach 0. Sequentially consistent, against the closer's raising
 * of closers_waiting before it reads `running`. */
static void wake_closers(bt_pool *pool)
{
    if (atomic_load(&pool->closers_waiting) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->cv);
        pthread_mutex_unlock(&pool->mu);
    }
}

/* The jobs of atts[0..n) were pushed back: let their closers go on. The
 * last touch of each att: once its `running` is 0 the closer may free it. */
static void worker_release(bt_pool *pool, bt_lane l, bt__attach **atts, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && atts[j] == atts[i])
            j++;
        atomic_fetch_sub_explicit(&atts[i]->lane_running[l], (long)(j - i), memory_order_relaxed);
        bt__attach_release(atts[i], (long)(j - i));
        i = j;
    }
    wake_closers(pool);
}

static bool worker_should_retire(bt__lane *lane)
{
    return lane->stop || lane->threads > lane->target;
}

/* ---- Sleeping and waking ---------------------------------------------- */

/* What a worker about to sleep reads first, before it counts itself in
 * `sleepers` and looks at the queue a last time: a wake that comes after
 * that look changes it, so the sleep below returns at once. */
static uint32_t lane_sleep_ticket(bt__lane *lane)
{
#ifdef BT__LANE_FUTEX
    return atomic_load(&lane->wake_seq);
#else
    (void)lane;
    return 0;
#endif
}

/* Sleep until woken (or until *until, CLOCK_MONOTONIC, if not NULL).
 * Lane lock held on entry and on return. Returns false on timeout. */
static bool lane_sleep(bt__lane *lane, uint32_t ticket, const struct timespec *until)
{
#ifdef BT__LANE_FUTEX
    pthread_mutex_unlock(&lane->mu);
    /* FUTEX_WAIT_BITSET takes an absolute time on CLOCK_MONOTONIC. */
    long rc = syscall(SYS_futex, (uint32_t *)&lane->wake_seq, FUTEX_WAIT_BITSET_PRIVATE, ticket,
                      until, NULL, FUTEX_BITSET_MATCH_ANY);
    bool timed_out = rc != 0 && errno == ETIMEDOUT;
    pthread_mutex_lock(&lane->mu);
    return !timed_out;
#else
    (void)ticket;
    if (until == NULL)
        return pthread_cond_wait(&lane->cv, &lane->mu), true;
    return pthread_cond_timedwait(&lane->cv, &lane->mu, until) != ETIMEDOUT;
#endif
}

/* A worker counts itself asleep (lane lock held), before its last look
 * at the queue. */
static void lane_sleeper_enter(bt__lane *lane)
{
    atomic_fetch_add(&lane->sleepers, 1);
}

/* ...and leaves (lane lock held), whatever woke it: with a waker's claim
 * if one is left, so that claims never outnumber sleepers (a claim left
 * behind would hide the next sleeper from every waker). */
static void lane_sleeper_leave(bt__lane *lane)
{
    uint64_t w = atomic_load(&lane->sleepers), left;
    do {
        uint64_t claims = w >> 32;
        left = w - 1 - (claims > 0 ? (uint64_t)1 << 32 : 0);
    } while (!atomic_compare_exchange_weak(&lane->sleepers, &w, left));
}

#ifdef BT__LANE_FUTEX
/* Claim up to n sleepers not yet woken; returns how many. */
static unsigned lane_claim_sleepers(bt__lane *lane, unsigned n)
{
    uint64_t w = atomic_load(&lane->sleepers);
    unsigned k;
    do {
        unsigned free = (uint32_t)w - (uint32_t)(w >> 32);
        k = n < free ? n : free;
        if (k == 0)
            return 0;
    } while (!atomic_compare_exchange_weak(&lane->sleepers, &w, w + ((uint64_t)k << 32)));
    return k;
}
#endif

void bt__lane_wake_unlock(bt__lane *lane, unsigned n)
{
#ifdef BT__LANE_FUTEX
    pthread_mutex_unlock(&lane->mu);
    if (n != UINT_MAX)
        n = lane_claim_sleepers(lane, n);
    if (n == 0)
        return;
    /* After the sleeper's ticket (it counted itself in `sleepers`, which
     * the waker read): its wait returns at once if it has not begun. */
    atomic_fetch_add(&lane->wake_seq, 1);
    syscall(SYS_futex, (uint32_t *)&lane->wake_seq, FUTEX_WAKE_PRIVATE,
            n > INT_MAX ? INT_MAX : (int)n, NULL, NULL, 0);
#else
    if (n == UINT_MAX)
        pthread_cond_broadcast(&lane->cv);
    else
        for (unsigned i = 0; i < n; i++)
            pthread_cond_signal(&lane->cv);
    pthread_mutex_unlock(&lane->mu);
#endif
}

/* Linger: spin on the queue's depth, without the lock, until a job is
 * handed over or linger_ns pass, so that a loop submitting one job at a
 * time finds a worker awake (a wakeup through the condvar costs tens of
 * microseconds; see docs/offload.md). Counted in `spinners`, so that
 * loops skip the wakeup while we look. Lane lock held on entry and on
 * return. */
static void worker_linger(bt__lane *lane, uint64_t linger_ns)
{
    atomic_fetch_add(&lane->spinners, 1);
    pthread_mutex_unlock(&lane->mu);
    uint64_t deadline = bt_hrtime() + linger_ns;
    unsigned i = 0;
    while (atomic_load_explicit(&lane->depth, memory_order_relaxed) == 0) {
        if ((++i & (LINGER_CLOCK_EVERY - 1)) == 0 && bt_hrtime() >= deadline)
            break;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    pthread_mutex_lock(&lane->mu);
    atomic_fetch_sub(&lane->spinners, 1);
}

/* A lingerer's wait ended with jobs queued (lane lock held): account it
 * to the lane's spin budget, and how long after it began the oldest batch
 * was handed over (the gap, without the time it took to wake us). */
static void worker_wait_account(bt__lane *lane, uint64_t t0, uint64_t spun)
{
    uint64_t now = bt_hrtime();
    uint64_t handed = lane->head->t_submit;
    bt__spin_account(&lane->spin_budget, spun, now);
    bt__spin_gap(&lane->spin_budget, handed > t0 ? handed - t0 : 0);
}

/* Whether the lane's lingerer should linger now: always at the full
 * spin; otherwise not when the recent gaps between jobs outlast the
 * linger, nor when its last completion had to wake its loop (the loop
 * sleeps, so its next job comes a wakeup later: lingering through that
 * would cost a core for what the loop saves by sleeping), and within the
 * lane's spin budget. */
static bool worker_linger_pays(const bt__worker *w)
{
    unsigned share = w->pool->cfg.spin_share;
    if (share >= BT__SPIN_SHARE_FULL)
        return true;
    if (w->woke_loop)
        share /= 2;
    return bt__spin_pays(&w->lane->spin_budget, share, w->pool->linger_ns);
}

/* The wait step: until the lane's queue has jobs for this worker (true)
 * or the worker must retire (false: the lane stops or shrank, or a
 * blocking worker was idle too long). One worker per lane lingers first,
 * the others sleep at once: on a machine with few cores, spinners would
 * take the CPU that the loop thread (the one submitting) needs. Lane
 * lock held on entry and on return. */
static bool worker_wait(bt__worker *w)
{
    bt__lane *lane = w->lane;
    bt_pool *pool = w->pool;
    /* A wait of the lane's lingerer, timed for its spin budget: when it
     * began (0: not one), and how long it spun. */
    uint64_t t0 = 0, spun = 0;
    for (;;) {
        bt__lane_splice(lane);
        if (lane->head != NULL) {
            if (t0 != 0)
                worker_wait_account(lane, t0, spun);
            /* shrunk: leave the jobs to the others */
            return !(lane->threads > lane->target && !lane->stop);
        }
        if (worker_should_retire(lane))
            return false;
        if (pool->linger_ns && atomic_load_explicit(&lane->spinners, memory_order_relaxed) == 0) {
            uint64_t now = bt_hrtime();
            if (t0 == 0)
                t0 = now;
            if (worker_linger_pays(w)) {
                worker_linger(lane, pool->linger_ns);
                spun += bt_hrtime() - now;
                bt__lane_splice(lane);
                if (lane->head != NULL)
                    continue;
                if (worker_should_retire(lane))
                    return false;
            }
        }
        /* Count ourselves asleep, then look once more: a loop that handed
         * a batch over without the lock and saw no sleeper left it for us
         * to find here. */
        uint32_t ticket = lane_sleep_ticket(lane);
        lane_sleeper_enter(lane);
        bt__lane_splice(lane);
        if (lane->head != NULL) {
            lane_sleeper_leave(lane);
            continue;
        }
        if (lane->id == BT_LANE_BLOCKING) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            uint64_t ns = (uint64_t)ts.tv_nsec + pool->idle_ns;
            ts.tv_sec += (time_t)(ns / 1000000000u);
            ts.tv_nsec = (long)(ns % 1000000000u);
            bool woken = lane_sleep(lane, ticket, &ts);
            lane_sleeper_leave(lane);
            bt__lane_splice(lane);
            if (!woken && lane->head == NULL)
                return false; /* idle too long: retire */
        } else {
            lane_sleep(lane, ticket, NULL);
            lane_sleeper_leave(lane);
        }
    }
}

/* What a worker took from the queue in one take step. */
typedef struct {
    size_t n;
    bt_job *job[TAKE_MAX];
    bt__attach *att[TAKE_MAX];    /* each job's, for worker_release */
    uint64_t submitted[TAKE_MAX]; /* when each was handed over */
    bt__batch *spent, *dead;      /* hand-overs to give back, to free */
} worker_take_t;

/* The take step: a share of the queue, a quarter of ours (1 when the
 * queue is short, so the tail of a burst spreads evenly; always 1 on the
 * blocking lane, whose jobs are long), each job marked running and
 * counted in its attach (under the lock, where a closer looks for its
 * jobs). A worker that leaves jobs behind wakes a sleeper: the loop did
 * not, as a worker was awake: returns whether to. Lane lock held, and the
 * queue not empty. */
static bool worker_take(bt__worker *w, worker_take_t *t)
{
    bt__lane *lane = w->lane;
    size_t depth = atomic_load_explicit(&lane->depth, memory_order_relaxed);
    size_t k = depth / ((size_t)lane->threads * 4);
    if (k < 1)
        k = 1;
    if (k > TAKE_MAX || lane->id == BT_LANE_BLOCKING)
        k = lane->id == BT_LANE_BLOCKING ? 1 : TAKE_MAX;
    t->spent = t->dead = NULL;
    size_t n = lane_take(lane, k, t->job, t->submitted, &t->spent, &t->dead);
    for (size_t i = 0; i < n; i++) {
        t->job[i]->where = JOB_RUNNING;
        t->att[i] = t->job[i]->att;
    }
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && t->att[j] == t->att[i])
            j++;
        atomic_fetch_add_explicit(&t->att[i]->running, (long)(j - i), memory_order_relaxed);
        atomic_fetch_add_explicit(&t->att[i]->lane_running[lane->id], (long)(j - i),
                                  memory_order_relaxed);
        i = j;
    }
    atomic_fetch_sub_explicit(&lane->depth, n, memory_order_relaxed);
    atomic_store_explicit(&w->busy, true, memory_order_relaxed);
    t->n = n;
    /* Another worker may be asleep with jobs left: pass the baton on. */
    return lane->head && bt__lane_sleeping(lane) && atomic_load(&lane->spinners) == 0;
}

/* The run step, without the lock: give the spent hand-overs back, run
 * the jobs taken, send each back to its loop, let go of their attaches. */
static void worker_run(bt__worker *w, worker_take_t *t)
{
    batches_return(t->spent);
    batch_list_free(t->dead);
    if (t->n) { /* 0: only cancelled slots were left */
        worker_run_batch(w, t->job, t->submitted, t->n);
        worker_release(w->pool, w->lane->id, t->att, t->n);
    }
    atomic_store_explicit(&w->busy, false, memory_order_relaxed);
}

/* A worker: wait, take, run, until it must retire. */
static void *worker_main(void *arg)
{
    bt__worker *w = arg;
    bt__lane *lane = w->lane;
    bt_pool *pool = w->pool;
    current_worker = w;
    worker_set_name(pool, w);
    worker_take_t took;

    pthread_mutex_lock(&lane->mu);
    while (worker_wait(w)) {
        bt__lane_wake_unlock(lane, worker_take(w, &took) ? 1 : 0);
        worker_run(w, &took);
        pthread_mutex_lock(&lane->mu);
    }
    lane->threads--;
    lane->retired++;
    worker_fold(lane, w);
    /* A retiring worker may leave jobs that others must take. */
    bt__lane_splice(lane);
    bt__lane_wake_unlock(lane, lane->head && bt__lane_sleeping(lane) ? 1 : 0);
    bt_free(w);
    current_worker = NULL;

    atomic_fetch_sub(&pool->live_threads, 1);
    pthread_mutex_lock(&pool->mu);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    bt__pool_unref(pool);
    return NULL;
}

/* ---- Pools ----------------------------------------------------------------- */

/* size is the caller's sizeof (the bt_pool_config_init macro): only that
 * much is written, whatever this library's layout. */
BT_EXPORT void bt_pool_config_init_size(bt_pool_config *cfg, size_t size)
{
    if (cfg == NULL || size < sizeof(size_t))
        return;
    bt_pool_config d;
    memset(&d, 0, sizeof d);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    d.cpu_threads = n > 0 ? (unsigned)n : 1;
    d.blocking_max = DEFAULT_BLOCKING_MAX;
    d.blocking_idle_ms = DEFAULT_IDLE_MS;
    d.cpu_queue_max = DEFAULT_QUEUE_MAX;
    d.blocking_queue_max = DEFAULT_QUEUE_MAX;
    d.linger_us = DEFAULT_LINGER_US;
    d.name = "bt";
    d.cpu_nice = DEFAULT_CPU_NICE;
    d.shutdown_ms = DEFAULT_SHUTDOWN_MS;
    d.spin_share = BT_POOL_SPIN_DEFAULT;
    memset(cfg, 0, size); /* fields a newer header has: zero, "default" */
    bt__sized_write(cfg, size, &d, sizeof d);
}

/* Zeros in cfg become defaults. */
static void config_fill(bt_pool_config *out, const bt_pool_config *cfg)
{
    bt_pool_config d;
    bt_pool_config_init(&d);
    /* Zeros mean "default", so the fields an older caller lacks start zero. */
    *out = (bt_pool_config){ 0 };
    if (cfg != NULL)
        bt__sized_read(out, sizeof *out, cfg, cfg->size);
    else
        *out = d;
    if (out->cpu_threads == 0)
        out->cpu_threads = d.cpu_threads;
    if (out->blocking_max == 0)
        out->blocking_max = d.blocking_max;
    if (out->blocking_idle_ms == 0)
        out->blocking_idle_ms = d.blocking_idle_ms;
    if (out->cpu_queue_max == 0)
        out->cpu_queue_max = d.cpu_queue_max;
    if (out->blocking_queue_max == 0)
        out->blocking_queue_max = d.blocking_queue_max;
    if (out->linger_us == 0)
        out->linger_us = d.linger_us;
    if (out->name == NULL || out->name[0] == '\0')
        out->name = d.name;
    if (out->cpu_nice == 0)
        out->cpu_nice = d.cpu_nice;
    if (out->cpu_nice > 19)
        out->cpu_nice = 19;
    if (out->shutdown_ms == 0)
        out->shutdown_ms = d.shutdown_ms;
    if (out->spin_share == 0)
        out->spin_share = d.spin_share;
    if (out->spin_share > BT_POOL_SPIN_FULL)
        out->spin_share = BT_POOL_SPIN_FULL;
}

BT_EXPORT bt_pool *bt_pool_new(const bt_pool_config *cfg)
{
    if (cfg != NULL &&
        bt__sized_check(cfg->size, BT__SIZE_V1(bt_pool_config, shutdown_ms), "bt_pool_new",
                        "bt_pool_config", "bt_pool_config_init or BT_SIZED(bt_pool_config)") != 0)
        return NULL;
    bt_pool *pool = bt_calloc(1, sizeof *pool);
    if (pool == NULL)
        return NULL;
    config_fill(&pool->cfg, cfg);
    snprintf(pool->name, sizeof pool->name, "%s", pool->cfg.name);
    pool->cfg.name = pool->name;
    pool->linger_ns = pool->cfg.linger_us == UINT64_MAX ? 0 : pool->cfg.linger_us * 1000;
    pool->idle_ns = pool->cfg.blocking_idle_ms * 1000000u;
    pool->shutdown_ns = pool->cfg.shutdown_ms == UINT64_MAX ? UINT64_MAX
                        : pool->cfg.shutdown_ms > UINT64_MAX / 1000000u
                            ? UINT64_MAX - 1
                            : pool->cfg.shutdown_ms * 1000000u;
    atomic_init(&pool->refs, 1);
    pthread_mutex_init(&pool->mu, NULL);
    pthread_condattr_t pca; /* shutdown deadlines immune to clock jumps */
    pthread_condattr_init(&pca);
    pthread_condattr_setclock(&pca, CLOCK_MONOTONIC);
    pthread_cond_init(&pool->cv, &pca);
    pthread_condattr_destroy(&pca);
    for (int i = 0; i < BT_LANE_COUNT; i++) {
        bt__lane *l = &pool->lane[i];
        /* Adaptive: spin briefly before sleeping in the kernel, since the
         * lock is held for a few list operations only. */
        pthread_mutexattr_t ma;
        pthread_mutexattr_init(&ma);
#ifdef PTHREAD_MUTEX_ADAPTIVE_NP
        pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
        pthread_mutex_init(&l->mu, &ma);
        pthread_mutexattr_destroy(&ma);
#ifndef BT__LANE_FUTEX
        pthread_condattr_t ca; /* idle timeouts immune to wall-clock jumps */
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&l->cv, &ca);
        pthread_condattr_destroy(&ca);
#endif
        l->id = (bt_lane)i;
    }
    pool->lane[BT_LANE_CPU].target = pool->cfg.cpu_threads;
    pool->lane[BT_LANE_CPU].queue_max = pool->cfg.cpu_queue_max;
    pool->lane[BT_LANE_BLOCKING].target = pool->cfg.blocking_max;
    pool->lane[BT_LANE_BLOCKING].queue_max = pool->cfg.blocking_queue_max;

    bt__lane *cpu = &pool->lane[BT_LANE_CPU];
    pthread_mutex_lock(&cpu->mu);
    unsigned add = bt__lane_want_threads(cpu);
    pthread_mutex_unlock(&cpu->mu);
    if (bt__lane_spawn(pool, cpu, add) == 0) {
        bt_pool_free(pool);
        return NULL;
    }
    /* One blocking thread now, so that the first bt_to_thread finds a
     * worker instead of waiting for a thread to start (it retires after
     * the idle time like any other; failing to start it is no error). */
    bt__lane *blk = &pool->lane[BT_LANE_BLOCKING];
    pthread_mutex_lock(&blk->mu);
    blk->threads++;
    pthread_mutex_unlock(&blk->mu);
    bt__lane_spawn(pool, blk, 1);
    return pool;
}

/* Cancel queued jobs: each goes back to its loop as a cancelled job. */
void bt__lane_cancel_queue(bt_pool *pool, bt__lane *lane)
{
    bt__task *list = NULL, **tail = &list; /* through the jobs' tasks */
    size_t n = 0;
    pthread_mutex_lock(&lane->mu);
    bt__lane_splice(lane);
    bt__batch *b = lane->head;
    lane->head = lane->tail = NULL;
    for (bt__batch *q = b; q; q = q->next) {
        for (unsigned i = q->first; i < q->n; i++) {
            bt_job *j = q->job[i];
            if (j == NULL)
                continue;
            j->where = JOB_DONE;
            /* Counted as running (under the lock, where the loop's closer
             * looks) so that the closer waits for the push below. */
            atomic_fetch_add(&j->att->running, 1);
            *tail = &j->task;
            tail = &j->task.next;
            n++;
        }
    }
    *tail = NULL;
    atomic_fetch_sub(&lane->depth, n);
    atomic_fetch_add(&lane->cancelled, n);
    pthread_mutex_unlock(&lane->mu);
    batch_list_free(b);
    /* Under pool->mu, which a closer that abandons its jobs takes after
     * raising `abandoned`: either we see the flag or it waits for us. */
    pthread_mutex_lock(&pool->mu);
    bool woke;
    while (list) {
        bt__task *next = list->next;
        bt_job *job = (bt_job *)list;
        job->skipped = true;
        bt__attach *att = job->att;
        if (atomic_load(&att->abandoned)) {
            bt__job_drop_abandoned(job);
        } else if (bt__job_send_back(job, &woke) != 0) {
            bt_log(BT_LOG_ERROR, "offload pool: a loop closed with jobs queued");
            bt__job_free(job);
        }
        bt__attach_release(att, 1);
        list = next;
    }
    pthread_mutex_unlock(&pool->mu);
    /* The jobs may be other loops' (this runs on a loop thread that found
     * the lane stopped, too), whose closers may wait on them. */
    wake_closers(pool);
}

/* ---- Cancelling: the lane's side ----------------------------------------------- */

void bt__lane_remove(bt__lane *lane, bt_job *job)
{
    job->batch->job[job->slot] = NULL; /* workers skip the slot */
    job->where = JOB_DONE;
    atomic_fetch_sub_explicit(&lane->depth, 1, memory_order_relaxed);
}

void bt__lane_job_cancelled(bt__lane *lane, bt_job *job, bool handed_over)
{
    atomic_fetch_add_explicit(&lane->cancelled, 1, memory_order_relaxed);
    if (!handed_over)
        atomic_fetch_add_explicit(&lane->cancelled_unsent, 1, memory_order_relaxed);
    bt__job_cancel_now(job);
}

/* The future's cancel hook (loop thread): a job still in its batch or in
 * the queue leaves now; a running one sees its flag, and if it can be
 * abandoned (it holds no memory of the caller's: no arg, or one the pool
 * owns) its future settles now (bt__job_abandon). Where the job is, is the
 * lane's to say (under its lock); what becomes of it, job.c's. */
void bt__lane_on_cancel(bt_future *f, void *arg)
{
    bt_job *job = arg;
    atomic_store_explicit(&job->cancelled, true, memory_order_relaxed);
    /* bt_loop_free, after its closers: every job of the loop has come back
     * or was abandoned at the shutdown deadline (counted then), and the
     * pool may be gone; the loop settles the future itself. */
    if (f->loop->closing)
        return;
    bt__lane *lane = &job->pool->lane[job->lane];
    if (job->in_batch) { /* not handed over: the loop's own */
        job->in_batch = false;
        job->batch->job[job->slot] = NULL;
        bt__lane_job_cancelled(lane, job, false);
        return;
    }
    pthread_mutex_lock(&lane->mu);
    bt__lane_splice(lane); /* the job may still be on the incoming stack */
    bool queued = job->where == JOB_QUEUED;
    bool running = job->where == JOB_RUNNING;
    if (queued)
        bt__lane_remove(lane, job);
    pthread_mutex_unlock(&lane->mu);
    if (queued)
        bt__lane_job_cancelled(lane, job, true);
    else if (running && bt__job_abandon(job))
        atomic_fetch_add_explicit(&lane->abandoned, 1, memory_order_relaxed);
}

/* ---- Attachments' last counts ---------------------------------------------------- */

/* An attach (one per pool and loop, made by submit.c) is freed by whoever
 * lets go of its last `running` count: its loop, or the last worker that
 * ran one of its jobs after the closer gave up waiting. Here, because
 * workers let go of it too. */
static void attach_free(bt__attach *att)
{
    batch_list_free(att->free_batches);
    batch_list_free(atomic_load(&att->returned));
    bt__pool_unref(att->pool);
    bt_free(att);
}

void bt__attach_release(bt__attach *att, long n)
{
    if (atomic_fetch_sub_explicit(&att->running, n, memory_order_acq_rel) == n)
        attach_free(att);
}

BT_EXPORT void bt_pool_free(bt_pool *pool)
{
    if (pool == NULL)
        return;
    if (current_worker && current_worker->pool == pool) {
        bt_log(BT_LOG_ERROR, "bt_pool_free called from one of the pool's own workers: ignored");
        return;
    }
    atomic_store(&pool->shutdown, true);
    for (int i = 0; i < BT_LANE_COUNT; i++) {
        bt__lane *l = &pool->lane[i];
        pthread_mutex_lock(&l->mu);
        l->stop = true;
        bt__lane_wake_unlock(l, UINT_MAX);
        bt__lane_cancel_queue(pool, l);
    }
    /* Wait for the threads, up to the shutdown deadline: a job that never
     * returns must not hold the process. The threads left hold their own
     * references to the pool, so its memory outlives them; their jobs
     * still settle on their loops (or are dropped, if their loop's closer
     * abandoned them). */
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    uint64_t ns =
        (uint64_t)until.tv_nsec + (pool->shutdown_ns == UINT64_MAX ? 0 : pool->shutdown_ns);
    until.tv_sec += (time_t)(ns / 1000000000u);
    until.tv_nsec = (long)(ns % 1000000000u);
    long left = 0;
    pthread_mutex_lock(&pool->mu);
    while ((left = atomic_load(&pool->live_threads)) > 0) {
        if (pool->shutdown_ns == UINT64_MAX)
            pthread_cond_wait(&pool->cv, &pool->mu);
        else if (pthread_cond_timedwait(&pool->cv, &pool->mu, &until) == ETIMEDOUT)
            break;
    }
    left = atomic_load(&pool->live_threads);
    pthread_mutex_unlock(&pool->mu);
    if (left > 0)
        bt_log(BT_LOG_WARN,
               "offload pool freed with %ld thread%s still running a job after the %" PRIu64
               " ms shutdown deadline: left to finish on their own",
               left, left == 1 ? "" : "s", pool->shutdown_ns / 1000000u);
    default_forget(pool);
    bt__pool_unref(pool);
}

BT_EXPORT int bt_pool_set_threads(bt_pool *pool, bt_lane lane, unsigned n)
{
    if (pool == NULL || (unsigned)lane >= BT_LANE_COUNT || n == 0)
        return BT_EINVAL;
    bt__lane *l = &pool->lane[lane];
    pthread_mutex_lock(&l->mu);
    if (l->stop) {
        pthread_mutex_unlock(&l->mu);
        return BT_ESHUTDOWN;
    }
    l->target = n;
    unsigned add = bt__lane_want_threads(l);
    /* Let the extra ones notice. */
    bt__lane_wake_unlock(l, l->threads > l->target ? UINT_MAX : 0);
    if (add && bt__lane_spawn(pool, l, add) == 0)
        return BT_ENOMEM;
    return 0;
}

BT_EXPORT int bt_pool_set_queue_max(bt_pool *pool, bt_lane lane, size_t max)
{
    if (pool == NULL || (unsigned)lane >= BT_LANE_COUNT || max == 0)
        return BT_EINVAL;
    bt__lane *l = &pool->lane[lane];
    pthread_mutex_lock(&l->mu);
    l->queue_max = max;
    pthread_mutex_unlock(&l->mu);
    return 0;
}

BT_EXPORT int bt_pool_get_stats(bt_pool *pool, bt_pool_stats *out)
{
    if (pool == NULL || out == NULL)
        return BT_EINVAL;
    if (bt__sized_check(out->size, BT__SIZE_V1(bt_pool_stats, lane), "bt_pool_get_stats",
                        "bt_pool_stats", "BT_SIZED(bt_pool_stats)") != 0)
        return BT_EINVAL;
    bt_pool_stats st = { 0 };
    for (int i = 0; i < BT_LANE_COUNT; i++) {
        bt__lane *l = &pool->lane[i];
        bt_lane_stats *s = &st.lane[i];
        pthread_mutex_lock(&l->mu);
        bt__lane_splice(l);
        s->threads = l->threads;
        s->max_threads = l->target;
        s->queued = atomic_load(&l->depth);
        s->queue_max = l->queue_max;
        s->submitted = l->submitted + atomic_load(&l->cancelled_unsent);
        s->rejected = atomic_load(&l->rejected);
        s->cancelled = atomic_load(&l->cancelled);
        s->abandoned = atomic_load(&l->abandoned);
        s->threads_started = l->started;
        s->threads_retired = l->retired;
        bt__worker_totals t = l->retired_totals;
        for (bt__worker *w = l->workers; w; w = w->next) {
            worker_totals_add(&t, w);
            if (atomic_load(&w->busy))
                s->busy++;
        }
        s->done = t.done;
        s->failed = t.failed;
        s->queue_ns_total = t.queue_ns;
        s->queue_ns_max = t.qwait_max;
        s->run_ns_total = t.run_ns;
        s->run_ns_max = t.run_max;
        uint64_t skipped = t.skipped;
        s->cancelled += skipped;
        s->idle = s->threads > s->busy ? s->threads - s->busy : 0;
        pthread_mutex_unlock(&l->mu);
    }
    bt__sized_write(out, out->size, &st, sizeof st);
    return 0;
}

/* ---- The default pool -------------------------------------------------------- */

static pthread_mutex_t default_mu = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(bt_pool *) default_pool;
static bt_pool_config default_cfg;
static bool default_cfg_set;
static char default_name[12];

static unsigned env_unsigned(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        return 0;
    char *end;
    unsigned long n = strtoul(v, &end, 10);
    if (*end != '\0' || n == 0 || n > 1024) {
        bt_log(BT_LOG_WARN, "ignoring %s=%s: want a number from 1 to 1024", name, v);
        return 0;
    }
    return (unsigned)n;
}

BT_EXPORT bt_pool *bt_pool_default(void)
{
    bt_pool *p = atomic_load_explicit(&default_pool, memory_order_acquire);
    if (p)
        return p;
    pthread_mutex_lock(&default_mu);
    p = atomic_load_explicit(&default_pool, memory_order_relaxed);
    if (p == NULL) {
        bt_pool_config cfg;
        if (default_cfg_set)
            cfg = default_cfg;
        else
            cfg = BT_SIZED(bt_pool_config);
        if (cfg.cpu_threads == 0)
            cfg.cpu_threads = env_unsigned("BATON_CPU_THREADS");
        if (cfg.blocking_max == 0)
            cfg.blocking_max = env_unsigned("BATON_BLOCKING_THREADS");
        p = bt_pool_new(&cfg);
        atomic_store_explicit(&default_pool, p, memory_order_release);
    }
    pthread_mutex_unlock(&default_mu);
    return p;
}

/* bt_pool_free: the next bt_pool_default makes a new pool. */
static void default_forget(bt_pool *pool)
{
    pthread_mutex_lock(&default_mu);
    if (atomic_load(&default_pool) == pool)
        atomic_store(&default_pool, NULL);
    pthread_mutex_unlock(&default_mu);
}

BT_EXPORT int bt_pool_default_configure(const bt_pool_config *cfg)
{
    if (cfg == NULL)
        return BT_EINVAL;
    if (bt__sized_check(cfg->size, BT__SIZE_V1(bt_pool_config, shutdown_ms),
                        "bt_pool_default_configure", "bt_pool_config",
                        "bt_pool_config_init or BT_SIZED(bt_pool_config)") != 0)
        return BT_EINVAL;
    pthread_mutex_lock(&default_mu);
    int rc = 0;
    if (atomic_load(&default_pool)) {
        rc = BT_EBUSY;
    } else {
        /* Zeros mean "default": the fields an older caller lacks stay 0. */
        default_cfg = (bt_pool_config){ 0 };
        bt__sized_read(&default_cfg, sizeof default_cfg, cfg, cfg->size);
        if (cfg->name) {
            snprintf(default_name, sizeof default_name, "%s", cfg->name);
            default_cfg.name = default_name;
        }
        default_cfg_set = true;
    }
    pthread_mutex_unlock(&default_mu);
    return rc;
}
