/* docs/compose.md, "The tour": the snippet inside a complete program.
 * tests/check-snippets.sh checks that the page quotes it verbatim; `make
 * check` runs it (leak-free under --enable-asan). */
#include <stdint.h>
#include <stdio.h>

#include <baton/baton.h>

static int used;

static void use(void *value)
{
    (void)value;
    used++;
}

static bt_future *make_user(bt_future *slept, void *arg)
{
    return bt_future_new_value(bt_future_loop(slept), arg, NULL);
}

/* A 100 ms "query" whose value is the id. */
static bt_future *fetch_user(bt_loop *loop, int id)
{
    return bt_future_then(bt_sleep(loop, 100), make_user, (void *)(intptr_t)id);
}

static bt_future *greet(bt_future *user, void *arg)
{
    (void)arg;
    printf("hello, user %d\n", (int)(intptr_t)bt_future_value(user));
    return bt_future_new_value(bt_future_loop(user), NULL, NULL);
}

static bt_future *start_request(bt_loop *loop, void *arg)
{
    (void)arg;
    return bt_sleep(loop, 1);
}

static int args[1000];

int main(void)
{
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;

    /* asyncio.gather: three 100 ms fetches take about 100 ms, not 300. */
    bt_future *kids[3] = { fetch_user(loop, 1), fetch_user(loop, 2), fetch_user(loop, 3) };
    bt_future *all = bt_gather(loop, kids, 3, BT_GATHER_FAIL_FAST);  /* takes over kids[] */
    bt_loop_run_until(loop, all);
    if (bt_future_error(all) == 0) {
        bt_results *r = bt_future_value(all);           /* borrowed */
        for (size_t i = 0; i < bt_results_count(r); i++)
            use(bt_results_value(r, i));                /* borrowed, in order */
    }
    bt_future_unref(all);

    /* asyncio.wait_for: after 2 s, BT_ETIMEDOUT and the fetch is cancelled.
     * Calls nest as written: each takes over the future it is given. */
    bt_future *f = bt_future_then(bt_timeout(fetch_user(loop, 4), 2000), greet, NULL);
    bt_loop_run_until(loop, f);
    if (bt_future_error(f) != 0)
        fprintf(stderr, "%s\n", bt_future_error_message(f));
    bt_future_unref(f);

    /* asyncio.TaskGroup: the first failure cancels the rest. */
    bt_group *g = bt_group_new(loop);
    bt_group_add(g, fetch_user(loop, 5));               /* the group takes it over */
    bt_group_add(g, fetch_user(loop, 6));
    bt_group_set_deadline(g, 5000);                     /* optional */
    bt_future *done = bt_group_wait(g);                 /* end of `async with` */
    bt_group_free(g);                                   /* the group lives on */
    bt_loop_run_until(loop, done);
    bt_future_unref(done);

    /* "at most 100 requests at a time" */
    bt_semaphore *sem = bt_semaphore_new(loop, 100);
    bt_future *reqs[1000];
    for (int i = 0; i < 1000; i++)
        reqs[i] = bt_semaphore_run(sem, start_request, &args[i]);
    bt_future *every = bt_gather(loop, reqs, 1000, BT_GATHER_COLLECT);
    bt_loop_run_until(loop, every);
    bt_future_unref(every);
    bt_semaphore_free(sem);

    bt_loop_free(loop);
    return used == 3 ? 0 : 1;
}
