/* gather_await: run I/O concurrently and wait for all of it, in await
 * style (examples/gather.c is the callback version).
 *
 *     async def fetch_user(id):
 *         await asyncio.sleep(0.2)
 *         return {"id": id, "name": f"user{id}"}
 *
 *     for i in (1, 2, 3): await fetch_user(i)            # ~600 ms
 *     await asyncio.gather(*[fetch_user(i) for i in (1, 2, 3)])  # ~200 ms
 *
 * Each fetch_user is a fiber: awaited one after another they take about
 * 600 ms; gathered, about 200 ms, because the loop waits for all three at
 * the same time. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <baton/baton.h>

typedef struct {
    int id;
    char name[16];
} user;

static bt_future *fetch_user(bt_loop *loop, void *arg)
{
    int rc = bt_await(bt_sleep(loop, 200), NULL);
    if (rc != 0)
        return bt_future_new_error(loop, rc, "%s", bt_await_error());
    user *u = malloc(sizeof *u);
    if (u == NULL)
        return bt_future_new_error(loop, BT_ENOMEM, NULL);
    u->id = (int)(intptr_t)arg;
    snprintf(u->name, sizeof u->name, "user%d", u->id);
    return bt_future_new_value(loop, u, free);
}

static double ms_since(uint64_t t0) { return (double)(bt_hrtime() - t0) / 1e6; }

static bt_future *main_async(bt_loop *loop, void *arg)
{
    (void)arg;
    /* One after another. */
    uint64_t t0 = bt_hrtime();
    for (intptr_t id = 1; id <= 3; id++) {
        user *u;
        int rc = bt_await(bt_async(loop, fetch_user, (void *)id), (void **)&u);
        if (rc != 0)
            return bt_future_new_error(loop, rc, "%s", bt_await_error());
        printf("  got %s\n", u->name);
        free(u);
    }
    double seq = ms_since(t0);
    printf("sequential: %.0f ms\n", seq);

    /* All at once: results = await asyncio.gather(...) */
    t0 = bt_hrtime();
    bt_future *kids[3];
    for (int i = 0; i < 3; i++)
        kids[i] = bt_async(loop, fetch_user, (void *)(intptr_t)(i + 1));
    bt_future *all = bt_gather(loop, kids, 3, BT_GATHER_FAIL_FAST); /* takes the kids */
    bt_results *r;
    int rc = bt_await(all, (void **)&r);
    if (rc != 0)
        return bt_future_new_error(loop, rc, "gather: %s", bt_await_error());
    for (size_t i = 0; i < bt_results_count(r); i++)
        printf("  got %s\n", ((user *)bt_results_value(r, i))->name);
    bt_results_free(r);
    double par = ms_since(t0);
    printf("gathered: %.0f ms\n", par);
    /* Concurrency, not a timing contest: gathered beats sequential. */
    if (!(par < seq))
        return bt_future_new_error(loop, BT_EINVAL, "gather was not faster");
    return bt_future_new_value(loop, NULL, NULL);
}

static bt_future *start(bt_loop *loop, void *arg) { return bt_async(loop, main_async, arg); }

int main(void)
{
    int rc = bt_run(start, NULL);
    return rc == 0 ? 0 : 1;
}
