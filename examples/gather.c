/* gather: run I/O concurrently and wait for all of it.
 *
 * Mirrors the guide's "Running Tasks Concurrently" (asyncio.gather): three
 * slow operations of 200 ms each, first one after another, then all at
 * once with bt_gather. Sequentially they take about 600 ms; gathered,
 * about 200 ms, because the loop waits for all three at the same time.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <baton/baton.h>

typedef struct {
    int id;
    char name[16];
} user;

/* Runs when the "query" is done: build the row it would have returned. */
static bt_future *make_user(bt_future *slept, void *arg)
{
    user *u = malloc(sizeof *u);
    if (u == NULL)
        return NULL;
    u->id = (int)(intptr_t)arg;
    snprintf(u->name, sizeof u->name, "user%d", u->id);
    return bt_future_new_value(bt_future_loop(slept), u, free);
}

/* async def fetch_user(id): await asyncio.sleep(0.2); return {...} */
static bt_future *fetch_user(bt_loop *loop, int id)
{
    return bt_future_then(bt_sleep(loop, 200), make_user, (void *)(intptr_t)id);
}

static double ms_since(uint64_t t0) { return (double)(bt_hrtime() - t0) / 1e6; }

int main(void)
{
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;

    /* One after another: each await finishes before the next starts. */
    uint64_t t0 = bt_hrtime();
    for (int id = 1; id <= 3; id++) {
        bt_future *f = fetch_user(loop, id);
        bt_loop_run_until(loop, f);
        if (bt_future_error(f) != 0) {
            fprintf(stderr, "fetch_user(%d): %s\n", id, bt_future_error_message(f));
            return 1;
        }
        user *u = bt_future_value(f);
        printf("  got %s\n", u->name);
        bt_future_unref(f);
    }
    double seq = ms_since(t0);
    printf("sequential: %.0f ms\n", seq);

    /* All at once: results = await asyncio.gather(*[fetch_user(i) ...]) */
    t0 = bt_hrtime();
    bt_future *kids[3];
    for (int i = 0; i < 3; i++)
        kids[i] = fetch_user(loop, i + 1);
    bt_future *all = bt_gather(loop, kids, 3, BT_GATHER_FAIL_FAST); /* takes over kids[] */
    if (all == NULL)
        return 1;
    bt_loop_run_until(loop, all);
    if (bt_future_error(all) != 0) {
        fprintf(stderr, "gather: %s\n", bt_future_error_message(all));
        return 1;
    }
    bt_results *r = bt_future_value(all); /* borrowed from the future */
    for (size_t i = 0; i < bt_results_count(r); i++)
        printf("  got %s\n", ((user *)bt_results_value(r, i))->name);
    double conc = ms_since(t0);
    printf("concurrent: %.0f ms (%.1fx faster)\n", conc, seq / conc);
    bt_future_unref(all);

    bt_loop_free(loop);
    return 0;
}
