/* sync_bridge: thread-per-request code calling into the loop and waiting.
 *
 * Mirrors asyncio's run_coroutine_threadsafe(coro, loop).result(timeout):
 * a legacy server runs each request on a thread of its own and cannot be
 * rewritten; the new code is asynchronous and lives on one loop. Each
 * request thread calls bt_bridge_call, which runs a function on the loop
 * thread (here: an offloaded "price lookup" after a short async delay) and
 * blocks that request thread, and only that one, until the future settles
 * or the timeout passes. One request asks for something slow and times
 * out cleanly; its future is cancelled on the loop.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <baton/baton.h>
#include <baton/bridge.h>
#include <baton/pool.h>

#define REQUESTS 6

/* The asynchronous side: runs on the loop thread. */
static int price_job(bt_job *job, void *arg)
{
    long item = (long)(intptr_t)arg;
    long *price = malloc(sizeof *price);
    *price = 100 + item * 7;
    bt_job_set_value(job, price, free);
    return 0;
}

static bt_future *after_delay(bt_future *slept, void *arg)
{
    return bt_to_thread(bt_future_loop(slept), price_job, arg);
}

static bt_future *lookup_price(bt_loop *loop, void *arg)
{
    long item = (long)(intptr_t)arg;
    /* Item 5 is "slow": longer than the caller's timeout. */
    bt_future *slept = bt_sleep(loop, item == 5 ? 5000 : 20);
    return bt_future_then(slept, after_delay, arg);
}

/* The legacy side: a plain thread per request. */
typedef struct {
    bt_loop *loop;
    long item;
    int rc;
    long price;
} request;

static void *handle_request(void *arg)
{
    request *r = arg;
    bt_bridge_result res;
    r->rc = bt_bridge_call(r->loop, lookup_price, (void *)(intptr_t)r->item, 500, &res);
    if (r->rc == 0)
        r->price = *(long *)res.value;
    else
        printf("request %ld: %s (%s)\n", r->item, bt_err_name(r->rc), res.message);
    bt_bridge_result_clear(&res);
    return NULL;
}

static void *legacy_server(void *arg)
{
    request *reqs = arg;
    pthread_t th[REQUESTS];
    for (int i = 0; i < REQUESTS; i++)
        pthread_create(&th[i], NULL, handle_request, &reqs[i]);
    for (int i = 0; i < REQUESTS; i++)
        pthread_join(th[i], NULL);
    bt_loop_stop(reqs[0].loop);
    return NULL;
}

int main(void)
{
    bt_loop *loop = bt_loop_new();
    request reqs[REQUESTS];
    for (int i = 0; i < REQUESTS; i++)
        reqs[i] = (request){loop, i, -1, 0};
    pthread_t server;
    pthread_create(&server, NULL, legacy_server, reqs);
    bt_loop_run(loop); /* the loop thread serves every request thread */
    pthread_join(server, NULL);
    bt_loop_free(loop);

    int ok = 1;
    for (int i = 0; i < REQUESTS; i++) {
        if (i == 5) {
            ok &= reqs[i].rc == BT_ETIMEDOUT;
            continue;
        }
        printf("request %d: price %ld\n", i, reqs[i].price);
        ok &= reqs[i].rc == 0 && reqs[i].price == 100 + i * 7;
    }
    return ok ? 0 : 1;
}
