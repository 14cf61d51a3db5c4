/* offload_burst: 200,000 trivial jobs submitted at once, 2 worker threads;
 * jobs per second from the first submission to the last completion seen
 * on the loop. Anchor: libuv's uv_queue_work with UV_THREADPOOL_SIZE=2.
 * Each side runs ROUNDS times; the median is reported. A second line
 * gives the CPU time (all threads) per job. */
#include <stdlib.h>

#include <uv.h>

#include <baton/baton.h>
#include <baton/pool.h>

#include "bench.h"

#define ANCHOR "libuv_uv_queue_work"

#define JOBS 200000
#define THREADS 2
#define ROUNDS 7

static volatile long sink;

/* ---- Baton ----------------------------------------------------------------- */

static long bt_done;

static int bt_trivial(bt_job *job, void *arg)
{
    (void)job;
    sink += (long)(intptr_t)arg;
    return 0;
}

static void bt_on_done(bt_future *f, void *arg)
{
    (void)f;
    if (++bt_done == JOBS)
        bt_loop_stop(arg);
}

static double cpu_per_job; /* of the last round, ns of CPU (all threads) */

static double baton_round(bt_pool *pool, bt_loop *loop)
{
    bt_done = 0;
    uint64_t c0 = cpu_ns();
    uint64_t t0 = now_ns();
    for (long i = 0; i < JOBS; i++) {
        bt_future *f = bt_pool_submit(pool, loop, BT_LANE_CPU, bt_trivial, (void *)(intptr_t)i);
        bt_future_add_callback(f, bt_on_done, loop);
        bt_future_unref(f);
    }
    bt_loop_run(loop);
    uint64_t t1 = now_ns();
    cpu_per_job = (double)(cpu_ns() - c0) / JOBS;
    return (double)JOBS / ((double)(t1 - t0) / 1e9);
}

/* ---- libuv ------------------------------------------------------------------ */

static long uv_done;
static uv_work_t *reqs;

static void uv_trivial(uv_work_t *req)
{
    sink += (long)(intptr_t)req->data;
}

static void uv_after(uv_work_t *req, int status)
{
    (void)req;
    (void)status;
    uv_done++;
}

static double uv_round(uv_loop_t *loop)
{
    uv_done = 0;
    uint64_t c0 = cpu_ns();
    uint64_t t0 = now_ns();
    for (long i = 0; i < JOBS; i++) {
        reqs[i].data = (void *)(intptr_t)i;
        uv_queue_work(loop, &reqs[i], uv_trivial, uv_after);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    if (uv_done != JOBS)
        abort();
    uint64_t t1 = now_ns();
    cpu_per_job = (double)(cpu_ns() - c0) / JOBS;
    return (double)JOBS / ((double)(t1 - t0) / 1e9);
}

int main(void)
{
    setenv("UV_THREADPOOL_SIZE", "2", 1);
    bt_pool_config cfg;
    bt_pool_config_init(&cfg);
    cfg.cpu_threads = THREADS;
    cfg.cpu_queue_max = JOBS;
    if (getenv("BATON_SPIN_SHARE")) /* percent; 100: BT_POOL_SPIN_FULL */
        cfg.spin_share = (unsigned)strtoul(getenv("BATON_SPIN_SHARE"), NULL, 10);
    bt_pool *pool = bt_pool_new(&cfg);
    bt_loop *loop = bt_loop_new();
    reqs = calloc(JOBS, sizeof *reqs);
    uv_loop_t uvl;
    uv_loop_init(&uvl);

    double b[ROUNDS], u[ROUNDS], bc[ROUNDS], uc[ROUNDS];
    baton_round(pool, loop); /* warm up both: threads started, memory touched */
    uv_round(&uvl);
    for (int r = 0; r < ROUNDS; r++) { /* interleaved, so load drifts hit both */
        b[r] = baton_round(pool, loop);
        bc[r] = cpu_per_job;
        u[r] = uv_round(&uvl);
        uc[r] = cpu_per_job;
    }
    bench_line("offload_burst", median_d(b, ROUNDS), ANCHOR, median_d(u, ROUNDS), "jobs/s",
               "higher");
    /* CPU per job, all threads together: steadier than wall time on a
     * shared machine. */
    bench_line("offload_burst_cpu", median_d(bc, ROUNDS), ANCHOR, median_d(uc, ROUNDS), "ns/job",
               "lower");

    uv_loop_close(&uvl);
    free(reqs);
    bt_loop_free(loop);
    bt_pool_free(pool);
    return 0;
}
