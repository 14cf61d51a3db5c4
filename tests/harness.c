#include "harness.h"

#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The log capture. Each test starts with an empty one, forked or not: with
 * CK_FORK=no (how a test runs under gdb or valgrind) every test of a suite
 * shares this process, so the lines are tagged with the test that captured
 * them (Check's tcase_name(), the running test's name) and dropped when
 * another test first touches the capture. The test name is read only on
 * the test's own thread, never in capture(), which pool and bridge threads
 * call too. The capture holds LOG_MAX lines; a line beyond that fails the
 * test at its next query instead of being dropped without a word. */
#define LOG_MAX 4096

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char *logs[LOG_MAX];
static int nlogs;
static int overflowed;  /* lines that did not fit, since the last clear */
static char owner[256]; /* the test the captured lines belong to */

static void clear_locked(void)
{
    for (int i = 0; i < nlogs; i++)
        free(logs[i]);
    nlogs = 0;
    overflowed = 0;
}

static void capture(bt_log_level level, const char *msg, void *arg)
{
    (void)level;
    (void)arg;
    pthread_mutex_lock(&mu);
    if (nlogs < LOG_MAX)
        logs[nlogs++] = strdup(msg);
    else
        overflowed++;
    pthread_mutex_unlock(&mu);
}

/* With mu held, on the test's thread: start afresh if a new test runs. */
static void own_locked(void)
{
    const char *name = tcase_name();
    if (name == NULL)
        name = "";
    if (strcmp(owner, name) != 0) {
        clear_locked();
        snprintf(owner, sizeof owner, "%s", name);
    }
}

void bt_test_log_capture(void)
{
    pthread_mutex_lock(&mu);
    own_locked();
    pthread_mutex_unlock(&mu);
    bt_log_set_level(BT_LOG_DEBUG);
    bt_log_set_handler(capture, NULL);
}

void bt_test_log_clear(void)
{
    pthread_mutex_lock(&mu);
    own_locked();
    clear_locked();
    pthread_mutex_unlock(&mu);
}

int bt_test_log_count(const char *needle)
{
    int n = 0;
    pthread_mutex_lock(&mu);
    own_locked();
    int lost = overflowed;
    for (int i = 0; i < nlogs; i++)
        if (strstr(logs[i], needle) != NULL)
            n++;
    pthread_mutex_unlock(&mu);
    ck_assert_msg(lost == 0,
                  "the log capture is full: %d lines after the first %d were lost "
                  "(raise LOG_MAX in tests/harness.c or call bt_test_log_clear)",
                  lost, LOG_MAX);
    return n;
}

bool bt_test_log_contains(const char *needle)
{
    return bt_test_log_count(needle) > 0;
}

void bt_test_loop_free_clean(bt_loop *loop)
{
    bt_test_log_capture();
    int before = bt_test_log_count("pending future");
    bt_loop_free(loop);
    ck_assert_msg(bt_test_log_count("pending future") == before,
                  "the loop was freed with futures still pending");
}

static void prod_hook(bt_future *f, void *arg)
{
    bt_test_prod *p = arg;
    p->hook_calls++;
    if (p->eager)
        bt_future_set_cancelled(f);
}

void bt_test_prod_init(bt_test_prod *p, bt_loop *loop, bool eager)
{
    memset(p, 0, sizeof *p);
    p->eager = eager;
    p->f = bt_future_new(loop);
    ck_assert_ptr_nonnull(p->f);
    bt_future_on_cancel(p->f, prod_hook, p);
}

int bt_test_long_job_run(bt_job *job, void *arg)
{
    bt_test_long_job *lj = arg;
    atomic_store(&lj->started, 1);
    uint64_t until = bt_hrtime() + 10ull * 1000 * 1000 * 1000; /* hang guard */
    while (bt_hrtime() < until) {
        if (bt_job_cancelled(job)) {
            atomic_store(&lj->saw_cancel, 1);
            return 0;
        }
        usleep(1000);
    }
    return 0;
}

static void on_timeout(bt_timer *t, void *arg)
{
    (void)t;
    *(bool *)arg = true;
    ck_abort_msg("timed out waiting for a future");
}

bt_future *bt_test_run_until(bt_loop *loop, bt_future *f, unsigned timeout_ms)
{
    ck_assert_ptr_nonnull(f);
    bool fired = false;
    bt_timer *t = bt_timer_new(loop, on_timeout, &fired);
    ck_assert_ptr_nonnull(t);
    bt_timer_start(t, timeout_ms, 0);
    ck_assert_int_eq(bt_loop_run_until(loop, f), 0);
    bt_timer_free(t);
    return f;
}

void bt_test_sleep(bt_loop *loop, unsigned ms)
{
    /* The guard only catches a loop that stopped running timers. */
    bt_future_unref(bt_test_run_until(loop, bt_sleep(loop, ms), ms + 60000));
}

bt_future *bt_test_ok(bt_future *f, const char *what)
{
    ck_assert_msg(bt_future_error(f) == 0, "%s: %s", what, bt_future_error_message(f));
    return f;
}

void *bt_test_take(bt_future *f, const char *what)
{
    void *v = bt_future_take_value(bt_test_ok(f, what));
    bt_future_unref(f);
    ck_assert_msg(v != NULL, "%s: no value", what);
    return v;
}

int bt_test_main(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
