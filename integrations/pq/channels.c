/* The LISTEN channels of a pool: the table of channels and their
 * callbacks, the LISTEN statement for a channel, sending it on the listener
 * connection (again on each after a reconnect), and running a channel's
 * callback for a notification. Below the pool: it sends through conn.c and
 * calls nothing above it. */
#include "config.h"

#include <string.h>

#include "pq-internal.h"

bt__pq_chan *bt__pq_chan_find(bt_pq_pool *p, const char *name)
{
    for (bt__pq_chan *ch = p->chans; ch != NULL; ch = ch->next)
        if (strcmp(ch->name, name) == 0)
            return ch;
    return NULL;
}

/* "LISTEN "quoted"" for c, or NULL. Free with bt_free. */
char *bt__pq_chan_sql(bt_pq_conn *c, const char *verb, const char *channel)
{
    char *id = PQescapeIdentifier(c->pg, channel, strlen(channel));
    if (id == NULL)
        return NULL;
    char *sql = bt_asprintf("%s %s", verb, id);
    PQfreemem(id);
    return sql;
}

void bt__pq_chan_send_listen(bt_pq_conn *c, const char *channel, bt_future *f)
{
    char *sql = bt__pq_chan_sql(c, "LISTEN", channel);
    if (sql == NULL) {
        if (f != NULL) {
            bt_future_set_error(f, BT_EINVAL, "cannot quote channel name");
            bt_future_unref(f);
        }
        return;
    }
    bt_pq_query_opts o = { .size = sizeof(bt_pq_query_opts), .no_prepare = true };
    int err;
    bt__pq_query *q = bt__pq_query_new(c->pool, sql, 0, NULL, &o, &err);
    bt_free(sql);
    if (q == NULL) {
        if (f != NULL) {
            bt_future_set_error(f, err, "out of memory");
            bt_future_unref(f);
        }
        return;
    }
    if (f != NULL)
        q->f = f; /* takes the caller's reference */
    else
        q->internal = bt__pq_internal_done;
    bt__pq_conn_send(c, q);
}

/* The listener c is (again) open: LISTEN on every channel, and send the
 * LISTENs that waited for it. */
void bt__pq_chan_relisten(bt_pq_pool *p, bt_pq_conn *c)
{
    for (bt__pq_chan *ch = p->chans; ch != NULL && c->state == BT__PQ_CS_READY; ch = ch->next)
        bt__pq_chan_send_listen(c, ch->name, NULL);
    while (p->listen_waits != NULL && c->state == BT__PQ_CS_READY) {
        struct bt__pq_listen_wait *w = p->listen_waits;
        p->listen_waits = w->next;
        bt__pq_chan_send_listen(c, w->channel, w->f);
        bt_free(w->channel);
        bt_free(w);
    }
}

/* A notification: run its channel's callback, if it still has one. The
 * callback may unlisten (ch is not read after it) or free the pool (p is
 * pinned by the listener's on_io, so p->loop is still there to read). */
void bt__pq_chan_dispatch(bt_pq_pool *p, PGnotify *n)
{
    bt__pq_chan *ch = bt__pq_chan_find(p, n->relname);
    if (ch == NULL || ch->cb == NULL)
        return;
    bt_loop_enter_cb(p->loop, (const void *)ch->cb);
    ch->cb(n->relname, n->extra != NULL ? n->extra : "", n->be_pid, ch->arg);
    bt_loop_leave_cb(p->loop);
}
