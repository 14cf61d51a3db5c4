/* offload_latency: one job at a time, 20,000 round trips (submit on the
 * loop -> run on a worker -> settled back on the loop), 2 worker threads.
 * Reports the p50 and p99 round trip in microseconds, and the CPU the
 * process burned per wall second meanwhile (the price of the worker's
 * linger and the loop's spin, which make the low latency) and per round
 * trip. Anchor: libuv's uv_queue_work with UV_THREADPOOL_SIZE=2. */
#include <stdlib.h>

#include <uv.h>

#include <baton/baton.h>
#include <baton/pool.h>

#include "bench.h"

#define ANCHOR "libuv_uv_queue_work"

#define TRIPS 20000
#define THREADS 2

static volatile long sink;
static uint64_t *lat;
static long trip;
static uint64_t t_sent;

/* ---- Baton ----------------------------------------------------------------- */

static bt_pool *pool;

static int bt_trivial(bt_job *job, void *arg)
{
    (void)job;
    sink += (long)(intptr_t)arg;
    return 0;
}

static void bt_send(bt_loop *loop);

static void bt_on_done(bt_future *f, void *arg)
{
    (void)f;
    lat[trip++] = now_ns() - t_sent;
    if (trip == TRIPS)
        bt_loop_stop(arg);
    else
        bt_send(arg);
}

static void bt_send(bt_loop *loop)
{
    t_sent = now_ns();
    bt_future *f = bt_pool_submit(pool, loop, BT_LANE_CPU, bt_trivial, NULL);
    bt_future_add_callback(f, bt_on_done, loop);
    bt_future_unref(f);
}

static void baton_run(bt_loop *loop, double *p50, double *p99, double *cores, double *cpu_trip)
{
    trip = 0;
    uint64_t c0 = cpu_ns(), t0 = now_ns();
    bt_send(loop);
    bt_loop_run(loop);
    *cores = (double)(cpu_ns() - c0) / (double)(now_ns() - t0);
    *cpu_trip = (double)(cpu_ns() - c0) / 1e3 / TRIPS;
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
        t_sent = now_ns();
        uv_queue_work(r->loop, r, uv_trivial, uv_after);
    }
}

static void uv_runit(uv_loop_t *loop, double *p50, double *p99, double *cores, double *cpu_trip)
{
    trip = 0;
    uint64_t c0 = cpu_ns(), t0 = now_ns();
    t_sent = now_ns();
    uv_queue_work(loop, &req, uv_trivial, uv_after);
    uv_run(loop, UV_RUN_DEFAULT);
    *cores = (double)(cpu_ns() - c0) / (double)(now_ns() - t0);
    *cpu_trip = (double)(cpu_ns() - c0) / 1e3 / TRIPS;
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

    double b50[3], b99[3], bc[3], bt[3], u50[3], u99[3], uc[3], ut[3];
    for (int r = 0; r < 3; r++) {
        baton_run(loop, &b50[r], &b99[r], &bc[r], &bt[r]);
        uv_runit(&uvl, &u50[r], &u99[r], &uc[r], &ut[r]);
    }
    bench_line("offload_latency_p50", median_d(b50, 3), ANCHOR, median_d(u50, 3), "us", "lower");
    bench_line("offload_latency_p99", median_d(b99, 3), ANCHOR, median_d(u99, 3), "us", "lower");
    bench_line("offload_latency_cpu", median_d(bc, 3), ANCHOR, median_d(uc, 3), "cores", "lower");
    /* The same CPU per round trip: a ping-pong runs as many trips as it
     * can, so a faster trip raises "cores" even when each costs less. */
    bench_line("offload_latency_cpu_per_trip", median_d(bt, 3), ANCHOR, median_d(ut, 3), "us",
               "lower");

    uv_loop_close(&uvl);
    free(lat);
    bt_loop_free(loop);
    bt_pool_free(pool);
    return 0;
}
