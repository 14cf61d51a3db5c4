/* fiber_offload: a fiber awaiting 200,000 trivial bt_to_thread jobs, one
 * at a time and in gathers of 64, against the same work in callback style
 * (each completion's callback submits the next job, or the next gather).
 * Jobs per second, the median of ROUNDS rounds; the default pool. */
#include <stdlib.h>

#include <baton/baton.h>

#include "bench.h"

#define JOBS 200000
#define BATCH 64
#define ROUNDS 5

static volatile long sink;

static int trivial(bt_job *job, void *arg)
{
    (void)job;
    sink += (long)(intptr_t)arg;
    return 0;
}

/* ---- One at a time ---------------------------------------------------------- */

static bt_future *seq_fiber(bt_loop *loop, void *arg)
{
    (void)arg;
    for (long i = 0; i < JOBS; i++)
        if (bt_await(bt_to_thread(loop, trivial, (void *)(intptr_t)i), NULL) != 0)
            abort();
    return bt_future_new_value(loop, NULL, NULL);
}

typedef struct {
    bt_loop *loop;
    long i;
    bt_future *done;
} cb_state;

static void seq_next(bt_future *f, void *arg);

static void seq_submit(cb_state *s)
{
    bt_future *f = bt_to_thread(s->loop, trivial, (void *)(intptr_t)s->i);
    bt_future_add_callback(f, seq_next, s);
    bt_future_unref(f);
}

static void seq_next(bt_future *f, void *arg)
{
    cb_state *s = arg;
    if (bt_future_error(f) != 0)
        abort();
    if (++s->i == JOBS)
        bt_future_set_value(s->done, NULL, NULL);
    else
        seq_submit(s);
}

/* ---- Gathers of 64 ------------------------------------------------------------ */

/* The gather takes over the children's references. */
static bt_future *gather_batch(bt_loop *loop, long base, bt_future **kids)
{
    for (int j = 0; j < BATCH; j++)
        kids[j] = bt_to_thread(loop, trivial, (void *)(intptr_t)(base + j));
    return bt_gather(loop, kids, BATCH, BT_GATHER_FAIL_FAST);
}

static bt_future *gather_fiber(bt_loop *loop, void *arg)
{
    (void)arg;
    bt_future *kids[BATCH];
    for (long i = 0; i < JOBS; i += BATCH) {
        bt_results *r;
        if (bt_await(gather_batch(loop, i, kids), (void **)&r) != 0)
            abort();
        bt_results_free(r);
    }
    return bt_future_new_value(loop, NULL, NULL);
}

typedef struct {
    cb_state s;
    bt_future *kids[BATCH];
} gather_state;

static void gather_next(bt_future *g, void *arg);

static void gather_submit(gather_state *gs)
{
    bt_future *g = gather_batch(gs->s.loop, gs->s.i, gs->kids);
    bt_future_add_callback(g, gather_next, gs);
    bt_future_unref(g);
}

static void gather_next(bt_future *g, void *arg)
{
    gather_state *gs = arg;
    if (bt_future_error(g) != 0)
        abort();
    gs->s.i += BATCH;
    if (gs->s.i >= JOBS)
        bt_future_set_value(gs->s.done, NULL, NULL);
    else
        gather_submit(gs);
}

/* ---- Rounds ---------------------------------------------------------------------- */

static double run(bt_loop *loop, int kind)
{
    uint64_t t0 = now_ns();
    bt_future *done;
    gather_state gs;
    if (kind == 0) {
        done = bt_async(loop, seq_fiber, NULL);
    } else if (kind == 1) {
        gs.s = (cb_state){ loop, 0, bt_future_new(loop) };
        done = gs.s.done;
        seq_submit(&gs.s);
    } else if (kind == 2) {
        done = bt_async(loop, gather_fiber, NULL);
    } else {
        gs.s = (cb_state){ loop, 0, bt_future_new(loop) };
        done = gs.s.done;
        gather_submit(&gs);
    }
    bt_loop_run_until(loop, done);
    uint64_t t1 = now_ns();
    if (bt_future_error(done) != 0)
        abort();
    bt_future_unref(done);
    return (double)JOBS / ((double)(t1 - t0) / 1e9);
}

int main(void)
{
    bt_loop *loop = bt_loop_new();
    double v[4][ROUNDS];
    for (int r = 0; r < ROUNDS; r++)
        for (int k = 0; k < 4; k++)
            v[k][r] = run(loop, k);
    bench_line("fiber_offload", median_d(v[0], ROUNDS), "callback_style", median_d(v[1], ROUNDS),
               "jobs/s", "higher");
    bench_line("fiber_offload_gather64", median_d(v[2], ROUNDS), "callback_style",
               median_d(v[3], ROUNDS), "jobs/s", "higher");
    bt_loop_free(loop);
    return 0;
}
