/* to_thread: a blocking call offloaded while the loop keeps ticking.
 *
 * Mirrors the guide's "Common Mistakes": time.sleep(5) inside a coroutine
 * blocks the whole event loop; `await asyncio.to_thread(fn, ...)` does not.
 * Here a legacy, synchronous lookup (it sleeps 300 ms, like a slow driver
 * call) runs on the pool's blocking lane through bt_to_thread, and a 50 ms
 * ticker on the loop goes on ticking the whole time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <baton/baton.h>
#include <baton/pool.h>

/* A synchronous function we cannot change. */
static char *legacy_lookup(const char *key)
{
    usleep(300 * 1000);
    size_t n = strlen(key) + 16;
    char *out = malloc(n);
    snprintf(out, n, "value-of-%s", key);
    return out;
}

/* The job: runs on a worker thread, never on the loop. */
static int lookup_job(bt_job *job, void *arg)
{
    char *v = legacy_lookup(arg);
    if (v == NULL)
        return bt_job_fail(job, BT_ENOMEM, "lookup of %s", (const char *)arg);
    bt_job_set_value(job, v, free);
    return 0;
}

static int ticks;

static void on_tick(bt_timer *t, void *arg)
{
    (void)t;
    (void)arg;
    ticks++;
    printf("tick %d (the loop is free)\n", ticks);
}

static void on_done(bt_future *f, void *arg)
{
    bt_timer *ticker = arg;
    bt_timer_stop(ticker);
    if (bt_future_error(f) == 0)
        printf("lookup done: %s, after %d ticks\n", (char *)bt_future_value(f), ticks);
    else
        printf("lookup failed: %s\n", bt_future_error_message(f));
}

int main(void)
{
    bt_loop *loop = bt_loop_new();
    bt_timer *ticker = bt_timer_new(loop, on_tick, NULL);
    bt_timer_start(ticker, 50, 50);

    bt_future *f = bt_to_thread(loop, lookup_job, "user:42");
    bt_future_add_callback(f, on_done, ticker);
    bt_loop_run_until(loop, f);

    int rc = bt_future_error(f);
    bt_future_unref(f);
    bt_timer_free(ticker);
    bt_loop_free(loop);
    /* The ticker ran while the call blocked a worker (how often depends on
     * the machine's load, so only "at all" is checked). */
    return rc == 0 && ticks > 0 ? 0 : 1;
}
