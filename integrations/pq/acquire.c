/* Acquired connections, the public face: a connection taken out of the
 * pool for a series of queries (a transaction), the queries on it, and its
 * return. The pool (pool.c) keeps the acquire queue and takes a released
 * connection back, rolled back if dirty. */
#include "config.h"

#include "pq-internal.h"

BT_EXPORT bt_future *bt_pq_conn_query_ex(bt_pq_conn *c, const char *sql, int nparams,
                                         const char *const *values, const bt_pq_query_opts *opts)
{
    if (c == NULL || sql == NULL)
        return NULL;
    if (!c->acquired) {
        return bt_future_new_error(c->loop, BT_EINVAL,
                                   "the connection is not acquired (released already?)");
    }
    if (c->pool == NULL || c->state != BT__PQ_CS_READY)
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
    bt__pq_pool_acquire(p, f);
    return f;
}

BT_EXPORT const char *bt_pq_conn_parameter(const bt_pq_conn *c, const char *name)
{
    /* libpq keeps what the server reported at connect time and since
     * (ParameterStatus messages), and answers without a round trip. */
    if (c == NULL || name == NULL || !c->acquired || c->pg == NULL || c->state != BT__PQ_CS_READY)
        return NULL;
    return PQparameterStatus(c->pg, name);
}

BT_EXPORT void bt_pq_conn_release(bt_pq_conn *c)
{
    if (c != NULL)
        bt__pq_pool_release(c);
}
