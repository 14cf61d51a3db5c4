/* The offload pool: to_thread, lanes, bounds, cancellation, shutdown,
 * submission from other threads, stats. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <baton/pool.h>

#include "harness.h"

static bt_loop *loop;

static void setup(void) { loop = bt_loop_new(); ck_assert_ptr_nonnull(loop); }
static void teardown(void) { bt_test_loop_free_clean(loop); }

static int square_job(bt_job *job, void *arg)
{
    long *v = malloc(sizeof *v);
    *v = (long)(intptr_t)arg * (long)(intptr_t)arg;
    bt_job_set_value(job, v, free);
    return 0;
}

START_TEST(to_thread_value)
{
    bt_future *f = bt_to_thread(loop, square_job, (void *)(intptr_t)7);
    ck_assert_ptr_nonnull(f);
    bt_test_run_until(loop, f, 5000);
    ck_assert_int_eq(bt_future_error(f), 0);
    ck_assert_int_eq(*(long *)bt_future_value(f), 49);
    bt_future_unref(f);
}
END_TEST

static Suite *pool_suite(void)
{
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("basic");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, BT_TEST_TIMEOUT);
    tcase_add_test(tc, to_thread_value);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(pool_suite)
