/* hello_await.c: the guide's first program, in await style.
 *
 *     async def fetch_user(user_id):
 *         await asyncio.sleep(0.1)  # simulates a database query
 *         return {"id": user_id, "name": "Alice"}
 *
 *     async def main():
 *         user = await fetch_user(1)
 *         print(user)
 *
 *     asyncio.run(main())
 *
 * An async function is a function that runs on a fiber (bt_async) and
 * returns a future; inside it, bt_await suspends the fiber until a future
 * settles while the loop runs everything else. bt_run is asyncio.run.
 * examples/hello.c is the same program in callback style. */
#include <stdint.h>
#include <stdio.h>

#include <baton/baton.h>

typedef struct {
    int id;
    const char *name;
} user;

/* async def fetch_user(user_id) */
static bt_future *fetch_user(bt_loop *loop, void *arg)
{
    int rc = bt_await(bt_sleep(loop, 100), NULL); /* simulates a database query */
    if (rc != 0)
        return bt_future_new_error(loop, rc, "%s", bt_await_error());
    user *u = bt_malloc(sizeof *u);
    if (u == NULL)
        return bt_future_new_error(loop, BT_ENOMEM, NULL);
    u->id = (int)(intptr_t)arg;
    u->name = "Alice";
    return bt_future_new_value(loop, u, bt_free);
}

/* async def main() */
static bt_future *main_async(bt_loop *loop, void *arg)
{
    (void)arg;
    user *u;
    int rc = bt_await(bt_async(loop, fetch_user, (void *)(intptr_t)1), (void **)&u);
    if (rc != 0)
        return bt_future_new_error(loop, rc, "%s", bt_await_error());
    printf("{'id': %d, 'name': '%s'}\n", u->id, u->name);
    bt_free(u); /* the value is ours now */
    return bt_future_new_value(loop, NULL, NULL);
}

static bt_future *start(bt_loop *loop, void *arg)
{
    return bt_async(loop, main_async, arg);
}

int main(void)
{
    int rc = bt_run(start, NULL);
    if (rc != 0)
        fprintf(stderr, "hello_await: %s\n", bt_strerror(rc));
    return rc == 0 ? 0 : 1;
}
