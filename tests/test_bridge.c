/* The sync bridge: a plain thread calls into a running loop and waits,
 * with a timeout; from the loop thread it refuses instead of hanging. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <baton/bridge.h>
#include <baton/pool.h>

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

static bt_future *give_value(bt_loop *lp, void *arg)
{
    int *v = malloc(sizeof *v);
    *v = (int)(intptr_t)arg;
    return bt_future_new_value(lp, v, free);
}

static bt_future *give_error(bt_loop *lp, void *arg)
{
    (void)arg;
    return bt_future_new_error(lp, BT_ESQL, "relation \"%s\" does not exist", "users");
}

static bt_future *give_null(bt_loop *lp, void *arg)
{
    (void)lp;
    (void)arg;
    return NULL;
}

/* A future nobody settles: only the bridge's timeout cancels it. */
static bt_future *never;
static bt_future *give_never(bt_loop *lp, void *arg)
{
    (void)arg;
    never = bt_future_new(lp);
    return bt_future_ref(never);
}

static int slow_square(bt_job *job, void *arg)
{
    long *v = malloc(sizeof *v);
    *v = (long)(intptr_t)arg * (long)(intptr_t)arg;
    bt_job_set_value(job, v, free);
    return 0;
}

/* Through the pool: the loop offloads, the bridge waits for it all. */
static bt_future *give_offloaded(bt_loop *lp, void *arg)
{
    return bt_to_cpu(lp, slow_square, arg);
}

typedef struct {
    bt_main_fn fn;
    void *arg;
    uint64_t timeout_ms;
    int rc;
    bt_bridge_result res;
} call_args;

static void *caller(void *arg)
{
    call_args *c = arg;
    c->rc = bt_bridge_call(loop, c->fn, c->arg, c->timeout_ms, &c->res);
    bt_loop_stop(loop);
    return NULL;
}

/* Run the loop while a plain thread makes the call. */
static void call_from_thread(call_args *c)
{
    pthread_t th;
    pthread_create(&th, NULL, caller, c);
    bt_loop_run(loop);
    pthread_join(th, NULL);
}

START_TEST(value_from_a_thread)
{
    call_args c = { give_value, (void *)(intptr_t)42, 10000, -1, BT_SIZED(bt_bridge_result) };
    call_from_thread(&c);
    ck_assert_int_eq(c.rc, 0);
    ck_assert_int_eq(*(int *)c.res.value, 42);
    ck_assert_ptr_eq((void *)c.res.dtor, (void *)free);
    ck_assert_ptr_null(c.res.message);
    bt_bridge_result_clear(&c.res);
    ck_assert_ptr_null(c.res.value);
}
END_TEST

START_TEST(error_from_a_thread)
{
    call_args c = { give_error, NULL, 10000, -1, BT_SIZED(bt_bridge_result) };
    call_from_thread(&c);
    ck_assert_int_eq(c.rc, BT_ESQL);
    ck_assert_str_eq(c.res.message, "relation \"users\" does not exist");
    ck_assert_ptr_null(c.res.value);
    bt_bridge_result_clear(&c.res);
}
END_TEST

START_TEST(offloaded_job_through_the_bridge)
{
    call_args c = { give_offloaded, (void *)(intptr_t)12, 0, -1, BT_SIZED(bt_bridge_result) };
    call_from_thread(&c);
    ck_assert_int_eq(c.rc, 0);
    ck_assert_int_eq(*(long *)c.res.value, 144);
    bt_bridge_result_clear(&c.res);
}
END_TEST

START_TEST(timeout_cancels_the_future)
{
    call_args c = { give_never, NULL, 50, -1, BT_SIZED(bt_bridge_result) };
    call_from_thread(&c);
    ck_assert_int_eq(c.rc, BT_ETIMEDOUT);
    ck_assert_ptr_nonnull(c.res.message);
    bt_bridge_result_clear(&c.res);
    /* The cancel was posted to the loop: run until it lands. */
    bt_test_run_until(loop, never, 10000);
    ck_assert_int_eq(bt_future_get_state(never), BT_FUTURE_CANCELLED);
    bt_future_unref(never);
}
END_TEST

START_TEST(null_future_is_an_error)
{
    call_args c = { give_null, NULL, 10000, -1, BT_SIZED(bt_bridge_result) };
    call_from_thread(&c);
    ck_assert_int_eq(c.rc, BT_EINVAL);
    ck_assert_ptr_nonnull(c.res.message);
    bt_bridge_result_clear(&c.res);
}
END_TEST

/* From the loop's own thread: an error at once, never a deadlock. */
static int loop_thread_rc;
static void call_on_loop(void *arg)
{
    (void)arg;
    bt_bridge_result r = BT_SIZED(bt_bridge_result);
    loop_thread_rc = bt_bridge_call(loop, give_value, (void *)1, 0, &r);
    ck_assert_ptr_nonnull(r.message);
    bt_bridge_result_clear(&r);
    bt_loop_stop(loop);
}

START_TEST(from_the_loop_thread_refuses)
{
    bt_loop_call_soon(loop, call_on_loop, NULL);
    bt_loop_run(loop);
    ck_assert_int_eq(loop_thread_rc, BT_EDEADLK);
    /* Before the loop ever ran, the creating thread is its thread too. */
    bt_bridge_result r = BT_SIZED(bt_bridge_result);
    ck_assert_int_eq(bt_bridge_call(loop, give_value, NULL, 10, &r), BT_EDEADLK);
    bt_bridge_result_clear(&r);
}
END_TEST

START_TEST(bad_arguments)
{
    bt_bridge_result r = BT_SIZED(bt_bridge_result);
    ck_assert_int_eq(bt_bridge_call(NULL, give_value, NULL, 10, &r), BT_EINVAL);
    ck_assert_int_eq(bt_bridge_call(loop, NULL, NULL, 10, &r), BT_EINVAL);
    ck_assert_int_eq(bt_bridge_call(loop, give_value, NULL, 10, NULL), BT_EINVAL);
    bt_bridge_result_clear(NULL);
}
END_TEST

/* Many plain threads call at once. */
#define CALLERS 8
static _Atomic int callers_done;
static void *many_caller(void *arg)
{
    (void)arg;
    long ok = 0;
    for (int i = 0; i < 50; i++) {
        bt_bridge_result r = BT_SIZED(bt_bridge_result);
        if (bt_bridge_call(loop, give_value, (void *)(intptr_t)i, 10000, &r) == 0 &&
            *(int *)r.value == i)
            ok++;
        bt_bridge_result_clear(&r);
    }
    if (atomic_fetch_add(&callers_done, 1) == CALLERS - 1)
        bt_loop_stop(loop);
    return (void *)ok;
}

START_TEST(many_threads_call_at_once)
{
    pthread_t th[CALLERS];
    for (int i = 0; i < CALLERS; i++)
        pthread_create(&th[i], NULL, many_caller, NULL);
    bt_loop_run(loop);
    for (int i = 0; i < CALLERS; i++) {
        void *ok;
        pthread_join(th[i], &ok);
        ck_assert_int_eq((long)ok, 50);
    }
}
END_TEST

/* A job that waits (no timeout) for its own loop gives up when it is
 * cancelled, so neither cancellation nor bt_loop_free hangs. */
static _Atomic int bridged_rc = 1;
static _Atomic int bridging;

static bt_future *give_never_plain(bt_loop *lp, void *arg)
{
    (void)arg;
    return bt_future_new(lp); /* never settled: cancelled by the bridge */
}

static int bridging_job(bt_job *job, void *arg)
{
    (void)arg;
    bt_bridge_result r = BT_SIZED(bt_bridge_result);
    atomic_store(&bridging, 1);
    int rc = bt_bridge_call(bt_job_loop(job), give_never_plain, NULL, 0, &r);
    bt_bridge_result_clear(&r);
    atomic_store(&bridged_rc, rc);
    return rc;
}

static void cancel_when_bridging(bt_timer *t, void *arg)
{
    if (atomic_load(&bridging)) {
        bt_future_cancel(arg);
        bt_timer_stop(t);
    }
}

START_TEST(job_waiting_on_its_loop_is_cancellable)
{
    bt_future *f = bt_to_thread(loop, bridging_job, NULL);
    bt_timer *t = bt_timer_new(loop, cancel_when_bridging, f);
    bt_timer_start(t, 1, 1);
    bt_test_run_until(loop, f, 10000);
    bt_timer_free(t);
    ck_assert_int_eq(bt_future_get_state(f), BT_FUTURE_CANCELLED);
    bt_future_unref(f);
    /* The job has no arg, so its future settled at the cancel (pool.h:
     * abandoned); the job itself gives up its wait soon after. */
    for (int i = 0; i < 10000 && atomic_load(&bridged_rc) == 1; i++) {
        bt_future *z = bt_sleep(loop, 1);
        bt_test_run_until(loop, z, 10000);
        bt_future_unref(z);
    }
    ck_assert_int_eq(atomic_load(&bridged_rc), BT_ECANCELED);
}
END_TEST

START_TEST(loop_free_while_a_job_waits_on_it)
{
    bt_loop *lp = bt_loop_new();
    bt_future *f = bt_to_thread(lp, bridging_job, NULL);
    bt_future *tick = bt_sleep(lp, 0);
    bt_test_run_until(lp, tick, 10000); /* hand the job over */
    bt_future_unref(tick);
    for (int i = 0; !atomic_load(&bridging); i++) {
        ck_assert_msg(i < 10000, "the job never started");
        usleep(1000);
    }
    bt_future_unref(f);
    bt_test_loop_free_clean(lp); /* returns: the job gave up waiting */
    ck_assert_int_eq(atomic_load(&bridged_rc), BT_ECANCELED);
}
END_TEST

static Suite *bridge_suite(void)
{
    Suite *s = suite_create("bridge");
    TCase *tc = tcase_create("bridge");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, BT_TEST_TIMEOUT);
    tcase_add_test(tc, value_from_a_thread);
    tcase_add_test(tc, error_from_a_thread);
    tcase_add_test(tc, offloaded_job_through_the_bridge);
    tcase_add_test(tc, timeout_cancels_the_future);
    tcase_add_test(tc, null_future_is_an_error);
    tcase_add_test(tc, from_the_loop_thread_refuses);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, many_threads_call_at_once);
    tcase_add_test(tc, job_waiting_on_its_loop_is_cancellable);
    tcase_add_test(tc, loop_free_while_a_job_waits_on_it);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(bridge_suite)
