/* docs/core.md, "Futures": the snippet inside a complete program.
 * tests/check-snippets.sh checks that the page quotes it verbatim; `make
 * check` runs it (leak-free under --enable-asan). */
#include <stdio.h>

#include <baton/baton.h>

typedef struct {
    int id;
} user;

static void user_free(void *u) { bt_free(u); }

static int calls;

static void on_done(bt_future *f, void *arg)
{
    (void)arg;
    calls += bt_future_error(f) == 0;
}

static void stop(void *loop) { bt_loop_stop(loop); }

int main(void)
{
    bt_loop *loop = bt_loop_new();
    user *alice = bt_malloc(sizeof *alice);
    if (loop == NULL || alice == NULL)
        return 1;
    alice->id = 1;
    void *arg = NULL;

    bt_future *f = bt_future_new(loop);            /* producer: new reference  */
    bt_future_set_value(f, alice, user_free);      /* or _set_error / _set_cancelled */

    bt_future_add_callback(f, on_done, arg);       /* consumer: runs from the loop */
    int rc = bt_future_error(f);                   /* 0, BT_E..., BT_ECANCELED */
    const user *u = bt_future_value(f);            /* borrowed */
    user *mine = bt_future_take_value(f);          /* now the caller frees it */
    bt_future_unref(f);

    printf("rc %d, user %d\n", rc, u->id);
    user_free(mine);
    bt_loop_call_soon(loop, stop, loop);
    bt_loop_run(loop); /* on_done runs */
    bt_loop_free(loop);
    return rc == 0 && calls == 1 ? 0 : 1;
}
