/* task_group_await: structured concurrency in await style; one child
 * fails, the others are cancelled (examples/task_group.c is the callback
 * version).
 *
 *     async with asyncio.TaskGroup() as tg:
 *         tg.create_task(fetch_user(1))   # 200 ms
 *         tg.create_task(fetch_user(2))   # fails after 50 ms
 *         tg.create_task(fetch_user(3))   # 1 s
 *
 * Each child is a fiber. When fetch_user(2) fails, the group cancels the
 * two others: their bt_await returns BT_ECANCELED at once and they return,
 * so the group settles shortly after 50 ms, not after a second. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <baton/baton.h>

static const uint64_t delay_ms[] = {0, 200, 50, 1000};
static int unwound;

static bt_future *fetch_user(bt_loop *loop, void *arg)
{
    int id = (int)(intptr_t)arg;
    int rc = bt_await(bt_sleep(loop, delay_ms[id]), NULL);
    if (rc == BT_ECANCELED) {
        printf("  fetch_user(%d) cancelled: unwinding\n", id);
        unwound++;
    }
    if (rc != 0)
        return bt_future_new_error(loop, rc, "%s", bt_await_error());
    if (id == 2)
        return bt_future_new_error(loop, BT_ENOENT, "user %d not found", id);
    return bt_future_new_value(loop, (void *)(intptr_t)id, NULL);
}

static bt_future *main_async(bt_loop *loop, void *arg)
{
    (void)arg;
    uint64_t t0 = bt_hrtime();
    bt_group *g = bt_group_new(loop);
    for (intptr_t id = 1; id <= 3; id++) {
        bt_group_add(g, bt_async(loop, fetch_user, (void *)id)); /* takes it */
    }
    int rc = bt_await(bt_group_wait(g), NULL);
    double ms = (double)(bt_hrtime() - t0) / 1e6;
    printf("group: %s after %.0f ms (%s)\n", bt_err_name(rc), ms, bt_await_error());
    bt_group_free(g);
    /* The failure, not a second's wait: both others unwound. */
    if (rc != BT_ENOENT || unwound != 2)
        return bt_future_new_error(loop, BT_EINVAL, "unexpected outcome");
    return bt_future_new_value(loop, NULL, NULL);
}

static bt_future *start(bt_loop *loop, void *arg) { return bt_async(loop, main_async, arg); }

int main(void)
{
    return bt_run(start, NULL) == 0 ? 0 : 1;
}
