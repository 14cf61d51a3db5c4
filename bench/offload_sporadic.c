/* offload_sporadic: a service that offloads now and then. One trivial job
 * at a time, each submitted 100 us to 1 ms (uniformly, the same sequence
 * for both) after the previous one came back, 2,000 jobs, 2 worker
 * threads. The loop waits between jobs in a sleep, as an idle service
 * waits in epoll. Reports the p50 and p99 round trip in microseconds and
 * the CPU the process burned per wall second (cores): what spinning costs
 * when jobs are rare. Anchor: libuv's uv_queue_work with
 * UV_THREADPOOL_SIZE=2, the same jobs and gaps, in the same process. */
#include <stdlib.h>
#include <time.h>

#include <uv.h>

#include <baton/baton.h>
#include <baton/pool.h>

#include "bench.h"

#define ANCHOR "libuv_uv_queue_work"

#define TRIPS 2000
#define THREADS 2
#define GAP_MIN_US 100
#define GAP_MAX_US 1000

static volatile long sink;
static uint64_t *lat;
static long trip;
static uint64_t t_sent;
static uint32_t seed;

/* The gap before the next job: a fixed pseudo-random sequence. */
static void gap_sleep(void)
{
    seed = seed * 1664525u + 1013904223u;
    long us = GAP_MIN_US + (long)((seed >> 8) % (GAP_MAX_US - GAP_MIN_US + 1));
    struct timespec ts = { 0, us * 1000 };
    nanosleep(&ts, NULL);
}

/* ---- Baton ----------------------------------------------------------------- */

static bt_pool *pool;

static int bt_trivial(bt_job *job, void *arg)
{
    (void)job;
    (void)arg;
    sink++;
    return 0;
}

static void bt_send(bt_loop *loop);

static void bt_on_done(bt_future *f, void *arg)
{
    (void)f;
    lat[trip++] = now_ns() - t_sent;
    if (trip == TRIPS) {
        bt_loop_stop(arg);
    } else {
        gap_sleep();
        bt_send(arg);
    }
}

static void bt_send(bt_loop *loop)
{
    t_sent = now_ns();
    bt_future *f = bt_pool_submit(pool, loop, BT_LANE_CPU, bt_trivial, NULL);
    bt_future_add_callback(f, bt_on_done, loop);
    bt_future_unref(f);
}

static void baton_run(bt_loop *loop, double *p50, double *p99, double *cores)
{
    trip = 0;
    seed = 12345;
    uint64_t c0 = cpu_ns(), t0 = now_ns();
    bt_send(loop);
    bt_loop_run(loop);
    *cores = (double)(cpu_ns() - c0) / (double)(now_ns() - t0);
    *p50 = (double)percentile(lat, TRIPS, 50) / 1e3;
    *p99 = (double)percentile(lat, TRIPS, 99) / 1e3;
}

/* ---- libuv ------------------------------------------------------------------ */

static uv_work_t req;

static void uv_trivial(uv_work_t *r)
{
    (void)r;
    sink++;
}

static void uv_after(uv_work_t *r, int status)
{
    (void)status;
    lat[trip++] = now_ns() - t_sent;
    if (trip < TRIPS) {
        gap_sleep();
        t_sent = now_ns();
        uv_queue_work(r->loop, r, uv_trivial, uv_after);
    }
}

static void uv_runit(uv_loop_t *loop, double *p50, double *p99, double *cores)
{
    trip = 0;
    seed = 12345;
    uint64_t c0 = cpu_ns(), t0 = now_ns();
    t_sent = now_ns();
    uv_queue_work(loop, &req, uv_trivial, uv_after);
    uv_run(loop, UV_RUN_DEFAULT);
    *cores = (double)(cpu_ns() - c0) / (double)(now_ns() - t0);
    *p50 = (double)percentile(lat, TRIPS, 50) / 1e3;
    *p99 = (double)percentile(lat, TRIPS, 99) / 1e3;
}

int main(void)
{
    setenv("UV_THREADPOOL_SIZE", "2", 1);
    bt_pool_config cfg;
    bt_pool_config_init(&cfg);
    cfg.cpu_threads = THREADS;
    if (getenv("BATON_LINGER_US"))
        cfg.linger_us = strtoull(getenv("BATON_LINGER_US"), NULL, 10);
    if (getenv("BATON_SPIN_SHARE")) /* percent; 100: BT_POOL_SPIN_FULL */
        cfg.spin_share = (unsigned)strtoul(getenv("BATON_SPIN_SHARE"), NULL, 10);
    if (getenv("BATON_CPU_NICE")) /* -1: the threads keep the process's nice */
        cfg.cpu_nice = atoi(getenv("BATON_CPU_NICE"));
    pool = bt_pool_new(&cfg);
    bt_loop *loop = bt_loop_new();
    if (getenv("BATON_SPIN_US"))
        bt_loop_set_spin(loop, strtoull(getenv("BATON_SPIN_US"), NULL, 10));
    lat = calloc(TRIPS, sizeof *lat);
    uv_loop_t uvl;
    uv_loop_init(&uvl);

    double b50[3], b99[3], bc[3], u50[3], u99[3], uc[3];
    for (int r = 0; r < 3; r++) {
        baton_run(loop, &b50[r], &b99[r], &bc[r]);
        uv_runit(&uvl, &u50[r], &u99[r], &uc[r]);
    }
    bench_line("offload_sporadic_p50", median_d(b50, 3), ANCHOR, median_d(u50, 3), "us", "lower");
    bench_line("offload_sporadic_p99", median_d(b99, 3), ANCHOR, median_d(u99, 3), "us", "lower");
    bench_line("offload_sporadic_cpu", median_d(bc, 3), ANCHOR, median_d(uc, 3), "cores", "lower");

    uv_loop_close(&uvl);
    free(lat);
    bt_loop_free(loop);
    bt_pool_free(pool);
    return 0;
}
