/* bt_pq_transaction: acquire, BEGIN, the caller's body, COMMIT or
 * ROLLBACK, release; asyncpg's
 *     async with pool.acquire() as conn:
 *         async with conn.transaction(): ...
 * as one future. A small state machine driven by the callbacks of each
 * step's future; `step` is the future of the step under way, so a cancel of
 * the result can reach it. */
#include "config.h"

#include "pq-internal.h"

typedef struct {
    bt_pq_pool *pool;
    bt_pq_tx_fn fn;
    void *arg;
    bt_pq_conn *conn;
    bt_future *out;  /* the caller's future; our own reference */
    bt_future *body; /* the body's future, kept for its outcome */
    bt_future *step; /* the step under way (borrowed while pending) */
    bool ending;     /* COMMIT or ROLLBACK sent: let it finish */
} tx;

static void tx_finish(tx *t)
{
    bt_pq_conn_release(t->conn); /* NULL-safe; rolls back if still dirty */
    if (t->body != NULL)
        bt_future_unref(t->body);
    bt_future_unref(t->out);
    bt_free(t);
}

static void on_end(bt_future *f, void *arg)
{
    tx *t = arg;
    t->step = NULL;
    int err = bt_future_error(f);
    if (bt_future_error(t->body) == 0 && err != 0) {
        /* COMMIT failed (a deferred constraint, a serialization failure):
         * the transaction did not happen. */
        bt_future_set_error(t->out, err, "COMMIT failed: %s", bt_future_error_message(f));
    } else {
        /* Committed: the body's value. Rolled back: the body's error or
         * cancellation (a failed ROLLBACK changes nothing: the release
         * rolls back again or discards the connection). */
        bt_future_set_from(t->out, t->body);
    }
    tx_finish(t);
}

static void end_with(tx *t, bt_future *(*verb)(bt_pq_conn *))
{
    t->ending = true;
    bt_future *f = verb(t->conn);
    if (f == NULL) {
        bt_future_set_error(t->out, BT_ENOMEM, "out of memory ending a transaction");
        tx_finish(t);
        return;
    }
    t->step = f;
    bt_future_add_callback(f, on_end, t);
    bt_future_unref(f);
}

static void on_body(bt_future *f, void *arg)
{
    tx *t = arg;
    (void)f;
    t->step = NULL;
    end_with(t, bt_future_get_state(t->body) == BT_FUTURE_VALUE ? bt_pq_conn_commit
                                                                : bt_pq_conn_rollback);
}

static void on_begin(bt_future *f, void *arg)
{
    tx *t = arg;
    t->step = NULL;
    int err = bt_future_error(f);
    if (err) {
        bt_future_set_from(t->out, f);
        tx_finish(t);
        return;
    }
    if (bt_future_cancel_requested(t->out)) {
        bt_future_set_cancelled(t->out);
        tx_finish(t); /* the release rolls the empty transaction back */
        return;
    }
    t->body = t->fn(t->conn, t->arg);
    if (t->body == NULL) /* (the body may have freed the pool: not t->pool->loop) */
        t->body = bt_future_new_error(bt_future_loop(t->out), BT_ENOMEM,
                                      "the transaction body returned no future");
    if (t->body == NULL) {
        bt_future_set_error(t->out, BT_ENOMEM, NULL);
        tx_finish(t);
        return;
    }
    t->step = t->body;
    bt_future_add_callback(t->body, on_body, t);
}

static void on_acquired(bt_future *f, void *arg)
{
    tx *t = arg;
    t->step = NULL;
    if (bt_future_cancel_requested(t->out)) {
        bt_future_error(f);
        bt_future_set_cancelled(t->out);
        tx_finish(t); /* an acquired connection is released when f is freed */
        return;
    }
    if (bt_future_error(f) != 0) {
        bt_future_set_from(t->out, f);
        tx_finish(t);
        return;
    }
    t->conn = bt_future_take_value(f);
    bt_future *b = bt_pq_conn_begin(t->conn);
    if (b == NULL) {
        bt_future_set_error(t->out, BT_ENOMEM, NULL);
        tx_finish(t);
        return;
    }
    t->step = b;
    bt_future_add_callback(b, on_begin, t);
    bt_future_unref(b);
}

/* Cancelling the result cancels the step under way: a waiting acquire
 * leaves the queue, a running body is cancelled (and rolled back). Once
 * COMMIT or ROLLBACK is on its way it finishes; the result then settles
 * as cancelled anyway (the future's rule), so a cancel that loses the race
 * with COMMIT leaves a committed transaction behind a cancelled future, as
 * in asyncpg. */
static void on_cancel(bt_future *f, void *arg)
{
    (void)f;
    tx *t = arg;
    if (t->step != NULL && !t->ending)
        bt_future_cancel(t->step);
}

BT_EXPORT bt_future *bt_pq_transaction(bt_pq_pool *pool, bt_pq_tx_fn fn, void *arg)
{
    if (pool == NULL || fn == NULL)
        return NULL;
    bt_future *out = bt_future_new(pool->loop);
    if (out == NULL)
        return NULL;
    tx *t = bt_calloc(1, sizeof *t);
    bt_future *a = t ? bt_pq_acquire(pool) : NULL;
    if (a == NULL) {
        bt_free(t);
        bt_future_set_error(out, BT_ENOMEM, NULL);
        return out;
    }
    t->pool = pool;
    t->fn = fn;
    t->arg = arg;
    t->out = bt_future_ref(out);
    t->step = a;
    bt_future_on_cancel(out, on_cancel, t);
    bt_future_add_callback(a, on_acquired, t);
    bt_future_unref(a);
    return out;
}
