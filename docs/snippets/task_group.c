/* README.md, "asyncio.gather vs TaskGroup": the group snippet inside a
 * complete program. tests/check-snippets.sh checks that the README quotes
 * it verbatim; `make check` runs it (leak-free under --enable-asan). */
#include <stdint.h>
#include <stdio.h>

#include <baton/baton.h>

static bt_future *make_user(bt_future *slept, void *arg)
{
    int id = (int)(intptr_t)arg;
    bt_loop *loop = bt_future_loop(slept);
    if (id == 2)
        return bt_future_new_error(loop, BT_ENOENT, "user %d not found", id);
    return bt_future_new_value(loop, NULL, NULL);
}

static bt_future *fetch_user(bt_loop *loop, int id, uint64_t ms)
{
    return bt_future_then(bt_sleep(loop, ms), make_user, (void *)(intptr_t)id);
}

int main(void)
{
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;
    int ids[3] = {1, 2, 3};
    uint64_t ms[3] = {200, 50, 1000};
    int n = 3;

    bt_group *g = bt_group_new(loop);
    for (int i = 0; i < n; i++)
        bt_group_add(g, fetch_user(loop, ids[i], ms[i]));   /* tg.create_task */
    bt_future *done = bt_group_wait(g);                     /* end of `async with` */

    bt_group_free(g);
    bt_loop_run_until(loop, done);
    int rc = bt_future_error(done); /* user 2's error; the others cancelled */
    printf("group: %s\n", bt_future_error_message(done));
    bt_future_unref(done);
    bt_loop_free(loop);
    return rc == BT_ENOENT ? 0 : 1;
}
