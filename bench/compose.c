/* Composition and watchdog costs, each against an anchor in the same run.
 *
 * - gather_10k: futures per second through bt_gather (10 000 children
 *   settled one by one, the gather's callback, the results read back)
 *   against a hand-written join (a counter decremented by one
 *   bt_future_add_callback per child): what the combinator costs over the
 *   least a program could write with the core alone.
 * - group_10k: the same 10 000 children added to a task group, waited
 *   for, the group freed, against a hand-written join that also releases
 *   each child in its callback (the group owns its children and lets go of
 *   each as it settles, inside the measured time, so the anchor does too).
 * - timeout_10k: bt_timeout around each of 10 000 children (a 60 s bound
 *   that never fires), the timeout futures counted by a hand-written join,
 *   against a hand-written timeout: a bt_timer per child, stopped and freed
 *   by a callback on the child, which then releases it and counts.
 * - watchdog_overhead: call_soon callbacks per second with the watchdog on
 *   (a clock read per callback and a lag probe every 20 ms) against the
 *   same loop with it off.
 * Each figure is the best of 5 runs, to damp the noise of a shared host.
 */
#include <stdio.h>
#include <stdlib.h>

#include <baton/baton.h>

#include "bench.h"

#define N 10000
#define ROUNDS 5

static double now_s(void)
{
    return (double)bt_hrtime() / 1e9;
}

/* ---- gather vs a hand-written join ---------------------------------------- */

static bt_future *kids[N];

static void make_kids(bt_loop *loop)
{
    for (int i = 0; i < N; i++)
        kids[i] = bt_future_new(loop);
}

static void settle_kids(void)
{
    for (int i = 0; i < N; i++)
        bt_future_set_value(kids[i], (void *)(intptr_t)(i + 1), NULL);
}

static double run_gather(bt_loop *loop)
{
    make_kids(loop);
    double t0 = now_s();
    bt_future *g = bt_gather(loop, kids, N, BT_GATHER_FAIL_FAST); /* takes over kids[] */
    settle_kids();
    bt_loop_run_until(loop, g);
    bt_results *r = bt_future_value(g);
    intptr_t sum = 0;
    for (size_t i = 0; i < bt_results_count(r); i++)
        sum += (intptr_t)bt_results_value(r, i);
    double dt = now_s() - t0;
    if (sum != (intptr_t)N * (N + 1) / 2)
        abort();
    bt_future_unref(g);
    return N / dt;
}

typedef struct {
    int left;
    intptr_t sum;
    bt_future *done;
} join;

static void join_cb(bt_future *f, void *arg)
{
    join *j = arg;
    j->sum += (intptr_t)bt_future_value(f);
    if (--j->left == 0)
        bt_future_set_value(j->done, NULL, NULL);
}

static void join_release_cb(bt_future *f, void *arg)
{
    join *j = arg;
    j->sum += (intptr_t)bt_future_value(f);
    bt_future_unref(f);
    if (--j->left == 0)
        bt_future_set_value(j->done, NULL, NULL);
}

/* The anchor: a counter and one callback per child. With release, each
 * callback also drops the child (what a task group does); without, the
 * children are dropped after the join (what gather's caller does). */
static double run_hand_join(bt_loop *loop, bool release)
{
    make_kids(loop);
    double t0 = now_s();
    join j = { N, 0, bt_future_new(loop) };
    for (int i = 0; i < N; i++)
        bt_future_add_callback(kids[i], release ? join_release_cb : join_cb, &j);
    settle_kids();
    bt_loop_run_until(loop, j.done);
    double dt = now_s() - t0;
    if (j.sum != (intptr_t)N * (N + 1) / 2)
        abort();
    if (!release)
        for (int i = 0; i < N; i++)
            bt_future_unref(kids[i]);
    bt_future_unref(j.done);
    return N / dt;
}

/* ---- task group vs a hand-written join that releases ------------------------ */

static double run_group(bt_loop *loop)
{
    make_kids(loop);
    double t0 = now_s();
    bt_group *g = bt_group_new(loop);
    for (int i = 0; i < N; i++)
        bt_group_add(g, kids[i]); /* takes it over */
    bt_future *done = bt_group_wait(g);
    bt_group_free(g);
    settle_kids();
    bt_loop_run_until(loop, done);
    double dt = now_s() - t0;
    if (bt_future_error(done) != 0)
        abort();
    bt_future_unref(done);
    return N / dt;
}

/* ---- bt_timeout vs a hand-written timeout ------------------------------------ */

#define TIMEOUT_MS 60000 /* never fires: what is measured is arming and disarming */

static bt_future *outer[N];

static double run_timeout(bt_loop *loop)
{
    make_kids(loop);
    double t0 = now_s();
    join j = { N, 0, bt_future_new(loop) };
    for (int i = 0; i < N; i++) {
        outer[i] = bt_timeout(kids[i], TIMEOUT_MS); /* takes kids[i] over */
        bt_future_add_callback(outer[i], join_cb, &j);
    }
    settle_kids();
    bt_loop_run_until(loop, j.done);
    double dt = now_s() - t0;
    if (j.sum != (intptr_t)N * (N + 1) / 2)
        abort();
    for (int i = 0; i < N; i++)
        bt_future_unref(outer[i]);
    bt_future_unref(j.done);
    return N / dt;
}

typedef struct {
    bt_timer *timer;
    join *j;
} hand_timeout;

static hand_timeout hts[N];

static void hand_timeout_fired(bt_timer *t, void *arg)
{
    (void)t;
    (void)arg;
    abort(); /* 60 s: never, in this benchmark */
}

static void hand_timeout_cb(bt_future *f, void *arg)
{
    hand_timeout *h = arg;
    bt_timer_free(h->timer);
    join_release_cb(f, h->j);
}

static double run_hand_timeout(bt_loop *loop)
{
    make_kids(loop);
    double t0 = now_s();
    join j = { N, 0, bt_future_new(loop) };
    for (int i = 0; i < N; i++) {
        hts[i].j = &j;
        hts[i].timer = bt_timer_new(loop, hand_timeout_fired, &hts[i]);
        bt_timer_start(hts[i].timer, TIMEOUT_MS, 0);
        bt_future_add_callback(kids[i], hand_timeout_cb, &hts[i]);
    }
    settle_kids();
    bt_loop_run_until(loop, j.done);
    double dt = now_s() - t0;
    if (j.sum != (intptr_t)N * (N + 1) / 2)
        abort();
    bt_future_unref(j.done);
    return N / dt;
}

/* ---- watchdog on vs off ------------------------------------------------------ */

#define CALLS 1000000
static int calls_left;
static bt_loop *g_loop;

static void chain(void *arg)
{
    (void)arg;
    if (--calls_left > 0)
        bt_loop_call_soon(g_loop, chain, NULL);
    else
        bt_loop_stop(g_loop);
}

static double run_calls(bt_loop *loop, bool watchdog)
{
    if (watchdog)
        bt_watchdog_start(loop, 100);
    g_loop = loop;
    calls_left = CALLS;
    double t0 = now_s();
    bt_loop_call_soon(loop, chain, NULL);
    bt_loop_run(loop);
    double dt = now_s() - t0;
    if (watchdog)
        bt_watchdog_stop(loop);
    return CALLS / dt;
}

int main(void)
{
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;
    double best_g = 0, best_h = 0, best_on = 0, best_off = 0;
    for (int r = 0; r < ROUNDS; r++) {
        double g = run_gather(loop), h = run_hand_join(loop, false);
        best_g = g > best_g ? g : best_g;
        best_h = h > best_h ? h : best_h;
    }
    bench_line("gather_10k", best_g, "hand_join", best_h, "futures/s", "higher");
    best_g = best_h = 0;
    for (int r = 0; r < ROUNDS; r++) {
        double g = run_group(loop), h = run_hand_join(loop, true);
        best_g = g > best_g ? g : best_g;
        best_h = h > best_h ? h : best_h;
    }
    bench_line("group_10k", best_g, "hand_join_release", best_h, "futures/s", "higher");
    best_g = best_h = 0;
    for (int r = 0; r < ROUNDS; r++) {
        double g = run_timeout(loop), h = run_hand_timeout(loop);
        best_g = g > best_g ? g : best_g;
        best_h = h > best_h ? h : best_h;
    }
    bench_line("timeout_10k", best_g, "hand_timeout", best_h, "futures/s", "higher");
    for (int r = 0; r < ROUNDS; r++) {
        double off = run_calls(loop, false), on = run_calls(loop, true);
        best_on = on > best_on ? on : best_on;
        best_off = off > best_off ? off : best_off;
    }
    bench_line("watchdog_overhead", best_on, "watchdog_off", best_off, "callbacks/s", "higher");
    bt_loop_free(loop);
    return 0;
}
