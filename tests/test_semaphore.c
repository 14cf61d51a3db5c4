/* The semaphore: permits granted in FIFO order, a cancelled waiter leaving
 * the queue without a permit, try_acquire, over-release refused, the
 * run idiom bounding concurrency, freeing with waiters, bad arguments. */
#include <stdlib.h>
#include <string.h>

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

static void stop_cb(void *arg)
{
    bt_loop_stop(arg);
}

static void spin(void)
{
    bt_future *s = bt_sleep(loop, 5);
    bt_test_run_until(loop, s, 2000);
    bt_future_unref(s);
}

typedef struct {
    int order[16];
    int n;
} log_t;

typedef struct {
    log_t *log;
    int id;
} tag;

static void granted(bt_future *f, void *arg)
{
    tag *t = arg;
    if (bt_future_get_state(f) == BT_FUTURE_VALUE)
        t->log->order[t->log->n++] = t->id;
}

START_TEST(fifo_order)
{
    bt_semaphore *s = bt_semaphore_new(loop, 2);
    ck_assert_ptr_nonnull(s);
    bt_future *a = bt_semaphore_acquire(s);
    bt_future *b = bt_semaphore_acquire(s);
    ck_assert_int_eq(bt_future_get_state(a), BT_FUTURE_VALUE);
    ck_assert_int_eq(bt_future_get_state(b), BT_FUTURE_VALUE);
    ck_assert_uint_eq(bt_semaphore_available(s), 0);
    log_t lg = { { 0 }, 0 };
    tag tags[5];
    bt_future *w[5];
    for (int i = 0; i < 5; i++) {
        tags[i] = (tag){ &lg, i };
        w[i] = bt_semaphore_acquire(s);
        ck_assert_int_eq(bt_future_get_state(w[i]), BT_FUTURE_PENDING);
        bt_future_add_callback(w[i], granted, &tags[i]);
    }
    ck_assert_uint_eq(bt_semaphore_waiting(s), 5);
    ck_assert_int_eq(bt_semaphore_try_acquire(s), BT_EAGAIN);
    /* Each release hands its permit to the oldest waiter. */
    for (int i = 0; i < 7; i++)
        ck_assert_int_eq(bt_semaphore_release(s), 0);
    spin();
    ck_assert_int_eq(lg.n, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(lg.order[i], i);
    ck_assert_uint_eq(bt_semaphore_available(s), 2);
    ck_assert_int_eq(bt_semaphore_release(s), BT_ERANGE); /* none held */
    for (int i = 0; i < 5; i++)
        bt_future_unref(w[i]);
    bt_future_unref(a);
    bt_future_unref(b);
    bt_semaphore_free(s);
}
END_TEST

START_TEST(cancelled_waiter_leaves_without_a_permit)
{
    bt_semaphore *s = bt_semaphore_new(loop, 1);
    ck_assert_int_eq(bt_semaphore_try_acquire(s), 0);
    bt_future *w1 = bt_semaphore_acquire(s);
    bt_future *w2 = bt_semaphore_acquire(s);
    bt_future *w3 = bt_semaphore_acquire(s);
    ck_assert_uint_eq(bt_semaphore_waiting(s), 3);
    ck_assert_int_eq(bt_future_cancel(w2), 0);
    ck_assert_int_eq(bt_future_get_state(w2), BT_FUTURE_CANCELLED);
    ck_assert_uint_eq(bt_semaphore_waiting(s), 2);
    bt_semaphore_release(s);
    ck_assert_int_eq(bt_future_get_state(w1), BT_FUTURE_VALUE);
    ck_assert_int_eq(bt_future_get_state(w3), BT_FUTURE_PENDING);
    bt_semaphore_release(s);
    ck_assert_int_eq(bt_future_get_state(w3), BT_FUTURE_VALUE);
    /* A granted permit cannot be lost to a late cancel. */
    ck_assert_int_eq(bt_future_cancel(w3), BT_EALREADY);
    bt_semaphore_release(s);
    ck_assert_uint_eq(bt_semaphore_available(s), 1);
    ck_assert_uint_eq(bt_semaphore_waiting(s), 0);
    spin();
    bt_future_unref(w1);
    bt_future_unref(w2);
    bt_future_unref(w3);
    bt_semaphore_free(s);
}
END_TEST

typedef struct {
    int running, max_running, done;
} gauge;

static gauge g_gauge;

static void work_done(bt_future *f, void *arg)
{
    (void)f;
    (void)arg;
    g_gauge.running--;
    g_gauge.done++;
}

static bt_future *one_request(bt_loop *l, void *arg)
{
    (void)arg;
    if (++g_gauge.running > g_gauge.max_running)
        g_gauge.max_running = g_gauge.running;
    bt_future *f = bt_sleep(l, 2);
    bt_future_add_callback(f, work_done, NULL);
    return f;
}

START_TEST(run_bounds_concurrency)
{
    memset(&g_gauge, 0, sizeof g_gauge);
    bt_semaphore *s = bt_semaphore_new(loop, 3);
    bt_future *all[20];
    for (int i = 0; i < 20; i++) {
        all[i] = bt_semaphore_run(s, one_request, NULL);
        ck_assert_ptr_nonnull(all[i]);
    }
    bt_future *g = bt_gather(loop, all, 20, BT_GATHER_FAIL_FAST); /* takes over all[] */
    bt_test_run_until(loop, g, 10000);
    ck_assert_int_eq(bt_future_error(g), 0);
    ck_assert_int_eq(g_gauge.done, 20);
    ck_assert_int_eq(g_gauge.max_running, 3);
    ck_assert_uint_eq(bt_semaphore_available(s), 3);
    bt_future_unref(g);
    bt_semaphore_free(s);
}
END_TEST

static bt_future *must_not_run(bt_loop *l, void *arg)
{
    (void)l;
    (void)arg;
    ck_abort_msg("a cancelled run called its function");
    return NULL;
}

static bt_future *fails(bt_loop *l, void *arg)
{
    (void)arg;
    return bt_future_new_error(l, BT_EIO, "backend down");
}

START_TEST(run_cancel_and_failure)
{
    bt_semaphore *s = bt_semaphore_new(loop, 1);
    ck_assert_int_eq(bt_semaphore_try_acquire(s), 0);
    bt_future *r = bt_semaphore_run(s, must_not_run, NULL);
    ck_assert_uint_eq(bt_semaphore_waiting(s), 1);
    bt_future_cancel(r);
    ck_assert_uint_eq(bt_semaphore_waiting(s), 0);
    bt_test_run_until(loop, r, 2000);
    ck_assert_int_eq(bt_future_get_state(r), BT_FUTURE_CANCELLED);
    bt_future_unref(r);
    bt_semaphore_release(s);

    /* The permit comes back when the work fails, too. */
    r = bt_semaphore_run(s, fails, NULL);
    bt_test_run_until(loop, r, 2000);
    ck_assert_int_eq(bt_future_error(r), BT_EIO);
    ck_assert_uint_eq(bt_semaphore_available(s), 1);
    bt_future_unref(r);

    /* Cancelling a running one cancels its work and releases. */
    memset(&g_gauge, 0, sizeof g_gauge);
    r = bt_semaphore_run(s, one_request, NULL);
    bt_loop_call_soon(loop, stop_cb, loop); /* runs after the grant */
    bt_loop_run(loop);
    ck_assert_int_eq(g_gauge.running, 1);
    ck_assert_uint_eq(bt_semaphore_available(s), 0);
    bt_future_cancel(r);
    bt_test_run_until(loop, r, 2000);
    ck_assert_int_eq(bt_future_get_state(r), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(g_gauge.running, 0);
    ck_assert_uint_eq(bt_semaphore_available(s), 1);
    bt_future_unref(r);
    bt_semaphore_free(s);
}
END_TEST

START_TEST(free_with_waiters_and_loop_first)
{
    bt_semaphore *s = bt_semaphore_new(loop, 1);
    bt_future *a = bt_semaphore_acquire(s);
    bt_future *w = bt_semaphore_acquire(s);
    bt_semaphore_free(s);
    ck_assert_int_eq(bt_future_get_state(w), BT_FUTURE_CANCELLED);
    bt_future_unref(a);
    bt_future_unref(w);

    bt_loop *l = bt_loop_new();
    s = bt_semaphore_new(l, 1);
    a = bt_semaphore_acquire(s);
    w = bt_semaphore_acquire(s);
    bt_test_log_capture();
    bt_loop_free(l); /* the waiter is cancelled and leaves the queue */
    ck_assert_int_eq(bt_future_get_state(w), BT_FUTURE_CANCELLED);
    ck_assert_uint_eq(bt_semaphore_waiting(s), 0);
    bt_semaphore_free(s);
    bt_future_unref(a);
    bt_future_unref(w);
}
END_TEST

START_TEST(bad_arguments)
{
    ck_assert_ptr_null(bt_semaphore_new(NULL, 1));
    ck_assert_ptr_null(bt_semaphore_new(loop, 0));
    ck_assert_ptr_null(bt_semaphore_acquire(NULL));
    ck_assert_int_eq(bt_semaphore_try_acquire(NULL), BT_EINVAL);
    ck_assert_int_eq(bt_semaphore_release(NULL), BT_EINVAL);
    ck_assert_ptr_null(bt_semaphore_run(NULL, fails, NULL));
    bt_semaphore *s = bt_semaphore_new(loop, 1);
    ck_assert_ptr_null(bt_semaphore_run(s, NULL, NULL));
    ck_assert_uint_eq(bt_semaphore_available(s), 1);
    ck_assert_int_eq(bt_semaphore_release(s), BT_ERANGE);
    bt_semaphore_free(s);
    bt_semaphore_free(NULL);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("semaphore");
    TCase *tc = tcase_create("semaphore");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, BT_TEST_TIMEOUT);
    tcase_add_test(tc, fifo_order);
    tcase_add_test(tc, cancelled_waiter_leaves_without_a_permit);
    tcase_add_test(tc, run_bounds_concurrency);
    tcase_add_test(tc, run_cancel_and_failure);
    tcase_add_test(tc, free_with_waiters_and_loop_first);
    tcase_add_test(tc, bad_arguments);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(suite)
