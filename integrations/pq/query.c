/* One query's life: its copied SQL and parameters, submission (straight to
 * a connection or into the pool's wait queue), cancellation and timeout,
 * and the single place where its outcome is delivered (exactly once). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pq-internal.h"
#include "sized.h"

static size_t align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* One allocation holds the query, its arrays and its strings: a point
 * select costs one malloc here, not one per parameter. */
pq_query *bt__pq_query_new(bt_pq_pool *p, const char *sql, int nparams, const char *const *values,
                           const bt_pq_query_opts *opts, int *err)
{
    *err = 0;
    if (nparams < 0 || nparams > 65535 || (nparams > 0 && values == NULL)) {
        *err = BT_EINVAL;
        return NULL;
    }
    bool binary = opts && opts->formats && opts->lengths;
    size_t sql_len = strlen(sql) + 1;
    size_t size = align8(sizeof(pq_query));
    size += align8(sizeof(char *) * (size_t)nparams);
    if (binary)
        size += 2 * align8(sizeof(int) * (size_t)nparams);
    if (opts && opts->types)
        size += align8(sizeof(Oid) * (size_t)nparams);
    size_t strings = sql_len;
    for (int i = 0; i < nparams; i++) {
        if (!values[i])
            continue;
        if (binary && opts->formats[i] == 1)
            strings += (size_t)opts->lengths[i] + 1;
        else
            strings += strlen(values[i]) + 1;
    }
    size += strings;

    char *mem = bt_malloc(size);
    if (mem == NULL) {
        *err = BT_ENOMEM;
        return NULL;
    }
    pq_query *q = (pq_query *)mem;
    memset(q, 0, sizeof *q);
    char *at = mem + align8(sizeof(pq_query));
    q->pool = p;
    q->nparams = nparams;
    q->values = (char **)at;
    at += align8(sizeof(char *) * (size_t)nparams);
    if (binary) {
        q->lengths = (int *)at;
        at += align8(sizeof(int) * (size_t)nparams);
        q->formats = (int *)at;
        at += align8(sizeof(int) * (size_t)nparams);
        memcpy(q->lengths, opts->lengths, sizeof(int) * (size_t)nparams);
        memcpy(q->formats, opts->formats, sizeof(int) * (size_t)nparams);
    }
    if (opts && opts->types) {
        q->types = (Oid *)at;
        at += align8(sizeof(Oid) * (size_t)nparams);
        for (int i = 0; i < nparams; i++)
            q->types[i] = opts->types[i];
    }
    q->sql = at;
    memcpy(at, sql, sql_len);
    at += sql_len;
    for (int i = 0; i < nparams; i++) {
        if (!values[i]) {
            q->values[i] = NULL;
            continue;
        }
        size_t n = (binary && opts->formats[i] == 1) ? (size_t)opts->lengths[i] : strlen(values[i]);
        q->values[i] = at;
        memcpy(at, values[i], n);
        at[n] = '\0';
        at += n + 1;
    }
    if (opts) {
        q->result_format = opts->result_format ? 1 : 0;
        q->no_prepare = opts->no_prepare;
        q->row_cb = opts->row_cb;
        q->row_arg = opts->row_arg;
        q->timeout_ms = opts->timeout_ms;
    }
    if (!q->timeout_ms && p)
        q->timeout_ms = p->o.query_timeout_ms;
    q->state = Q_NEW;
    return q;
}

void bt__pq_query_free(pq_query *q)
{
    if (q == NULL)
        return;
    if (q->timer)
        bt_timer_free(q->timer);
    if (q->res)
        PQclear(q->res);
    bt_free(q->errmsg);
    if (q->f)
        bt_future_unref(q->f);
    bt_free(q);
}

/* Record an error from a result (the first one wins). */
void bt__pq_query_set_error_from(pq_query *q, const PGresult *res)
{
    if (q->err)
        return;
    q->err = bt__pq_error_code(res);
    q->errmsg = bt__pq_format_error(res, "query failed");
}

static void stop_timer(pq_query *q)
{
    if (q->timer) {
        bt_timer_free(q->timer);
        q->timer = NULL;
    }
}

static void count(pq_query *q)
{
    if (q->pool)
        q->pool->st.queries++;
}

void bt__pq_query_fail(pq_query *q, int code, const char *fmt, ...)
{
    if (q->settled)
        return;
    q->settled = true;
    stop_timer(q);
    count(q);
    char *msg = NULL;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        msg = bt_vasprintf(fmt, ap);
        va_end(ap);
    }
    if (q->f) {
        bt_future_set_error(q->f, code, "%s", msg ? msg : bt_strerror(code));
    } else if (q->internal) {
        q->internal(q->conn, q, code);
    }
    bt_free(msg);
}

/* Deliver what the connection collected: an error, or the result. */
void bt__pq_query_settle_result(pq_query *q)
{
    if (q->settled)
        return;
    if (q->err) {
        bt__pq_query_fail(q, q->err, "%s", q->errmsg ? q->errmsg : bt_strerror(q->err));
        return;
    }
    q->settled = true;
    stop_timer(q);
    count(q);
    if (q->f) {
        bt_pq_result *r = bt__pq_result_wrap(q->res);
        if (r == NULL) {
            bt_future_set_error(q->f, BT_ENOMEM, "out of memory for a result");
            return;
        }
        q->res = NULL; /* the future owns it now */
        bt_future_set_value(q->f, r, (bt_destroy_fn)bt_pq_result_free);
    } else if (q->internal) {
        q->internal(q->conn, q, 0);
    }
}

/* ---- Submitting, cancelling, timing out ----------------------------------- */

void bt__pq_wq_unlink(bt_pq_pool *p, pq_query *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        p->wq_head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        p->wq_tail = q->prev;
    q->next = q->prev = NULL;
    p->nwq--;
}

/* Cancel or time out q, wherever it is. */
static void abandon(pq_query *q, int code)
{
    if (q->settled)
        return;
    if (q->state == Q_WAITING) {
        bt_pq_pool *p = q->pool;
        bt__pq_wq_unlink(p, q);
        q->state = Q_NEW;
        if (code == BT_ECANCELED) {
            q->settled = true;
            bt_future_set_cancelled(q->f);
        } else {
            bt__pq_query_fail(q, code, "timed out after %llu ms waiting for a connection",
                              (unsigned long long)q->timeout_ms);
        }
        bt__pq_query_free(q);
        bt__pq_check_drained(p);
        return;
    }
    if (q->state == Q_SENT) {
        if (code == BT_ECANCELED) {
            q->settled = true;
            if (q->timer) {
                bt_timer_free(q->timer);
                q->timer = NULL;
            }
            bt_future_set_cancelled(q->f);
            if (q->pool)
                q->pool->st.queries++;
        } else {
            bt__pq_query_fail(q, code, "query timed out after %llu ms (a cancel request was sent)",
                              (unsigned long long)q->timeout_ms);
        }
        bt__pq_conn_abandon(q->conn, q);
    }
}

static void on_query_cancel(bt_future *f, void *arg)
{
    (void)f;
    abandon(arg, BT_ECANCELED);
}

static void on_query_timeout(bt_timer *t, void *arg)
{
    (void)t;
    abandon(arg, BT_ETIMEDOUT);
}

/* The common path of every query. target: an acquired connection or NULL.
 * internal: set for the pool's own queries (no future). */
bt_future *bt__pq_submit(bt_pq_pool *p, bt_loop *loop, bt_pq_conn *target, const char *sql,
                         int nparams, const char *const *values, const bt_pq_query_opts *opts)
{
    bt_future *f = bt_future_new(loop);
    if (f == NULL)
        return NULL;
    /* The caller's options up to their size; the rest default to zero. */
    bt_pq_query_opts given = { 0 };
    if (opts != NULL) {
        if (bt__sized_check(opts->size, BT__SIZE_V1(bt_pq_query_opts, row_arg), "pq: query",
                            "bt_pq_query_opts", "BT_SIZED(bt_pq_query_opts)") != 0) {
            bt_future_set_error(f, BT_EINVAL,
                                "bt_pq_query_opts.size is %zu: initialise the "
                                "options with BT_SIZED(bt_pq_query_opts)",
                                opts->size);
            return f;
        }
        bt__sized_read(&given, sizeof given, opts, opts->size);
        opts = &given;
    }
    if (p == NULL || p->closed || (p->closing && target == NULL)) {
        bt_future_set_error(f, BT_ESHUTDOWN, "the pool is %s",
                            p && !p->closed ? "closing" : "closed");
        return f;
    }
    int err;
    pq_query *q = bt__pq_query_new(p, sql, nparams, values, opts, &err);
    if (q == NULL) {
        if (err == BT_EINVAL)
            bt_future_set_error(f, err, "bad query arguments (nparams %d, values %p)", nparams,
                                (const void *)values);
        else
            bt_future_set_error(f, err, NULL);
        return f;
    }
    q->f = bt_future_ref(f);
    q->target = target;
    bt_future_on_cancel(f, on_query_cancel, q);
    if (q->timeout_ms) {
        q->timer = bt_timer_new(loop, on_query_timeout, q);
        if (q->timer)
            bt_timer_start(q->timer, q->timeout_ms, 0);
    }
    if (target) {
        bt__pq_conn_send(target, q);
        return f;
    }
    bt_pq_conn *c = p->wq_head ? NULL : bt__pq_pick(p);
    if (c) {
        bt__pq_conn_send(c, q);
        return f;
    }
    if (p->nwq + p->naq >= p->o.max_waiters) {
        bt__pq_query_fail(q, BT_EAGAIN,
                          "too many queries waiting for a connection (max_waiters %u)",
                          p->o.max_waiters);
        bt__pq_query_free(q);
        return f;
    }
    q->state = Q_WAITING;
    q->deadline_ns = bt__pq_deadline(p);
    q->prev = p->wq_tail;
    q->next = NULL;
    if (p->wq_tail)
        p->wq_tail->next = q;
    else
        p->wq_head = q;
    p->wq_tail = q;
    p->nwq++;
    bt__pq_arm_wait(p);
    bt__pq_pump(p);
    return f;
}

BT_EXPORT bt_future *bt_pq_query(bt_pq_pool *p, const char *sql, int nparams,
                                 const char *const *values)
{
    return bt_pq_query_ex(p, sql, nparams, values, NULL);
}

BT_EXPORT bt_future *bt_pq_query_ex(bt_pq_pool *p, const char *sql, int nparams,
                                    const char *const *values, const bt_pq_query_opts *opts)
{
    if (p == NULL || sql == NULL)
        return NULL;
    return bt__pq_submit(p, p->loop, NULL, sql, nparams, values, opts);
}
