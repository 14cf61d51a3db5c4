/* gather (fail fast and collect), race, any and timeout: success, failure,
 * cancellation from outside, empty input, bad arguments; fail fast and
 * race really cancel the siblings (their producers' hooks run); a timeout
 * racing the completion; the "dropped while pending" report. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static bt_loop *loop;

static void setup(void)
{
    loop = bt_loop_new();
    ck_assert_ptr_nonnull(loop);
}
static void teardown(void)
{
    bt_test_loop_free_clean(loop);
}

/* A producer driven by hand (tests/harness.h). */
typedef bt_test_prod prod;
static void prod_init(prod *p, bool eager)
{
    bt_test_prod_init(p, loop, eager);
}

static int *boxed(int v)
{
    int *p = malloc(sizeof *p);
    *p = v;
    return p;
}

static void stop_cb(void *arg)
{
    bt_loop_stop(arg);
}

/* Run a few turns so that pending callbacks run. */
static void spin(void)
{
    bt_future *s = bt_sleep(loop, 5);
    bt_test_run_until(loop, s, 2000);
    bt_future_unref(s);
}

static void settle_value_cb(void *arg)
{
    prod *p = arg;
    bt_future_set_value(p->f, boxed(7), free);
}

/* ---- gather ------------------------------------------------------------- */

START_TEST(gather_values_in_order)
{
    prod p[3];
    for (int i = 0; i < 3; i++)
        prod_init(&p[i], true);
    bt_future *kids[3] = { p[0].f, p[1].f, p[2].f };
    bt_future *g = bt_gather(loop, kids, 3, BT_GATHER_FAIL_FAST);
    ck_assert_ptr_nonnull(g); /* it took over p[i].f: no unref of ours */
    /* Settle in reverse order: the results keep the given order. */
    bt_future_set_value(p[2].f, boxed(30), free);
    bt_future_set_value(p[1].f, boxed(20), free);
    ck_assert(!bt_future_is_settled(g));
    bt_future_set_value(p[0].f, boxed(10), free);
    bt_test_run_until(loop, g, 2000);
    ck_assert_int_eq(bt_future_error(g), 0);
    bt_results *r = bt_future_value(g);
    ck_assert_uint_eq(bt_results_count(r), 3);
    ck_assert_uint_eq(bt_results_failed(r), 0);
    for (size_t i = 0; i < 3; i++) {
        ck_assert_int_eq(*(int *)bt_results_value(r, i), 10 * ((int)i + 1));
        ck_assert_int_eq(bt_results_error(r, i), 0);
    }
    ck_assert_int_eq(bt_results_error(r, 3), BT_ERANGE);
    ck_assert_ptr_null(bt_results_value(r, 3));
    int *v = bt_results_take(r, 1);
    ck_assert_int_eq(*v, 20);
    ck_assert_ptr_null(bt_results_value(r, 1));
    free(v);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(p[i].hook_calls, 0);
    bt_future_unref(g);
}
END_TEST

START_TEST(gather_fail_fast_cancels_siblings)
{
    prod p[4];
    for (int i = 0; i < 4; i++)
        prod_init(&p[i], true);
    bt_future *kids[4]; /* we keep our references: the states are read below */
    for (int i = 0; i < 4; i++)
        kids[i] = bt_future_ref(p[i].f);
    bt_future *g = bt_gather(loop, kids, 4, BT_GATHER_FAIL_FAST);
    ck_assert_ptr_nonnull(g);
    bt_future_set_value(p[0].f, boxed(1), free);
    bt_future_set_error(p[2].f, BT_EIO, "disk on fire");
    bt_test_run_until(loop, g, 2000);
    ck_assert_int_eq(bt_future_get_state(g), BT_FUTURE_ERROR);
    ck_assert_int_eq(bt_future_error(g), BT_EIO);
    ck_assert_str_eq(bt_future_error_message(g), "disk on fire");
    /* The siblings still pending were cancelled through their hooks. */
    ck_assert_int_eq(p[1].hook_calls, 1);
    ck_assert_int_eq(p[3].hook_calls, 1);
    ck_assert_int_eq(p[0].hook_calls, 0); /* already settled: not asked */
    ck_assert_int_eq(bt_future_get_state(p[1].f), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_get_state(p[3].f), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_get_state(p[0].f), BT_FUTURE_VALUE);
    spin();
    for (int i = 0; i < 4; i++)
        bt_future_unref(p[i].f);
    bt_future_unref(g);
}
END_TEST

START_TEST(gather_fail_fast_settles_before_a_running_sibling)
{
    prod run, bad;
    prod_init(&run, false); /* a job already running: cannot stop at once */
    prod_init(&bad, true);
    bt_future *kids[2] = { bt_future_ref(run.f), bad.f }; /* run.f is read below */
    bt_future *g = bt_gather(loop, kids, 2, BT_GATHER_FAIL_FAST);
    bt_future_set_error(bad.f, BT_ECONNREFUSED, NULL);
    bt_test_run_until(loop, g, 2000);
    ck_assert_int_eq(bt_future_error(g), BT_ECONNREFUSED);
    ck_assert_int_eq(run.hook_calls, 1);
    ck_assert(!bt_future_is_settled(run.f));
    /* The job finishes later; its late value becomes "cancelled". */
    bt_future_set_value(run.f, boxed(5), free);
    spin();
    ck_assert_int_eq(bt_future_get_state(run.f), BT_FUTURE_CANCELLED);
    bt_future_unref(run.f);
    bt_future_unref(g);
}
END_TEST

START_TEST(gather_fail_fast_reads_the_other_errors)
{
    prod a, b;
    prod_init(&a, true);
    prod_init(&b, true);
    bt_future *kids[2] = { a.f, b.f };
    bt_future *g = bt_gather(loop, kids, 2, BT_GATHER_FAIL_FAST);
    /* Both fail in the same turn: the first decides, the second is read. */
    bt_future_set_error(a.f, BT_EIO, "first");
    bt_future_set_error(b.f, BT_EPIPE, "second");
    bt_test_run_until(loop, g, 2000);
    ck_assert_int_eq(bt_future_error(g), BT_EIO);
    bt_test_log_capture();
    bt_future_unref(g);
    spin();
    ck_assert(!bt_test_log_contains("nobody read"));
}
END_TEST

START_TEST(gather_fail_fast_child_cancelled_elsewhere)
{
    prod a, b;
    prod_init(&a, true);
    prod_init(&b, true);
    bt_future *kids[2] = { a.f, b.f };
    bt_future *g = bt_gather(loop, kids, 2, BT_GATHER_FAIL_FAST);
    bt_future_cancel(a.f);
    bt_test_run_until(loop, g, 2000);
    ck_assert_int_eq(bt_future_get_state(g), BT_FUTURE_ERROR);
    ck_assert_int_eq(bt_future_error(g), BT_ECANCELED);
    ck_assert_ptr_nonnull(strstr(bt_future_error_message(g), "child 0"));
    ck_assert_int_eq(b.hook_calls, 1);
    bt_future_unref(g);
}
END_TEST

START_TEST(gather_collect_reports_every_outcome)
{
    prod p[3];
    for (int i = 0; i < 3; i++)
        prod_init(&p[i], true);
    bt_future *kids[3] = { p[0].f, p[1].f, p[2].f };
    bt_future *g = bt_gather(loop, kids, 3, BT_GATHER_COLLECT);
    bt_future_set_error(p[1].f, BT_ETIMEDOUT, "slow peer");
    bt_future_cancel(p[2].f);
    spin();
    ck_assert(!bt_future_is_settled(g)); /* waits for every child */
    bt_future_set_value(p[0].f, boxed(1), free);
    bt_test_run_until(loop, g, 2000);
    ck_assert_int_eq(bt_future_error(g), 0);
    bt_results *r = bt_future_take_value(g);
    ck_assert_uint_eq(bt_results_count(r), 3);
    ck_assert_uint_eq(bt_results_failed(r), 2);
    ck_assert_int_eq(*(int *)bt_results_value(r, 0), 1);
    ck_assert_int_eq(bt_results_error(r, 1), BT_ETIMEDOUT);
    ck_assert_str_eq(bt_results_error_message(r, 1), "slow peer");
    ck_assert_int_eq(bt_results_error(r, 2), BT_ECANCELED);
    ck_assert_int_eq(bt_future_get_state(bt_results_future(r, 2)), BT_FUTURE_CANCELLED);
    /* Collect never cancels anybody. */
    ck_assert_int_eq(p[0].hook_calls, 0);
    ck_assert_int_eq(p[1].hook_calls, 0);
    bt_results_free(r);
    bt_future_unref(g);
}
END_TEST

START_TEST(gather_collect_unread_error_is_reported)
{
    prod a;
    prod_init(&a, true);
    bt_future *g = bt_gather(loop, &a.f, 1, BT_GATHER_COLLECT);
    bt_future_set_error(a.f, BT_EIO, "ignored by the caller");
    bt_test_run_until(loop, g, 2000);
    ck_assert_int_eq(bt_future_error(g), 0);
    bt_test_log_capture();
    bt_future_unref(g); /* the results go, and with them the unread error */
    spin();             /* (once the loop has dropped its reference too) */
    ck_assert(bt_test_log_contains("ignored by the caller"));
}
END_TEST

START_TEST(gather_cancel_from_outside_reaches_children)
{
    prod eager, stubborn;
    prod_init(&eager, true);
    prod_init(&stubborn, false);
    bt_future *s = bt_sleep(loop, 100000);
    bt_future *kids[3] = { eager.f, stubborn.f, s };
    bt_future *g = bt_gather(loop, kids, 3, BT_GATHER_FAIL_FAST);
    ck_assert_int_eq(bt_future_cancel(g), 0);
    ck_assert_int_eq(eager.hook_calls, 1);
    ck_assert_int_eq(stubborn.hook_calls, 1);
    ck_assert_int_eq(bt_future_get_state(s), BT_FUTURE_CANCELLED);
    spin();
    /* Not settled before every child has: one is still running. */
    ck_assert(!bt_future_is_settled(g));
    bt_future_set_value(stubborn.f, boxed(1), free);
    bt_test_run_until(loop, g, 2000);
    ck_assert_int_eq(bt_future_get_state(g), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_cancel(g), BT_EALREADY);
    bt_future_unref(g);
}
END_TEST

START_TEST(gather_empty_and_duplicates)
{
    bt_future *g = bt_gather(loop, NULL, 0, BT_GATHER_FAIL_FAST);
    ck_assert_ptr_nonnull(g);
    bt_test_run_until(loop, g, 2000);
    ck_assert_int_eq(bt_future_error(g), 0);
    ck_assert_uint_eq(bt_results_count(bt_future_value(g)), 0);
    bt_future_unref(g);

    prod a;
    prod_init(&a, true);
    bt_future *kids[2] = { a.f, bt_future_ref(a.f) }; /* twice: two references */
    g = bt_gather(loop, kids, 2, BT_GATHER_COLLECT);
    bt_future_set_value(a.f, boxed(3), free);
    bt_test_run_until(loop, g, 2000);
    bt_results *r = bt_future_value(g);
    ck_assert_ptr_eq(bt_results_value(r, 0), bt_results_value(r, 1));
    bt_future_unref(g);
}
END_TEST

START_TEST(bad_arguments)
{
    /* Each failing call takes over what it was given (common.h), so each
     * gets a reference of its own; we keep ours. */
    prod a;
    prod_init(&a, true);
    bt_loop *other = bt_loop_new();
    bt_future *o = bt_future_new(other);
    bt_future *kids[2] = { bt_future_ref(a.f), NULL };
    ck_assert_ptr_null(bt_gather(NULL, kids, 1, BT_GATHER_FAIL_FAST));
    ck_assert_ptr_null(bt_gather(loop, NULL, 2, BT_GATHER_FAIL_FAST));
    kids[0] = bt_future_ref(a.f);
    ck_assert_ptr_null(bt_gather(loop, kids, 2, BT_GATHER_FAIL_FAST));
    bt_future *mixed[2] = { bt_future_ref(a.f), bt_future_ref(o) };
    ck_assert_ptr_null(bt_gather(loop, mixed, 2, BT_GATHER_FAIL_FAST));
    kids[0] = bt_future_ref(a.f);
    ck_assert_ptr_null(bt_gather(loop, kids, 1, (bt_gather_mode)7));
    kids[0] = bt_future_ref(a.f);
    ck_assert_ptr_null(bt_race(loop, kids, 2));
    kids[0] = bt_future_ref(a.f);
    ck_assert_ptr_null(bt_any(NULL, kids, 1));
    ck_assert_ptr_null(bt_timeout(NULL, 10));
    ck_assert_uint_eq(bt_results_count(NULL), 0);
    ck_assert_int_eq(bt_results_error(NULL, 0), BT_EINVAL);
    ck_assert_ptr_null(bt_results_value(NULL, 0));
    ck_assert_ptr_null(bt_results_future(NULL, 0));
    bt_results_free(NULL);
    bt_future_cancel(o);
    bt_future_unref(o);
    bt_test_loop_free_clean(other);
    bt_future_cancel(a.f);
    bt_future_unref(a.f);
}
END_TEST

/* ---- ownership: the futures given are taken over ------------------------ */

static int values_freed;
static void count_free(void *p)
{
    values_freed++;
    free(p);
}

/* A settled future whose value counts its destruction: values_freed goes
 * up once the future is freed, that is once every reference is gone. */
static bt_future *counted(bt_loop *l)
{
    return bt_future_new_value(l, boxed(1), count_free);
}

static bt_future *pass_on(bt_future *src, void *arg)
{
    (void)arg;
    bt_future_error(src);
    return bt_future_new_value(bt_future_loop(src), NULL, NULL);
}

START_TEST(nested_calls_take_over_their_arguments)
{
    /* The one-liners of the docs, with no unref but the outermost: every
     * inner future is freed once the outer one is (no leak), and nothing
     * is reported. */
    values_freed = 0;
    bt_test_log_capture();
    bt_test_log_clear();
    bt_future *f = bt_future_then(
        bt_gather(loop, (bt_future *[]){ counted(loop), counted(loop) }, 2, BT_GATHER_FAIL_FAST),
        pass_on, NULL);
    bt_future *t = bt_timeout(bt_future_after(counted(loop), pass_on, NULL), 100000);
    bt_future *r = bt_race(loop, (bt_future *[]){ counted(loop), bt_sleep(loop, 100000) }, 2);
    bt_future *n = bt_any(loop, (bt_future *[]){ bt_sleep(loop, 100000), counted(loop) }, 2);
    bt_future *all[4] = { f, t, r, n };
    for (int i = 0; i < 4; i++) {
        bt_test_run_until(loop, all[i], 2000);
        ck_assert_int_eq(bt_future_error(all[i]), 0);
    }
    bt_future_unref(f);
    bt_future_unref(t);
    ck_assert_int_eq(*(int *)bt_future_value(r), 1);
    bt_future_unref(r);
    bt_future_unref(n);
    spin();
    ck_assert_int_eq(values_freed, 5); /* r's value too, with r */
    ck_assert_int_eq(bt_test_log_count("dropped while still pending"), 0);
    ck_assert_int_eq(bt_test_log_count("nobody read"), 0);
}
END_TEST

START_TEST(failing_calls_still_take_over_their_arguments)
{
    /* Whatever makes a call fail, every non-NULL future it was given is
     * released, and cancelled if pending; no "dropped while pending" and
     * no "nobody read" is reported, since the mistake is no one's. */
    values_freed = 0;
    bt_test_log_capture();
    bt_test_log_clear();
    bt_loop *other = bt_loop_new();
    prod p[3];
    for (int i = 0; i < 3; i++)
        prod_init(&p[i], true);
    bt_future *err = bt_future_new_error(loop, BT_EIO, "never read");

    /* A NULL child: the others are released. */
    ck_assert_ptr_null(
        bt_gather(loop, (bt_future *[]){ counted(loop), NULL, p[0].f }, 3, BT_GATHER_COLLECT));
    /* No loop. */
    ck_assert_ptr_null(bt_race(NULL, (bt_future *[]){ counted(loop), p[1].f }, 2));
    /* A child of another loop: that one is cancelled too. */
    bt_future *o = bt_future_new(other);
    ck_assert_ptr_null(bt_any(loop, (bt_future *[]){ o, counted(loop), err }, 3));
    /* An unknown mode. */
    ck_assert_ptr_null(bt_gather(loop, (bt_future *[]){ p[2].f }, 1, (bt_gather_mode)7));
    ck_assert_ptr_null(bt_gather(loop, NULL, 3, BT_GATHER_FAIL_FAST)); /* nothing to take */
    ck_assert_ptr_null(bt_timeout(NULL, 10));

    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(p[i].hook_calls, 1);
    spin();
    ck_assert_int_eq(values_freed, 3);
    ck_assert_int_eq(bt_test_log_count("dropped while still pending"), 0);
    ck_assert_int_eq(bt_test_log_count("nobody read"), 0);
    bt_test_loop_free_clean(other);
}
END_TEST

/* ---- race and any --------------------------------------------------------- */

START_TEST(race_first_value_wins_and_cancels_the_rest)
{
    prod p[3];
    for (int i = 0; i < 3; i++)
        prod_init(&p[i], true);
    bt_future *kids[3] = { p[0].f, p[1].f, p[2].f };
    bt_future *r = bt_race(loop, kids, 3);
    bt_future_set_value(p[1].f, boxed(11), free);
    bt_test_run_until(loop, r, 2000);
    ck_assert_int_eq(bt_future_error(r), 0);
    ck_assert_int_eq(*(int *)bt_future_value(r), 11);
    ck_assert_int_eq(p[0].hook_calls, 1);
    ck_assert_int_eq(p[2].hook_calls, 1);
    ck_assert_int_eq(p[1].hook_calls, 0);
    bt_future_unref(r);
}
END_TEST

START_TEST(race_first_error_wins)
{
    bt_future *slow = bt_sleep(loop, 100000);
    prod a;
    prod_init(&a, true);
    bt_future *kids[2] = { bt_future_ref(slow), a.f }; /* slow is read below */
    bt_future *r = bt_race(loop, kids, 2);
    bt_future_set_error(a.f, BT_EHOSTUNREACH, "no route");
    bt_test_run_until(loop, r, 2000);
    ck_assert_int_eq(bt_future_error(r), BT_EHOSTUNREACH);
    ck_assert_str_eq(bt_future_error_message(r), "no route");
    ck_assert_int_eq(bt_future_get_state(slow), BT_FUTURE_CANCELLED);
    bt_future_unref(slow);
    bt_future_unref(r);
}
END_TEST

START_TEST(race_of_sleeps_and_cancel_from_outside)
{
    bt_future *fast = bt_sleep(loop, 1);
    bt_future *slow = bt_sleep(loop, 100000);
    bt_future *kids[2] = { slow, fast };
    bt_future *r = bt_race(loop, kids, 2);
    bt_test_run_until(loop, r, 5000);
    ck_assert_int_eq(bt_future_error(r), 0);
    bt_future_unref(r);

    prod a, b;
    prod_init(&a, true);
    prod_init(&b, true);
    bt_future *k2[2] = { a.f, b.f };
    r = bt_race(loop, k2, 2);
    bt_future_cancel(r);
    ck_assert_int_eq(a.hook_calls, 1);
    ck_assert_int_eq(b.hook_calls, 1);
    bt_test_run_until(loop, r, 2000);
    ck_assert_int_eq(bt_future_get_state(r), BT_FUTURE_CANCELLED);
    bt_future_unref(r);
}
END_TEST

START_TEST(race_and_any_of_nothing)
{
    bt_future *r = bt_race(loop, NULL, 0);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(bt_future_error(r), BT_EINVAL);
    bt_future *a = bt_any(loop, NULL, 0);
    ck_assert_int_eq(bt_future_error(a), BT_EINVAL);
    bt_future_unref(r);
    bt_future_unref(a);
}
END_TEST

START_TEST(any_skips_failures)
{
    prod p[3];
    for (int i = 0; i < 3; i++)
        prod_init(&p[i], true);
    bt_future *kids[3] = { p[0].f, p[1].f, p[2].f };
    bt_future *r = bt_any(loop, kids, 3);
    bt_future_set_error(p[0].f, BT_ECONNREFUSED, "replica 0 down");
    spin();
    ck_assert(!bt_future_is_settled(r));
    bt_future_set_value(p[2].f, boxed(2), free);
    bt_test_run_until(loop, r, 2000);
    ck_assert_int_eq(*(int *)bt_future_value(r), 2);
    ck_assert_int_eq(p[1].hook_calls, 1);
    bt_future_unref(r);
}
END_TEST

START_TEST(any_all_fail)
{
    prod p[2];
    for (int i = 0; i < 2; i++)
        prod_init(&p[i], true);
    bt_future *kids[2] = { p[0].f, p[1].f };
    bt_future *r = bt_any(loop, kids, 2);
    bt_future_set_error(p[1].f, BT_ECONNRESET, "reset");
    bt_future_set_error(p[0].f, BT_ECONNREFUSED, "refused");
    bt_test_log_capture();
    bt_test_run_until(loop, r, 2000);
    ck_assert_int_eq(bt_future_error(r), BT_ECONNRESET);
    ck_assert_ptr_nonnull(strstr(bt_future_error_message(r), "all 2 children failed"));
    bt_future_unref(r);
    ck_assert(!bt_test_log_contains("nobody read"));
}
END_TEST

/* ---- timeout -------------------------------------------------------------------- */

START_TEST(timeout_passes_a_fast_outcome)
{
    prod a;
    prod_init(&a, true);
    bt_future *t = bt_timeout(a.f, 100000);
    bt_loop_call_soon(loop, settle_value_cb, &a);
    bt_test_run_until(loop, t, 2000);
    ck_assert_int_eq(bt_future_error(t), 0);
    ck_assert_int_eq(*(int *)bt_future_value(t), 7);
    ck_assert_int_eq(a.hook_calls, 0);
    bt_future_unref(t);

    prod b;
    prod_init(&b, true);
    t = bt_timeout(b.f, 100000);
    bt_future_set_error(b.f, BT_EACCES, "denied");
    bt_test_run_until(loop, t, 2000);
    ck_assert_int_eq(bt_future_error(t), BT_EACCES);
    ck_assert_str_eq(bt_future_error_message(t), "denied");
    bt_future_unref(t);
}
END_TEST

START_TEST(timeout_expires_and_cancels_inner)
{
    prod a;
    prod_init(&a, true);
    bt_future *t = bt_timeout(a.f, 10);
    bt_test_run_until(loop, t, 5000);
    ck_assert_int_eq(bt_future_error(t), BT_ETIMEDOUT);
    ck_assert_str_eq(bt_future_error_message(t), "timed out after 10 ms");
    ck_assert_int_eq(a.hook_calls, 1);
    bt_future_unref(t);

    /* An inner that cannot stop at once: the timeout waits for it. */
    prod b;
    prod_init(&b, false);
    t = bt_timeout(b.f, 5);
    bt_future *s = bt_sleep(loop, 50);
    bt_test_run_until(loop, s, 5000);
    bt_future_unref(s);
    ck_assert_int_eq(b.hook_calls, 1);
    ck_assert(!bt_future_is_settled(t));
    bt_future_set_value(b.f, boxed(1), free); /* too late: discarded */
    bt_test_run_until(loop, t, 2000);
    ck_assert_int_eq(bt_future_error(t), BT_ETIMEDOUT);
    bt_future_unref(t);
}
END_TEST

static void block_then_settle(void *arg)
{
    /* Hold the loop past the timer's expiry, then complete: the timer and
     * the completion are both due in the same turn. */
    usleep(30 * 1000);
    settle_value_cb(arg);
}

START_TEST(timeout_racing_completion)
{
    for (int round = 0; round < 5; round++) {
        prod a;
        prod_init(&a, true);
        bt_future *t = bt_timeout(a.f, 5);
        bt_loop_call_soon(loop, block_then_settle, &a);
        bt_test_run_until(loop, t, 5000);
        /* Completion was first: it wins, whatever order the two run in. */
        ck_assert_int_eq(bt_future_error(t), 0);
        ck_assert_int_eq(*(int *)bt_future_value(t), 7);
        ck_assert_int_eq(a.hook_calls, 0);
        bt_future_unref(t);
    }
}
END_TEST

START_TEST(timeout_cancel_from_outside)
{
    prod a;
    prod_init(&a, true);
    bt_future *t = bt_timeout(a.f, 100000);
    ck_assert_int_eq(bt_future_cancel(t), 0);
    ck_assert_int_eq(a.hook_calls, 1);
    bt_test_run_until(loop, t, 2000);
    ck_assert_int_eq(bt_future_get_state(t), BT_FUTURE_CANCELLED);
    bt_future_unref(t);
}
END_TEST

START_TEST(cancel_goes_down_to_the_source)
{
    /* gather -> timeout -> sleep: cancelling the top reaches the timer. */
    bt_future *s1 = bt_sleep(loop, 100000);
    bt_future *s2 = bt_sleep(loop, 100000);
    bt_future *t1 = bt_timeout(bt_future_ref(s1), 100000); /* s1, s2 read below */
    bt_future *kids[2] = { t1, bt_future_ref(s2) };
    bt_future *g = bt_gather(loop, kids, 2, BT_GATHER_FAIL_FAST);
    bt_future_cancel(g);
    bt_test_run_until(loop, g, 2000);
    ck_assert_int_eq(bt_future_get_state(g), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_get_state(s1), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_get_state(s2), BT_FUTURE_CANCELLED);
    bt_future_unref(s1);
    bt_future_unref(s2);
    bt_future_unref(g);
}
END_TEST

static bt_test_long_job lj;

static void cancel_when_started(bt_timer *t, void *arg)
{
    if (!atomic_load(&lj.started))
        return;
    bt_timer_stop(t);
    bt_future_cancel(arg);
}

START_TEST(cancel_reaches_a_running_pool_job)
{
    /* gather -> timeout -> a job running on a worker thread. */
    atomic_store(&lj.started, 0);
    atomic_store(&lj.saw_cancel, 0);
    bt_future *job = bt_to_thread(loop, bt_test_long_job_run, &lj);
    bt_future *queued = bt_to_thread(loop, bt_test_long_job_run, &lj);
    bt_future *t = bt_timeout(bt_future_ref(job), 100000); /* job, queued read below */
    bt_future *kids[2] = { t, bt_future_ref(queued) };
    bt_future *g = bt_gather(loop, kids, 2, BT_GATHER_FAIL_FAST);
    bt_timer *tm = bt_timer_new(loop, cancel_when_started, g);
    bt_timer_start(tm, 1, 1);
    bt_test_run_until(loop, g, 15000);
    bt_timer_free(tm);
    ck_assert_int_eq(bt_future_get_state(g), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(atomic_load(&lj.saw_cancel), 1);
    ck_assert_int_eq(bt_future_get_state(job), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_get_state(queued), BT_FUTURE_CANCELLED);
    bt_future_unref(job);
    bt_future_unref(queued);
    bt_future_unref(g);
}
END_TEST

START_TEST(loop_free_with_combinators_pending)
{
    bt_loop *l = bt_loop_new();
    bt_future *s = bt_sleep(l, 100000);
    bt_future *kids[1] = { bt_future_ref(s) }; /* given twice: two references */
    bt_future *g = bt_gather(l, kids, 1, BT_GATHER_FAIL_FAST);
    bt_future *t = bt_timeout(s, 100000);
    bt_test_log_capture();
    bt_loop_free(l);
    ck_assert(bt_test_log_contains("loop freed with"));
    ck_assert_int_eq(bt_future_get_state(g), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_get_state(t), BT_FUTURE_CANCELLED);
    bt_future_unref(g);
    bt_future_unref(t);
}
END_TEST

/* ---- allocation failures ---------------------------------------------------- */

static int fail_after = -1;
static void *failing_malloc(size_t n)
{
    return fail_after-- == 0 ? NULL : malloc(n);
}

/* Every combinator, with the n-th allocation failing for each n: a NULL
 * return or a working future, never a crash, a leak (ASan) or a future
 * left pending (the teardown checks). */
START_TEST(allocation_failure_is_clean)
{
    for (int i = 0; i < 12; i++) {
        prod a, b;
        prod_init(&a, true);
        prod_init(&b, true);
        /* Each call takes over a reference of its own; we keep ours. */
        bt_future *kids[2] = { bt_future_ref(a.f), bt_future_ref(b.f) };
        bt_future *kids2[2] = { bt_future_ref(a.f), bt_future_ref(b.f) };
        bt_set_allocator(failing_malloc, realloc, free);
        fail_after = i;
        bt_future *g = bt_gather(loop, kids, 2, BT_GATHER_COLLECT);
        bt_future *r = bt_race(loop, kids2, 2);
        bt_future *t = bt_timeout(bt_future_ref(a.f), 100000);
        bt_group *grp = bt_group_new(loop);
        int added = grp ? bt_group_add(grp, bt_future_ref(b.f)) : -1;
        bt_semaphore *sem = bt_semaphore_new(loop, 1);
        bt_future *s1 = sem ? bt_semaphore_acquire(sem) : NULL;
        bt_future *s2 = sem ? bt_semaphore_acquire(sem) : NULL;
        fail_after = -1;
        bt_set_allocator(NULL, NULL, NULL);
        (void)added;
        bt_future_set_value(a.f, boxed(1), free);
        bt_future_set_value(b.f, boxed(2), free);
        bt_future *w = grp ? bt_group_wait(grp) : NULL;
        bt_group_free(grp);
        if (s1)
            bt_semaphore_release(sem); /* hands the permit to s2, if queued */
        bt_future *all[5] = { g, r, t, w, s2 };
        for (int k = 0; k < 5; k++) {
            if (all[k] == NULL)
                continue;
            bt_test_run_until(loop, all[k], 2000);
            bt_future_error(all[k]);
        }
        if (s2 && bt_future_get_state(s2) == BT_FUTURE_VALUE)
            bt_semaphore_release(sem);
        bt_semaphore_free(sem);
        for (int k = 0; k < 5; k++)
            bt_future_unref(all[k]);
        bt_future_unref(s1);
        bt_future_unref(a.f);
        bt_future_unref(b.f);
    }
    spin();
}
END_TEST

/* ---- allocations per call ---------------------------------------------------- */

static atomic_int mallocs;
static void *counting_malloc(size_t n)
{
    atomic_fetch_add(&mallocs, 1);
    return malloc(n);
}

/* A gather allocates per call, not per child: one block for the fan and
 * its children (which becomes the results) and one result future, for 10
 * children as for 1,000; a timeout is one block (its future, its state and
 * its timer). The results still come back in order. */
START_TEST(combinators_allocate_per_call_not_per_child)
{
    enum { MANY = 1000 };
    static bt_future *kids[MANY];
    const size_t sizes[2] = { 10, MANY };
    for (int s = 0; s < 2; s++) {
        size_t n = sizes[s];
        for (size_t i = 0; i < n; i++)
            kids[i] = bt_future_new(loop);
        bt_set_allocator(counting_malloc, realloc, free);
        atomic_store(&mallocs, 0);
        bt_future *g = bt_gather(loop, kids, n, BT_GATHER_FAIL_FAST); /* takes them over */
        int made = atomic_load(&mallocs);
        bt_set_allocator(NULL, NULL, NULL);
        ck_assert_ptr_nonnull(g);
        ck_assert_msg(made <= 2, "bt_gather of %zu children made %d allocations", n, made);
        for (size_t i = n; i-- > 0;) /* settled in reverse: the order is the caller's */
            bt_future_set_value(kids[i], (void *)(uintptr_t)(i + 1), NULL);
        bt_test_run_until(loop, g, 2000);
        ck_assert_int_eq(bt_future_error(g), 0);
        bt_results *r = bt_future_value(g);
        ck_assert_uint_eq(bt_results_count(r), n);
        for (size_t i = 0; i < n; i++)
            ck_assert_ptr_eq(bt_results_value(r, i), (void *)(uintptr_t)(i + 1));
        bt_future_unref(g);
    }

    bt_future *inner = bt_future_new(loop);
    bt_set_allocator(counting_malloc, realloc, free);
    atomic_store(&mallocs, 0);
    bt_future *t = bt_timeout(inner, 100000); /* takes it over */
    int made = atomic_load(&mallocs);
    bt_set_allocator(NULL, NULL, NULL);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(made, 1);
    bt_future_set_value(inner, boxed(5), free);
    bt_test_run_until(loop, t, 2000);
    ck_assert_int_eq(*(int *)bt_future_value(t), 5);
    bt_future_unref(t);
}
END_TEST

/* ---- a future dropped while pending ----------------------------------------- */

START_TEST(dropped_pending_future_is_reported)
{
    bt_test_log_capture();
    bt_future *f = bt_sleep(loop, 100000);
    bt_future_unref(f); /* nobody will ever see it settle */
    ck_assert_int_eq(bt_test_log_count("dropped while still pending"), 1);

    /* Not a mistake: someone waits on it, or it was cancelled first. */
    bt_test_log_clear();
    bt_future *g = bt_sleep(loop, 1);
    bt_future *h = bt_timeout(g, 100000); /* takes over g */
    bt_future *c = bt_sleep(loop, 100000);
    bt_future_cancel(c);
    bt_future_unref(c);
    ck_assert_int_eq(bt_test_log_count("dropped while still pending"), 0);
    bt_test_run_until(loop, h, 2000);
    bt_future_unref(h);
    bt_loop_call_soon(loop, stop_cb, loop);
    bt_loop_run(loop);
    bt_loop_free(loop); /* the dropped sleep is cancelled and counted here too */
    ck_assert(bt_test_log_contains("1 of them had been dropped while pending"));
    loop = bt_loop_new();
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("compose");
    TCase *tc = tcase_create("compose");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, BT_TEST_TIMEOUT);
    tcase_add_test(tc, gather_values_in_order);
    tcase_add_test(tc, gather_fail_fast_cancels_siblings);
    tcase_add_test(tc, gather_fail_fast_settles_before_a_running_sibling);
    tcase_add_test(tc, gather_fail_fast_reads_the_other_errors);
    tcase_add_test(tc, gather_fail_fast_child_cancelled_elsewhere);
    tcase_add_test(tc, gather_collect_reports_every_outcome);
    tcase_add_test(tc, gather_collect_unread_error_is_reported);
    tcase_add_test(tc, gather_cancel_from_outside_reaches_children);
    tcase_add_test(tc, gather_empty_and_duplicates);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, nested_calls_take_over_their_arguments);
    tcase_add_test(tc, failing_calls_still_take_over_their_arguments);
    tcase_add_test(tc, race_first_value_wins_and_cancels_the_rest);
    tcase_add_test(tc, race_first_error_wins);
    tcase_add_test(tc, race_of_sleeps_and_cancel_from_outside);
    tcase_add_test(tc, race_and_any_of_nothing);
    tcase_add_test(tc, any_skips_failures);
    tcase_add_test(tc, any_all_fail);
    tcase_add_test(tc, timeout_passes_a_fast_outcome);
    tcase_add_test(tc, timeout_expires_and_cancels_inner);
    tcase_add_test(tc, timeout_racing_completion);
    tcase_add_test(tc, timeout_cancel_from_outside);
    tcase_add_test(tc, cancel_goes_down_to_the_source);
    tcase_add_test(tc, cancel_reaches_a_running_pool_job);
    tcase_add_test(tc, loop_free_with_combinators_pending);
    tcase_add_test(tc, allocation_failure_is_clean);
    tcase_add_test(tc, combinators_allocate_per_call_not_per_child);
    tcase_add_test(tc, dropped_pending_future_is_reported);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(suite)
