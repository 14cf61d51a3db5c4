/* to_thread_await: a blocking call offloaded while the loop keeps ticking,
 * in await style (examples/to_thread.c is the callback version).
 *
 *     result = await asyncio.to_thread(legacy_lookup, "user:42")
 *
 * The fiber awaits the pool job; meanwhile a 50 ms ticker on the loop goes
 * on ticking: the fiber's wait blocks nobody. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <baton/baton.h>

/* A synchronous function we cannot change. */
static char *legacy_lookup(const char *key)
{
    usleep(300 * 1000);
    size_t n = strlen(key) + 16;
    char *out = malloc(n);
    if (out != NULL)
        snprintf(out, n, "value-of-%s", key);
    return out;
}

/* The job: runs on a worker thread, never on the loop (and never awaits:
 * a worker is no fiber). */
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
    printf("tick %d (the loop is free)\n", ++ticks);
}

static bt_future *main_async(bt_loop *loop, void *arg)
{
    (void)arg;
    bt_timer *ticker = bt_timer_new(loop, on_tick, NULL);
    bt_timer_start(ticker, 50, 50);
    char *v;
    int rc = bt_await(bt_to_thread(loop, lookup_job, "user:42"), (void **)&v);
    bt_timer_free(ticker);
    if (rc != 0)
        return bt_future_new_error(loop, rc, "lookup failed: %s", bt_await_error());
    printf("lookup done: %s, after %d ticks\n", v, ticks);
    free(v);
    /* How often it ticked depends on the machine's load: only "at all". */
    return ticks > 0 ? bt_future_new_value(loop, NULL, NULL)
                     : bt_future_new_error(loop, BT_EINVAL, "the loop never ticked");
}

static bt_future *start(bt_loop *loop, void *arg) { return bt_async(loop, main_async, arg); }

int main(void)
{
    return bt_run(start, NULL) == 0 ? 0 : 1;
}
