/* Futures: settle once, callbacks from the loop in order, references,
 * cancellation through the producer's hook, chaining, unread errors. */
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

typedef struct {
    int calls;
    int order[8];
    int norder;
    bt_future_state seen;
} probe;

static void on_settle(bt_future *f, void *arg)
{
    probe *p = arg;
    p->calls++;
    p->seen = bt_future_get_state(f);
    bt_future_error(f); /* read it: the test owns the outcome */
}

static void stop_cb(void *arg)
{
    bt_loop_stop(arg);
}

static int *boxed(int v)
{
    int *p = malloc(sizeof *p);
    *p = v;
    return p;
}

START_TEST(value_settles_once)
{
    bt_future *f = bt_future_new(loop);
    probe p = { 0 };
    ck_assert_int_eq(bt_future_add_callback(f, on_settle, &p), 0);
    ck_assert_int_eq(bt_future_get_state(f), BT_FUTURE_PENDING);
    ck_assert_int_eq(bt_future_error(f), BT_EINPROGRESS);
    ck_assert_int_eq(bt_future_set_value(f, boxed(42), free), 0);
    /* A second settlement of any kind is refused, and its value freed. */
    ck_assert_int_eq(bt_future_set_value(f, boxed(7), free), BT_EALREADY);
    ck_assert_int_eq(bt_future_set_error(f, BT_EIO, "late"), BT_EALREADY);
    ck_assert_int_eq(bt_future_set_cancelled(f), BT_EALREADY);
    ck_assert_int_eq(bt_future_cancel(f), BT_EALREADY);
    ck_assert_int_eq(p.calls, 0); /* never inside the settle call */
    bt_test_run_until(loop, f, 1000);
    bt_loop_call_soon(loop, stop_cb, loop);
    bt_loop_run(loop);
    ck_assert_int_eq(p.calls, 1);
    ck_assert_int_eq(p.seen, BT_FUTURE_VALUE);
    ck_assert_int_eq(*(int *)bt_future_value(f), 42);
    bt_future_unref(f);
}
END_TEST

static void record(bt_future *f, void *arg)
{
    (void)f;
    probe *p = arg;
    p->order[p->norder++] = p->calls++;
}

static void record_and_add(bt_future *f, void *arg)
{
    probe *p = arg;
    record(f, arg);
    /* Added from inside a callback: runs later, never inside this call. */
    int before = p->calls;
    bt_future_add_callback(f, record, p);
    ck_assert_int_eq(p->calls, before);
}

static void run_a_while(void)
{
    bt_future *s = bt_sleep(loop, 20);
    bt_test_run_until(loop, s, 2000);
    bt_future_unref(s);
}

START_TEST(callbacks_in_order_never_reentrant)
{
    bt_future *f = bt_future_new(loop);
    probe p = { 0 };
    for (int i = 0; i < 3; i++)
        bt_future_add_callback(f, record, &p);
    bt_future_add_callback(f, record_and_add, &p);
    bt_future_set_value(f, NULL, NULL);
    run_a_while();
    ck_assert_int_eq(p.calls, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(p.order[i], i);
    /* On an already-settled future a callback runs on a later turn. */
    bt_future_add_callback(f, record, &p);
    ck_assert_int_eq(p.calls, 5);
    run_a_while();
    ck_assert_int_eq(p.calls, 6);
    bt_future_unref(f);
}
END_TEST

START_TEST(error_carries_code_and_message)
{
    bt_future *f = bt_future_new(loop);
    bt_future_set_error(f, BT_ECONNREFUSED, "connect to %s:%d", "127.0.0.1", 9);
    ck_assert_int_eq(bt_future_error(f), BT_ECONNREFUSED);
    ck_assert_str_eq(bt_future_error_message(f), "connect to 127.0.0.1:9");
    ck_assert_ptr_null(bt_future_value(f));
    bt_future_unref(f);
    bt_future *g = bt_future_new_error(loop, BT_EIO, NULL);
    ck_assert_str_eq(bt_future_error_message(g), bt_strerror(BT_EIO));
    bt_future_unref(g);
}
END_TEST

START_TEST(unread_error_is_reported)
{
    bt_test_log_capture();
    bt_future *f = bt_future_new_error(loop, BT_ETIMEDOUT, "query took too long");
    run_a_while();
    bt_future_unref(f);
    ck_assert(bt_test_log_contains("error nobody read: query took too long"));
    /* A read error is not reported. */
    bt_test_log_clear();
    f = bt_future_new_error(loop, BT_EIO, "read this one");
    ck_assert_int_eq(bt_future_error(f), BT_EIO);
    bt_future_unref(f);
    run_a_while();
    ck_assert(!bt_test_log_contains("nobody read"));
}
END_TEST

static int destroyed;
static void count_destroy(void *v)
{
    (void)v;
    destroyed++;
}

START_TEST(value_ownership)
{
    destroyed = 0;
    bt_future *f = bt_future_new_value(loop, (void *)1, count_destroy);
    bt_future_ref(f);
    bt_future_unref(f);
    ck_assert_int_eq(destroyed, 0);
    run_a_while();
    bt_future_unref(f);
    ck_assert_int_eq(destroyed, 1); /* freed with the future */

    f = bt_future_new_value(loop, boxed(5), free);
    int *v = bt_future_take_value(f);
    ck_assert_int_eq(*v, 5);
    ck_assert_ptr_null(bt_future_take_value(f));
    bt_future_unref(f);
    free(v); /* ours now: ASan would see a double free otherwise */
}
END_TEST

START_TEST(loop_keeps_pending_future_alive)
{
    /* The consumer drops its reference; the producer still settles. */
    bt_future *f = bt_future_new(loop);
    probe p = { 0 };
    bt_future_add_callback(f, on_settle, &p);
    bt_future_unref(f);
    bt_future_set_value(f, NULL, NULL);
    run_a_while();
    ck_assert_int_eq(p.calls, 1);
}
END_TEST

typedef struct {
    int hook_calls;
    bool settle_in_hook;
} producer;

static void cancel_hook(bt_future *f, void *arg)
{
    producer *pr = arg;
    pr->hook_calls++;
    if (pr->settle_in_hook)
        bt_future_set_cancelled(f);
}

START_TEST(cancel_reaches_producer)
{
    producer pr = { 0, true };
    bt_future *f = bt_future_new(loop);
    bt_future_on_cancel(f, cancel_hook, &pr);
    probe p = { 0 };
    bt_future_add_callback(f, on_settle, &p);
    ck_assert_int_eq(bt_future_cancel(f), 0);
    ck_assert_int_eq(bt_future_cancel(f), BT_EALREADY);
    ck_assert_int_eq(pr.hook_calls, 1);
    ck_assert_int_eq(bt_future_get_state(f), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    run_a_while();
    ck_assert_int_eq(p.calls, 1);
    ck_assert_int_eq(p.seen, BT_FUTURE_CANCELLED);
    bt_future_unref(f);
}
END_TEST

START_TEST(cancel_of_running_work_settles_cancelled_later)
{
    /* A producer that cannot stop at once (a job already running). */
    producer pr = { 0, false };
    bt_future *f = bt_future_new(loop);
    bt_future_on_cancel(f, cancel_hook, &pr);
    ck_assert_int_eq(bt_future_cancel(f), 0);
    ck_assert(bt_future_cancel_requested(f));
    ck_assert_int_eq(bt_future_get_state(f), BT_FUTURE_PENDING);
    ck_assert_int_eq(bt_future_cancel(f), 0); /* asked again: hook not rerun */
    ck_assert_int_eq(pr.hook_calls, 1);
    /* The job finishes with a value: discarded, the future is cancelled. */
    destroyed = 0;
    ck_assert_int_eq(bt_future_set_value(f, (void *)1, count_destroy), 0);
    ck_assert_int_eq(destroyed, 1);
    ck_assert_int_eq(bt_future_get_state(f), BT_FUTURE_CANCELLED);
    bt_future_unref(f);
}
END_TEST

START_TEST(cancel_without_hook_is_immediate)
{
    bt_future *f = bt_future_new(loop);
    ck_assert_int_eq(bt_future_cancel(f), 0);
    ck_assert_int_eq(bt_future_get_state(f), BT_FUTURE_CANCELLED);
    bt_future_unref(f);
}
END_TEST

static bt_future *double_it(bt_future *src, void *arg)
{
    (void)arg;
    int v = *(int *)bt_future_value(src);
    return bt_future_new_value(bt_future_loop(src), boxed(v * 2), free);
}

static bt_future *sleep_then_value(bt_future *src, void *arg)
{
    (void)src;
    bt_future **inner = arg;
    bt_future *s = bt_sleep(loop, 60000);
    *inner = bt_future_ref(s);
    return bt_future_then(s, double_it, NULL);
}

START_TEST(then_chains_values)
{
    bt_future *a = bt_future_new(loop);
    bt_future *b = bt_future_then(a, double_it, NULL);
    bt_future *c = bt_future_then(b, double_it, NULL);
    bt_future_set_value(a, boxed(10), free);
    bt_test_run_until(loop, c, 1000);
    ck_assert_int_eq(bt_future_error(c), 0);
    ck_assert_int_eq(*(int *)bt_future_value(c), 40);
    bt_future_unref(c); /* b took over a, c took over b */
}
END_TEST

static bt_future *never_called(bt_future *src, void *arg)
{
    (void)src;
    ck_abort_msg("then() ran its function on a failed future");
    return arg;
}

static bt_future *recover(bt_future *src, void *arg)
{
    (void)arg;
    ck_assert_int_eq(bt_future_error(src), BT_EIO);
    return bt_future_new_value(bt_future_loop(src), boxed(1), free);
}

START_TEST(then_propagates_errors_after_sees_them)
{
    bt_future *a = bt_future_new(loop);
    bt_future *b = bt_future_then(a, never_called, NULL);
    bt_future *c = bt_future_after(bt_future_ref(b), recover, NULL); /* b read below */
    bt_future_set_error(a, BT_EIO, "disk");
    bt_test_run_until(loop, c, 1000);
    ck_assert_int_eq(bt_future_error(b), BT_EIO);
    ck_assert_str_eq(bt_future_error_message(b), "disk");
    ck_assert_int_eq(*(int *)bt_future_value(c), 1);
    bt_future_unref(b);
    bt_future_unref(c);
}
END_TEST

START_TEST(cancel_chain_reaches_inner)
{
    bt_future *a = bt_future_new_value(loop, NULL, NULL);
    bt_future *inner = NULL;
    bt_future *b = bt_future_then(a, sleep_then_value, &inner);
    /* Let the chain function run and return its sleeping future. */
    bt_future *s = bt_sleep(loop, 1);
    bt_test_run_until(loop, s, 1000);
    bt_future_unref(s);
    ck_assert_int_eq(bt_future_get_state(b), BT_FUTURE_PENDING);
    ck_assert_int_eq(bt_future_cancel(b), 0);
    bt_test_run_until(loop, b, 1000);
    ck_assert_int_eq(bt_future_get_state(b), BT_FUTURE_CANCELLED);
    /* The 60 s sleep itself was cancelled, not merely left behind. */
    ck_assert_ptr_nonnull(inner);
    ck_assert_int_eq(bt_future_get_state(inner), BT_FUTURE_CANCELLED);
    bt_future_unref(inner);
    bt_future_unref(b);
}
END_TEST

static void read_outcome(bt_future *f, void *arg)
{
    (void)arg;
    bt_future_error(f);
}

START_TEST(chain_dropped_then_loop_freed)
{
    /* The chain's result is cancelled and released by bt_loop_free before
     * its source, whose producer settles late: nothing may touch the freed
     * result (ASan watches). */
    bt_loop *l = bt_loop_new();
    producer pr = { 0, false };
    bt_future *src = bt_future_new(l);
    bt_future_on_cancel(src, cancel_hook, &pr);
    bt_future *r = bt_future_then(src, double_it, NULL);
    bt_future_add_callback(r, read_outcome, NULL);
    bt_future_unref(r); /* r took over src */
    bt_test_log_capture();
    bt_loop_free(l);
    ck_assert_int_eq(pr.hook_calls, 1);
}
END_TEST

START_TEST(references_outlive_the_loop)
{
    bt_loop *l = bt_loop_new();
    bt_future *f = bt_future_new(l);
    bt_future_ref(f);
    bt_test_log_capture();
    bt_loop_free(l);
    ck_assert_int_eq(bt_future_get_state(f), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    bt_future_unref(f);
    bt_future_unref(f);
}
END_TEST

START_TEST(set_from_keeps_source_when_refused)
{
    bt_future *src = bt_future_new_value(loop, boxed(3), free);
    bt_future *done = bt_future_new_value(loop, NULL, NULL);
    ck_assert_int_eq(bt_future_set_from(done, src), BT_EALREADY);
    ck_assert_int_eq(bt_future_set_from(NULL, src), BT_EINVAL);
    ck_assert_int_eq(*(int *)bt_future_value(src), 3);
    bt_future *dst = bt_future_new(loop);
    ck_assert_int_eq(bt_future_set_from(dst, src), 0);
    ck_assert_int_eq(*(int *)bt_future_value(dst), 3);
    ck_assert_ptr_null(bt_future_value(src)); /* moved, not copied */
    bt_future *err = bt_future_new_error(loop, BT_EIO, "e");
    bt_future *dst2 = bt_future_new(loop);
    bt_future_set_from(dst2, err);
    ck_assert_int_eq(bt_future_error(dst2), BT_EIO);
    ck_assert_str_eq(bt_future_error_message(dst2), "e");
    bt_future_unref(src);
    bt_future_unref(done);
    bt_future_unref(dst);
    bt_future_unref(err);
    bt_future_unref(dst2);
}
END_TEST

static void never_runs(void *arg)
{
    (void)arg;
    ck_abort_msg("a post refused with BT_ESHUTDOWN ran anyway");
}

static void post_during_free(bt_future *f, void *arg)
{
    *(int *)arg = bt_loop_post(bt_future_loop(f), never_runs, NULL);
}

START_TEST(post_refused_once_closing)
{
    bt_loop *l = bt_loop_new();
    bt_future *f = bt_future_new(l);
    int rc = 1;
    bt_future_add_callback(f, post_during_free, &rc);
    bt_test_log_capture();
    bt_loop_free(l);
    ck_assert_int_eq(rc, BT_ESHUTDOWN);
    bt_future_unref(f);
}
END_TEST

START_TEST(null_arguments)
{
    ck_assert_ptr_null(bt_future_new(NULL));
    ck_assert_int_eq(bt_future_set_value(NULL, NULL, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_future_set_error(NULL, BT_EIO, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_future_cancel(NULL), BT_EINVAL);
    ck_assert_int_eq(bt_future_error(NULL), BT_EINVAL);
    ck_assert_int_eq(bt_future_add_callback(NULL, on_settle, NULL), BT_EINVAL);
    ck_assert_ptr_null(bt_future_then(NULL, double_it, NULL));
    ck_assert_ptr_null(bt_future_value(NULL));
    bt_future_unref(NULL);
    ck_assert_ptr_null(bt_future_ref(NULL));
    destroyed = 0;
    ck_assert_int_eq(bt_future_set_value(NULL, (void *)1, count_destroy), BT_EINVAL);
    ck_assert_int_eq(destroyed, 1); /* ownership passed in either way */
}
END_TEST

START_TEST(loop_free_cancels_pending)
{
    bt_loop *l = bt_loop_new();
    bt_future *f = bt_future_new(l);
    probe p = { 0 };
    bt_future_add_callback(f, on_settle, &p);
    bt_future *dropped = bt_future_new(l);
    bt_future_unref(dropped);
    bt_future *sl = bt_sleep(l, 100000);
    bt_test_log_capture();
    bt_loop_free(l);
    ck_assert_int_eq(p.calls, 1);
    ck_assert_int_eq(p.seen, BT_FUTURE_CANCELLED);
    ck_assert_int_eq(bt_future_get_state(sl), BT_FUTURE_CANCELLED);
    ck_assert(bt_test_log_contains("loop freed with 3 pending futures"));
    ck_assert(bt_test_log_contains("1 of them had been dropped while pending"));
    bt_future_unref(f);
    bt_future_unref(sl);
}
END_TEST

static bt_future *double_nothing(bt_future *src, void *arg)
{
    (void)arg;
    return bt_future_new_value(bt_future_loop(src), NULL, NULL);
}

static bt_future *not_called(bt_future *src, void *arg)
{
    (void)src;
    (void)arg;
    ck_abort_msg("a chain that failed to start called its function");
    return NULL;
}

START_TEST(then_takes_over_its_source)
{
    /* then and after take over the source (common.h): a one-liner leaks
     * nothing, and a call that fails still releases the source, cancelled
     * if it was pending, with nothing reported as the caller's mistake. */
    bt_test_log_capture();
    bt_test_log_clear();
    destroyed = 0;
    bt_future *c =
        bt_future_then(bt_future_new_value(loop, (void *)1, count_destroy), double_nothing, NULL);
    bt_test_run_until(loop, c, 1000);
    bt_future_unref(c);
    run_a_while();
    ck_assert_int_eq(destroyed, 1); /* the source went with the chain */

    destroyed = 0;
    ck_assert_ptr_null(
        bt_future_then(bt_future_new_value(loop, (void *)1, count_destroy), NULL, NULL));
    ck_assert_ptr_null(bt_future_after(bt_future_new_error(loop, BT_EIO, "unread"), NULL, NULL));
    producer pr = { 0, false };
    bt_future *pending = bt_future_new(loop);
    bt_future_on_cancel(pending, cancel_hook, &pr);
    ck_assert_ptr_null(bt_future_after(pending, NULL, NULL));
    ck_assert_int_eq(pr.hook_calls, 1);
    bt_future_set_cancelled(pending); /* the producer stops, later */
    ck_assert_ptr_null(bt_future_then(NULL, not_called, NULL));
    run_a_while();
    ck_assert_int_eq(destroyed, 1);
    ck_assert_int_eq(bt_test_log_count("nobody read"), 0);
    ck_assert_int_eq(bt_test_log_count("dropped while still pending"), 0);
}
END_TEST

static int fail_after = -1;
static void *failing_malloc(size_t n)
{
    return fail_after-- == 0 ? NULL : malloc(n);
}

START_TEST(allocation_failure_is_clean)
{
    bt_set_allocator(failing_malloc, realloc, free);
    for (int i = 0; i < 6; i++) {
        fail_after = i;
        bt_future *a = bt_future_new(loop);
        bt_future *b = a ? bt_future_then(bt_future_ref(a), double_it, NULL) : NULL;
        if (a)
            bt_future_set_value(a, boxed(1), free);
        fail_after = -1;
        bt_future_unref(a);
        if (b) {
            bt_test_run_until(loop, b, 1000);
            bt_future_error(b);
            bt_future_unref(b);
        }
    }
    fail_after = -1;
    run_a_while();
    bt_set_allocator(NULL, NULL, NULL);
}
END_TEST

static Suite *future_suite(void)
{
    Suite *s = suite_create("future");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, BT_TEST_TIMEOUT);
    tcase_add_test(tc, value_settles_once);
    tcase_add_test(tc, callbacks_in_order_never_reentrant);
    tcase_add_test(tc, error_carries_code_and_message);
    tcase_add_test(tc, unread_error_is_reported);
    tcase_add_test(tc, value_ownership);
    tcase_add_test(tc, loop_keeps_pending_future_alive);
    tcase_add_test(tc, cancel_reaches_producer);
    tcase_add_test(tc, cancel_of_running_work_settles_cancelled_later);
    tcase_add_test(tc, cancel_without_hook_is_immediate);
    tcase_add_test(tc, then_chains_values);
    tcase_add_test(tc, then_propagates_errors_after_sees_them);
    tcase_add_test(tc, cancel_chain_reaches_inner);
    tcase_add_test(tc, chain_dropped_then_loop_freed);
    tcase_add_test(tc, then_takes_over_its_source);
    tcase_add_test(tc, references_outlive_the_loop);
    tcase_add_test(tc, set_from_keeps_source_when_refused);
    tcase_add_test(tc, post_refused_once_closing);
    tcase_add_test(tc, null_arguments);
    tcase_add_test(tc, loop_free_cancels_pending);
    tcase_add_test(tc, allocation_failure_is_clean);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(future_suite)
