/* sync_bridge: thread-per-request code calling into the loop and waiting.
 *
 * Mirrors asyncio's run_coroutine_threadsafe(coro, loop).result(timeout):
 * a legacy server runs each request on a thread of its own and cannot be
 * rewritten; the new code is asynchronous and lives on one loop. Each
 * request thread calls bt_bridge_call, which runs a function on the loop
 * thread (here: an offloaded "price lookup" after a short async delay) and
 * blocks that request thread, and only that one, until the future settles
 * or the timeout passes. Request 5 is the deliberately slow one: its
 * lookup would take a minute, so it times out cleanly at the budget and its
 * future is cancelled on the loop.
 *
 * The budget is generous on purpose: 5 s for 20 ms of work, so the example
 * still passes under valgrind's 20x slowdown; only request 5, whose lookup
 * takes 60 s, can miss it, and it does so under any slowdown.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <baton/baton.h>
#include <baton/bridge.h>
#include <baton/pool.h>

#define REQUESTS 6
#define SLOW_ITEM 5        /* the one request that is slow on purpose */
#define BUDGET_MS 5000     /* each request thread's timeout */
#define LOOKUP_MS 20       /* the async delay of a normal lookup */
#define SLOW_LOOKUP_MS 60000

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
    /* The slow item takes far longer than the caller's budget. */
    bt_future *slept = bt_sleep(loop, item == SLOW_ITEM ? SLOW_LOOKUP_MS : LOOKUP_MS);
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
    bt_bridge_result res = BT_SIZED(bt_bridge_result);
    r->rc = bt_bridge_call(r->loop, lookup_price, (void *)(intptr_t)r->item, BUDGET_MS, &res);
    if (r->rc == 0)
        r->price = *(long *)res.value;
    else if (r->item == SLOW_ITEM)
        printf("request %ld, the deliberately slow one (a %d s lookup, a %d s budget): %s (%s)\n",
               r->item, SLOW_LOOKUP_MS / 1000, BUDGET_MS / 1000, bt_err_name(r->rc),
               res.message);
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
        if (i == SLOW_ITEM) {
            ok &= reqs[i].rc == BT_ETIMEDOUT;
            continue;
        }
        printf("request %d: price %ld\n", i, reqs[i].price);
        ok &= reqs[i].rc == 0 && reqs[i].price == 100 + i * 7;
    }
    return ok ? 0 : 1;
}
