/* README.md, "The event loop": the snippet as a complete program.
 * tests/check-snippets.sh checks that the README quotes this file
 * verbatim; `make check` runs it (leak-free under --enable-asan). */
#include <stdint.h>
#include <stdio.h>

#include <baton/baton.h>

typedef struct {
    int id;
    const char *name;
} user;

static bt_future *user_found(bt_future *query, void *arg)
{
    user *u = bt_malloc(sizeof *u);
    if (u == NULL)
        return bt_future_new_error(bt_future_loop(query), BT_ENOMEM, NULL);
    u->id = (int)(intptr_t)arg;
    u->name = "Alice";
    return bt_future_new_value(bt_future_loop(query), u, bt_free);
}

static bt_future *print_user(bt_future *f, void *arg)
{
    (void)arg;
    const user *u = bt_future_value(f);
    printf("{'id': %d, 'name': '%s'}\n", u->id, u->name);
    return bt_future_new_value(bt_future_loop(f), NULL, NULL);
}

/* async def fetch_user(user_id): await asyncio.sleep(0.1); return {...} */
static bt_future *fetch_user(bt_loop *loop, int user_id)
{
    bt_future *query = bt_sleep(loop, 100); /* simulates a database query */
    return bt_future_then(query, user_found, (void *)(intptr_t)user_id);
}

static bt_future *main_async(bt_loop *loop, void *arg)
{
    (void)arg;
    return bt_future_then(fetch_user(loop, 1), print_user, NULL);
}

int main(void) { return bt_run(main_async, NULL) == 0 ? 0 : 1; }
