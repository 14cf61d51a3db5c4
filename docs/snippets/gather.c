/* README.md, "Running tasks concurrently": the gather snippet inside a
 * complete program. tests/check-snippets.sh checks that the README quotes
 * it verbatim; `make check` runs it (leak-free under --enable-asan). */
#include <stdint.h>
#include <stdio.h>

#include <baton/baton.h>

typedef struct {
    int id;
    char name[16];
} user;

static int users_freed;

static void user_free(void *u)
{
    users_freed++;
    bt_free(u);
}

static bt_future *make_user(bt_future *slept, void *arg)
{
    user *u = bt_malloc(sizeof *u);
    if (u == NULL)
        return NULL;
    u->id = (int)(intptr_t)arg;
    snprintf(u->name, sizeof u->name, "user%d", u->id);
    return bt_future_new_value(bt_future_loop(slept), u, user_free);
}

/* async def fetch_user(id): await asyncio.sleep(0.2); return {...} */
static bt_future *fetch_user(bt_loop *loop, int id)
{
    return bt_future_then(bt_sleep(loop, 200), make_user, (void *)(intptr_t)id);
}

int main(void)
{
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;

    bt_future *kids[3];
    for (int i = 0; i < 3; i++)
        kids[i] = fetch_user(loop, i + 1);        /* each takes 200 ms */
    bt_future *all = bt_gather(loop, kids, 3, BT_GATHER_FAIL_FAST);  /* takes over kids[] */
    bt_loop_run_until(loop, all);
    bt_results *r = bt_future_value(all);         /* borrowed; NULL if it failed */
    for (size_t i = 0; i < bt_results_count(r); i++)
        printf("%s\n", ((user *)bt_results_value(r, i))->name);
    bt_future_unref(all);

    bt_loop_free(loop);
    return users_freed == 3 ? 0 : 1; /* all three made, printed and freed */
}
