/* One query request, below the connection that runs it: its SQL and
 * parameters copied into one block, the errors it collects, and the single
 * place where its outcome is delivered (exactly once), to its future or,
 * for the pool's own statements, to an internal callback. It calls nothing
 * of the wing but result.c. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pq-internal.h"

static size_t align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* One allocation holds the query, its arrays and its strings: a point
 * select costs one malloc here, not one per parameter. */
bt__pq_query *bt__pq_query_new(bt_pq_pool *p, const char *sql, int nparams,
                               const char *const *values, const bt_pq_query_opts *opts, int *err)
{
    *err = 0;
    if (nparams < 0 || nparams > 65535 || (nparams > 0 && values == NULL)) {
        *err = BT_EINVAL;
        return NULL;
    }
    bool binary = opts && opts->formats && opts->lengths;
    size_t sql_len = strlen(sql) + 1;
    size_t size = align8(sizeof(bt__pq_query));
    size += align8(sizeof(char *) * (size_t)nparams);
    if (binary)
        size += 2 * align8(sizeof(int) * (size_t)nparams);
    if (opts && opts->types)
        size += align8(sizeof(Oid) * (size_t)nparams);
    size_t strings = sql_len;
    for (int i = 0; i < nparams; i++) {
        if (values[i] == NULL)
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
    bt__pq_query *q = (bt__pq_query *)mem;
    memset(q, 0, sizeof *q);
    bt__list_init(&q->link);
    char *at = mem + align8(sizeof(bt__pq_query));
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
        if (values[i] == NULL) {
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
    if (!q->timeout_ms && p != NULL)
        q->timeout_ms = p->o.query_timeout_ms;
    q->state = BT__PQ_Q_NEW;
    return q;
}

/* Record an error from a result (the first one wins). */
void bt__pq_query_set_error_from(bt__pq_query *q, const PGresult *res)
{
    if (q->err)
        return;
    q->err = bt__pq_error_code(res);
    q->errmsg = bt__pq_format_error(res, "query failed");
}

/* Settle q, once: deliver what the connection collected (code 0; a query
 * its pipeline skipped fails), or fail it with code and msg (NULL: the
 * code's own text). It is counted. Its timer has nothing left to do: a
 * timeout that fires now finds q settled (query.c), and q's end frees the
 * timer with q. */
static void settle(bt__pq_query *q, int code, const char *msg)
{
    q->settled = true;
    if (q->pool != NULL)
        q->pool->st.queries++;
    if (code == 0 && q->err) {
        code = q->err;
        msg = q->errmsg;
    } else if (code == 0 && q->aborted) {
        code = BT_EIO;
        msg = "the query was skipped (pipeline aborted)";
    }
    bt_pq_result *r = NULL;
    if (code == 0 && q->f != NULL) {
        r = bt__pq_result_wrap(q->res);
        if (r == NULL) {
            code = BT_ENOMEM;
            msg = "out of memory for a result";
        } else {
            q->res = NULL; /* the future owns it now */
        }
    }
    if (q->f == NULL) {
        if (q->internal != NULL)
            q->internal(q->conn, q, code);
    } else if (code == 0) {
        bt_future_set_value(q->f, r, (bt_destroy_fn)bt_pq_result_free);
    } else if (msg != NULL) {
        bt_future_set_error(q->f, code, "%s", msg);
    } else {
        bt_future_set_error(q->f, code, NULL);
    }
}

/* Settle q with code (0: what it collected) and the message made of fmt
 * (NULL: the code's own text), unless it has settled already. */
static void vsettle(bt__pq_query *q, int code, const char *fmt, va_list ap)
{
    if (q->settled)
        return;
    char *msg = code != 0 && fmt != NULL ? bt_vasprintf(fmt, ap) : NULL;
    settle(q, code, msg);
    bt_free(msg);
}

void bt__pq_query_settle(bt__pq_query *q, int code, const char *msg)
{
    if (!q->settled)
        settle(q, code, msg);
}

void bt__pq_internal_done(bt_pq_conn *c, bt__pq_query *q, int err)
{
    (void)c;
    (void)q;
    if (err)
        bt_log(BT_LOG_DEBUG, "pq: internal statement failed (%s)", bt_strerror(err));
}

/* The end of q: settle it unless it has settled already (code 0: deliver
 * what it collected, and a query its pipeline skipped fails; else fail it
 * with code and the message), then free it and what it holds. */
void bt__pq_query_vend(bt__pq_query *q, int code, const char *fmt, va_list ap)
{
    vsettle(q, code, fmt, ap);
    if (q->res != NULL)
        PQclear(q->res);
    if (q->f != NULL)
        bt_future_unref(q->f);
    if (q->timer != NULL)
        bt_timer_free(q->timer);
    bt_free(q->errmsg);
    bt_free(q);
}

void bt__pq_query_end(bt__pq_query *q, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bt__pq_query_vend(q, code, fmt, ap);
    va_end(ap);
}
