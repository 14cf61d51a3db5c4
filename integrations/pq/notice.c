/* The server's notices (NOTICE, WARNING, INFO ...: RAISE NOTICE in
 * PL/pgSQL, "there is no transaction in progress"), from every connection
 * of a pool to the callback set with bt_pq_pool_set_notice_handler, or to
 * Baton's log when none is set.
 *
 * libpq calls its notice receiver in the middle of reading a connection's
 * input (inside PQconsumeInput, PQisBusy or PQgetResult, and PQconnectPoll
 * while connecting). A user's callback may issue queries, and a query may
 * be sent on that very connection; libpq is in the middle of parsing it
 * and conn.c holds a pointer into its ops FIFO there. So the receiver only
 * copies the notice into the pool's queue, and the queue is delivered at
 * a point where user code may run: at the end of the connection's read
 * (conn.c calls bt__pq_notice_flush there, after the results that came
 * with the notice were matched, and before any future's callbacks run,
 * since those are tasks of their own), or, for what arrives while
 * connecting, from an event at the end of the loop pass. Log lines need no
 * such care: bt_log's handler runs no pool code, so without a callback the
 * receiver logs at once.
 *
 * Below the connection (conn.c and connect.c call it, pool.c frees it); it
 * calls nothing of the wing. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "pq-internal.h"

struct bt__pq_notices {
    bt_pq_notice_cb cb;
    void *arg;
    bt__list queue; /* struct notice, oldest first */
    struct event *ev;
    bool armed;
};

struct notice {
    bt__list link;
    bt_pq_notice n; /* its strings live after the struct, in the same block */
};

/* The field, or "" (never NULL). */
static const char *field(const PGresult *res, int code)
{
    const char *s = PQresultErrorField(res, code);
    return s != NULL ? s : "";
}

/* The notice's fields as views into res. A notice libpq made itself (no
 * fields) has only its message text, with a newline to cut. */
static void fields_of(const PGresult *res, bt_pq_notice *n, size_t *msg_len)
{
    n->severity = field(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (n->severity[0] == '\0')
        n->severity = field(res, PG_DIAG_SEVERITY);
    if (n->severity[0] == '\0')
        n->severity = "NOTICE";
    n->sqlstate = field(res, PG_DIAG_SQLSTATE);
    n->message = field(res, PG_DIAG_MESSAGE_PRIMARY);
    if (n->message[0] == '\0') {
        const char *m = PQresultErrorMessage(res);
        n->message = m != NULL ? m : "";
    }
    n->detail = field(res, PG_DIAG_MESSAGE_DETAIL);
    n->hint = field(res, PG_DIAG_MESSAGE_HINT);
    size_t len = strlen(n->message);
    while (len > 0 && (n->message[len - 1] == '\n' || n->message[len - 1] == ' '))
        len--;
    *msg_len = len;
}

/* Baton's log, for a pool without a callback: WARNING as a warning,
 * NOTICE and INFO as information, DEBUG and LOG as debug output. An error
 * outside a query (FATAL: the server ends an idle connection) is
 * information too: the pool reports what it does about it. */
static void log_notice(const bt_pq_notice *n, size_t msg_len)
{
    const char *s = n->severity;
    bt_log_level lv = strcmp(s, "WARNING") == 0                          ? BT_LOG_WARN
                      : strcmp(s, "DEBUG") == 0 || strcmp(s, "LOG") == 0 ? BT_LOG_DEBUG
                                                                         : BT_LOG_INFO;
    bt_log(lv, "pq: server %s%s%s: %.*s%s%s%s%s", s, n->sqlstate[0] != '\0' ? " " : "", n->sqlstate,
           (int)msg_len, n->message, n->detail[0] != '\0' ? "; DETAIL: " : "", n->detail,
           n->hint[0] != '\0' ? "; HINT: " : "", n->hint);
}

/* A copy of n in one block, its strings after it. NULL: out of memory. */
static struct notice *copy(const bt_pq_notice *n, size_t msg_len)
{
    size_t ls = strlen(n->severity) + 1, lq = strlen(n->sqlstate) + 1, lm = msg_len + 1;
    size_t ld = strlen(n->detail) + 1, lh = strlen(n->hint) + 1;
    struct notice *x = bt_malloc(sizeof *x + ls + lq + lm + ld + lh);
    if (x == NULL)
        return NULL;
    char *at = (char *)(x + 1);
    x->n = *n;
    x->n.severity = memcpy(at, n->severity, ls);
    at += ls;
    x->n.sqlstate = memcpy(at, n->sqlstate, lq);
    at += lq;
    memcpy(at, n->message, msg_len);
    at[msg_len] = '\0';
    x->n.message = at;
    at += lm;
    x->n.detail = memcpy(at, n->detail, ld);
    at += ld;
    x->n.hint = memcpy(at, n->hint, lh);
    return x;
}

void bt__pq_notice_receive(void *arg, const PGresult *res)
{
    bt_pq_conn *c = arg;
    bt_pq_notice n;
    size_t msg_len;
    fields_of(res, &n, &msg_len);
    n.backend_pid = c->pg != NULL ? PQbackendPID(c->pg) : 0;
    struct bt__pq_notices *nt = c->pool != NULL ? c->pool->notices : NULL;
    if (nt == NULL || nt->cb == NULL) {
        log_notice(&n, msg_len);
        return;
    }
    struct notice *x = copy(&n, msg_len);
    if (x == NULL) {
        log_notice(&n, msg_len);
        return;
    }
    bt__list_push_back(&nt->queue, &x->link);
    if (!nt->armed) {
        nt->armed = true;
        event_active(nt->ev, EV_TIMEOUT, 0);
    }
}

void bt__pq_notice_flush(bt_pq_pool *p)
{
    struct bt__pq_notices *nt;
    bt__list *l;
    /* p->notices read again for each: a handler that freed the pool (it
     * is pinned, see bt__pq_pool_pin) took the queue with it. */
    while ((nt = p->notices) != NULL && (l = bt__list_pop_front(&nt->queue)) != NULL) {
        struct notice *x = BT__LIST_ENTRY(l, struct notice, link);
        /* Read again for each: a callback may change or clear it. */
        bt_pq_notice_cb cb = nt->cb;
        if (cb != NULL) {
            bt_loop_enter_cb(p->loop, (const void *)cb);
            cb(&x->n, nt->arg);
            bt_loop_leave_cb(p->loop);
        } else {
            log_notice(&x->n, strlen(x->n.message));
        }
        bt_free(x);
    }
}

static void on_notice_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bt_pq_pool *p = arg;
    p->notices->armed = false;
    bt__pq_pool_pin(p); /* a handler may free the pool */
    bt__pq_notice_flush(p);
    bt__pq_pool_unpin(p);
}

void bt__pq_notice_free(bt_pq_pool *p)
{
    struct bt__pq_notices *nt = p->notices;
    if (nt == NULL)
        return;
    p->notices = NULL;
    bt__list *l;
    /* The pool is going: no user code runs now, what is left is logged. */
    while ((l = bt__list_pop_front(&nt->queue)) != NULL) {
        struct notice *x = BT__LIST_ENTRY(l, struct notice, link);
        log_notice(&x->n, strlen(x->n.message));
        bt_free(x);
    }
    event_free(nt->ev);
    bt_free(nt);
}

BT_EXPORT int bt_pq_pool_set_notice_handler(bt_pq_pool *p, bt_pq_notice_cb cb, void *arg)
{
    if (p == NULL)
        return BT_EINVAL;
    if (p->closed)
        return BT_ESHUTDOWN;
    struct bt__pq_notices *nt = p->notices;
    if (nt == NULL) {
        if (cb == NULL)
            return 0;
        nt = bt_calloc(1, sizeof *nt);
        if (nt == NULL)
            return BT_ENOMEM;
        bt__list_init(&nt->queue);
        nt->ev = event_new(p->base, -1, 0, on_notice_ev, p);
        if (nt->ev == NULL) {
            bt_free(nt);
            return BT_ENOMEM;
        }
        p->notices = nt;
    }
    nt->cb = cb;
    nt->arg = arg;
    return 0;
}
