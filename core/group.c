/* Task groups: structured concurrency over futures.
 *
 * DESIGN
 * - The group holds a reference to each pending child and one callback on
 *   it (a `kid` node in a list). The group's future is created up front and
 *   its cancel hook aborts the group (cancels every pending child).
 * - The group finishes when it can take no more children (closed by
 *   bt_group_wait / bt_group_free, or aborting) and no child is pending.
 *   Finishing settles the future: the first error, or NULL. If the future's
 *   cancellation was requested, the core turns that into "cancelled".
 * - The group struct is freed when it has finished AND the handle was
 *   dropped, whichever comes last; callbacks on children always find it
 *   alive because it cannot finish while one is pending.
 * - A closer on the loop cancels an unfinished group at bt_loop_free, so
 *   its children settle, its deadline timer is freed before the event base,
 *   and a handle freed after the loop touches nothing of the loop.
 */
#include "config.h"

#include <inttypes.h>

#include <baton/group.h>

#include "future-internal.h"
#include "list.h"

typedef struct kid {
    bt__list link; /* on the group's kids */
    bt_group *g;
    bt_future *f; /* owned */
} kid;

struct bt_group {
    bt_loop *loop;
    bt_future *future; /* owned */
    bt__list kids;     /* pending children, newest first */
    size_t pending;
    size_t failed;  /* children that settled with an error */
    int first_code; /* 0 until the group fails */
    char *first_msg;
    bool first_is_child; /* else the deadline */
    bt_timer *deadline;
    uint64_t deadline_ms;
    bool closed, aborting, finished, handle, closer;
};

static void group_closer(void *arg);

static void group_destroy(bt_group *g)
{
    bt_free(g->first_msg);
    bt_future_unref(g->future);
    bt_free(g);
}

static void group_abort(bt_group *g)
{
    if (g->aborting)
        return;
    g->aborting = true;
    bt__list *pos, *tmp;
    BT__LIST_FOREACH_SAFE (pos, tmp, &g->kids)
        bt_future_cancel(BT__LIST_ENTRY(pos, kid, link)->f);
}

static void maybe_finish(bt_group *g)
{
    if (g->finished || !(g->closed || g->aborting) || g->pending > 0)
        return;
    g->finished = true;
    bt_timer_free(g->deadline);
    g->deadline = NULL;
    if (g->closer) {
        g->closer = false;
        bt_loop_remove_closer(g->loop, group_closer, g);
    }
    if (g->first_code != 0) {
        size_t others = g->failed - (g->first_is_child ? 1 : 0);
        if (others == 0)
            bt_future_set_error(g->future, g->first_code, "%s",
                                g->first_msg != NULL ? g->first_msg : "");
        else
            bt_future_set_error(g->future, g->first_code, "%s (and %zu %schild failure%s)",
                                g->first_msg != NULL ? g->first_msg : "", others,
                                g->first_is_child ? "other " : "", others == 1 ? "" : "s");
    } else {
        bt_future_set_value(g->future, NULL, NULL);
    }
    if (!g->handle)
        group_destroy(g);
}

static void fail(bt_group *g, int code, char *msg, bool from_child)
{
    if (g->first_code == 0) {
        g->first_code = code;
        g->first_msg = msg;
        g->first_is_child = from_child;
    } else {
        bt_free(msg);
    }
    group_abort(g);
}

static void on_kid(bt_future *f, void *arg)
{
    kid *k = arg;
    bt_group *g = k->g;
    bt__list_remove(&k->link);
    g->pending--;
    if (bt_future_get_state(f) == BT_FUTURE_ERROR) {
        g->failed++;
        int code = bt_future_error(f);
        fail(g, code, bt_strdup(bt_future_error_message(f)), true);
    }
    bt_future_unref(k->f);
    bt_free(k);
    maybe_finish(g);
}

static void on_cancel(bt_future *f, void *arg)
{
    (void)f;
    bt_group *g = arg;
    group_abort(g);
    maybe_finish(g);
}

static void group_closer(void *arg)
{
    bt_group *g = arg;
    g->closer = false; /* bt_loop_free has already unlinked it */
    g->closed = true;
    /* The hook aborts and finishes the group if it can (and may free it:
     * touch nothing after this). If cancellation was asked for earlier,
     * the group is already aborting and closing it changes nothing. */
    bt_future_cancel(g->future);
}

static void on_deadline(bt_timer *t, void *arg)
{
    (void)t;
    bt_group *g = arg;
    if (g->finished)
        return;
    fail(g, BT_ETIMEDOUT,
         bt_asprintf("task group deadline of %" PRIu64 " ms passed", g->deadline_ms), false);
    maybe_finish(g);
}

BT_EXPORT bt_group *bt_group_new(bt_loop *loop)
{
    if (loop == NULL)
        return NULL;
    bt_group *g = bt_calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->loop = loop;
    g->handle = true;
    bt__list_init(&g->kids);
    g->future = bt_future_new(loop);
    if (g->future == NULL || bt_loop_add_closer(loop, group_closer, g) != 0) {
        if (g->future != NULL) {
            bt_future_set_cancelled(g->future);
            bt_future_unref(g->future);
        }
        bt_free(g);
        return NULL;
    }
    g->closer = true;
    bt_future_on_cancel(g->future, on_cancel, g);
    return g;
}

BT_EXPORT int bt_group_add(bt_group *g, bt_future *child)
{
    if (child == NULL)
        return BT_EINVAL;
    if (g == NULL || child->loop != g->loop) {
        bt__future_discard(child); /* taken over even when we fail */
        return BT_EINVAL;
    }
    if (g->finished || g->aborting) {
        bt__future_discard(child); /* cancelled: nothing escapes the group */
        return BT_ESHUTDOWN;
    }
    kid *k = bt_calloc(1, sizeof *k);
    if (k == NULL || bt_future_add_callback(child, on_kid, k) != 0) {
        bt_free(k);
        bt__future_discard(child);
        return BT_ENOMEM;
    }
    k->g = g;
    k->f = child; /* the caller's reference, taken over */
    bt__list_push_front(&g->kids, &k->link);
    g->pending++;
    return 0;
}

BT_EXPORT bt_future *bt_group_wait(bt_group *g)
{
    if (g == NULL)
        return NULL;
    bt_future *f = bt_future_ref(g->future);
    g->closed = true;
    maybe_finish(g);
    return f;
}

BT_EXPORT int bt_group_set_deadline(bt_group *g, uint64_t ms)
{
    if (g == NULL)
        return BT_EINVAL;
    if (g->finished)
        return BT_EALREADY;
    if (g->deadline == NULL) {
        g->deadline = bt_timer_new(g->loop, on_deadline, g);
        if (g->deadline == NULL)
            return BT_ENOMEM;
    }
    g->deadline_ms = ms;
    return bt_timer_start(g->deadline, ms, 0);
}

BT_EXPORT int bt_group_cancel(bt_group *g)
{
    if (g == NULL)
        return BT_EINVAL;
    return bt_future_cancel(g->future);
}

BT_EXPORT size_t bt_group_pending(const bt_group *g)
{
    return g != NULL ? g->pending : 0;
}

BT_EXPORT size_t bt_group_failed(const bt_group *g)
{
    return g != NULL ? g->failed : 0;
}

BT_EXPORT void bt_group_free(bt_group *g)
{
    if (g == NULL)
        return;
    g->handle = false;
    g->closed = true;
    if (g->finished)
        group_destroy(g);
    else
        maybe_finish(g);
}
