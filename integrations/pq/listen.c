/* LISTEN/NOTIFY, the public face: bt_pq_listen and bt_pq_unlisten. One
 * dedicated connection per pool carries every channel; the pool opens it
 * and channels.c keeps the channels and LISTENs again after a reconnect. */
#include "config.h"

#include <string.h>

#include "pq-internal.h"

BT_EXPORT bt_future *bt_pq_listen(bt_pq_pool *p, const char *channel, bt_pq_notify_cb cb, void *arg)
{
    if (p == NULL)
        return NULL;
    if (channel == NULL || !*channel || cb == NULL)
        return bt_future_new_error(p->loop, BT_EINVAL, "listen needs a channel and a callback");
    if (p->closed || p->closing)
        return bt_future_new_error(p->loop, BT_ESHUTDOWN, "the pool is %s",
                                   p->closed ? "closed" : "closing");
    if (p->o.transaction_pooling)
        return bt_future_new_error(p->loop, BT_ENOTSUP,
                                   "LISTEN does not work with transaction_pooling: a "
                                   "transaction pooler hands the session to other clients "
                                   "between transactions, so notifications would be lost");
    bt__pq_chan *ch = bt__pq_chan_find(p, channel);
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
    if (p->listener != NULL && p->listener->state == BT__PQ_CS_READY) {
        bt__pq_chan_send_listen(p->listener, channel, bt_future_ref(f));
        return f;
    }
    struct bt__pq_listen_wait *w = bt_calloc(1, sizeof *w);
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
    for (bt__pq_chan **pp = &p->chans; *pp; pp = &(*pp)->next) {
        bt__pq_chan *ch = *pp;
        if (strcmp(ch->name, channel) != 0)
            continue;
        *pp = ch->next;
        if (p->listener != NULL && p->listener->state == BT__PQ_CS_READY) {
            char *sql = bt__pq_chan_sql(p->listener, "UNLISTEN", channel);
            if (sql != NULL) {
                bt__pq_conn_send_internal(p->listener, sql);
                bt_free(sql);
            }
        }
        bt_free(ch->name);
        bt_free(ch);
        return 0;
    }
    return BT_ENOENT;
}
