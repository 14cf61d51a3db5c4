/* cpu_parallel: 64 jobs of about 20 ms of integer work on 2 worker threads.
 * Measures the speedup over running the same jobs one after another on the
 * loop thread, and the p99 lag of a 1 ms repeating timer on the loop while
 * the jobs run (how late each tick fires). Anchor: libuv's uv_queue_work
 * with UV_THREADPOOL_SIZE=2 and a uv_timer. BATON_CPU_NICE (environment)
 * overrides the CPU lane's nice (-1: leave it alone). */
#include <stdlib.h>

#include <uv.h>

#include <baton/baton.h>
#include <baton/pool.h>

#include "bench.h"

#define ANCHOR "libuv_uv_queue_work"

#define JOBS 64
#define THREADS 2
#define MAX_TICKS 100000

static long iters_per_job;
static volatile uint64_t sink;

/* Integer work: an xorshift chain the compiler cannot fold. */
static uint64_t work(long n)
{
    uint64_t x = 88172645463325252ull;
    for (long i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

static void calibrate(void)
{
    long n = 1000000;
    for (;;) {
        uint64_t t0 = now_ns();
        sink += work(n);
        uint64_t dt = now_ns() - t0;
        if (dt > 50000000u) {
            iters_per_job = (long)((double)n * 20e6 / (double)dt);
            return;
        }
        n *= 2;
    }
}

static uint64_t ticks[MAX_TICKS];
static int nticks;
static uint64_t last_tick;

static void tick_record(void)
{
    uint64_t t = now_ns();
    if (last_tick && nticks < MAX_TICKS) {
        uint64_t gap = t - last_tick;
        ticks[nticks++] = gap > 1000000u ? gap - 1000000u : 0; /* lag past 1 ms */
    }
    last_tick = t;
}

/* ---- Baton ----------------------------------------------------------------- */

static int bt_work_job(bt_job *job, void *arg)
{
    (void)job;
    (void)arg;
    sink += work(iters_per_job);
    return 0;
}

static int bt_left;

static void bt_on_done(bt_future *f, void *arg)
{
    (void)f;
    if (--bt_left == 0)
        bt_loop_stop(arg);
}

static void bt_on_tick(bt_timer *t, void *arg)
{
    (void)t;
    (void)arg;
    tick_record();
}

static double baton_run(bt_pool *pool, bt_loop *loop, double *lag_p99)
{
    bt_timer *t = bt_timer_new(loop, bt_on_tick, NULL);
    nticks = 0;
    last_tick = 0;
    bt_left = JOBS;
    uint64_t t0 = now_ns();
    bt_timer_start(t, 1, 1);
    for (int i = 0; i < JOBS; i++) {
        bt_future *f = bt_pool_submit(pool, loop, BT_LANE_CPU, bt_work_job, NULL);
        bt_future_add_callback(f, bt_on_done, loop);
        bt_future_unref(f);
    }
    bt_loop_run(loop);
    double secs = (double)(now_ns() - t0) / 1e9;
    bt_timer_free(t);
    *lag_p99 = (double)percentile(ticks, (size_t)nticks, 99) / 1e6;
    return secs;
}

/* ---- libuv ------------------------------------------------------------------ */

static uv_work_t reqs[JOBS];
static int uv_left;
static uv_timer_t uvt;

static void uv_work_fn(uv_work_t *r)
{
    (void)r;
    sink += work(iters_per_job);
}

static void uv_after(uv_work_t *r, int status)
{
    (void)r;
    (void)status;
    if (--uv_left == 0)
        uv_timer_stop(&uvt);
}

static void uv_on_tick(uv_timer_t *t)
{
    (void)t;
    tick_record();
}

static double uv_runit(uv_loop_t *loop, double *lag_p99)
{
    nticks = 0;
    last_tick = 0;
    uv_left = JOBS;
    uint64_t t0 = now_ns();
    uv_timer_start(&uvt, uv_on_tick, 1, 1);
    for (int i = 0; i < JOBS; i++)
        uv_queue_work(loop, &reqs[i], uv_work_fn, uv_after);
    uv_run(loop, UV_RUN_DEFAULT);
    double secs = (double)(now_ns() - t0) / 1e9;
    *lag_p99 = (double)percentile(ticks, (size_t)nticks, 99) / 1e6;
    return secs;
}

int main(void)
{
    setenv("UV_THREADPOOL_SIZE", "2", 1);
    calibrate();
    bt_pool_config cfg;
    bt_pool_config_init(&cfg);
    cfg.cpu_threads = THREADS;
    if (getenv("BATON_CPU_NICE"))
        cfg.cpu_nice = atoi(getenv("BATON_CPU_NICE"));
    bt_pool *pool = bt_pool_new(&cfg);
    bt_loop *loop = bt_loop_new();
    uv_loop_t uvl;
    uv_loop_init(&uvl);
    uv_timer_init(&uvl, &uvt);

    /* The baseline: the same jobs one after another on the loop thread. */
    uint64_t t0 = now_ns();
    for (int i = 0; i < JOBS; i++)
        sink += work(iters_per_job);
    double serial = (double)(now_ns() - t0) / 1e9;

    double bs[3], bl[3], us[3], ul[3];
    for (int r = 0; r < 3; r++) {
        bs[r] = serial / baton_run(pool, loop, &bl[r]);
        us[r] = serial / uv_runit(&uvl, &ul[r]);
    }
    bench_line("cpu_parallel_speedup", median_d(bs, 3), ANCHOR, median_d(us, 3), "x", "higher");
    bench_line("cpu_parallel_timer_lag_p99", median_d(bl, 3), ANCHOR, median_d(ul, 3), "ms",
               "lower");

    uv_close((uv_handle_t *)&uvt, NULL);
    uv_run(&uvl, UV_RUN_DEFAULT);
    uv_loop_close(&uvl);
    bt_loop_free(loop);
    bt_pool_free(pool);
    return 0;
}
