/* task_group: structured concurrency; one child fails, the others are
 * cancelled.
 *
 * Mirrors the guide's "asyncio.gather vs asyncio.TaskGroup": three tasks
 * in a group; "If any task raises an exception, the TaskGroup cancels all
 * remaining tasks." Here fetch_user(2) fails after 50 ms, so the group
 * cancels the 200 ms and 1 s fetches and settles with the first error
 * shortly after 50 ms, not after a second. Then the same group with three
 * good fetches, whose results are read from the children, like
 * task1.result() in the guide.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <baton/baton.h>

static bt_future *make_user(bt_future *slept, void *arg)
{
    int id = (int)(intptr_t)arg;
    bt_loop *loop = bt_future_loop(slept);
    if (id == 2)
        return bt_future_new_error(loop, BT_ENOENT, "user %d not found", id);
    int *v = malloc(sizeof *v);
    if (v == NULL)
        return NULL;
    *v = id;
    return bt_future_new_value(loop, v, free);
}

static bt_future *fetch_user(bt_loop *loop, int id, uint64_t ms)
{
    return bt_future_then(bt_sleep(loop, ms), make_user, (void *)(intptr_t)id);
}

static const char *state_name(bt_future *f)
{
    switch (bt_future_get_state(f)) {
    case BT_FUTURE_VALUE: return "done";
    case BT_FUTURE_ERROR: return "failed";
    case BT_FUTURE_CANCELLED: return "cancelled";
    default: return "pending";
    }
}

static int run_group(bt_loop *loop, const int *ids, const uint64_t *ms, int n)
{
    uint64_t t0 = bt_hrtime();
    bt_group *g = bt_group_new(loop);
    bt_future *task[3];
    for (int i = 0; i < n; i++) {
        task[i] = fetch_user(loop, ids[i], ms[i]); /* tg.create_task(...) */
        bt_group_add(g, bt_future_ref(task[i])); /* we read it below */
    }
    bt_future *done = bt_group_wait(g); /* the end of `async with` */
    bt_group_free(g);
    bt_loop_run_until(loop, done);
    int rc = bt_future_error(done);
    printf("group settled after %.0f ms: %s\n", (double)(bt_hrtime() - t0) / 1e6,
           rc == 0 ? "all done" : bt_future_error_message(done));
    for (int i = 0; i < n; i++) {
        printf("  fetch_user(%d) [%3llu ms]: %s", ids[i], (unsigned long long)ms[i],
               state_name(task[i]));
        if (bt_future_get_state(task[i]) == BT_FUTURE_VALUE)
            printf(", result %d", *(int *)bt_future_value(task[i]));
        bt_future_error(task[i]); /* the group reported it already */
        printf("\n");
        bt_future_unref(task[i]);
    }
    bt_future_unref(done);
    return rc;
}

int main(void)
{
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;
    int bad_ids[3] = {1, 2, 3}, good_ids[3] = {1, 3, 4};
    uint64_t bad_ms[3] = {200, 50, 1000}, good_ms[3] = {100, 150, 200};
    int rc1 = run_group(loop, bad_ids, bad_ms, 3);
    int rc2 = run_group(loop, good_ids, good_ms, 3);
    bt_loop_free(loop);
    /* The first group must fail with the child's error, the second not. */
    return rc1 == BT_ENOENT && rc2 == 0 ? 0 : 1;
}
