/* Running a query, the top of the wing: bt_pq_query and the common path of
 * every query (straight to an acquired connection, or to the pool, which
 * sends it or queues it), its cancellation and its timeout. The query
 * object itself (its copies, its single settle) is request.c's. */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pq-internal.h"
#include "sized.h"

/* ---- Submitting, cancelling, timing out ----------------------------------- */

/* Cancel or time out q, wherever it is. */
static void abandon(bt__pq_query *q, int code)
{
    if (q->settled)
        return;
    if (q->state == BT__PQ_Q_WAITING) {
        bt_pq_pool *p = q->pool;
        bt__pq_wq_unlink(p, q);
        q->state = BT__PQ_Q_NEW;
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
    if (q->state == BT__PQ_Q_SENT) {
        if (code == BT_ECANCELED) {
            q->settled = true;
            if (q->timer != NULL) {
                bt_timer_free(q->timer);
                q->timer = NULL;
            }
            bt_future_set_cancelled(q->f);
            if (q->pool != NULL)
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

/* True if sql is a COPY with STDIN or STDOUT (outside quotes and
 * comments): libpq cannot run one in pipeline mode, copy.c runs it. */
static bool copy_stdio(const char *s)
{
    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '\f')
            s++;
        if (s[0] == '-' && s[1] == '-') {
            s += strcspn(s, "\n");
        } else if (s[0] == '/' && s[1] == '*') {
            const char *e = strstr(s + 2, "*/");
            if (e == NULL)
                return false;
            s = e + 2;
        } else {
            break;
        }
    }
    if (strncasecmp(s, "copy", 4) != 0 || isalnum((unsigned char)s[4]) || s[4] == '_')
        return false;
    for (s += 4; *s != '\0';) {
        if (*s == '\'' || *s == '"') {
            const char *e = strchr(s + 1, *s);
            if (e == NULL)
                return false;
            s = e + 1;
        } else if (isalpha((unsigned char)*s) || *s == '_') {
            size_t n = 0;
            while (isalnum((unsigned char)s[n]) || s[n] == '_')
                n++;
            if ((n == 5 && strncasecmp(s, "stdin", 5) == 0) ||
                (n == 6 && strncasecmp(s, "stdout", 6) == 0))
                return true;
            s += n;
        } else {
            s++;
        }
    }
    return false;
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
    if (copy_stdio(sql)) {
        bt_future_set_error(f, BT_ENOTSUP, "%s", BT__PQ_COPY_REFUSED);
        return f;
    }
    int err;
    bt__pq_query *q = bt__pq_query_new(p, sql, nparams, values, opts, &err);
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
        if (q->timer != NULL)
            bt_timer_start(q->timer, q->timeout_ms, 0);
    }
    bt__pq_pool_run(p, q);
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
