/* Running a query, the top of the wing: bt_pq_query and the common path of
 * every query (straight to an acquired connection, or to the pool, which
 * sends it or queues it), its cancellation and its timeout. The query
 * object itself (its copies, its settle and its end) is request.c's. */
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
            bt__pq_query_end(q, 0, NULL); /* settled: freed */
        } else {
            bt__pq_query_end(q, code, "timed out after %llu ms waiting for a connection",
                             (unsigned long long)q->timeout_ms);
        }
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
            char msg[96];
            snprintf(msg, sizeof msg, "query timed out after %llu ms (a cancel request was sent)",
                     (unsigned long long)q->timeout_ms);
            bt__pq_query_settle(q, code, msg);
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

/* ---- Reading a statement's words ----------------------------------------- */

/* s past the block comment that starts it. Block comments nest in
 * PostgreSQL: a comment opened inside one must be closed before the outer
 * one closes. One left open runs to the end of s, where the server will
 * refuse it. */
static const char *skip_block_comment(const char *s)
{
    int depth = 0;
    while (*s != '\0') {
        if (s[0] == '/' && s[1] == '*') {
            depth++;
            s += 2;
        } else if (s[0] == '*' && s[1] == '/') {
            s += 2;
            if (--depth == 0)
                return s;
        } else {
            s++;
        }
    }
    return s;
}

/* s past the blanks and comments before its next token, skipped as
 * PostgreSQL's scanner skips them: white space, "--" to the end of the
 * line, and block comments. The one place that knows SQL's comments, so
 * that what transaction_pooling refuses and what is taken for a COPY agree
 * with what the server will run. */
static const char *skip_blanks_and_comments(const char *s)
{
    for (;;) {
        s += strspn(s, " \t\n\r\f\v");
        if (s[0] == '-' && s[1] == '-')
            s += strcspn(s, "\r\n");
        else if (s[0] == '/' && s[1] == '*')
            s = skip_block_comment(s);
        else
            return s;
    }
}

/* ---- Behind a transaction pooler ------------------------------------------ */

/* sql's first n-letter keyword after blanks, comments and opening
 * parentheses is word (case-insensitive), followed by a non-letter; *rest
 * is set past it. */
static bool starts_with_word(const char *sql, const char *word, const char **rest)
{
    for (sql = skip_blanks_and_comments(sql); *sql == '(';)
        sql = skip_blanks_and_comments(sql + 1);
    size_t n = strlen(word);
    for (size_t i = 0; i < n; i++)
        if (sql[i] == '\0' || (sql[i] | 0x20) != word[i])
            return false;
    char next = sql[n];
    if ((next >= 'a' && next <= 'z') || (next >= 'A' && next <= 'Z') || next == '_' ||
        (next >= '0' && next <= '9'))
        return false;
    if (rest != NULL)
        *rest = sql + n;
    return true;
}

/* With transaction_pooling, the statement kind that would leave state on
 * whichever server session runs it (and so be lost, or leak to another
 * client), or NULL. */
static const char *session_state(const char *sql)
{
    const char *rest;
    if (starts_with_word(sql, "listen", NULL))
        return "LISTEN";
    if (starts_with_word(sql, "prepare", NULL))
        return "PREPARE";
    if (starts_with_word(sql, "reset", NULL))
        return "RESET";
    if (starts_with_word(sql, "set", &rest) && !starts_with_word(rest, "local", NULL) &&
        !starts_with_word(rest, "transaction", NULL) &&
        !starts_with_word(rest, "constraints", NULL))
        return "SET";
    return NULL;
}

/* True if sql is a COPY with STDIN or STDOUT (outside quotes and
 * comments): libpq cannot run one in pipeline mode, copy.c runs it. */
static bool copy_stdio(const char *s)
{
    s = skip_blanks_and_comments(s);
    if (strncasecmp(s, "copy", 4) != 0 || isalnum((unsigned char)s[4]) || s[4] == '_')
        return false;
    for (s = skip_blanks_and_comments(s + 4); *s != '\0'; s = skip_blanks_and_comments(s)) {
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
    if (sql != NULL && copy_stdio(sql)) {
        bt_future_set_error(f, BT_ENOTSUP, "%s", BT__PQ_COPY_REFUSED);
        return f;
    }
    const char *kind = p->o.transaction_pooling && sql != NULL ? session_state(sql) : NULL;
    if (kind != NULL) {
        bt_future_set_error(
            f, BT_ENOTSUP,
            "%s does not work with transaction_pooling: a transaction pooler "
            "gives each transaction any server session, so the session state "
            "it sets would be lost or reach other clients%s",
            kind, strcmp(kind, "SET") == 0 ? " (SET LOCAL inside a transaction works)" : "");
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
