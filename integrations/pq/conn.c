/* One open connection: its statement cache, sending queries in pipeline
 * mode (solo or batched), matching the results to them in order, and
 * closing. See pq-internal.h for the design (ops FIFO, batches, abandoned
 * queries, lifetimes); connect.c opens it. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pq-internal.h"

static int process(bt_pq_conn *c);

static uint64_t now_ns(void)
{
    return bt_hrtime();
}

static bt__pq_op *ops_front(bt_pq_conn *c);

/* The one way conn.c ends a query: settle it (code 0: with what it
 * collected; else failed with code and the message) unless it was settled
 * already, and free it. */
static void end_query(bt__pq_query *q, int code, const char *fmt, ...) BT_PRINTF(3, 4);
static void end_query(bt__pq_query *q, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bt__pq_query_vend(q, code, fmt, ap);
    va_end(ap);
}

/* libpq says c is broken: close it with libpq's message (closing reads it
 * before it frees the PGconn that holds it). Returns -1 for the callers
 * that must return at once. */
static int close_broken(bt_pq_conn *c)
{
    bt__pq_conn_close(c, BT_ECONNRESET, PQerrorMessage(c->pg));
    return -1;
}

/* cancel.c reports here (see cancel.c's DESIGN). Answered: the server has
 * acted on the request, so the connection may take new work again once
 * drained. Not answered in time: a late request could hit whatever the
 * connection runs next, so it is closed, and the pool replaces it. */
static void cancel_done(bt_pq_conn *c, bool answered, uint64_t timeout_ms)
{
    if (answered) {
        /* A second abandoned query reached the front while this request was
         * in flight; it may have been answered before that query started,
         * so ask again for the one that runs now. */
        if (c->cancel_again) {
            c->cancel_again = false;
            bt__pq_op *f = ops_front(c);
            if (f != NULL && f->q != NULL && f->q->abandoned)
                bt__pq_cancel_send(c, cancel_done);
        }
        if (c->ops_len == 0)
            c->cancel_sent = false;
        if (c->pool != NULL && c->state == BT__PQ_CS_READY && !c->is_listener)
            c->events->available(c);
        return;
    }
    if (c->pool != NULL)
        c->pool->st.cancels_timed_out++;
    bt_log(BT_LOG_WARN,
           "pq: a cancel request got no answer within %llu ms (cancel_timeout_ms); closing "
           "its connection so that the pool replaces it",
           (unsigned long long)timeout_ms);
    char why[128];
    snprintf(why, sizeof why, "the cancel request got no answer within %llu ms",
             (unsigned long long)timeout_ms);
    bt__pq_conn_close(c, BT_ECONNRESET, why);
}

/* ---- The ops FIFO -------------------------------------------------------- */

static int ops_push(bt_pq_conn *c, int kind, bt__pq_query *q, bt__pq_stmt *s)
{
    if (c->ops_len == c->ops_cap) {
        size_t cap = c->ops_cap ? c->ops_cap * 2 : 16;
        bt__pq_op *n = bt_malloc(cap * sizeof *n);
        if (n == NULL)
            return BT_ENOMEM;
        for (size_t i = 0; i < c->ops_len; i++)
            n[i] = c->ops[(c->ops_head + i) % c->ops_cap];
        bt_free(c->ops);
        c->ops = n;
        c->ops_cap = cap;
        c->ops_head = 0;
    }
    bt__pq_op *op = &c->ops[(c->ops_head + c->ops_len) % c->ops_cap];
    op->kind = kind;
    op->q = q;
    op->stmt = s;
    c->ops_len++;
    return 0;
}

static bt__pq_op *ops_front(bt_pq_conn *c)
{
    return c->ops_len ? &c->ops[c->ops_head] : NULL;
}

static void ops_pop(bt_pq_conn *c)
{
    c->ops_head = (c->ops_head + 1) % c->ops_cap;
    c->ops_len--;
}

/* ---- Closing ------------------------------------------------------------ */

/* Fail everything on c, close the PGconn and tell the pool. If c is
 * acquired by a user it stays allocated (dead) until released; otherwise it
 * is freed. why may be libpq's message on c->pg (PQerrorMessage): it is
 * not read once the PGconn is finished. */
void bt__pq_conn_close(bt_pq_conn *c, int code, const char *why)
{
    if (c->state == BT__PQ_CS_DEAD)
        return;
    bool was_open = c->state == BT__PQ_CS_READY;
    c->state = BT__PQ_CS_DEAD;
    bt__pq_cancel_detach(c);
    if (c->timer != NULL) {
        bt_timer_free(c->timer);
        c->timer = NULL;
    }
    bt__pq_resolve_detach(c);
    if (c->ev != NULL) {
        event_free(c->ev);
        c->ev = NULL;
    }
    if (c->wev != NULL) {
        event_free(c->wev);
        c->wev = NULL;
    }
    /* Every query still on the connection was sent: it may or may not have
     * run, so it fails and is never retried; in pipeline order, the
     * answered ones waiting for their Sync first. */
    c->nheld = 0;
    c->held_error = false;
    bt__list *n;
    while ((n = bt__list_pop_front(&c->held)) != NULL)
        end_query(BT__LIST_ENTRY(n, bt__pq_query, link), code == 0 ? BT_ECONNRESET : code,
                  "the connection was lost before the query's transaction was "
                  "confirmed (it may or may not have run; not retried): %s",
                  why != NULL ? why : "connection closed");
    while (c->ops_len) {
        bt__pq_op op = *ops_front(c);
        ops_pop(c);
        if (op.kind == BT__PQ_OP_PREPARE && op.stmt != NULL)
            bt__pq_stmt_unref(op.stmt);
        if (op.kind != BT__PQ_OP_QUERY)
            continue;
        if (code == BT_ESHUTDOWN)
            end_query(op.q, code, "%s", why != NULL ? why : "the pool is shutting down");
        else
            end_query(op.q, code == 0 ? BT_ECONNRESET : code,
                      "the connection was lost while the query was in flight "
                      "(it may or may not have run; not retried): %s",
                      why != NULL ? why : "connection closed");
    }
    c->inflight = c->abandoned = c->unsynced = 0;
    if (c->pg != NULL) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    bt_pq_pool *p = c->pool;
    if (p != NULL) {
        if (was_open && code != BT_ESHUTDOWN && code != 0)
            p->st.broken++;
        c->events->gone(c); /* unlinks c */
    }
    if (!c->acquired)
        bt__pq_conn_free_dead(c);
    else if (c->takeover != NULL)
        c->takeover->closed(c, code, why); /* a COPY ran on it; may release it */
}

/* The pool is shutting down: close c with BT_ESHUTDOWN. Closing under
 * running queries, PQfinish alone would leave the server running them
 * until they try to answer: ask it to stop them first (best effort: the
 * request goes out from a thread that nobody waits for, see cancel.c). */
void bt__pq_conn_shutdown(bt_pq_conn *c, const char *why)
{
    if (c->state == BT__PQ_CS_READY && c->ops_len > 0 && c->cancel_job == NULL && c->pg != NULL)
        bt__pq_cancel_fire(c->pg);
    bt__pq_conn_close(c, BT_ESHUTDOWN, why);
}

void bt__pq_conn_free_dead(bt_pq_conn *c)
{
    if (c->busy) {
        /* A user callback (a row, a notification) closed the pool or
         * released the connection under on_io: on_io frees it on its way
         * out. */
        c->zombie = true;
        return;
    }
    bt__pq_stmt_clear(c);
    bt_free(c->ops);
    bt_free(c->hostaddr);
    bt_free(c);
}

/* ---- Sending ------------------------------------------------------------ */

static int flush(bt_pq_conn *c)
{
    int rc = PQflush(c->pg);
    if (rc < 0)
        return -1;
    if (rc == 1 && !c->flushing) {
        event_add(c->wev, NULL);
        c->flushing = true;
    } else if (rc == 0 && c->flushing) {
        event_del(c->wev);
        c->flushing = false;
    }
    return 0;
}

/* Send a Sync for the queries sent since the last one. Returns -1 if that
 * broke (and closed) the connection. */
int bt__pq_conn_sync(bt_pq_conn *c)
{
    if (c->unsynced == 0 || c->state != BT__PQ_CS_READY)
        return 0;
    c->unsynced = 0;
    if (!PQpipelineSync(c->pg) || ops_push(c, BT__PQ_OP_SYNC, NULL, NULL) != 0 || flush(c) != 0)
        return close_broken(c);
    return 0;
}

BT_EXPORT bool bt_pq_conn_in_transaction(const bt_pq_conn *c)
{
    if (c == NULL || c->pg == NULL)
        return false;
    PGTransactionStatusType ts = PQtransactionStatus(c->pg);
    return ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR;
}

/* Send one of the pool's own statements (ROLLBACK, UNLISTEN, LISTEN after a
 * reconnect) on c: no future; a failure is logged. */
void bt__pq_conn_send_internal(bt_pq_conn *c, const char *sql)
{
    bt_pq_query_opts o = { .size = sizeof(bt_pq_query_opts), .no_prepare = true };
    int err;
    bt__pq_query *q = bt__pq_query_new(c->pool, sql, 0, NULL, &o, &err);
    if (q == NULL) {
        bt__pq_conn_close(c, BT_ENOMEM, "out of memory");
        return;
    }
    q->internal = bt__pq_internal_done;
    bt__pq_conn_send(c, q);
}

/* The cache was full: DEALLOCATE the statement it forgot (name). Queries
 * already sent with it run before: the pipeline keeps order. Returns -1 if
 * the connection broke. */
static int stmt_evict(bt_pq_conn *c, const char *name)
{
    char sql[48];
    snprintf(sql, sizeof sql, "DEALLOCATE %s", name);
    bt_pq_query_opts o = { .size = sizeof(bt_pq_query_opts), .no_prepare = true };
    int err;
    bt__pq_query *d = bt__pq_query_new(c->pool, sql, 0, NULL, &o, &err);
    if (d == NULL)
        return 0; /* the statement leaks server-side; harmless */
    d->internal = bt__pq_internal_done;
    bt__pq_conn_send(c, d);
    return c->state == BT__PQ_CS_READY ? 0 : -1;
}

/* May q share a Sync with other queries (see "Syncs and batches")? */
static bool batchable(const bt_pq_conn *c, const bt__pq_query *q)
{
    const bt_pq_pool *p = c->pool;
    return p && !p->o.sync_each_query && p->o.pipeline_depth > 1 && !c->is_listener &&
           !c->acquired && !c->releasing && q->target == NULL && !q->solo && q->row_cb == NULL &&
           q->internal == NULL;
}

/* Queue q's ops and hand them to libpq. Never fails the caller: a send
 * failure means the connection is broken, which fails q with the rest. */
void bt__pq_conn_send(bt_pq_conn *c, bt__pq_query *q)
{
    bt_pq_pool *p = c->pool;
    q->conn = c;
    q->state = BT__PQ_Q_SENT;
    if (c->state != BT__PQ_CS_READY) {
        end_query(q, c->pool != NULL ? BT_ECONNRESET : BT_ESHUTDOWN, "the connection is closed");
        return;
    }
    c->busy++; /* a failed send closes c: keep it allocated until the end */
    bool batch = batchable(c, q);
    /* A solo query closes the open batch first, so that it is alone
     * between two Syncs. */
    int ok = batch || c->unsynced == 0 || bt__pq_conn_sync(c) == 0;
    if (ok && c->ops_len > 0 && p != NULL)
        p->st.pipelined++;
    int how = BT__PQ_STMT_UNNAMED;
    bt__pq_stmt *s = NULL;
    if (ok && p != NULL && p->o.stmt_cache_size > 0 && !q->no_prepare) {
        char evict[24];
        how = bt__pq_stmt_pick(c, q->sql, p->o.stmt_cache_size, &s, evict, sizeof evict);
        if (evict[0] != '\0')
            ok = stmt_evict(c, evict) == 0;
    }
    const Oid *types = q->types;
    const char *const *vals = (const char *const *)q->values;
    if (ok && how == BT__PQ_STMT_PREPARE) {
        ok = PQsendPrepare(c->pg, s->name, q->sql, q->nparams, types) &&
             ops_push(c, BT__PQ_OP_PREPARE, q, s) == 0;
        if (ok)
            bt__pq_stmt_hold(s);
    }
    q->stmt_mark = c->stmt_seq;
    if (ok && how != BT__PQ_STMT_UNNAMED) {
        q->used_named = how == BT__PQ_STMT_RUN;
        q->stmt_seq = s->seq;
        ok = PQsendQueryPrepared(c->pg, s->name, q->nparams, vals, q->lengths, q->formats,
                                 q->result_format);
    } else if (ok) {
        ok = PQsendQueryParams(c->pg, q->sql, q->nparams, types, vals, q->lengths, q->formats,
                               q->result_format);
    }
    ok = ok && ops_push(c, BT__PQ_OP_QUERY, q, NULL) == 0;
    if (!ok) {
        /* q is not in the FIFO: fail it here, then the connection if a
         * Sync or the DEALLOCATE before it has not closed it already. */
        if (c->state != BT__PQ_CS_READY) {
            end_query(q, BT_ECONNRESET, "the connection was lost before the query was sent");
        } else {
            end_query(q, BT_ECONNRESET, "could not send the query: %s", PQerrorMessage(c->pg));
            close_broken(c);
        }
    } else {
        c->inflight++;
        c->unsynced++;
        /* A batch is synced (and flushed) at the end of this loop pass,
         * together with whatever else is sent to this connection
         * meanwhile. */
        if (batch)
            c->events->batch_open(c);
        else
            bt__pq_conn_sync(c);
        /* Single-row mode is set in process(), when the query reaches the
         * front and before its first PQgetResult (libpq parses input only
         * there, never in PQconsumeInput). */
    }
    c->busy--;
    if (c->zombie && c->busy == 0)
        bt__pq_conn_free_dead(c);
}

/* q (on c) was settled early by a cancel or a timeout: drop its results
 * when they come, and ask the server to stop it when it is the one
 * running. */
void bt__pq_conn_abandon(bt_pq_conn *c, bt__pq_query *q)
{
    q->abandoned = true;
    c->inflight--;
    c->abandoned++;
    q->want_cancel = true;
    bt__pq_op *f = ops_front(c);
    if (f != NULL && f->q == q) {
        q->want_cancel = false;
        bt__pq_cancel_send(c, cancel_done);
    }
}

/* ---- Receiving ---------------------------------------------------------- */

/* Hand res to q's row callback. Returns false if the callback closed c
 * (it freed the pool, see bt__pq_pool_pin): q was ended with the rest of
 * c's queries and is gone. */
static bool deliver_rows(bt_pq_conn *c, bt__pq_query *q, PGresult *res)
{
    if (q->abandoned || q->rows_stopped || q->row_cb == NULL)
        return true;
    bt_loop *loop = c->loop;
    bt_pq_result row = { .pg = res };
    bt_loop_enter_cb(loop, (const void *)q->row_cb);
    int stop = q->row_cb(&row, q->row_arg);
    bt_loop_leave_cb(loop);
    if (c->state != BT__PQ_CS_READY)
        return false;
    if (stop != 0)
        q->rows_stopped = true;
    return true;
}

/* A result for the BT__PQ_OP_QUERY at the front. */
static void query_result(bt_pq_conn *c, bt__pq_query *q, PGresult *res)
{
    switch (PQresultStatus(res)) {
    case PGRES_SINGLE_TUPLE:
        deliver_rows(c, q, res);
        PQclear(res);
        return;
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        /* Single-row mode was refused: give the rows one by one anyway
         * (each as a view of the whole result would mislead, so the
         * callback sees the full result once). */
        if (q->row_cb != NULL && PQntuples(res) > 0 && !deliver_rows(c, q, res)) {
            PQclear(res);
            return;
        }
        if (q->res != NULL)
            PQclear(q->res);
        q->res = res;
        return;
    case PGRES_PIPELINE_ABORTED:
        /* An earlier query of its batch failed (or its own PREPARE did):
         * it never ran. resolve_batch decides. */
        q->aborted = true;
        PQclear(res);
        return;
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
        /* A COPY that query.c's check let through (bt_pq_copy_in/_out run
         * it outside the pipeline, see copy.c): the server now waits for
         * or sends COPY data in the middle of the pipeline, which libpq
         * cannot continue. Fail it, then the connection. */
        PQclear(res);
        bt__pq_query_settle(q, BT_ENOTSUP, BT__PQ_COPY_REFUSED);
        bt__pq_conn_close(c, BT_ECONNRESET, "a COPY ran through the query API");
        return;
    default:
        bt__pq_query_set_error_from(q, res);
        PQclear(res);
        return;
    }
}

/* q's results are all in: hold it until its Sync says the implicit
 * transaction committed. */
static void hold(bt_pq_conn *c, bt__pq_query *q)
{
    bt__list_push_back(&c->held, &q->link);
    c->nheld++;
    if (q->err)
        c->held_error = true;
}

/* Errors that only sharing a transaction with other queries can cause. */
static bool batch_only_error(const bt__pq_query *q)
{
    const char *m = q->errmsg;
    return m && (strncmp(m, "[40", 3) == 0 || strncmp(m, "[25001]", 7) == 0);
}

/* A cached statement the server no longer has (DISCARD ALL, DEALLOCATE)
 * or whose result type changed under it (ALTER TABLE): forget it, so the
 * next run prepares again; a pool query is then retried once (it failed
 * before executing). asyncpg does the same. */
static bool stale_statement(bt_pq_conn *c, bt__pq_query *q)
{
    if (!q->err || !q->used_named || q->errmsg == NULL)
        return false;
    if (strncmp(q->errmsg, "[26000]", 7) != 0 &&
        !(strncmp(q->errmsg, "[0A000]", 7) == 0 && strstr(q->errmsg, "cached plan")))
        return false;
    bt__pq_stmt_forget(c, q->stmt_seq);
    /* DISCARD ALL / DEALLOCATE ALL, which ran before q: every statement
     * prepared before q was sent may be gone. Those prepared since (their
     * PREPAREs may still be in the pipeline) came after, and stay. */
    if (strncmp(q->errmsg, "[26000]", 7) == 0)
        bt__pq_stmt_forget_upto(c, q->stmt_mark);
    return true;
}

/* The answer to the PREPARE at the front (its statement may have been
 * forgotten meanwhile: it is alive while the op points at it). */
static void prepare_result(bt_pq_conn *c, bt__pq_op *op, PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_PIPELINE_ABORTED)
        op->q->aborted = true; /* skipped: never prepared */
    else if (st != PGRES_COMMAND_OK)
        bt__pq_query_set_error_from(op->q, res);
    if (op->stmt != NULL) {
        bt__pq_stmt_answered(c, op->stmt, st == PGRES_COMMAND_OK);
        op->stmt = NULL;
    }
    PQclear(res);
}

/* A query we did not abandon, cancelled "due to user request" on a
 * connection where we sent a cancel for another query: the request arrived
 * late and hit this one. It did not take effect (a cancelled statement is
 * rolled back), so a pool query runs again. */
static bool stray_cancel(const bt_pq_conn *c, const bt__pq_query *q)
{
    return c->cancel_sent && q->err && q->errmsg != NULL && strncmp(q->errmsg, "[57014]", 7) == 0 &&
           strstr(q->errmsg, "user request");
}

/* The Sync of the held queries arrived: settle them, or, if the batch
 * failed, fail the query that failed and send the others again. */
static void resolve_batch(bt_pq_conn *c)
{
    bool failed = c->held_error && c->nheld > 1;
    bt__list batch, again;
    bt__list_init(&batch);
    bt__list_init(&again);
    bt__list_splice_back(&batch, &c->held);
    c->nheld = 0;
    c->held_error = false;
    bt__list *n;
    while ((n = bt__list_pop_front(&batch)) != NULL) {
        bt__pq_query *q = BT__LIST_ENTRY(n, bt__pq_query, link);
        if (q->abandoned) {
            c->abandoned--;
            end_query(q, 0, NULL); /* settled already: freed */
            continue;
        }
        c->inflight--;
        bool stale = stale_statement(c, q);
        bool stray = !stale && stray_cancel(c, q);
        /* Only pool queries go back to the pool: never one bound to an
         * acquired connection, an internal one, or a LISTEN. */
        bool pool_query = q->target == NULL && q->internal == NULL && !c->is_listener;
        bool again_q = stale   ? pool_query && !q->replanned
                       : stray ? pool_query && !q->recancelled
                               : failed && !(q->err && (q->solo || !batch_only_error(q)));
        if (stale)
            q->replanned = true;
        if (stray)
            q->recancelled = true;
        if (again_q)
            bt__list_push_back(&again, &q->link);
        else
            end_query(q, 0, NULL);
    }
    if (!bt__list_empty(&again) && c->pool != NULL)
        c->events->retry(c, &again); /* takes them all */
    while ((n = bt__list_pop_front(&again)) != NULL)
        end_query(BT__LIST_ENTRY(n, bt__pq_query, link), BT_ESHUTDOWN, "the pool was closed");
}

/* Read every result that is complete. Returns -1 if c was closed. */
static int process(bt_pq_conn *c)
{
    while (c->ops_len > 0) {
        if (PQstatus(c->pg) == CONNECTION_BAD)
            goto broken;
        bt__pq_op *op = ops_front(c);
        if (op->kind == BT__PQ_OP_QUERY && !op->q->started) {
            op->q->started = true;
            if (op->q->row_cb != NULL)
                PQsetSingleRowMode(c->pg);
        }
        /* An abandoned query whose first op is at the front is the one the
         * server runs now: the ops before it are answered, Sync included.
         * Its PREPARE counts: in a pipeline the server sends the PREPARE's
         * answer only when it flushes, at the query's Sync, after the
         * query has run; waiting for its OP_QUERY to reach the front would
         * wait for the very query the cancel is meant to stop. */
        if (op->q != NULL && op->q->want_cancel) {
            op->q->want_cancel = false;
            bt__pq_cancel_send(c, cancel_done);
        }
        if (PQisBusy(c->pg))
            break;
        PGresult *res = PQgetResult(c->pg);
        switch (op->kind) {
        case BT__PQ_OP_PREPARE:
            if (res != NULL)
                prepare_result(c, op, res);
            else
                ops_pop(c);
            break;
        case BT__PQ_OP_QUERY:
            if (res != NULL) {
                query_result(c, op->q, res);
                if (c->state != BT__PQ_CS_READY)
                    return -1; /* a row callback freed the pool */
            } else {
                bt__pq_query *q = op->q;
                ops_pop(c);
                hold(c, q);
            }
            break;
        case BT__PQ_OP_SYNC:
            if (res == NULL) {
                /* Not expected between a query's NULL and its Sync; wait
                 * for more input rather than spin. */
                if (PQstatus(c->pg) == CONNECTION_BAD)
                    goto broken;
                return 0;
            }
            if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) {
                ops_pop(c);
                resolve_batch(c);
            }
            /* Anything else here (an error on the Sync itself, which the
             * server sends when it dies) is dropped; the status check
             * above catches the broken connection. */
            PQclear(res);
            break;
        }
    }
    if (PQstatus(c->pg) == CONNECTION_BAD)
        goto broken;
    return 0;
broken:
    return close_broken(c);
}

static void drain_notifies(bt_pq_conn *c)
{
    PGnotify *n;
    while ((n = PQnotifies(c->pg)) != NULL) {
        if (c->is_listener && c->pool != NULL)
            c->events->notify(c, n);
        PQfreemem(n);
        if (c->state != BT__PQ_CS_READY)
            return;
    }
}

void bt__pq_conn_on_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    bt_pq_conn *c = arg;
    bt_pq_pool *pool = c->pool;
    /* Rows, notifications, notices and COPY data reach user callbacks
     * from here on, and one may free the pool (see bt__pq_pool_pin). */
    if (pool != NULL)
        bt__pq_pool_pin(pool);
    c->busy++;
    if (c->takeover != NULL) {
        c->takeover->io(c, what); /* a COPY runs on it (copy.c) */
        goto out;
    }
    if (what & EV_READ) {
        if (!PQconsumeInput(c->pg)) {
            close_broken(c);
            goto out;
        }
    }
    if (c->flushing && flush(c) != 0) {
        close_broken(c);
        goto out;
    }
    if (process(c) != 0)
        goto out;
    drain_notifies(c);
    if (c->state != BT__PQ_CS_READY)
        goto out;
    if (c->ops_len == 0) {
        c->idle_ns = now_ns();
        if (c->cancel_job == NULL)
            c->cancel_sent = false;
        if (!c->is_listener && PQstatus(c->pg) == CONNECTION_BAD) {
            bt__pq_conn_close(c, BT_ECONNRESET, "connection closed by the server");
            goto out;
        }
    }
    if (c->pool != NULL && !c->is_listener)
        c->events->available(c);
out:
    /* The notices read with these results reach their handler now, before
     * the callbacks of the queries they came with (notice.c). */
    if (pool != NULL)
        bt__pq_notice_flush(pool);
    c->busy--;
    if (c->zombie && c->busy == 0)
        bt__pq_conn_free_dead(c);
    if (pool != NULL)
        bt__pq_pool_unpin(pool);
}
