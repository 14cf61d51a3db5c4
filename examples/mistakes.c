/* mistakes: the guide's "Common Mistakes", caught.
 *
 * 1. Blocking the event loop: a callback calls a slow synchronous function
 *    (the guide's time.sleep(5) inside async code, here 300 ms). The
 *    watchdog reports it while the loop is still blocked, naming the
 *    callback, and again when it returns, with how long it took.
 * 2. The fix, as in the guide (asyncio.to_thread): the same work offloaded
 *    to the worker pool with bt_to_thread. The loop stays free: a ticker
 *    keeps ticking while the work runs.
 * 3. An error nobody read: a failed future dropped without a look at its
 *    error is reported when it is freed.
 * 4. A future dropped while still pending, with nobody waiting on it (the
 *    guide's "forgetting to await"): reported when it is dropped.
 * Baton's reports go through the log handler; this program prints them
 * with a "baton says:" prefix.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <baton/baton.h>

/* The handler runs on the loop thread and on the watchdog's thread. */
static atomic_int blocked_reports;

static void print_log(bt_log_level level, const char *msg, void *arg)
{
    (void)level;
    (void)arg;
    if (strstr(msg, "loop blocked"))
        atomic_fetch_add(&blocked_reports, 1);
    printf("  baton says: %s\n", msg);
    fflush(stdout);
}

/* Stands in for a synchronous library call: a blocking query, a file read. */
static void slow_sync_call(void) { usleep(300 * 1000); }

/* 1. The mistake. Visible to dladdr so the watchdog can name it; a static
 * function shows as an address inside the program instead. */
__attribute__((visibility("default"))) void handle_request_blocking(bt_timer *t, void *arg);
void handle_request_blocking(bt_timer *t, void *arg)
{
    (void)t;
    (void)arg;
    slow_sync_call(); /* blocks every other request on this loop */
}

/* 2. The fix: the same call, on a worker thread. */
static int slow_job(bt_job *job, void *arg)
{
    (void)job;
    (void)arg;
    slow_sync_call();
    return 0;
}

static int ticks;
static void tick(bt_timer *t, void *arg)
{
    (void)t;
    (void)arg;
    ticks++;
}

static void run_for(bt_loop *loop, uint64_t ms)
{
    bt_future *s = bt_sleep(loop, ms);
    bt_loop_run_until(loop, s);
    bt_future_unref(s);
}

int main(void)
{
    bt_log_set_handler(print_log, NULL);
    bt_loop *loop = bt_loop_new();
    if (loop == NULL || bt_watchdog_start(loop, 100) != 0)
        return 1;

    printf("1. a callback that blocks the loop for 300 ms:\n");
    bt_timer *t = bt_timer_new(loop, handle_request_blocking, NULL);
    bt_timer_start(t, 0, 0);
    run_for(loop, 400);
    bt_timer_free(t);

    printf("2. the same call offloaded with bt_to_thread:\n");
    bt_timer *ticker = bt_timer_new(loop, tick, NULL);
    bt_timer_start(ticker, 10, 10);
    bt_future *job = bt_to_thread(loop, slow_job, NULL);
    bt_loop_run_until(loop, job);
    printf("  the job finished (%s); the loop ticked %d times meanwhile\n",
           bt_future_error(job) == 0 ? "ok" : bt_future_error_message(job), ticks);
    bt_future_unref(job);
    bt_timer_free(ticker);

    printf("3. a failed future whose error nobody reads:\n");
    bt_future *failed = bt_future_new_error(loop, BT_ECONNREFUSED, "connect to db:5432 refused");
    run_for(loop, 1);
    bt_future_unref(failed); /* no bt_future_error(failed): a mistake */
    run_for(loop, 1);

    printf("4. a future dropped while pending, nobody waiting on it:\n");
    bt_future *forgotten = bt_sleep(loop, 50);
    bt_future_unref(forgotten); /* like calling a coroutine without await */
    run_for(loop, 60);

    char *h = bt_watchdog_histogram(loop);
    if (h)
        printf("the watchdog's view of the loop:\n%s", h);
    bt_free(h);
    bt_loop_free(loop);
    bt_log_set_handler(NULL, NULL);
    /* The blocking call must have been reported (while blocked and after). */
    return atomic_load(&blocked_reports) >= 2 ? 0 : 1;
}
