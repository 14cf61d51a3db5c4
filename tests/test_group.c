/* Task groups: success, the first failure cancelling the rest (observed
 * through the children's cancel hooks), the group waiting for a child that
 * is still running when a sibling fails, several failures counted,
 * cancellation from outside, the deadline, an empty group, late adds, and
 * the loop freed under an open group. */
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

static void spin(void)
{
    bt_future *s = bt_sleep(loop, 5);
    bt_test_run_until(loop, s, 2000);
    bt_future_unref(s);
}

START_TEST(all_children_succeed)
{
    bt_group *g = bt_group_new(loop);
    ck_assert_ptr_nonnull(g);
    bt_future *kids[3];
    for (int i = 0; i < 3; i++) {
        kids[i] = bt_sleep(loop, (uint64_t)(1 + i));
        ck_assert_int_eq(bt_group_add(g, bt_future_ref(kids[i])), 0); /* read below */
    }
    ck_assert_uint_eq(bt_group_pending(g), 3);
    bt_future *w = bt_group_wait(g);
    bt_test_run_until(loop, w, 5000);
    ck_assert_int_eq(bt_future_error(w), 0);
    ck_assert_uint_eq(bt_group_pending(g), 0);
    ck_assert_uint_eq(bt_group_failed(g), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(bt_future_get_state(kids[i]), BT_FUTURE_VALUE);
        bt_future_unref(kids[i]);
    }
    /* Adding to a settled group is refused and the child cancelled. */
    bt_future *late = bt_sleep(loop, 100000);
    ck_assert_int_eq(bt_group_add(g, bt_future_ref(late)), BT_ESHUTDOWN);
    ck_assert_int_eq(bt_future_get_state(late), BT_FUTURE_CANCELLED);
    bt_future_unref(late);
    bt_future_unref(w);
    bt_group_free(g);
}
END_TEST

START_TEST(first_failure_cancels_the_rest_and_waits_for_them)
{
    bt_group *g = bt_group_new(loop);
    prod ok, running, bad, idle;
    prod_init(&ok, true);
    prod_init(&running, false); /* mid-job: cannot stop at once */
    prod_init(&bad, true);
    prod_init(&idle, true);
    prod *all[4] = { &ok, &running, &bad, &idle };
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(bt_group_add(g, bt_future_ref(all[i]->f)), 0); /* read below */
    bt_future *w = bt_group_wait(g);
    bt_group_free(g); /* the group lives on until its future settles */
    bt_future_set_value(ok.f, NULL, NULL);
    bt_future_set_error(bad.f, BT_ESQL, "relation \"users\" does not exist");
    spin();
    ck_assert_int_eq(running.hook_calls, 1);
    ck_assert_int_eq(idle.hook_calls, 1);
    ck_assert_int_eq(ok.hook_calls, 0);
    ck_assert_int_eq(bt_future_get_state(idle.f), BT_FUTURE_CANCELLED);
    /* One child is still running: the group has not settled. */
    ck_assert(!bt_future_is_settled(w));
    bt_future_set_value(running.f, NULL, NULL);
    bt_test_run_until(loop, w, 2000);
    ck_assert_int_eq(bt_future_error(w), BT_ESQL);
    ck_assert_str_eq(bt_future_error_message(w), "relation \"users\" does not exist");
    ck_assert_int_eq(bt_future_get_state(running.f), BT_FUTURE_CANCELLED);
    for (int i = 0; i < 4; i++)
        bt_future_unref(all[i]->f);
    bt_future_unref(w);
}
END_TEST

/* The real "mid-offload" child: a pool job that runs until it is told to
 * stop (tests/harness.h). */
static bt_test_long_job lj;

static void fail_when_started(bt_timer *t, void *arg)
{
    prod *bad = arg;
    if (!atomic_load(&lj.started))
        return; /* poll again on the next tick */
    bt_timer_stop(t);
    bt_future_set_error(bad->f, BT_EPROTO, "bad reply");
}

START_TEST(failure_while_a_sibling_is_mid_offload)
{
    atomic_store(&lj.started, 0);
    atomic_store(&lj.saw_cancel, 0);
    bt_group *g = bt_group_new(loop);
    bt_future *job = bt_to_thread(loop, bt_test_long_job_run, &lj);
    ck_assert_ptr_nonnull(job);
    prod bad;
    prod_init(&bad, true);
    bt_group_add(g, bt_future_ref(job)); /* read below */
    bt_group_add(g, bad.f);
    bt_future *w = bt_group_wait(g);
    bt_group_free(g);
    /* Fail the sibling once the job is surely running on a worker. */
    bt_timer *t = bt_timer_new(loop, fail_when_started, &bad);
    bt_timer_start(t, 1, 1);
    bt_test_run_until(loop, w, 15000);
    bt_timer_free(t);
    ck_assert_int_eq(bt_future_error(w), BT_EPROTO);
    /* The group settled only after the job had returned, and the job
     * returned because the cancellation reached it on its thread. */
    ck_assert_int_eq(atomic_load(&lj.saw_cancel), 1);
    ck_assert_int_eq(bt_future_get_state(job), BT_FUTURE_CANCELLED);
    bt_future_unref(job);
    bt_future_unref(w);
}
END_TEST

START_TEST(several_failures_are_counted)
{
    bt_group *g = bt_group_new(loop);
    prod a, b, c;
    prod_init(&a, false);
    prod_init(&b, false);
    prod_init(&c, false);
    bt_group_add(g, a.f);
    bt_group_add(g, b.f);
    bt_group_add(g, c.f);
    bt_future *w = bt_group_wait(g);
    bt_future_set_error(b.f, BT_EIO, "first");
    bt_future_set_error(a.f, BT_EPIPE, "second");
    bt_future_set_error(c.f, BT_EPIPE, "third");
    bt_test_log_capture();
    bt_test_run_until(loop, w, 2000);
    ck_assert_int_eq(bt_future_error(w), BT_EIO);
    ck_assert_str_eq(bt_future_error_message(w), "first (and 2 other child failures)");
    ck_assert_uint_eq(bt_group_failed(g), 3);
    ck_assert(!bt_test_log_contains("nobody read"));
    bt_future_unref(w);
    bt_group_free(g);
}
END_TEST

START_TEST(cancel_from_outside)
{
    for (int how = 0; how < 2; how++) {
        bt_group *g = bt_group_new(loop);
        prod a, b;
        prod_init(&a, true);
        prod_init(&b, false);
        bt_group_add(g, bt_future_ref(a.f)); /* a.f is added again below */
        bt_group_add(g, b.f);
        bt_future *w = bt_group_wait(g);
        if (how == 0)
            ck_assert_int_eq(bt_group_cancel(g), 0);
        else
            ck_assert_int_eq(bt_future_cancel(w), 0);
        ck_assert_int_eq(a.hook_calls, 1);
        ck_assert_int_eq(b.hook_calls, 1);
        spin();
        ck_assert(!bt_future_is_settled(w));
        ck_assert_int_eq(bt_group_add(g, bt_future_ref(a.f)), BT_ESHUTDOWN);
        bt_future_set_cancelled(b.f);
        bt_test_run_until(loop, w, 2000);
        ck_assert_int_eq(bt_future_get_state(w), BT_FUTURE_CANCELLED);
        ck_assert_int_eq(bt_group_cancel(g), BT_EALREADY);
        bt_future_unref(a.f);
        bt_future_unref(w);
        bt_group_free(g);
    }
}
END_TEST

START_TEST(a_child_cancelled_elsewhere_does_not_fail_the_group)
{
    bt_group *g = bt_group_new(loop);
    prod a;
    prod_init(&a, true);
    bt_future *s = bt_sleep(loop, 1);
    bt_group_add(g, a.f);
    bt_group_add(g, bt_future_ref(s)); /* read below */
    bt_future_cancel(a.f);
    bt_future *w = bt_group_wait(g);
    bt_test_run_until(loop, w, 5000);
    ck_assert_int_eq(bt_future_error(w), 0);
    ck_assert_int_eq(bt_future_get_state(s), BT_FUTURE_VALUE);
    bt_future_unref(s);
    bt_future_unref(w);
    bt_group_free(g);
}
END_TEST

START_TEST(deadline)
{
    bt_group *g = bt_group_new(loop);
    bt_future *s1 = bt_sleep(loop, 100000);
    bt_future *s2 = bt_sleep(loop, 100000);
    bt_group_add(g, bt_future_ref(s1)); /* s1, s2 read below */
    bt_group_add(g, bt_future_ref(s2));
    ck_assert_int_eq(bt_group_set_deadline(g, 10), 0);
    bt_future *w = bt_group_wait(g);
    bt_test_run_until(loop, w, 5000);
    ck_assert_int_eq(bt_future_error(w), BT_ETIMEDOUT);
    ck_assert_str_eq(bt_future_error_message(w), "task group deadline of 10 ms passed");
    ck_assert_int_eq(bt_future_get_state(s1), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_get_state(s2), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_group_set_deadline(g, 10), BT_EALREADY);
    bt_future_unref(s1);
    bt_future_unref(s2);
    bt_future_unref(w);
    bt_group_free(g);

    /* A deadline that is not reached changes nothing. */
    g = bt_group_new(loop);
    bt_future *quick = bt_sleep(loop, 1);
    bt_group_add(g, quick);
    bt_group_set_deadline(g, 100000);
    w = bt_group_wait(g);
    bt_test_run_until(loop, w, 5000);
    ck_assert_int_eq(bt_future_error(w), 0);
    bt_future_unref(w);
    bt_group_free(g);
}
END_TEST

START_TEST(empty_group)
{
    bt_group *g = bt_group_new(loop);
    bt_future *w = bt_group_wait(g);
    bt_test_run_until(loop, w, 2000);
    ck_assert_int_eq(bt_future_error(w), 0);
    bt_future *w2 = bt_group_wait(g);
    ck_assert_ptr_eq(w, w2);
    bt_future_unref(w2);
    bt_future_unref(w);
    bt_group_free(g);

    /* Freed without a wait: settles on its own, nobody needs to look. */
    g = bt_group_new(loop);
    bt_future *s = bt_sleep(loop, 1);
    bt_group_add(g, bt_future_ref(s)); /* we wait on it below */
    bt_group_free(g);
    bt_test_run_until(loop, s, 2000);
    bt_future_unref(s);
}
END_TEST

static void add_more(bt_future *f, void *arg)
{
    (void)f;
    bt_group *g = arg;
    ck_assert_int_eq(bt_group_add(g, bt_sleep(loop, 1)), 0);
}

START_TEST(children_added_while_waiting)
{
    bt_group *g = bt_group_new(loop);
    bt_future *s = bt_sleep(loop, 1);
    bt_future_add_callback(s, add_more, g); /* runs before the group's own */
    bt_group_add(g, s);
    bt_future *w = bt_group_wait(g);
    bt_test_run_until(loop, w, 5000);
    ck_assert_int_eq(bt_future_error(w), 0);
    ck_assert_uint_eq(bt_group_pending(g), 0);
    bt_future_unref(w);
    bt_group_free(g);
}
END_TEST

START_TEST(loop_freed_under_an_open_group)
{
    bt_loop *l = bt_loop_new();
    bt_group *g = bt_group_new(l);
    bt_future *s = bt_sleep(l, 100000);
    bt_group_add(g, bt_future_ref(s)); /* read below */
    bt_group_set_deadline(g, 100000);
    bt_future *w = bt_group_wait(g);
    bt_test_loop_free_clean(l); /* the group's closer cancelled it in time */
    ck_assert_int_eq(bt_future_get_state(w), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_get_state(s), BT_FUTURE_CANCELLED);
    bt_group_free(g); /* after the loop: touches nothing of it */
    bt_future_unref(s);
    bt_future_unref(w);

    /* Never waited on, handle kept: the closer still closes it. */
    l = bt_loop_new();
    g = bt_group_new(l);
    bt_test_loop_free_clean(l);
    bt_group_free(g);
}
END_TEST

START_TEST(null_arguments)
{
    ck_assert_ptr_null(bt_group_new(NULL));
    ck_assert_int_eq(bt_group_add(NULL, NULL), BT_EINVAL);
    bt_group *g = bt_group_new(loop);
    ck_assert_int_eq(bt_group_add(g, NULL), BT_EINVAL);
    bt_loop *other = bt_loop_new();
    bt_future *o = bt_sleep(other, 1);
    ck_assert_int_eq(bt_group_add(g, o), BT_EINVAL); /* took o over: cancelled it */
    bt_test_loop_free_clean(other);
    ck_assert_ptr_null(bt_group_wait(NULL));
    ck_assert_int_eq(bt_group_cancel(NULL), BT_EINVAL);
    ck_assert_int_eq(bt_group_set_deadline(NULL, 1), BT_EINVAL);
    ck_assert_uint_eq(bt_group_pending(NULL), 0);
    bt_group_free(NULL);
    bt_group_free(g);
    spin();
}
END_TEST

static int values_freed;
static void count_free(void *p)
{
    (void)p;
    values_freed++;
}

START_TEST(add_takes_over_the_child)
{
    /* bt_group_add takes over the child (common.h): added as a one-liner,
     * it is freed with the group; refused, it is released at once,
     * cancelled if pending, with nothing reported as a mistake. */
    values_freed = 0;
    bt_test_log_capture();
    bt_test_log_clear();
    bt_group *g = bt_group_new(loop);
    ck_assert_int_eq(bt_group_add(g, bt_future_new_value(loop, NULL, count_free)), 0);
    ck_assert_int_eq(bt_group_add(g, bt_sleep(loop, 1)), 0);
    bt_future *w = bt_group_wait(g);
    bt_test_run_until(loop, w, 5000);
    ck_assert_int_eq(bt_future_error(w), 0);
    bt_future_unref(w);

    /* Refused: settled (with a value, with an unread error) or pending. */
    prod p;
    prod_init(&p, true);
    ck_assert_int_eq(bt_group_add(g, bt_future_new_value(loop, NULL, count_free)), BT_ESHUTDOWN);
    ck_assert_int_eq(bt_group_add(g, bt_future_new_error(loop, BT_EIO, "x")), BT_ESHUTDOWN);
    ck_assert_int_eq(bt_group_add(g, p.f), BT_ESHUTDOWN);
    ck_assert_int_eq(p.hook_calls, 1);
    ck_assert_int_eq(bt_group_add(NULL, bt_future_new_value(loop, NULL, count_free)), BT_EINVAL);
    bt_group_free(g);
    spin();
    ck_assert_int_eq(values_freed, 3);
    ck_assert_int_eq(bt_test_log_count("nobody read"), 0);
    ck_assert_int_eq(bt_test_log_count("dropped while still pending"), 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("group");
    TCase *tc = tcase_create("group");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, BT_TEST_TIMEOUT);
    tcase_add_test(tc, all_children_succeed);
    tcase_add_test(tc, first_failure_cancels_the_rest_and_waits_for_them);
    tcase_add_test(tc, failure_while_a_sibling_is_mid_offload);
    tcase_add_test(tc, several_failures_are_counted);
    tcase_add_test(tc, cancel_from_outside);
    tcase_add_test(tc, a_child_cancelled_elsewhere_does_not_fail_the_group);
    tcase_add_test(tc, deadline);
    tcase_add_test(tc, empty_group);
    tcase_add_test(tc, children_added_while_waiting);
    tcase_add_test(tc, loop_freed_under_an_open_group);
    tcase_add_test(tc, null_arguments);
    tcase_add_test(tc, add_takes_over_the_child);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(suite)
