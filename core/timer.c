/* Timers and bt_sleep, on libevent timeouts. */
#include "config.h"

#include <baton/future.h>

#include "loop-internal.h"
#include "timeval.h"

struct bt_timer {
    bt_loop *loop;
    struct event *ev;
    bt_timer_cb cb;
    void *arg;
    uint64_t repeat_ms;
    bool in_cb;
    bool free_after_cb;
};

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bt_timer *t = arg;
    if (t->repeat_ms) {
        struct timeval tv = bt__timeval_ms(t->repeat_ms);
        event_add(t->ev, &tv);
    }
    t->in_cb = true;
    bt_loop_enter_cb(t->loop, (const void *)t->cb);
    t->cb(t, t->arg);
    bt_loop_leave_cb(t->loop);
    t->in_cb = false;
    if (t->free_after_cb) {
        event_free(t->ev);
        bt_free(t);
    }
}

BT_EXPORT bt_timer *bt_timer_new(bt_loop *loop, bt_timer_cb cb, void *arg)
{
    if (loop == NULL || cb == NULL)
        return NULL;
    bt_timer *t = bt_calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->ev = event_new(loop->base, -1, 0, on_timer, t);
    if (t->ev == NULL) {
        bt_free(t);
        return NULL;
    }
    t->loop = loop;
    t->cb = cb;
    t->arg = arg;
    return t;
}

BT_EXPORT int bt_timer_start(bt_timer *t, uint64_t timeout_ms, uint64_t repeat_ms)
{
    if (t == NULL || t->free_after_cb)
        return BT_EINVAL;
    t->repeat_ms = repeat_ms;
    struct timeval tv = bt__timeval_ms(timeout_ms);
    return event_add(t->ev, &tv) == 0 ? 0 : BT_ENOMEM;
}

BT_EXPORT void bt_timer_stop(bt_timer *t)
{
    if (t == NULL)
        return;
    t->repeat_ms = 0;
    event_del(t->ev);
}

BT_EXPORT bool bt_timer_is_active(const bt_timer *t)
{
    return t != NULL && event_pending(t->ev, EV_TIMEOUT, NULL);
}

BT_EXPORT void bt_timer_free(bt_timer *t)
{
    if (t == NULL)
        return;
    bt_timer_stop(t);
    if (t->in_cb) {
        t->free_after_cb = true;
        return;
    }
    event_free(t->ev);
    bt_free(t);
}

/* ---- bt_sleep ------------------------------------------------------------ */

typedef struct {
    struct event *ev;
    bt_future *f; /* plain pointer: the loop keeps it while pending */
} sleeper;

static void sleeper_free(sleeper *s)
{
    event_free(s->ev);
    bt_free(s);
}

static void on_sleep_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sleeper *s = arg;
    bt_future_set_value(s->f, NULL, NULL);
    sleeper_free(s);
}

static void on_sleep_cancel(bt_future *f, void *arg)
{
    sleeper *s = arg;
    event_del(s->ev);
    bt_future_set_cancelled(f);
    sleeper_free(s);
}

BT_EXPORT bt_future *bt_sleep(bt_loop *loop, uint64_t ms)
{
    if (loop == NULL)
        return NULL;
    sleeper *s = bt_calloc(1, sizeof *s);
    bt_future *f = s != NULL ? bt_future_new(loop) : NULL;
    if (f == NULL) {
        bt_free(s);
        return NULL;
    }
    s->f = f;
    s->ev = event_new(loop->base, -1, 0, on_sleep_done, s);
    struct timeval tv = bt__timeval_ms(ms);
    if (s->ev == NULL || event_add(s->ev, &tv) != 0) {
        if (s->ev != NULL)
            event_free(s->ev);
        bt_free(s);
        bt_future_set_error(f, BT_ENOMEM, "could not arm the sleep timer");
        bt_future_error(f); /* the caller never sees it; not a mistake of theirs */
        bt_future_unref(f);
        return NULL;
    }
    bt_future_on_cancel(f, on_sleep_cancel, s);
    return f;
}
