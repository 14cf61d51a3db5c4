/* Acquired connections: a connection taken out of the pool for a series
 * of queries (a transaction), and its return, rolled back if dirty. */
#include "config.h"

#include <string.h>

#include "pq-internal.h"

/* ---- Acquired connections ------------------------------------------------- */

/* Take a waiter off the pool's acquire queue. */
void bt__pq_aq_unlink(bt_pq_pool *p, struct pq_acq *a)
{
    if (a->prev)
        a->prev->next = a->next;
    else
        p->aq_head = a->next;
    if (a->next)
        a->next->prev = a->prev;
    else
        p->aq_tail = a->prev;
    a->next = a->prev = NULL;
    p->naq--;
}

static void on_acquire_cancel(bt_future *f, void *arg)
{
    (void)f;
    struct pq_acq *a = arg;
    /* a is still queued: bt__pq_hand_over and the timers free it otherwise, and
     * the future is settled then, so this hook cannot run. */
    bt_pq_pool *pool = a->pool;
    bt__pq_aq_unlink(pool, a);
    bt_future_set_cancelled(a->f);
    bt_future_unref(a->f);
    bt_free(a);
    bt__pq_check_drained(pool);
}

BT_EXPORT bt_future *bt_pq_acquire(bt_pq_pool *p)
{
    if (p == NULL)
        return NULL;
    bt_future *f = bt_future_new(p->loop);
    if (f == NULL)
        return NULL;
    if (p->closed || p->closing) {
        bt_future_set_error(f, BT_ESHUTDOWN, "the pool is %s", p->closed ? "closed" : "closing");
        return f;
    }
    struct pq_acq *a = bt_calloc(1, sizeof *a);
    if (a == NULL) {
        bt_future_set_error(f, BT_ENOMEM, "out of memory");
        return f;
    }
    a->pool = p;
    a->f = bt_future_ref(f);
    bt_pq_conn *c = p->aq_head ? NULL : bt__pq_find_idle(p);
    if (c) {
        bt__pq_hand_over(c, a);
        return f;
    }
    if (p->nwq + p->naq >= p->o.max_waiters) {
        bt_future_set_error(f, BT_EAGAIN, "too many waiting for a connection (max_waiters %u)",
                            p->o.max_waiters);
        bt_future_unref(a->f);
        bt_free(a);
        return f;
    }
    a->deadline_ns = bt__pq_deadline(p);
    a->prev = p->aq_tail;
    if (p->aq_tail)
        p->aq_tail->next = a;
    else
        p->aq_head = a;
    p->aq_tail = a;
    p->naq++;
    bt_future_on_cancel(f, on_acquire_cancel, a);
    bt__pq_arm_wait(p);
    bt__pq_pump(p);
    return f;
}

BT_EXPORT bt_future *bt_pq_conn_query_ex(bt_pq_conn *c, const char *sql, int nparams,
                                         const char *const *values, const bt_pq_query_opts *opts)
{
    if (c == NULL || sql == NULL)
        return NULL;
    if (!c->acquired) {
        return bt_future_new_error(c->loop, BT_EINVAL,
                                   "the connection is not acquired (released already?)");
    }
    if (c->pool == NULL || c->state != CS_READY)
        return bt_future_new_error(c->loop, BT_ECONNRESET,
                                   "the connection was lost; release it and acquire another");
    return bt__pq_submit(c->pool, c->loop, c, sql, nparams, values, opts);
}

BT_EXPORT bt_future *bt_pq_conn_query(bt_pq_conn *c, const char *sql, int nparams,
                                      const char *const *values)
{
    return bt_pq_conn_query_ex(c, sql, nparams, values, NULL);
}

static bt_future *simple(bt_pq_conn *c, const char *sql)
{
    bt_pq_query_opts o = { .size = sizeof(bt_pq_query_opts), .no_prepare = true };
    return bt_pq_conn_query_ex(c, sql, 0, NULL, &o);
}

BT_EXPORT bt_future *bt_pq_conn_begin(bt_pq_conn *c)
{
    return simple(c, "BEGIN");
}
BT_EXPORT bt_future *bt_pq_conn_commit(bt_pq_conn *c)
{
    return simple(c, "COMMIT");
}
BT_EXPORT bt_future *bt_pq_conn_rollback(bt_pq_conn *c)
{
    return simple(c, "ROLLBACK");
}

BT_EXPORT bool bt_pq_conn_in_transaction(const bt_pq_conn *c)
{
    if (c == NULL || c->pg == NULL)
        return false;
    PGTransactionStatusType ts = PQtransactionStatus(c->pg);
    return ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR;
}

void bt__pq_send_internal(bt_pq_conn *c, const char *sql)
{
    bt_pq_query_opts o = { .size = sizeof(bt_pq_query_opts), .no_prepare = true };
    int err;
    pq_query *q = bt__pq_query_new(c->pool, sql, 0, NULL, &o, &err);
    if (q == NULL) {
        bt__pq_conn_close(c, BT_ENOMEM, "out of memory");
        return;
    }
    q->internal = bt__pq_internal_done;
    bt__pq_conn_send(c, q);
}

/* c was released and has nothing in flight: roll back a transaction left
 * open (never hand a connection to the next user mid-transaction), then
 * make it available. */
void bt__pq_finish_release(bt_pq_conn *c)
{
    bt_pq_pool *p = c->pool;
    if (c->state != CS_READY) {
        bt__pq_conn_close(c, BT_ECONNRESET, "broken");
        return;
    }
    if (bt_pq_conn_in_transaction(c) || PQtransactionStatus(c->pg) == PQTRANS_UNKNOWN) {
        if (c->rollback_tries++ > 0 || PQtransactionStatus(c->pg) == PQTRANS_UNKNOWN) {
            bt__pq_conn_close(c, BT_ECONNRESET, "could not roll back a released connection");
            return;
        }
        bt_log(BT_LOG_DEBUG, "pq: a connection was released inside a transaction; rolling back");
        bt__pq_send_internal(c, "ROLLBACK");
        return; /* back here through bt__pq_pool_conn_available */
    }
    c->releasing = false;
    c->rollback_tries = 0;
    c->idle_ns = bt_hrtime();
    if (c->retiring) {
        bt__pq_conn_close(c, 0, "retired");
        return;
    }
    bt__pq_pump(p);
}

BT_EXPORT void bt_pq_conn_release(bt_pq_conn *c)
{
    if (!c || !c->acquired)
        return;
    c->acquired = false;
    if (c->pool == NULL || c->state == CS_DEAD) {
        bt__pq_conn_free_dead(c);
        return;
    }
    c->releasing = true;
    if (c->ops_len == 0)
        bt__pq_finish_release(c);
}
