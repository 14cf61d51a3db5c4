/* Baton: the offload pool (asyncio's to_thread, for C).
 *
 * A pool runs jobs on worker threads and settles each job's future on a
 * loop, through the loop's completion inbox (one wakeup per burst). It has
 * two lanes, so that neither kind of work can starve the other:
 * - BT_LANE_CPU: a fixed number of threads (default: the number of online
 *   cores) for work that computes (hashing, compression, parsing).
 * - BT_LANE_BLOCKING: one thread made with the pool, more on demand up to
 *   a cap (default 64), retired after an idle time (default 10 s), for
 *   calls that wait
 *   (a synchronous library, a file, PQcancel).
 * Each lane has a bounded queue: a job submitted to a full lane gets a
 * future that has already failed with BT_EAGAIN. Nothing is ever dropped
 * silently.
 *
 * One pool can serve many loops (a loop per core over one pool), and a
 * process-wide default pool is made on first use (bt_to_thread, bt_to_cpu,
 * bt_pool_default). Its size can be set before first use with
 * bt_pool_default_configure, changed at any time with bt_pool_set_threads,
 * or taken from the environment (BATON_CPU_THREADS, BATON_BLOCKING_THREADS).
 *
 * A job
 *   static int hash_job(bt_job *job, void *arg)
 *   {
 *       struct req *r = arg;
 *       char *digest = expensive_hash(r->data, r->len);
 *       if (digest == NULL)
 *           return bt_job_fail(job, BT_ENOMEM, "hashing %zu bytes", r->len);
 *       bt_job_set_value(job, digest, free);
 *       return 0;
 *   }
 *   bt_future *f = bt_to_cpu(loop, hash_job, r);  // or bt_to_thread(...)
 *
 * The job runs on a worker thread: it must not touch the loop or its
 * futures (except through bt_loop_post or the bridge). It returns 0 for
 * success (the value set with bt_job_set_value, NULL if none) or a negative
 * BT_E* code for failure (the message set with bt_job_fail, or the code's
 * bt_strerror). A long job should poll bt_job_cancelled now and then and
 * return early (any return is fine: the future is cancelled anyway).
 *
 * Cancellation: bt_future_cancel on a queued job takes it off the queue and
 * cancels its future at once. On a running job it raises the job's
 * cancelled flag (bt_job_cancelled), and then:
 * - A job that holds none of the caller's memory (submitted with a NULL
 *   arg, or with bt_pool_submit_owned / bt_to_thread_owned, which give arg
 *   to the pool) is abandoned, as asyncio's to_thread leaves its thread
 *   running: its future settles cancelled at once, with the message
 *   "cancelled; the job is still running on the pool". The job goes on
 *   until it returns (at once, if it polls bt_job_cancelled); what it
 *   leaves is then destroyed, and arg freed with arg_free. The lane's
 *   `abandoned` counter counts it. So bt_timeout, a group's deadline and
 *   an HTTP handler's timeout settle at their deadline over any such job,
 *   and say the job is still running.
 * - A job with a borrowed arg (bt_pool_submit, bt_to_thread, bt_to_cpu
 *   with a non-NULL arg) is waited for: the future settles as cancelled
 *   when the job returns, since the caller may free arg as soon as the
 *   future settles. Use the _owned forms for a call that may outlive its
 *   deadline.
 *
 * Shutdown: bt_loop_free cancels that loop's queued jobs, raises the flag of
 * its running jobs and waits for them, up to the pool's shutdown deadline
 * (bt_pool_config.shutdown_ms, 5 s by default). Jobs still running then
 * are abandoned (counted in `abandoned`, one log line): bt_loop_free
 * returns, their futures are cancelled with the loop's other pending
 * futures, and when the jobs end, on their own, their results are
 * destroyed on the worker; they never touch the freed loop. Such a job
 * must not use its loop (bt_job_loop, bt_loop_post) after bt_job_cancelled
 * turned true, and its arg must outlive it (own it, or keep it alive).
 * bt_pool_free does the same for every loop the pool serves, and stops
 * waiting for its threads at the same deadline.
 */
#ifndef BATON_POOL_H
#define BATON_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <baton/common.h>
#include <baton/future.h>
#include <baton/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bt_pool bt_pool;
typedef struct bt_job bt_job;

typedef enum {
    BT_LANE_CPU = 0,      /* bounded to the cores: computation */
    BT_LANE_BLOCKING = 1, /* elastic, capped: calls that wait */
} bt_lane;
#define BT_LANE_COUNT 2

/* A job: runs on a worker thread. Returns 0 or a negative BT_E* code; see
 * the top of this file. */
typedef int (*bt_job_fn)(bt_job *job, void *arg);

/* ---- Inside a job (the worker thread running it) ---------------------- */

/* The job's result: the future's value once the job returns 0. The job
 * owns value until then; a second call replaces (and destroys) the first.
 * If the future is cancelled or the job fails, dtor(value) is called.
 * Returns 0, or BT_EINVAL for a NULL job. Thread: the job's worker. */
BT_EXPORT int bt_job_set_value(bt_job *job, void *value, bt_destroy_fn dtor);

/* Record the job's failure: code (negative; anything else becomes
 * BT_EJOB) and a printf message (fmt may be NULL; the message is copied).
 * Returns the code (after that substitution; a NULL job records nothing),
 * so a job can `return bt_job_fail(job, BT_EIO, "read %s", path);`.
 * Thread: the job's worker. */
BT_EXPORT int bt_job_fail(bt_job *job, int code, const char *fmt, ...) BT_PRINTF(3, 4);

/* True once the job's future was cancelled or its loop or pool is shutting
 * down: the job should return soon. A relaxed atomic load: cheap enough to
 * call in an inner loop. False for NULL. Thread: any. */
BT_EXPORT bool bt_job_cancelled(const bt_job *job);

/* The loop the job's future settles on. Returns: borrowed (the loop
 * outlives the job); NULL for NULL. Thread: any. */
BT_EXPORT bt_loop *bt_job_loop(const bt_job *job);

/* ---- Pools -------------------------------------------------------------- */

typedef struct {
    size_t size;               /* sizeof this struct, set by the caller (common.h) */
    unsigned cpu_threads;      /* 0: the number of online cores */
    unsigned blocking_max;     /* cap of the blocking lane; 0: 64 */
    uint64_t blocking_idle_ms; /* retire an idle blocking thread; 0: 10000 */
    size_t cpu_queue_max;      /* jobs waiting per lane; 0: 1 << 20 */
    size_t blocking_queue_max; /* 0: 1 << 20 */
    size_t stack_size;         /* worker stack in bytes; 0: the system's */
    uint64_t linger_us;        /* a worker out of work spins this long
                                   before it sleeps; 0: 50; UINT64_MAX: off */
    const char *name;          /* thread name prefix (shows in top -H and
                                   gdb as NAME-cpu-N, NAME-blk-N); NULL: "bt" */
    int cpu_nice;              /* Linux: nice of the CPU lane's threads, so
                                   that loop threads win the CPU back from
                                   them (timers stay on time while the lane
                                   is saturated); 0: 5; negative: unchanged */
    uint64_t shutdown_ms;      /* how long bt_loop_free and bt_pool_free
                                   wait for running jobs before abandoning
                                   them; 0: 5000; UINT64_MAX: for ever */
    unsigned spin_share;       /* how much of their time a worker
                                   (for jobs, up to linger_us) and a loop
                                   (for its jobs' completions, up to
                                   bt_loop_set_spin) may spend spinning
                                   instead of sleeping, in percent: they
                                   spin while it pays (short gaps between
                                   jobs, short jobs) and within this
                                   budget, and sleep otherwise (neither
                                   spins through the other's wakeup); 0: the
                                   default (BT_POOL_SPIN_DEFAULT);
                                   BT_POOL_SPIN_FULL: spin every time, for
                                   the lowest latency at up to two cores
                                   (see docs/offload.md) */
} bt_pool_config;

#define BT_POOL_SPIN_DEFAULT 15u
#define BT_POOL_SPIN_FULL 100u

/* Fill cfg with the defaults and its size (zeros mean "default"
 * everywhere, so BT_SIZED(bt_pool_config) works too; see common.h). NULL
 * is a no-op. Thread: any. A macro, so that the size is the caller's
 * sizeof: a program built against an older header, with a smaller struct,
 * is never written past its end by a newer library. */
#define bt_pool_config_init(cfg) bt_pool_config_init_size((cfg), sizeof *(cfg))
BT_EXPORT void bt_pool_config_init_size(bt_pool_config *cfg, size_t size);

/* A new pool (cfg may be NULL for the defaults; it is copied). The CPU
 * lane's threads and one blocking thread start now; more blocking threads
 * start on demand.
 * Zeros take the defaults and cpu_nice is capped at 19. Returns: a pool
 * to free with bt_pool_free, or NULL (cfg->size unset: logged; out of
 * memory, or no thread could be started). Thread: any. */
BT_EXPORT bt_pool *bt_pool_new(const bt_pool_config *cfg);

/* Free the pool: cancel every queued job (their futures settle cancelled on
 * their loops), raise the flag of running jobs and wait for them, stop the
 * threads. The loops it served must still exist (free the pool before its
 * loops, or free the loops first: both are fine; each loop's closer does
 * the same for its own jobs). Freeing the default pool is allowed; the next
 * bt_pool_default makes a new one. Thread: any but one of the pool's
 * workers. NULL is a no-op. */
BT_EXPORT void bt_pool_free(bt_pool *pool);

/* The process-wide pool, made on first use. Returns: borrowed (do not
 * free it, except as bt_pool_free says), or NULL if it could not be made.
 * Thread: any. */
BT_EXPORT bt_pool *bt_pool_default(void);

/* Set the default pool's configuration; call before its first use.
 * Returns 0, BT_EBUSY if the default pool already exists (use
 * bt_pool_set_threads to resize it), BT_EINVAL for a NULL cfg or an unset
 * cfg->size. cfg is
 * copied, its name too. Thread: any. */
BT_EXPORT int bt_pool_default_configure(const bt_pool_config *cfg);

/* Resize a lane at run time: the CPU lane's thread count, or the blocking
 * lane's cap (n >= 1). Extra threads retire when they are next idle; new
 * ones start at once (CPU) or on demand (blocking). Returns 0, BT_EINVAL
 * (a NULL pool, an unknown lane, n == 0), BT_ENOMEM (no thread could
 * start), BT_ESHUTDOWN (bt_pool_free has begun). Thread: any. */
BT_EXPORT int bt_pool_set_threads(bt_pool *pool, bt_lane lane, unsigned n);

/* Change a lane's queue bound (max >= 1); jobs already queued beyond it
 * stay queued. Returns 0, or BT_EINVAL (a NULL pool, an unknown lane,
 * max == 0). Thread: any. */
BT_EXPORT int bt_pool_set_queue_max(bt_pool *pool, bt_lane lane, size_t max);

/* ---- Submitting --------------------------------------------------------- */

/* Run fn(job, arg) on a worker of pool's lane; the future settles on loop.
 * arg is the caller's: it must stay valid until the future settles.
 * A full lane, a NULL pool or fn, or a pool shutting down give a future
 * that has already failed (BT_EAGAIN, BT_EINVAL, BT_ESHUTDOWN): the caller
 * reads it like any other outcome. Submissions made during one loop turn
 * are handed to the workers together at the end of the turn (or every few
 * dozen jobs), so a burst costs one lock, not one each.
 * Returns: new reference, or NULL only when no future can be made (NULL
 * loop, loop being freed, out of memory). Thread: the loop's. */
BT_EXPORT bt_future *bt_pool_submit(bt_pool *pool, bt_loop *loop, bt_lane lane, bt_job_fn fn,
                                    void *arg);

/* Submit from any thread (a plain thread, another loop, a job): the job is
 * handed to loop, which makes its future and queues it; when the future
 * settles, done(future, done_arg) runs on loop's thread (the future is
 * borrowed there: read its value or error in done). done may be NULL.
 * done receives a NULL future only if the loop could not make one (out of
 * memory, or the loop was being freed when the job reached it); fn then
 * never runs. Returns 0 (done will be called exactly once), BT_EINVAL,
 * BT_ENOMEM, BT_ESHUTDOWN (pool shut down, or loop being freed). On
 * failure neither fn nor done is called. The caller must make sure loop
 * is not freed during the call. Thread: any. */
BT_EXPORT int bt_pool_submit_from(bt_pool *pool, bt_loop *loop, bt_lane lane, bt_job_fn fn,
                                  void *arg, bt_future_cb done, void *done_arg);

/* As bt_pool_submit, but arg is given to the pool: arg_free(arg) runs
 * exactly once, when the job is done with it (on its worker, after fn
 * returned) or will never run (on the loop thread, or in this call when
 * it fails); arg_free may be NULL (arg is static, or NULL). The caller
 * must not touch arg after the call. Such a job can be abandoned: a cancel
 * while it runs settles its future at once (see the top of this file).
 * Returns: new reference, or NULL as bt_pool_submit. Thread: the loop's. */
BT_EXPORT bt_future *bt_pool_submit_owned(bt_pool *pool, bt_loop *loop, bt_lane lane, bt_job_fn fn,
                                          void *arg, bt_destroy_fn arg_free);

/* The one-liners: the default pool's blocking lane (bt_to_thread, for a
 * call that waits) or CPU lane (bt_to_cpu, for computation), and the
 * blocking lane with an owned arg (bt_to_thread_owned, for a legacy call
 * wrapped in a timeout: the timeout settles on time). As bt_pool_submit
 * and bt_pool_submit_owned. The first call makes the default pool, which
 * starts its threads then (one CPU thread per core, one blocking thread):
 * measured 8 to 12 ms on a 2-core machine at load average 23, nearly all
 * of it starting threads, then 0.25 ms for the first job to come back
 * (0.55 to 0.75 ms before the blocking thread was started with the pool).
 * Call bt_pool_default at start-up to pay it there. Thread: the loop's. */
BT_EXPORT bt_future *bt_to_thread(bt_loop *loop, bt_job_fn fn, void *arg);
BT_EXPORT bt_future *bt_to_thread_owned(bt_loop *loop, bt_job_fn fn, void *arg,
                                        bt_destroy_fn arg_free);
BT_EXPORT bt_future *bt_to_cpu(bt_loop *loop, bt_job_fn fn, void *arg);

/* ---- Metrics ------------------------------------------------------------ */

/* A lane's counters. They add up: every job accepted on the lane (not
 * rejected) is counted once in `submitted`, and once it has left the
 * lane's queues and workers, once in either `done` (its function ran) or
 * `cancelled` (it never ran); so with nothing queued or running,
 * submitted == done + cancelled. `abandoned` counts a job at most once,
 * when its future settled while its function was running (a cancel, or
 * its loop's shutdown deadline); it is in `done` too once it returns. */
typedef struct {
    unsigned threads;     /* alive now */
    unsigned busy;        /* running a job now */
    unsigned idle;        /* waiting for work now (threads - busy) */
    unsigned max_threads; /* the lane's size (CPU) or cap (blocking) */
    size_t queued;        /* waiting in the queue now */
    size_t queue_max;
    uint64_t submitted;      /* accepted into the queue (or the loop's
                                batch, if cancelled there) */
    uint64_t rejected;       /* refused: queue full (BT_EAGAIN) */
    uint64_t done;           /* ran to completion (success or failure) */
    uint64_t failed;         /* of those, returned an error */
    uint64_t cancelled;      /* left the batch or the queue cancelled, or
                                skipped by a worker: never ran */
    uint64_t abandoned;      /* left running: their futures settled (a
                                cancel, or the shutdown deadline) while
                                they ran; counted in `done` too once they
                                return */
    uint64_t queue_ns_total; /* time jobs waited in the queue, summed */
    uint64_t queue_ns_max;   /* the longest such wait */
    uint64_t run_ns_total;   /* time jobs ran, summed */
    uint64_t run_ns_max;
    uint64_t threads_started; /* over the pool's life (the blocking lane
                                 grows and shrinks) */
    uint64_t threads_retired;
} bt_lane_stats;

typedef struct {
    size_t size;                       /* sizeof this struct, set by the caller (common.h) */
    bt_lane_stats lane[BT_LANE_COUNT]; /* indexed by bt_lane */
} bt_pool_stats;

/* A snapshot of the pool's counters (each exact; together, approximately
 * simultaneous), copied into *out (the caller's; set out->size first with
 * BT_SIZED, see common.h). Returns 0, or BT_EINVAL for a NULL pool or out
 * or an unset size. Thread: any. */
BT_EXPORT int bt_pool_get_stats(bt_pool *pool, bt_pool_stats *out);

#ifdef __cplusplus
}
#endif
#endif
