/* The offload pool: lanes of worker threads whose jobs settle futures on
 * loops.
 *
 * DESIGN
 * - Submission (loop thread). A job goes first into its loop's batch for
 *   the lane (bt__attach, loop-thread only, no lock). The batch is handed
 *   to the lane at the end of the loop turn (a flush task on the loop's
 *   ready FIFO) or as soon as it holds FLUSH_AT jobs, under one lock, with
 *   at most one condvar signal per sleeping worker. The lane's bound counts
 *   its queue (`depth`, read once per batch, no shared write per job) plus
 *   the loop's batch, so a full lane fails the future at once; it is exact
 *   for one loop, and several loops can overshoot it by their unflushed
 *   batches (FLUSH_AT each) at most.
 * - Submission from any other thread goes through the loop's inbox first
 *   (the "admit" task), so the future is made on its loop's thread.
 * - Workers. Each lane has one mutex, one condvar and a FIFO. A worker
 *   takes up to a quarter of its share of the queue at once (1 when the
 *   queue is short, so the tail of a burst is spread evenly), runs the
 *   jobs, and pushes each finished job onto its loop's lock-free inbox
 *   (bt__loop_push: one CAS, a wakeup only on empty -> non-empty). Out of
 *   work, one worker per lane lingers (spins on the atomic queue length)
 *   for linger_ns before it sleeps on the condvar, so a loop that submits
 *   one job at a time finds it awake; the others sleep at once. A flush
 *   signals only as many sleepers as there are jobs beyond the lingerer.
 *   CPU workers run at a higher nice value so loop threads preempt them.
 * - The loop side. A job in flight on a lane whose recent jobs are short
 *   counts in the loop's `expected`, so the loop spins briefly for its
 *   completion instead of sleeping in epoll. The completion task settles
 *   the future and puts the job in the loop thread's job cache.
 * - Lifetimes. The pool is reference counted: its owner, each attach, each
 *   worker thread and each job being admitted hold one, so the memory
 *   outlives bt_pool_free until the last loop lets go. An attach lives until
 *   its loop's closer; the closer cancels the loop's queued jobs and waits
 *   until `running` (jobs taken by workers and not yet pushed back) is 0,
 *   so no worker touches the loop after it is freed.
 * - Locks: a lane's mutex, then pool->mu; never two lanes at once. A worker
 *   never holds a lock while it runs a job or pushes a completion.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "pool-internal.h"

#define FLUSH_AT 64           /* hand a batch over early past this many */
#define TAKE_MAX 16           /* jobs a worker takes at once, at most */
#define DEFAULT_BLOCKING_MAX 64
#define DEFAULT_IDLE_MS 10000
#define DEFAULT_QUEUE_MAX ((size_t)1 << 20)
#define DEFAULT_LINGER_US 50
#define DEFAULT_CPU_NICE 5
#define EXPECT_MAX_NS 100000 /* loops spin for jobs shorter than this */

static _Thread_local bt__worker *current_worker;
static _Thread_local bt_job *current_job; /* running on this worker */

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

static void pool_ref(bt_pool *pool)
{
    atomic_fetch_add_explicit(&pool->refs, 1, memory_order_relaxed);
}

static void pool_destroy(bt_pool *pool)
{
    for (int i = 0; i < BT_LANE_COUNT; i++) {
        bt__lane *l = &pool->lane[i];
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
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

static const char *lane_name(bt_lane lane)
{
    return lane == BT_LANE_CPU ? "cpu" : "blocking";
}

/* ---- Inside a job ------------------------------------------------------- */

BT_EXPORT int bt_job_set_value(bt_job *job, void *value, bt_destroy_fn dtor)
{
    if (job == NULL)
        return BT_EINVAL;
    if (job->dtor && job->value != value)
        job->dtor(job->value);
    job->value = value;
    job->dtor = dtor;
    return 0;
}

BT_EXPORT int bt_job_fail(bt_job *job, int code, const char *fmt, ...)
{
    if (code >= 0)
        code = BT_EJOB;
    if (job == NULL)
        return code;
    bt_free(job->message);
    job->message = NULL;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        job->message = bt_vasprintf(fmt, ap);
        va_end(ap);
    }
    job->code = code;
    return code;
}

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
    return current_job && bt_job_cancelled(current_job);
}

bool bt__pool_in_job(void)
{
    return current_job != NULL;
}

BT_EXPORT bt_loop *bt_job_loop(const bt_job *job)
{
    return job ? job->loop : NULL;
}

/* ---- Jobs on the loop side ----------------------------------------------- */

/* Jobs are made and retired on loop threads; each such thread keeps the
 * jobs it retired for reuse. A burst then reuses memory that is already
 * mapped instead of growing the heap again after glibc trimmed it: page
 * faults were two thirds of the CPU cost of a burst of trivial jobs before
 * this cache. The cache holds at most what was once in flight at the same
 * time (and JOB_CACHE_MAX), and gives back every TRIM_NS the part of it
 * that went unused all that time (a working-set trim, like Go's
 * scavenger), so a one-off burst does not pin its memory for good. */
#define JOB_CACHE_MAX ((size_t)1 << 20)
#define JOB_CACHE_TRIM_NS 5000000000ull

typedef struct {
    bt_job *head;
    size_t n;
    size_t low;          /* the smallest n since the last trim */
    uint64_t next_trim;
    unsigned ops;
    bool keyed;
} job_cache_t;

static _Thread_local job_cache_t job_cache;
static pthread_key_t job_cache_key;
static pthread_once_t job_cache_once = PTHREAD_ONCE_INIT;

static void job_cache_free_n(job_cache_t *c, size_t n)
{
    while (n-- && c->head) {
        bt_job *j = c->head;
        c->head = j->next;
        c->n--;
        bt_free(j);
    }
}

static void job_cache_drop(void *arg)
{
    job_cache_t *c = arg;
    job_cache_free_n(c, SIZE_MAX);
}

static void job_cache_init(void)
{
    pthread_key_create(&job_cache_key, job_cache_drop);
}

/* Every few thousand operations, look at the clock; past the period, free
 * what stayed unused through it. */
static void job_cache_tick(job_cache_t *c)
{
    if (c->n < c->low)
        c->low = c->n;
    if ((++c->ops & 4095) != 0)
        return;
    uint64_t now = bt_hrtime();
    if (now < c->next_trim)
        return;
    if (c->next_trim)
        job_cache_free_n(c, c->low);
    c->low = c->n;
    c->next_trim = now + JOB_CACHE_TRIM_NS;
}

static bt_job *job_alloc(void)
{
    job_cache_t *c = &job_cache;
    bt_job *j = c->head;
    if (j == NULL)
        return bt_calloc(1, sizeof *j);
    c->head = j->next;
    c->n--;
    job_cache_tick(c);
    memset(j, 0, sizeof *j);
    return j;
}

/* Retire a job's memory. keep: on a loop thread, into its cache. */
static void job_release(bt_job *job, bool keep)
{
    job_cache_t *c = &job_cache;
    if (!keep || c->n >= JOB_CACHE_MAX) {
        bt_free(job);
        return;
    }
    if (!c->keyed) { /* so that the cache is freed when the thread exits */
        pthread_once(&job_cache_once, job_cache_init);
        pthread_setspecific(job_cache_key, c);
        c->keyed = true;
    }
    job->next = c->head;
    c->head = job;
    c->n++;
    job_cache_tick(c);
}

static void job_free_keep(bt_job *job, bool keep)
{
    if (job->dtor)
        job->dtor(job->value);
    bt_free(job->message);
    bt_future_unref(job->future);
    job_release(job, keep);
}

static void job_free(bt_job *job)
{
    job_free_keep(job, false);
}

/* Settle a job's future from the loop thread and free the job. */
static void job_settle(bt_job *job)
{
    bt_future *f = job->future;
    if (job->skipped) {
        bt_future_set_cancelled(f);
    } else if (job->code == 0) {
        bt_future_set_value(f, job->value, job->dtor);
        job->dtor = NULL;
    } else if (job->message) {
        bt_future_set_error(f, job->code, "%s", job->message);
    } else {
        bt_future_set_error(f, job->code, NULL);
    }
    if (job->expected)
        bt__loop_expect(job->loop, -1);
    job_free_keep(job, true);
}

/* The completion task: runs on the loop thread, from the inbox. */
static void job_complete(bt__task *t)
{
    job_settle((bt_job *)t);
}

/* A job that leaves before it ran. */
static void job_cancel_now(bt_job *job)
{
    job->skipped = true;
    atomic_fetch_add_explicit(&job->pool->lane[job->lane].cancelled, 1, memory_order_relaxed);
    job_settle(job);
}

static void batch_unlink(bt__attach *att, bt_job *job)
{
    bt_lane l = job->lane;
    if (job->prev)
        job->prev->next = job->next;
    else
        att->batch_head[l] = job->next;
    if (job->next)
        job->next->prev = job->prev;
    else
        att->batch_tail[l] = job->prev;
    att->batch_n[l]--;
}

static void queue_unlink(bt__lane *lane, bt_job *job)
{
    if (job->prev)
        job->prev->next = job->next;
    else
        lane->head = job->next;
    if (job->next)
        job->next->prev = job->prev;
    else
        lane->tail = job->prev;
    /* Written under the lock only; read without it by lingering workers. */
    atomic_store_explicit(&lane->nq, atomic_load_explicit(&lane->nq, memory_order_relaxed) - 1,
                          memory_order_relaxed);
}

/* The future's cancel hook (loop thread): a job still in its batch or in
 * the queue leaves now; a running one sees its flag. */
static void job_on_cancel(bt_future *f, void *arg)
{
    (void)f;
    bt_job *job = arg;
    bt__lane *lane = &job->pool->lane[job->lane];
    atomic_store_explicit(&job->cancelled, true, memory_order_relaxed);
    if (job->in_batch) {
        job->in_batch = false;
        batch_unlink(job->att, job);
        job_cancel_now(job);
        return;
    }
    pthread_mutex_lock(&lane->mu);
    bool queued = job->where == JOB_QUEUED;
    if (queued) {
        queue_unlink(lane, job);
        atomic_fetch_sub_explicit(&lane->depth, 1, memory_order_relaxed);
        job->where = JOB_DONE;
    }
    pthread_mutex_unlock(&lane->mu);
    if (queued)
        job_cancel_now(job);
}

/* ---- Workers ------------------------------------------------------------- */

static void *worker_main(void *arg);

/* Start n threads on a lane; lane->threads was already raised by n under
 * the lane's lock. Returns how many started. */
static unsigned lane_spawn(bt_pool *pool, bt__lane *lane, unsigned n)
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
            pool_ref(pool);
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
               lane_name(lane->id));
    return ok;
}

/* How many blocking threads to add for the jobs now queued; called with
 * the lane's lock held, raises lane->threads by the answer. */
static unsigned lane_want_threads(bt__lane *lane)
{
    if (lane->stop)
        return 0;
    size_t nq = atomic_load_explicit(&lane->nq, memory_order_relaxed);
    unsigned add = 0;
    if (lane->id == BT_LANE_BLOCKING) {
        size_t idle = lane->sleepers + atomic_load_explicit(&lane->spinners, memory_order_relaxed);
        if (nq > idle && lane->threads < lane->target) {
            size_t want = nq - idle;
            size_t room = lane->target - lane->threads;
            add = (unsigned)(want < room ? want : room);
        }
    } else if (lane->threads < lane->target) {
        add = lane->target - lane->threads;
    }
    lane->threads += add;
    return add;
}

/* Fold a retiring worker's counters into the lane. Lane lock held. */
static void worker_fold(bt__lane *lane, bt__worker *w)
{
    lane->done += atomic_load(&w->done);
    lane->failed += atomic_load(&w->failed);
    lane->skipped += atomic_load(&w->skipped);
    lane->queue_ns += atomic_load(&w->queue_ns);
    lane->run_ns += atomic_load(&w->run_ns);
    uint64_t qm = atomic_load(&w->qwait_max), rm = atomic_load(&w->run_max);
    if (qm > lane->qwait_max)
        lane->qwait_max = qm;
    if (rm > lane->run_max)
        lane->run_max = rm;
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

/* Run one job and push it back to its loop. No lock held. *now is the
 * time the job starts (the end of the previous one: one clock read per
 * job) and is set to the time it ended. */
static void worker_run(bt__worker *w, bt_job *job, uint64_t *now)
{
    uint64_t start = *now;
    uint64_t qns = start > job->t_submit ? start - job->t_submit : 0;
    if (bt_job_cancelled(job)) {
        job->skipped = true;
        bump(&w->skipped, 1);
    } else {
        current_job = job;
        int rc = job->fn(job, job->arg);
        current_job = NULL;
        if (rc > 0)
            rc = BT_EJOB;
        if (rc < 0 && job->code == 0)
            job->code = rc; /* failed without bt_job_fail */
        else if (rc == 0)
            job->code = 0;  /* success wins over an earlier bt_job_fail */
        *now = bt_hrtime();
        uint64_t run = *now - start;
        bump(&w->done, 1);
        if (job->code)
            bump(&w->failed, 1);
        bump(&w->run_ns, run);
        raise_max(&w->run_max, run);
        /* A moving average (1/8 weight), racy between workers by design:
         * it only decides whether loops spin for completions. */
        uint64_t avg = atomic_load_explicit(&w->lane->avg_run_ns, memory_order_relaxed);
        atomic_store_explicit(&w->lane->avg_run_ns, avg - avg / 8 + run / 8, memory_order_relaxed);
    }
    bump(&w->queue_ns, qns);
    raise_max(&w->qwait_max, qns);

    job->task.run = job_complete;
    if (bt__loop_push(job->loop, &job->task) != 0) {
        /* Only if a loop was freed without its closers running: nobody can
         * settle this future any more. */
        bt_log(BT_LOG_ERROR, "offload pool: a job finished after its loop closed");
        job_free(job);
    }
}

/* The jobs of atts[0..n) were pushed back: let their closers go on. The
 * last touch of each att: once its `running` is 0 the closer may free it. */
static void worker_release(bt_pool *pool, bt__attach **atts, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && atts[j] == atts[i])
            j++;
        atomic_fetch_sub(&atts[i]->running, (long)(j - i));
        i = j;
    }
    if (atomic_load(&pool->closers_waiting) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->cv);
        pthread_mutex_unlock(&pool->mu);
    }
}

static bool worker_should_retire(bt__lane *lane)
{
    return lane->stop || lane->threads > lane->target;
}

static void *worker_main(void *arg)
{
    bt__worker *w = arg;
    bt__lane *lane = w->lane;
    bt_pool *pool = w->pool;
    current_worker = w;
    worker_set_name(pool, w);
    bt_job *local[TAKE_MAX];
    bt__attach *atts[TAKE_MAX];

    pthread_mutex_lock(&lane->mu);
    for (;;) {
        if (lane->head == NULL) {
            if (worker_should_retire(lane))
                break;
            /* Linger: spin on the queue length before sleeping, so a loop
             * that submits one job at a time finds a worker awake. One
             * worker per lane lingers, the others sleep at once: on a
             * machine with few cores, spinners would take the CPU that
             * the loop thread (the one submitting) needs. */
            if (pool->linger_ns && atomic_load_explicit(&lane->spinners, memory_order_relaxed) == 0) {
                atomic_fetch_add(&lane->spinners, 1);
                pthread_mutex_unlock(&lane->mu);
                uint64_t deadline = bt_hrtime() + pool->linger_ns;
                unsigned i = 0;
                while (atomic_load_explicit(&lane->nq, memory_order_relaxed) == 0) {
                    if ((++i & 31) == 0 && bt_hrtime() >= deadline)
                        break;
#if defined(__x86_64__) || defined(__i386__)
                    __builtin_ia32_pause();
#endif
                }
                pthread_mutex_lock(&lane->mu);
                atomic_fetch_sub(&lane->spinners, 1);
                if (lane->head)
                    continue;
                if (worker_should_retire(lane))
                    break;
            }
            lane->sleepers++;
            if (lane->id == BT_LANE_BLOCKING) {
                struct timespec ts;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                uint64_t ns = (uint64_t)ts.tv_nsec + pool->idle_ns;
                ts.tv_sec += (time_t)(ns / 1000000000u);
                ts.tv_nsec = (long)(ns % 1000000000u);
                int rc = pthread_cond_timedwait(&lane->cv, &lane->mu, &ts);
                lane->sleepers--;
                if (rc == ETIMEDOUT && lane->head == NULL)
                    break; /* idle too long: retire */
            } else {
                pthread_cond_wait(&lane->cv, &lane->mu);
                lane->sleepers--;
            }
            continue;
        }
        if (lane->threads > lane->target && !lane->stop)
            break; /* shrunk: leave the jobs to the others */
        /* Take a share: a quarter of ours, 1 when the queue is short. */
        size_t nq = atomic_load_explicit(&lane->nq, memory_order_relaxed);
        size_t k = nq / ((size_t)lane->threads * 4);
        if (k < 1)
            k = 1;
        if (k > TAKE_MAX || lane->id == BT_LANE_BLOCKING)
            k = lane->id == BT_LANE_BLOCKING ? 1 : TAKE_MAX;
        size_t n = 0;
        while (n < k && lane->head) {
            bt_job *job = lane->head;
            queue_unlink(lane, job);
            job->where = JOB_RUNNING;
            atts[n] = job->att;
            local[n++] = job;
        }
        /* Counted under the lock, where a closer looks for its jobs. */
        for (size_t i = 0; i < n;) {
            size_t j = i + 1;
            while (j < n && atts[j] == atts[i])
                j++;
            atomic_fetch_add_explicit(&atts[i]->running, (long)(j - i), memory_order_relaxed);
            i = j;
        }
        atomic_fetch_sub_explicit(&lane->depth, n, memory_order_relaxed);
        atomic_store_explicit(&w->busy, true, memory_order_relaxed);
        /* Another worker may be asleep with jobs left: pass the baton on. */
        if (lane->head && lane->sleepers && atomic_load(&lane->spinners) == 0)
            pthread_cond_signal(&lane->cv);
        pthread_mutex_unlock(&lane->mu);
        uint64_t now = bt_hrtime();
        for (size_t i = 0; i < n; i++)
            worker_run(w, local[i], &now);
        worker_release(pool, atts, n);
        atomic_store_explicit(&w->busy, false, memory_order_relaxed);
        pthread_mutex_lock(&lane->mu);
    }
    lane->threads--;
    lane->retired++;
    worker_fold(lane, w);
    /* A retiring worker may leave jobs that others must take. */
    if (lane->head && lane->sleepers)
        pthread_cond_signal(&lane->cv);
    pthread_mutex_unlock(&lane->mu);
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

BT_EXPORT void bt_pool_config_init(bt_pool_config *cfg)
{
    if (cfg == NULL)
        return;
    memset(cfg, 0, sizeof *cfg);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->cpu_threads = n > 0 ? (unsigned)n : 1;
    cfg->blocking_max = DEFAULT_BLOCKING_MAX;
    cfg->blocking_idle_ms = DEFAULT_IDLE_MS;
    cfg->cpu_queue_max = DEFAULT_QUEUE_MAX;
    cfg->blocking_queue_max = DEFAULT_QUEUE_MAX;
    cfg->linger_us = DEFAULT_LINGER_US;
    cfg->name = "bt";
    cfg->cpu_nice = DEFAULT_CPU_NICE;
}

/* Zeros in cfg become defaults. */
static void config_fill(bt_pool_config *out, const bt_pool_config *cfg)
{
    bt_pool_config d;
    bt_pool_config_init(&d);
    *out = cfg ? *cfg : d;
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
}

BT_EXPORT bt_pool *bt_pool_new(const bt_pool_config *cfg)
{
    bt_pool *pool = bt_calloc(1, sizeof *pool);
    if (pool == NULL)
        return NULL;
    config_fill(&pool->cfg, cfg);
    snprintf(pool->name, sizeof pool->name, "%s", pool->cfg.name);
    pool->cfg.name = pool->name;
    pool->linger_ns = pool->cfg.linger_us == UINT64_MAX ? 0 : pool->cfg.linger_us * 1000;
    pool->idle_ns = pool->cfg.blocking_idle_ms * 1000000u;
    atomic_init(&pool->refs, 1);
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
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
        pthread_condattr_t ca; /* idle timeouts immune to wall-clock jumps */
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&l->cv, &ca);
        pthread_condattr_destroy(&ca);
        l->id = (bt_lane)i;
    }
    pool->lane[BT_LANE_CPU].target = pool->cfg.cpu_threads;
    pool->lane[BT_LANE_CPU].queue_max = pool->cfg.cpu_queue_max;
    pool->lane[BT_LANE_BLOCKING].target = pool->cfg.blocking_max;
    pool->lane[BT_LANE_BLOCKING].queue_max = pool->cfg.blocking_queue_max;

    bt__lane *cpu = &pool->lane[BT_LANE_CPU];
    pthread_mutex_lock(&cpu->mu);
    unsigned add = lane_want_threads(cpu);
    pthread_mutex_unlock(&cpu->mu);
    if (lane_spawn(pool, cpu, add) == 0) {
        bt_pool_free(pool);
        return NULL;
    }
    return pool;
}

/* Cancel queued jobs: each goes back to its loop as a cancelled job. */
static void lane_cancel_queue(bt__lane *lane)
{
    pthread_mutex_lock(&lane->mu);
    bt_job *job = lane->head;
    lane->head = lane->tail = NULL;
    size_t n = 0;
    for (bt_job *j = job; j; j = j->next) {
        j->where = JOB_DONE;
        /* Counted as running (under the lock, where the loop's closer
         * looks) so that the closer waits for the push below. */
        atomic_fetch_add(&j->att->running, 1);
        n++;
    }
    atomic_store(&lane->nq, 0);
    atomic_fetch_sub(&lane->depth, n);
    atomic_fetch_add(&lane->cancelled, n);
    pthread_mutex_unlock(&lane->mu);
    while (job) {
        bt_job *next = job->next;
        job->skipped = true;
        job->task.run = job_complete;
        bt__attach *att = job->att;
        if (bt__loop_push(job->loop, &job->task) != 0) {
            bt_log(BT_LOG_ERROR, "offload pool: a loop closed with jobs queued");
            job_free(job);
        }
        atomic_fetch_sub(&att->running, 1);
        job = next;
    }
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
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
        lane_cancel_queue(l);
    }
    if (atomic_load(&pool->closers_waiting) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->cv);
        pthread_mutex_unlock(&pool->mu);
    }
    pthread_mutex_lock(&pool->mu);
    while (atomic_load(&pool->live_threads) > 0)
        pthread_cond_wait(&pool->cv, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
    bt__pool_forget_default(pool);
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
    unsigned add = lane_want_threads(l);
    if (l->threads > l->target)
        pthread_cond_broadcast(&l->cv); /* let the extra ones notice */
    pthread_mutex_unlock(&l->mu);
    if (add && lane_spawn(pool, l, add) == 0)
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
    memset(out, 0, sizeof *out);
    for (int i = 0; i < BT_LANE_COUNT; i++) {
        bt__lane *l = &pool->lane[i];
        bt_lane_stats *s = &out->lane[i];
        pthread_mutex_lock(&l->mu);
        s->threads = l->threads;
        s->max_threads = l->target;
        s->queued = atomic_load(&l->nq);
        s->queue_max = l->queue_max;
        s->submitted = l->submitted;
        s->rejected = atomic_load(&l->rejected);
        s->cancelled = atomic_load(&l->cancelled);
        s->done = l->done;
        s->failed = l->failed;
        s->queue_ns_total = l->queue_ns;
        s->queue_ns_max = l->qwait_max;
        s->run_ns_total = l->run_ns;
        s->run_ns_max = l->run_max;
        s->threads_started = l->started;
        s->threads_retired = l->retired;
        uint64_t skipped = l->skipped;
        for (bt__worker *w = l->workers; w; w = w->next) {
            s->done += atomic_load(&w->done);
            s->failed += atomic_load(&w->failed);
            skipped += atomic_load(&w->skipped);
            s->queue_ns_total += atomic_load(&w->queue_ns);
            s->run_ns_total += atomic_load(&w->run_ns);
            uint64_t qm = atomic_load(&w->qwait_max), rm = atomic_load(&w->run_max);
            if (qm > s->queue_ns_max)
                s->queue_ns_max = qm;
            if (rm > s->run_ns_max)
                s->run_ns_max = rm;
            if (atomic_load(&w->busy))
                s->busy++;
        }
        s->cancelled += skipped;
        s->idle = s->threads > s->busy ? s->threads - s->busy : 0;
        pthread_mutex_unlock(&l->mu);
    }
    return 0;
}

/* ---- Attachments: one per (pool, loop) --------------------------------- */

static void attach_closer(void *arg);
static void lane_flush(bt__attach *att, bt_lane l);

static void attach_free(bt__attach *att)
{
    bt__pool_unref(att->pool);
    bt_free(att);
}

static void flush_run(bt__task *t)
{
    bt__attach *att = (bt__attach *)((char *)t - offsetof(bt__attach, flush_task));
    att->flush_scheduled = false;
    if (att->dead) {
        attach_free(att);
        return;
    }
    for (int l = 0; l < BT_LANE_COUNT; l++)
        if (att->batch_n[l])
            lane_flush(att, (bt_lane)l);
}

/* The loop's attach for pool, found through the loop's closers (the closer
 * is the attach's only link to its loop, and dies with it). */
static bt__attach *attach_get(bt_pool *pool, bt_loop *loop)
{
    for (bt__closer *c = loop->closers; c; c = c->next)
        if (c->fn == attach_closer && ((bt__attach *)c->arg)->pool == pool)
            return c->arg;
    bt__attach *att = bt_calloc(1, sizeof *att);
    if (att == NULL)
        return NULL;
    att->pool = pool;
    att->loop = loop;
    att->flush_task.run = flush_run;
    if (bt_loop_add_closer(loop, attach_closer, att) != 0) {
        bt_free(att);
        return NULL;
    }
    pool_ref(pool);
    return att;
}

/* Hand att's batch for lane l to the workers. Loop thread. */
static void lane_flush(bt__attach *att, bt_lane l)
{
    bt_pool *pool = att->pool;
    bt__lane *lane = &pool->lane[l];
    bt_job *head = att->batch_head[l], *tail = att->batch_tail[l];
    size_t n = att->batch_n[l];
    att->batch_head[l] = att->batch_tail[l] = NULL;
    att->batch_n[l] = 0;
    if (n == 0)
        return;
    /* Queue time counts from the hand-over: one clock read per batch. */
    uint64_t now = bt_hrtime();
    for (bt_job *j = head; j; j = j->next) {
        j->in_batch = false;
        j->t_submit = now;
    }

    pthread_mutex_lock(&lane->mu);
    if (lane->stop) {
        pthread_mutex_unlock(&lane->mu);
        while (head) {
            bt_job *next = head->next;
            job_cancel_now(head);
            head = next;
        }
        return;
    }
    for (bt_job *j = head; j; j = j->next)
        j->where = JOB_QUEUED;
    head->prev = lane->tail;
    if (lane->tail)
        lane->tail->next = head;
    else
        lane->head = head;
    lane->tail = tail;
    atomic_store_explicit(&lane->nq, atomic_load_explicit(&lane->nq, memory_order_relaxed) + n,
                          memory_order_relaxed);
    lane->submitted += n;
    atomic_fetch_add_explicit(&lane->depth, n, memory_order_relaxed);
    /* Lingering workers will see the queue; wake sleepers for the rest. */
    size_t spin = atomic_load(&lane->spinners);
    size_t wake = n > spin ? n - spin : 0;
    if (wake > lane->sleepers)
        wake = lane->sleepers;
    for (size_t i = 0; i < wake; i++)
        pthread_cond_signal(&lane->cv);
    unsigned add = lane_want_threads(lane);
    pthread_mutex_unlock(&lane->mu);
    if (add)
        lane_spawn(pool, lane, add);
}

/* bt_loop_free: the loop's jobs leave the queues cancelled; running ones
 * see their flag and are waited for. */
static void attach_closer(void *arg)
{
    bt__attach *att = arg;
    bt_pool *pool = att->pool;
    atomic_store(&att->closing, true);
    for (int l = 0; l < BT_LANE_COUNT; l++) {
        bt__lane *lane = &pool->lane[l];
        while (att->batch_head[l]) {
            bt_job *job = att->batch_head[l];
            job->in_batch = false;
            batch_unlink(att, job);
            job_cancel_now(job);
        }
        bt_job *mine = NULL;
        pthread_mutex_lock(&lane->mu);
        for (bt_job *j = lane->head, *next; j; j = next) {
            next = j->next;
            if (j->att != att)
                continue;
            queue_unlink(lane, j);
            atomic_fetch_sub(&lane->depth, 1);
            j->where = JOB_DONE;
            j->next = mine;
            mine = j;
        }
        pthread_mutex_unlock(&lane->mu);
        while (mine) {
            bt_job *next = mine->next;
            job_cancel_now(mine);
            mine = next;
        }
    }
    atomic_fetch_add(&pool->closers_waiting, 1);
    pthread_mutex_lock(&pool->mu);
    while (atomic_load(&att->running) > 0)
        pthread_cond_wait(&pool->cv, &pool->mu);
    pthread_mutex_unlock(&pool->mu);
    atomic_fetch_sub(&pool->closers_waiting, 1);
    /* Their completions are in the loop's inbox: bt_loop_free drains it. */
    att->dead = true;
    if (!att->flush_scheduled)
        attach_free(att);
}

/* ---- Submitting -------------------------------------------------------------- */

/* Queue job (filled with fn, arg) for f. On failure, settle f with the
 * error and free the job. Loop thread. */
static void job_enqueue(bt_pool *pool, bt_loop *loop, bt_lane l, bt_job *job, bt_future *f)
{
    bt__lane *lane = &pool->lane[l];
    if (atomic_load_explicit(&pool->shutdown, memory_order_relaxed)) {
        bt_future_set_error(f, BT_ESHUTDOWN, "offload pool is shut down");
        job_release(job, true);
        return;
    }
    bt__attach *att = attach_get(pool, loop);
    if (att == NULL) {
        bt_future_set_error(f, BT_ENOMEM, "out of memory submitting a job");
        job_release(job, true);
        return;
    }
    /* The bound: jobs in the lane's queue (`depth`, as seen when this
     * batch began: a stale value only overestimates) plus this batch. */
    size_t max = atomic_load_explicit(&lane->queue_max, memory_order_relaxed);
    if (att->batch_n[l] == 0)
        att->depth_seen[l] = atomic_load_explicit(&lane->depth, memory_order_relaxed);
    if (att->depth_seen[l] + att->batch_n[l] >= max)
        att->depth_seen[l] = atomic_load_explicit(&lane->depth, memory_order_relaxed);
    if (att->depth_seen[l] + att->batch_n[l] >= max) {
        atomic_fetch_add_explicit(&lane->rejected, 1, memory_order_relaxed);
        bt_future_set_error(f, BT_EAGAIN, "offload pool: %s lane full (%zu jobs waiting)",
                            lane_name(l), max);
        job_release(job, true);
        return;
    }
    job->pool = pool;
    job->att = att;
    job->loop = loop;
    job->lane = l;
    job->future = bt_future_ref(f);
    job->in_batch = true;
    job->where = JOB_BATCH;
    bt_future_on_cancel(f, job_on_cancel, job);
    job->next = NULL;
    job->prev = att->batch_tail[l];
    if (att->batch_tail[l])
        att->batch_tail[l]->next = job;
    else
        att->batch_head[l] = job;
    att->batch_tail[l] = job;
    /* Have the loop spin for the completion only when jobs of this lane
     * are short lately: spinning for a 20 ms job would only burn CPU. */
    job->expected = atomic_load_explicit(&lane->avg_run_ns, memory_order_relaxed) < EXPECT_MAX_NS;
    if (job->expected)
        bt__loop_expect(loop, 1);
    /* Hand over now when a batch is full, or when this is the only job and
     * a worker is lingering for exactly that (one at a time: latency wins;
     * a burst finds no lingering worker after the first job or two). */
    if (++att->batch_n[l] >= FLUSH_AT ||
        (att->batch_n[l] == 1 && atomic_load_explicit(&lane->spinners, memory_order_relaxed) > 0)) {
        lane_flush(att, l);
    } else if (!att->flush_scheduled) {
        att->flush_scheduled = true;
        bt__loop_schedule(loop, &att->flush_task);
    }
}

BT_EXPORT bt_future *bt_pool_submit(bt_pool *pool, bt_loop *loop, bt_lane lane, bt_job_fn fn,
                                    void *arg)
{
    if (loop == NULL)
        return NULL;
    bt_future *f = bt_future_new(loop);
    if (f == NULL)
        return NULL;
    if (pool == NULL || fn == NULL || (unsigned)lane >= BT_LANE_COUNT) {
        bt_future_set_error(f, BT_EINVAL, "bt_pool_submit: %s",
                            pool == NULL ? "no pool" : fn == NULL ? "no job function" : "bad lane");
        return f;
    }
    bt_job *job = job_alloc();
    if (job == NULL) {
        bt_future_set_error(f, BT_ENOMEM, "out of memory submitting a job");
        return f;
    }
    job->fn = fn;
    job->arg = arg;
    job_enqueue(pool, loop, lane, job, f);
    return f;
}

/* The admit task: a job submitted from another thread reaches its loop. */
static void job_admit(bt__task *t)
{
    bt_job *job = (bt_job *)t;
    bt_pool *pool = job->pool;
    bt_future *f = bt_future_new(job->loop);
    if (f == NULL) {
        bt_log(BT_LOG_ERROR, "offload pool: no future for a job submitted from another thread");
        if (job->done)
            job->done(NULL, job->done_arg);
        bt_free(job);
    } else {
        if (job->done && bt_future_add_callback(f, job->done, job->done_arg) != 0) {
            bt_future_set_error(f, BT_ENOMEM, "out of memory admitting a job");
            bt_future_error(f);
            job->done(NULL, job->done_arg);
            bt_free(job);
        } else {
            job_enqueue(pool, job->loop, job->lane, job, f);
        }
        bt_future_unref(f);
    }
    bt__pool_unref(pool);
}

BT_EXPORT int bt_pool_submit_from(bt_pool *pool, bt_loop *loop, bt_lane lane, bt_job_fn fn,
                                  void *arg, bt_future_cb done, void *done_arg)
{
    if (pool == NULL || loop == NULL || fn == NULL || (unsigned)lane >= BT_LANE_COUNT)
        return BT_EINVAL;
    if (atomic_load(&pool->shutdown))
        return BT_ESHUTDOWN;
    bt_job *job = job_alloc();
    if (job == NULL)
        return BT_ENOMEM;
    job->pool = pool;
    job->loop = loop;
    job->lane = lane;
    job->fn = fn;
    job->arg = arg;
    job->done = done;
    job->done_arg = done_arg;
    job->task.run = job_admit;
    pool_ref(pool);
    int rc = bt__loop_push(loop, &job->task);
    if (rc != 0) {
        bt__pool_unref(pool);
        bt_free(job);
    }
    return rc;
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
            memset(&cfg, 0, sizeof cfg);
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

void bt__pool_forget_default(bt_pool *pool)
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
    pthread_mutex_lock(&default_mu);
    int rc = 0;
    if (atomic_load(&default_pool)) {
        rc = BT_EBUSY;
    } else {
        default_cfg = *cfg;
        if (cfg->name) {
            snprintf(default_name, sizeof default_name, "%s", cfg->name);
            default_cfg.name = default_name;
        }
        default_cfg_set = true;
    }
    pthread_mutex_unlock(&default_mu);
    return rc;
}

BT_EXPORT bt_future *bt_to_thread(bt_loop *loop, bt_job_fn fn, void *arg)
{
    if (loop == NULL)
        return NULL;
    bt_pool *pool = bt_pool_default();
    if (pool == NULL)
        return bt_future_new_error(loop, BT_ENOMEM, "the default offload pool could not start");
    return bt_pool_submit(pool, loop, BT_LANE_BLOCKING, fn, arg);
}

BT_EXPORT bt_future *bt_to_cpu(bt_loop *loop, bt_job_fn fn, void *arg)
{
    if (loop == NULL)
        return NULL;
    bt_pool *pool = bt_pool_default();
    if (pool == NULL)
        return bt_future_new_error(loop, BT_ENOMEM, "the default offload pool could not start");
    return bt_pool_submit(pool, loop, BT_LANE_CPU, fn, arg);
}
