/* LISTEN/NOTIFY: one dedicated connection per pool carries every channel;
 * after a reconnect it LISTENs again on each. */
#include "config.h"

#include <string.h>

#include "pq-internal.h"

/* ---- LISTEN / NOTIFY ------------------------------------------------------ */

static pq_chan *find_chan(bt_pq_pool *p, const char *name)
{
    for (pq_chan *ch = p->chans; ch; ch = ch->next)
        if (strcmp(ch->name, name) == 0)
            return ch;
    return NULL;
}

/* "LISTEN "quoted"" for c, or NULL. Free with bt_free. */
static char *listen_sql(bt_pq_conn *c, const char *verb, const char *channel)
{
    char *id = PQescapeIdentifier(c->pg, channel, strlen(channel));
    if (id == NULL)
        return NULL;
    char *sql = bt_asprintf("%s %s", verb, id);
    PQfreemem(id);
    return sql;
}

static void send_listen(bt_pq_conn *c, const char *channel, bt_future *f)
{
    char *sql = listen_sql(c, "LISTEN", channel);
    if (sql == NULL) {
        if (f) {
            bt_future_set_error(f, BT_EINVAL, "cannot quote channel name");
            bt_future_unref(f);
        }
        return;
    }
    bt_pq_query_opts o = { .size = sizeof(bt_pq_query_opts), .no_prepare = true };
    int err;
    pq_query *q = bt__pq_query_new(c->pool, sql, 0, NULL, &o, &err);
    bt_free(sql);
    if (q == NULL) {
        if (f) {
            bt_future_set_error(f, err, "out of memory");
            bt_future_unref(f);
        }
        return;
    }
    if (f)
        q->f = f; /* takes the caller's reference */
    else
        q->internal = bt__pq_internal_done;
    bt__pq_conn_send(c, q);
}

void bt__pq_pool_listener_ready(bt_pq_pool *p, bt_pq_conn *c)
{
    for (pq_chan *ch = p->chans; ch && c->state == CS_READY; ch = ch->next)
        send_listen(c, ch->name, NULL);
    while (p->listen_waits && c->state == CS_READY) {
        struct pq_listen_wait *w = p->listen_waits;
        p->listen_waits = w->next;
        send_listen(c, w->channel, w->f);
        bt_free(w->channel);
        bt_free(w);
    }
}

void bt__pq_pool_notify(bt_pq_pool *p, PGnotify *n)
{
    pq_chan *ch = find_chan(p, n->relname);
    if (ch == NULL || ch->cb == NULL)
        return;
    bt_loop_enter_cb(p->loop, (const void *)ch->cb);
    ch->cb(n->relname, n->extra ? n->extra : "", n->be_pid, ch->arg);
    bt_loop_leave_cb(p->loop);
}

BT_EXPORT bt_future *bt_pq_listen(bt_pq_pool *p, const char *channel, bt_pq_notify_cb cb, void *arg)
{
    if (p == NULL)
        return NULL;
    if (channel == NULL || !*channel || cb == NULL)
        return bt_future_new_error(p->loop, BT_EINVAL, "listen needs a channel and a callback");
    if (p->closed || p->closing)
        return bt_future_new_error(p->loop, BT_ESHUTDOWN, "the pool is %s",
                                   p->closed ? "closed" : "closing");
    pq_chan *ch = find_chan(p, channel);
    if (ch == NULL) {
        ch = bt_calloc(1, sizeof *ch);
        if (ch == NULL || !(ch->name = bt_strdup(channel))) {
            bt_free(ch);
            return bt_future_new_error(p->loop, BT_ENOMEM, "out of memory");
        }
        ch->next = p->chans;
        p->chans = ch;
    }
    ch->cb = cb;
    ch->arg = arg;
    bt_future *f = bt_future_new(p->loop);
    if (f == NULL)
        return NULL;
    if (p->listener && p->listener->state == CS_READY) {
        send_listen(p->listener, channel, bt_future_ref(f));
        return f;
    }
    struct pq_listen_wait *w = bt_calloc(1, sizeof *w);
    if (w == NULL || !(w->channel = bt_strdup(channel))) {
        bt_free(w);
        bt_future_set_error(f, BT_ENOMEM, "out of memory");
        return f;
    }
    w->f = bt_future_ref(f);
    w->next = p->listen_waits;
    p->listen_waits = w;
    if (p->listener == NULL) {
        if (!bt__pq_can_connect(p)) {
            /* Backing off after failures: the maintenance timer starts the
             * listener; meanwhile the LISTEN waits. */
            return f;
        }
        bt__pq_start_listener(p);
    }
    return f;
}

BT_EXPORT int bt_pq_unlisten(bt_pq_pool *p, const char *channel)
{
    if (p == NULL || channel == NULL)
        return BT_EINVAL;
    for (pq_chan **pp = &p->chans; *pp; pp = &(*pp)->next) {
        pq_chan *ch = *pp;
        if (strcmp(ch->name, channel) != 0)
            continue;
        *pp = ch->next;
        if (p->listener && p->listener->state == CS_READY) {
            char *sql = listen_sql(p->listener, "UNLISTEN", channel);
            if (sql) {
                bt__pq_send_internal(p->listener, sql);
                bt_free(sql);
            }
        }
        bt_free(ch->name);
        bt_free(ch);
        return 0;
    }
    return BT_ENOENT;
}
