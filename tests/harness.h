/* The test harness shared by every suite: a main for Check suites, a log
 * capture, and the end-of-test check that a loop was left clean. */
#ifndef BATON_TESTS_HARNESS_H
#define BATON_TESTS_HARNESS_H

#include <check.h>
#include <stdbool.h>

#include <baton/baton.h>
#include <baton/pool.h>

/* Runs the suite, each test forked (CK_FORK unless the environment says
 * otherwise), and exits non-zero if any test failed. */
int bt_test_main(Suite *s);
#define BT_TEST_MAIN(make_suite)           \
    int main(void)                         \
    {                                      \
        return bt_test_main(make_suite()); \
    }

/* Default per-test timeout in seconds (Check's own default is 4). */
#define BT_TEST_TIMEOUT 30

/* Capture everything Baton logs, at every level, from now on. Each test
 * starts with an empty capture, with or without CK_FORK; a test whose
 * capture overflows fails at its next query. */
void bt_test_log_capture(void);
/* True if a captured message contains needle. */
bool bt_test_log_contains(const char *needle);
/* How many captured messages contain needle. */
int bt_test_log_count(const char *needle);
/* Forget what was captured. */
void bt_test_log_clear(void);

/* Free the loop and fail the test if anything was still pending on it
 * (libuv's MAKE_VALGRIND_HAPPY). Captures the log while it does. */
void bt_test_loop_free_clean(bt_loop *loop);

/* A producer driven by hand: a pending future whose cancel hook counts
 * its calls. An eager one settles cancelled at once; a stubborn one (like
 * a job already running) only when the test settles it. */
typedef struct {
    bt_future *f; /* new reference, the test's to drop */
    int hook_calls;
    bool eager;
} bt_test_prod;
void bt_test_prod_init(bt_test_prod *p, bt_loop *loop, bool eager);

/* A pool job (arg: a bt_test_long_job) that runs until it is cancelled,
 * with a 10 s hang guard, and notes that it started and that it saw the
 * cancellation on its own thread. */
typedef struct {
    _Atomic int started;
    _Atomic int saw_cancel;
} bt_test_long_job;
int bt_test_long_job_run(bt_job *job, void *arg);

/* Run the loop until f settles, failing the test after timeout_ms, or at
 * once if f is NULL (a call that could not even start). Returns f, still
 * the caller's, so that a call can be awaited where it is made:
 * bt_test_take(bt_test_run_until(loop, call(...), ms), "call"). */
bt_future *bt_test_run_until(bt_loop *loop, bt_future *f, unsigned timeout_ms);

/* Run the loop for ms milliseconds (a bt_sleep awaited and dropped). */
void bt_test_sleep(bt_loop *loop, unsigned ms);

/* Fail the test, saying what and the future's error message, unless f
 * (settled) succeeded. Returns f, still the caller's. */
bt_future *bt_test_ok(bt_future *f, const char *what);

/* The value of f, which must have succeeded with a non-NULL value (checked
 * as bt_test_ok does): taken from f, so the caller owns it, and f dropped. */
void *bt_test_take(bt_future *f, const char *what);

#endif
