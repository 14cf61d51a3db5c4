/* The loop side of the pool: one attachment per (pool, loop) holding the
 * loop's batches and its closer, the hand-over of batches to the lanes,
 * submission (from the loop thread, or from any thread through the loop's
 * inbox), and the process-wide default pool. See the DESIGN comment in
 * pool.c. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pool-internal.h"
#include "sized.h"

#define EXPECT_MAX_NS 100000 /* loops spin for jobs shorter than this */

/* ---- Attachments: one per (pool, loop) --------------------------------- */

static void attach_closer(void *arg);
static void lane_flush(bt__attach *att, bt_lane l);

#define FREE_BATCHES_MAX 256 /* kept for reuse per attach: 16,384 jobs */

/* Keep a spent hand-over for the next batch, up to FREE_BATCHES_MAX. */
static void batch_put(bt__attach *att, bt__batch *b)
{
    if (att->free_n >= FREE_BATCHES_MAX) {
        bt_free(b);
        return;
    }
    b->next = att->free_batches;
    att->free_batches = b;
    att->free_n++;
}

/* A hand-over for att's next batch (reused when one came back), or NULL. */
static bt__batch *batch_get(bt__attach *att)
{
    if (att->free_batches == NULL) {
        /* Take all the workers gave back since the last time at once. */
        bt__batch *b = atomic_exchange_explicit(&att->returned, NULL, memory_order_acquire);
        while (b) {
            bt__batch *next = b->next;
            batch_put(att, b);
            b = next;
        }
    }
    bt__batch *b = att->free_batches;
    if (b) {
        att->free_batches = b->next;
        att->free_n--;
    } else if ((b = bt_malloc(sizeof *b)) == NULL) {
        return NULL;
    }
    b->att = att;
    b->n = b->first = 0;
    return b;
}

static void flush_run(bt__task *t)
{
    bt__attach *att = (bt__attach *)((char *)t - offsetof(bt__attach, flush_task));
    att->flush_scheduled = false;
    if (att->dead) {
        bt__attach_release(att, 1); /* the loop's hold */
        return;
    }
    for (int l = 0; l < BT_LANE_COUNT; l++)
        if (att->batch[l])
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
    atomic_init(&att->running, 1); /* the loop's hold */
    att->flush_task.run = flush_run;
    if (bt_loop_add_closer(loop, attach_closer, att) != 0) {
        bt_free(att);
        return NULL;
    }
    bt__loop_spin_share(loop, pool->cfg.spin_share);
    bt__pool_ref(pool);
    return att;
}

/* Whether a hand-over must wake a worker: not while one lingers (it sees
 * the batch, and wakes a sleeper itself if it leaves jobs behind), nor
 * when none sleeps. Sequentially consistent loads after the push: see
 * bt__lane_splice. */
static bool flush_must_wake(bt__lane *lane)
{
    return bt__lane_sleeping(lane) > 0 && atomic_load(&lane->spinners) == 0;
}

/* The hand-over's slow path, under the lane's lock: wake sleepers, start
 * threads, or cancel the jobs of a lane that has stopped. Returns whether
 * it woke a worker. */
static bool lane_flush_locked(bt_pool *pool, bt__lane *lane, size_t n)
{
    pthread_mutex_lock(&lane->mu);
    if (lane->stop) {
        pthread_mutex_unlock(&lane->mu);
        bt__lane_cancel_queue(pool, lane); /* this batch among them */
        return false;
    }
    bt__lane_splice(lane);
    size_t wake = atomic_load(&lane->spinners) ? 0 : n;
    if (wake > bt__lane_sleeping(lane))
        wake = bt__lane_sleeping(lane);
    unsigned add = bt__lane_want_threads(lane);
    bt__lane_wake_unlock(lane, (unsigned)wake);
    if (add)
        bt__lane_spawn(pool, lane, add);
    return wake > 0 || add > 0;
}

/* Hand att's batch for lane l to the workers: one compare-and-swap onto
 * the lane's incoming stack, no lock, unless a worker must be woken, the
 * blocking lane may need another thread, or the lane has stopped. Loop
 * thread. */
static void lane_flush(bt__attach *att, bt_lane l)
{
    bt_pool *pool = att->pool;
    bt__lane *lane = &pool->lane[l];
    bt__batch *b = att->batch[l];
    att->batch[l] = NULL;
    if (b == NULL)
        return;
    size_t n = 0;
    for (unsigned i = 0; i < b->n; i++) {
        bt_job *j = b->job[i];
        if (j) {
            j->in_batch = false;
            j->where = JOB_QUEUED;
            n++;
        }
    }
    if (n == 0) { /* all cancelled before the hand-over */
        batch_put(att, b);
        return;
    }
    b->live = (unsigned)n;
    b->t_submit = bt_hrtime(); /* queue time counts from here */
    atomic_fetch_add_explicit(&lane->depth, n, memory_order_relaxed);
    bt__batch *top = atomic_load_explicit(&lane->incoming, memory_order_relaxed);
    do
        b->next = top;
    while (!atomic_compare_exchange_weak(&lane->incoming, &top, b));
    if ((atomic_load(&lane->stop) || l == BT_LANE_BLOCKING || flush_must_wake(lane)) &&
        lane_flush_locked(pool, lane, n))
        bt__loop_peer_woken(att->loop);
}

/* Wait until none of att's jobs is running, or the pool's shutdown
 * deadline passes. Returns false at the deadline. */
static bool attach_wait_running(bt__attach *att)
{
    bt_pool *pool = att->pool;
    bool forever = pool->shutdown_ns == UINT64_MAX;
    struct timespec until;
    if (!forever) {
        clock_gettime(CLOCK_MONOTONIC, &until);
        uint64_t ns = (uint64_t)until.tv_nsec + pool->shutdown_ns;
        until.tv_sec += (time_t)(ns / 1000000000u);
        until.tv_nsec = (long)(ns % 1000000000u);
    }
    bool done = true;
    atomic_fetch_add(&pool->closers_waiting, 1);
    pthread_mutex_lock(&pool->mu);
    while (atomic_load(&att->running) > 1) { /* 1: the loop's hold */
        if (forever) {
            pthread_cond_wait(&pool->cv, &pool->mu);
        } else if (pthread_cond_timedwait(&pool->cv, &pool->mu, &until) == ETIMEDOUT) {
            done = atomic_load(&att->running) <= 1;
            break;
        }
    }
    pthread_mutex_unlock(&pool->mu);
    atomic_fetch_sub(&pool->closers_waiting, 1);
    return done;
}

/* Count in `abandoned` the jobs of att that are inside their function at
 * the deadline, each once. Not all the jobs workers took (lane_running):
 * one taken but not started is skipped later (its loop is closing) and
 * counted cancelled then; and one abandoned on cancel was counted then
 * (its future is settled, so it is no longer among the loop's pending
 * ones). The loop's pending futures are walked, not the workers: a
 * pending job's block is alive (the loop holds its future), where a
 * worker's current job may be another loop's, freed under our feet. Loop
 * thread; the rare path. */
static void attach_count_abandoned(bt__attach *att)
{
    const bt__list *head = &att->loop->pending.head;
    for (bt__list *n = head->next; n != head; n = n->next) {
        bt_future *f = BT__LIST_ENTRY(n, bt_future, pend);
        if (f->cancel_hook != bt__lane_on_cancel)
            continue;
        bt_job *job = f->cancel_arg;
        if (job->att == att && atomic_load_explicit(&job->in_fn, memory_order_relaxed))
            atomic_fetch_add(&att->pool->lane[job->lane].abandoned, 1);
    }
}

/* The deadline passed with jobs of att still running: leave them. From
 * now on their completions are dropped by the workers (worker_push in
 * pool.c), and the last of them frees att. The loop must not return from
 * its closer while a worker is inside a push to it: wait for those
 * (pushing_to), which take a moment, never a job's run. Loop thread. */
static void attach_abandon(bt__attach *att)
{
    bt_pool *pool = att->pool;
    long n = 0;
    for (int l = 0; l < BT_LANE_COUNT; l++)
        n += atomic_load(&att->lane_running[l]);
    attach_count_abandoned(att);
    atomic_store(&att->abandoned, true); /* sequentially consistent: see
                                            worker_push */
    pthread_mutex_lock(&pool->mu);       /* against bt__lane_cancel_queue */
    pthread_mutex_unlock(&pool->mu);
    for (int l = 0; l < BT_LANE_COUNT; l++) {
        bt__lane *lane = &pool->lane[l];
        pthread_mutex_lock(&lane->mu); /* keeps the worker list still */
        for (bt__worker *w = lane->workers; w; w = w->next)
            while (atomic_load(&w->pushing_to) == att)
                sched_yield();
        pthread_mutex_unlock(&lane->mu);
    }
    bt_log(BT_LOG_WARN,
           "offload pool: loop freed with %ld job%s still running after the %" PRIu64
           " ms shutdown deadline: abandoned (they finish on their own; their results "
           "are destroyed)",
           n, n == 1 ? "" : "s", pool->shutdown_ns / 1000000u);
}

/* bt_loop_free: the loop's jobs leave the queues cancelled; running ones
 * see their flag and are waited for, up to the pool's shutdown deadline,
 * then abandoned. */
static void attach_closer(void *arg)
{
    bt__attach *att = arg;
    bt_pool *pool = att->pool;
    atomic_store(&att->closing, true);
    for (int l = 0; l < BT_LANE_COUNT; l++) {
        bt__lane *lane = &pool->lane[l];
        bt__batch *b = att->batch[l];
        att->batch[l] = NULL;
        for (unsigned i = 0; b && i < b->n; i++) {
            if (b->job[i]) {
                b->job[i]->in_batch = false;
                bt__lane_job_cancelled(lane, b->job[i], false);
            }
        }
        if (b)
            batch_put(att, b);
        /* Queued ones: taken out under the lock, listed through their
         * tasks (unused while queued), cancelled after. */
        bt__task *mine = NULL;
        pthread_mutex_lock(&lane->mu);
        bt__lane_splice(lane);
        for (bt__batch *q = lane->head; q; q = q->next) {
            for (unsigned i = q->first; i < q->n; i++) {
                bt_job *j = q->job[i];
                if (j == NULL || j->att != att)
                    continue;
                bt__lane_remove(lane, j);
                j->task.next = mine;
                mine = &j->task;
            }
        }
        pthread_mutex_unlock(&lane->mu);
        while (mine) {
            bt__task *next = mine->next;
            bt__lane_job_cancelled(lane, (bt_job *)mine, true);
            mine = next;
        }
    }
    if (!attach_wait_running(att))
        attach_abandon(att);
    /* The completions of the jobs that ended are in the loop's inbox:
     * bt_loop_free drains it. */
    att->dead = true;
    if (!att->flush_scheduled)
        bt__attach_release(att, 1); /* the loop's hold; else flush_run's */
}

/* ---- Submitting -------------------------------------------------------------- */

/* A job that cannot be queued: its future gets the error, and the job's
 * reference goes (the block is only a future from now on). */
static void job_reject(bt_future *f, int code, const char *fmt, ...)
{
    bt__job_drop_arg((bt_job *)((char *)f - offsetof(bt_job, fut)));
    va_list ap;
    va_start(ap, fmt);
    bt_future_set_errorv(f, code, fmt, ap);
    va_end(ap);
    bt_future_unref(f);
}

/* Queue job (filled with fn, arg) for its future f (job->fut), or settle
 * f with the reason it cannot be. Loop thread. */
static void job_enqueue(bt_pool *pool, bt_loop *loop, bt_lane l, bt_job *job, bt_future *f)
{
    bt__lane *lane = &pool->lane[l];
    if (atomic_load_explicit(&pool->shutdown, memory_order_relaxed)) {
        job_reject(f, BT_ESHUTDOWN, "offload pool is shut down");
        return;
    }
    bt__attach *att = attach_get(pool, loop);
    if (att == NULL) {
        job_reject(f, BT_ENOMEM, "out of memory submitting a job");
        return;
    }
    /* The lane's shared state is read once per batch, not once per job:
     * workers write its cache lines all the time. The bound: jobs handed
     * over (`depth`, as seen when this batch began: a stale value only
     * overestimates) plus this batch. */
    bt__batch *b = att->batch[l];
    if (b == NULL) {
        b = batch_get(att);
        if (b == NULL) {
            job_reject(f, BT_ENOMEM, "out of memory submitting a job");
            return;
        }
        att->batch[l] = b;
        att->depth_seen[l] = atomic_load_explicit(&lane->depth, memory_order_relaxed);
        att->max_seen[l] = atomic_load_explicit(&lane->queue_max, memory_order_relaxed);
        /* Have the loop spin for completions only when jobs of this lane
         * are short lately: spinning for a 20 ms job would only burn CPU. */
        att->short_seen[l] =
            atomic_load_explicit(&lane->avg_run_ns, memory_order_relaxed) < EXPECT_MAX_NS;
    }
    size_t max = att->max_seen[l];
    if (att->depth_seen[l] + b->n >= max)
        att->depth_seen[l] = atomic_load_explicit(&lane->depth, memory_order_relaxed);
    if (att->depth_seen[l] + b->n >= max) {
        atomic_fetch_add_explicit(&lane->rejected, 1, memory_order_relaxed);
        job_reject(f, BT_EAGAIN, "offload pool: %s lane full (%zu jobs waiting)", bt__lane_name(l),
                   max);
        if (b->n == 0) {
            att->batch[l] = NULL;
            batch_put(att, b);
        }
        return;
    }
    job->pool = pool;
    job->att = att;
    job->lane = (unsigned char)l;
    job->in_batch = true;
    job->where = JOB_BATCH;
    bt_future_on_cancel(f, bt__lane_on_cancel, job);
    job->batch = b;
    job->slot = (unsigned char)b->n;
    b->job[b->n++] = job;
    job->expected = att->short_seen[l];
    if (job->expected)
        bt__loop_expect(loop, 1);
    /* Hand over now when a batch is full, or when this is the only job and
     * a worker is lingering for exactly that (one at a time: latency wins;
     * a burst finds no lingering worker after the first job or two). */
    if (b->n >= BT__BATCH_MAX ||
        (b->n == 1 && atomic_load_explicit(&lane->spinners, memory_order_relaxed) > 0)) {
        lane_flush(att, l);
    } else if (!att->flush_scheduled) {
        att->flush_scheduled = true;
        bt__loop_schedule(loop, &att->flush_task);
    }
}

/* bt_pool_submit and bt_pool_submit_owned: owned says the pool owns arg
 * (arg_free, which may be NULL, frees it once the job is done with it),
 * so the job may be abandoned when its future is cancelled while it runs.
 * A job without an arg may be too: nothing of the caller's is at stake. */
static bt_future *submit(bt_pool *pool, bt_loop *loop, bt_lane lane, bt_job_fn fn, void *arg,
                         bt_destroy_fn arg_free, bool owned)
{
    if (loop == NULL || pool == NULL || fn == NULL || (unsigned)lane >= BT_LANE_COUNT) {
        if (arg_free != NULL)
            arg_free(arg);
        if (loop == NULL)
            return NULL;
        return bt_future_new_error(loop, BT_EINVAL, "bt_pool_submit: %s",
                                   pool == NULL ? "no pool"
                                   : fn == NULL ? "no job function"
                                                : "bad lane");
    }
    bt_job *job = bt__job_alloc();
    bt_future *f = job != NULL ? bt__job_future_init(job, loop) : NULL;
    if (f == NULL) {
        if (arg_free != NULL)
            arg_free(arg);
        if (job == NULL)
            return bt_future_new_error(loop, BT_ENOMEM, "out of memory submitting a job");
        bt__job_release(job);
        return NULL;
    }
    job->fn = fn;
    job->arg = arg;
    job->arg_free = arg_free;
    job->abandonable = owned || arg == NULL;
    job_enqueue(pool, loop, lane, job, f);
    return f;
}

BT_EXPORT bt_future *bt_pool_submit(bt_pool *pool, bt_loop *loop, bt_lane lane, bt_job_fn fn,
                                    void *arg)
{
    return submit(pool, loop, lane, fn, arg, NULL, false);
}

BT_EXPORT bt_future *bt_pool_submit_owned(bt_pool *pool, bt_loop *loop, bt_lane lane, bt_job_fn fn,
                                          void *arg, bt_destroy_fn arg_free)
{
    return submit(pool, loop, lane, fn, arg, arg_free, true);
}

/* The admit task: a job submitted from another thread reaches its loop. */
static void job_admit(bt__task *t)
{
    bt_job *job = (bt_job *)t;
    bt_pool *pool = job->pool;
    bt_loop *loop = job->fut.loop;
    bt_future_cb done = job->done;
    void *done_arg = job->done_arg;
    job->done = NULL; /* the union's value and dtor from now on */
    job->done_arg = NULL;
    bt_future *f = bt__job_future_init(job, loop);
    if (f == NULL) {
        bt_log(BT_LOG_ERROR, "offload pool: no future for a job submitted from another thread");
        if (done)
            done(NULL, done_arg);
        bt__job_release(job);
    } else {
        /* The first callback lives in the future: this cannot fail. */
        if (done)
            bt_future_add_callback(f, done, done_arg);
        job_enqueue(pool, loop, job->lane, job, f);
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
    bt_job *job = bt__job_alloc();
    if (job == NULL)
        return BT_ENOMEM;
    job->pool = pool;
    job->fut.loop = loop; /* the future starts there, on admission */
    job->lane = (unsigned char)lane;
    job->fn = fn;
    job->arg = arg;
    job->done = done;
    job->done_arg = done_arg;
    job->abandonable = arg == NULL;
    job->task.run = job_admit;
    bt__pool_ref(pool);
    int rc = bt__loop_push(loop, &job->task);
    if (rc != 0) {
        bt__pool_unref(pool);
        bt__job_release(job);
    }
    return rc;
}

/* The one-liners: the default pool, made on first use. */
static bt_future *submit_default(bt_loop *loop, bt_lane lane, bt_job_fn fn, void *arg,
                                 bt_destroy_fn arg_free, bool owned)
{
    bt_pool *pool = loop != NULL ? bt_pool_default() : NULL;
    if (loop != NULL && pool == NULL) {
        if (arg_free != NULL)
            arg_free(arg);
        return bt_future_new_error(loop, BT_ENOMEM, "the default offload pool could not start");
    }
    return submit(pool, loop, lane, fn, arg, arg_free, owned);
}

BT_EXPORT bt_future *bt_to_thread(bt_loop *loop, bt_job_fn fn, void *arg)
{
    return submit_default(loop, BT_LANE_BLOCKING, fn, arg, NULL, false);
}

BT_EXPORT bt_future *bt_to_thread_owned(bt_loop *loop, bt_job_fn fn, void *arg,
                                        bt_destroy_fn arg_free)
{
    return submit_default(loop, BT_LANE_BLOCKING, fn, arg, arg_free, true);
}

BT_EXPORT bt_future *bt_to_cpu(bt_loop *loop, bt_job_fn fn, void *arg)
{
    return submit_default(loop, BT_LANE_CPU, fn, arg, NULL, false);
}
