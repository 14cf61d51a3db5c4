/* COPY FROM STDIN and COPY TO STDOUT, the public face: a COPY streamed in
 * (bt_pq_copy_in, _write, _end, _abort) or out (bt_pq_copy_out, a callback
 * per row) on a lent connection, with backpressure both ways. */
#include "config.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pq-internal.h"

/* DESIGN
 * libpq refuses COPY in pipeline mode, and every connection of the pool
 * runs in it. So a COPY borrows a connection the way bt_pq_acquire does
 * (or runs on one the user acquired, when nothing is in flight on it),
 * leaves pipeline mode, sends the statement with PQsendQuery and takes the
 * connection over: conn.c hands its I/O and its close to this file through
 * struct bt__pq_takeover (pq-internal.h). When libpq has returned the
 * COPY's last result the connection enters pipeline mode again and goes
 * back (released to the pool, or left with its user), usable. One object,
 * struct bt_pq_copy, carries the whole COPY:
 *
 *   ACQUIRING -> STARTING (statement sent) -> COPYING -> ENDING -> DONE
 *
 * COPY IN backpressure. PQputCopyData never says "full" in nonblocking
 * mode: it sends what the socket takes and grows its buffer for the rest.
 * So we count the bytes put since libpq last had its buffer empty
 * (`buffered`, an upper bound of what libpq holds: each row costs its
 * length and a 5-byte header), and once that passes BT__PQ_COPY_HIGH we
 * ask PQflush; if it cannot empty the buffer the write that crossed the
 * mark stays pending, with EV_WRITE armed, until it can. A writer that
 * waits for each write's future thus never has more than the mark plus one
 * write in memory. Writes issued while one is pending are copied and
 * queued (they settle in order); that is the writer's choice to spend
 * memory. Most writes find room and get a shared, already settled future.
 *
 * COPY OUT backpressure is the callback's speed: rows are read from the
 * socket only as fast as the callback takes them (libpq's input buffer
 * holds at most a row or a read's worth), and TCP slows the server.
 *
 * Errors. The server's error for a bad row reaches libpq only when the
 * COPY ends (libpq parses no input while it is in COPY_IN state), so the
 * future of bt_pq_copy_end carries it; the server drops the data sent
 * after the bad row. Aborting sends CopyFail (PQputCopyEnd with a
 * message); the server answers with an error that we expect and drop.
 * Cancelling COPY OUT sends a cancel request (cancel.c) and drains the
 * rest; the pool does not hand the connection out before the request was
 * answered (it checks cancel_job), and closes it if it never is. A
 * connection that breaks fails whatever is pending and is discarded.
 *
 * Stalls. A COPY streams a table of any size, so it has no deadline for
 * its whole length; instead the pool's query_timeout_ms bounds each wait
 * for the server (`timer`): for the answer to the statement, for room in
 * the socket while a write is blocked, for the rows of COPY OUT, for the
 * answer to CopyDone or CopyFail. Any I/O from the server starts the wait
 * again; waiting for the user (COPY IN with room, no end yet) is not
 * timed. A wait past it closes the connection with BT_ETIMEDOUT (we cannot
 * know where the server is, so it is never reused) and fails what is
 * pending, as a lost connection does.
 *
 * Lifetime: the object is held by the user (COPY IN, from the handle's
 * delivery until bt_pq_copy_end or _abort) and by the connection (from
 * the takeover until the connection is given back or dies); whichever lets
 * go last frees it. */

/* Small on purpose: once the socket is full, libpq tries a send (and a
 * read) at every row it is given, so the sooner we notice the fewer
 * wasted system calls; the kernel's socket buffer, not libpq's, keeps the
 * server fed. At 128 KiB the client spent about three times raw libpq's
 * CPU per row (bench/pg_copy_in), at 16 KiB about 1.4 times. */
#define BT__PQ_COPY_HIGH ((size_t)16 * 1024)

enum { CP_ACQUIRING, CP_STARTING, CP_COPYING, CP_ENDING, CP_DONE };

struct cp_write {
    bt__list link;
    bt_future *f; /* our own reference */
    size_t len;
    char data[];
};

struct bt_pq_copy {
    bt_pq_pool *pool;
    bt_loop *loop;
    bt_pq_conn *conn; /* once taken over; NULL when given back or dead */
    bool owns_conn;   /* lent to us by the pool: release it at the end */
    bool out;         /* COPY TO STDOUT */
    int state;
    char *sql;
    bt_future *acq;    /* the acquire, while ACQUIRING */
    bt_future *open_f; /* IN: the handle's future; OUT: the result's */
    bt_future *done_f; /* IN: end's or abort's future; OUT: = open_f */
    bt_pq_copy_data_cb cb;
    void *arg;
    bool user_ref; /* IN: the user holds the handle */
    bool conn_ref; /* the connection holds the object */
    bool ended;    /* IN: end or abort was called */
    bool aborting; /* IN: CopyFail sent (or to send), its error expected */
    bool abort_ok; /* IN: done_f is abort's: succeed on the expected error */
    char *abort_msg;
    bool dropped;       /* the user no longer wants the outcome */
    bool wrong_kind;    /* the statement was not the COPY asked for */
    bt__list writes;    /* queued writes (IN), while blocked */
    bt_future *pending; /* the write that crossed the mark, while blocked */
    bool blocked;
    size_t buffered;
    size_t max_buffered;
    uint64_t waits;
    int64_t rows_out;
    PGresult *res;
    int err;
    char *errmsg;
    bt_future *ok_f;     /* shared, settled: a write that found room */
    unsigned busy;       /* inside one of our calls: maybe_free waits */
    uint64_t timeout_ms; /* the longest wait for the server; 0: none */
    bt_timer *timer;     /* ... while we wait for it (see "Stalls") */
    bool timed_out;
};

static void step(bt_pq_copy *cp);
static void copy_io(bt_pq_conn *c, short what);
static void copy_closed(bt_pq_conn *c, int code, const char *why);
static const struct bt__pq_takeover takeover = { copy_io, copy_closed };

/* ---- The object -------------------------------------------------------- */

static void set_err(bt_pq_copy *cp, int code, const char *msg)
{
    if (cp->err)
        return;
    cp->err = code;
    cp->errmsg = bt_strdup(msg != NULL ? msg : "");
}

static void fail_writes(bt_pq_copy *cp, int code, const char *msg)
{
    if (cp->pending != NULL) {
        bt_future *f = cp->pending;
        cp->pending = NULL;
        bt_future_set_error(f, code, "%s", msg);
        bt_future_unref(f);
    }
    bt__list *n;
    while ((n = bt__list_pop_front(&cp->writes)) != NULL) {
        struct cp_write *w = BT__LIST_ENTRY(n, struct cp_write, link);
        bt_future_set_error(w->f, code, "%s", msg);
        bt_future_unref(w->f);
        bt_free(w);
    }
}

static void drop_timer(bt_pq_copy *cp)
{
    if (cp->timer != NULL) {
        bt_timer_free(cp->timer); /* (also from inside its own callback) */
        cp->timer = NULL;
    }
}

static void maybe_free(bt_pq_copy *cp)
{
    if (cp->user_ref || cp->conn_ref || cp->busy || cp->state == CP_ACQUIRING)
        return;
    drop_timer(cp);
    fail_writes(cp, BT_ECANCELED, "the COPY is over");
    if (cp->open_f != NULL)
        bt_future_unref(cp->open_f);
    if (cp->done_f != NULL && cp->done_f != cp->open_f)
        bt_future_unref(cp->done_f);
    if (cp->ok_f != NULL)
        bt_future_unref(cp->ok_f);
    if (cp->res != NULL)
        PQclear(cp->res);
    bt_free(cp->errmsg);
    bt_free(cp->abort_msg);
    bt_free(cp->sql);
    bt_free(cp);
}

/* Settle the COPY's final future (IN: end's or abort's; OUT: the one
 * copy_out returned) from what was collected, once. */
static void settle_done(bt_pq_copy *cp)
{
    bt_future *f = cp->done_f;
    if (f == NULL || bt_future_is_settled(f))
        return;
    if (cp->abort_ok) {
        /* The server's error for the CopyFail is the expected answer; only
         * a lost connection (or one that stalled) fails an abort. */
        if (cp->timed_out)
            bt_future_set_error(f, BT_ETIMEDOUT,
                                "the server did not confirm the abort within %llu ms "
                                "(query_timeout_ms); the connection was closed",
                                (unsigned long long)cp->timeout_ms);
        else if (cp->err != BT_ECONNRESET && cp->err != BT_ESHUTDOWN)
            bt_future_set_value(f, NULL, NULL);
        else
            bt_future_set_error(f, cp->err, "%s", cp->errmsg);
        return;
    }
    if (cp->err) {
        bt_future_set_error(f, cp->err, "%s", cp->errmsg);
        return;
    }
    bt_pq_result *r = cp->res != NULL ? bt__pq_result_wrap(cp->res) : NULL;
    if (r == NULL) {
        bt_future_set_error(f, BT_ENOMEM, "out of memory");
        return;
    }
    cp->res = NULL;
    bt_future_set_value(f, r, (bt_destroy_fn)bt_pq_result_free);
}

/* ---- The connection, taken and given back -------------------------------- */

static void want_write(bt_pq_conn *c, bool on)
{
    if (on && !c->flushing) {
        event_add(c->wev, NULL);
        c->flushing = true;
    } else if (!on && c->flushing) {
        event_del(c->wev);
        c->flushing = false;
    }
}

/* ---- Stalls (see DESIGN) ---------------------------------------------------- */

/* Whether the COPY now waits for the server rather than for its user. */
static bool waits_for_server(const bt_pq_copy *cp)
{
    if (cp->state == CP_STARTING || cp->state == CP_ENDING)
        return true;
    if (cp->state != CP_COPYING)
        return false;
    return cp->out || cp->wrong_kind || cp->blocked || cp->ended;
}

/* After every step: (re)start the wait while the COPY waits for the
 * server, else stop it. */
static void watch(bt_pq_copy *cp)
{
    if (cp->timer == NULL)
        return;
    if (cp->conn != NULL && waits_for_server(cp))
        bt_timer_start(cp->timer, cp->timeout_ms, 0);
    else
        bt_timer_stop(cp->timer);
}

static void on_stall(bt_timer *t, void *arg)
{
    (void)t;
    bt_pq_copy *cp = arg;
    if (cp->conn == NULL)
        return;
    char why[160];
    snprintf(why, sizeof why,
             "the COPY waited %llu ms (query_timeout_ms) for the server; its connection was "
             "closed",
             (unsigned long long)cp->timeout_ms);
    cp->timed_out = true;
    cp->busy++;
    bt__pq_conn_close(cp->conn, BT_ETIMEDOUT, why); /* copy_closed settles the rest */
    cp->busy--;
    maybe_free(cp);
}

/* The COPY is over and libpq idle: pipeline mode again, then give the
 * connection back. */
static void give_back(bt_pq_copy *cp)
{
    bt_pq_conn *c = cp->conn;
    drop_timer(cp);
    cp->state = CP_DONE;
    cp->conn = NULL;
    c->takeover = NULL;
    c->copy = NULL;
    want_write(c, false);
    bool ok = PQenterPipelineMode(c->pg) == 1;
    settle_done(cp);
    cp->conn_ref = false;
    if (!ok) {
        bt__pq_conn_close(c, BT_ECONNRESET, "could not enter pipeline mode after a COPY");
        if (cp->owns_conn)
            bt__pq_pool_release(c);
    } else if (cp->owns_conn) {
        bt__pq_pool_release(c);
    } else if (c->pool != NULL && c->cancel_job == NULL) {
        c->events->available(c);
    }
    maybe_free(cp);
}

/* The connection broke under the COPY (or the pool closed it). */
static void copy_closed(bt_pq_conn *c, int code, const char *why)
{
    bt_pq_copy *cp = c->copy;
    c->takeover = NULL;
    c->copy = NULL;
    cp->conn = NULL;
    drop_timer(cp);
    char msg[512];
    if (code == BT_ETIMEDOUT)
        snprintf(msg, sizeof msg, "%s", why);
    else
        snprintf(msg, sizeof msg, "the connection was lost during the COPY: %s",
                 why != NULL ? why : "closed");
    int e = code == 0 ? BT_ECONNRESET : code;
    set_err(cp, e, msg);
    fail_writes(cp, e, msg);
    cp->state = CP_DONE;
    if (cp->open_f != NULL && !bt_future_is_settled(cp->open_f))
        bt_future_set_error(cp->open_f, e, "%s", msg);
    settle_done(cp);
    cp->conn_ref = false;
    if (cp->owns_conn)
        bt__pq_pool_release(c); /* dead: freed (or by on_io, if inside it) */
    maybe_free(cp);
}

static void broken(bt_pq_copy *cp)
{
    char *m = bt_strdup(PQerrorMessage(cp->conn->pg));
    bt__pq_conn_close(cp->conn, BT_ECONNRESET, m != NULL ? m : "connection broken");
    bt_free(m);
}

static void cancel_done(bt_pq_conn *c, bool answered, uint64_t timeout_ms)
{
    if (!answered) {
        char why[128];
        snprintf(why, sizeof why, "the cancel request got no answer within %llu ms",
                 (unsigned long long)timeout_ms);
        bt__pq_conn_close(c, BT_ECONNRESET, why);
        return;
    }
    /* Given back while the request was in flight: the pool may use it now. */
    if (c->takeover == NULL && c->pool != NULL && c->state == BT__PQ_CS_READY)
        c->events->available(c);
}

/* ---- Taking the connection over ------------------------------------------ */

static void start(bt_pq_copy *cp, bt_pq_conn *c)
{
    cp->conn = c;
    cp->conn_ref = true;
    cp->state = CP_STARTING;
    c->takeover = &takeover;
    c->copy = cp;
    if (PQexitPipelineMode(c->pg) != 1) {
        char msg[300];
        snprintf(msg, sizeof msg, "could not leave pipeline mode for the COPY: %s",
                 PQerrorMessage(c->pg));
        bt__pq_conn_close(c, BT_ECONNRESET, msg);
        return;
    }
    if (!PQsendQuery(c->pg, cp->sql)) {
        broken(cp);
        return;
    }
    int r = PQflush(c->pg);
    if (r < 0) {
        broken(cp);
        return;
    }
    want_write(c, r == 1);
    watch(cp);
}

static void on_acquired(bt_future *f, void *arg)
{
    bt_pq_copy *cp = arg;
    cp->acq = NULL;
    cp->state = CP_STARTING;
    if (bt_future_error(f) != 0) {
        int e = bt_future_error(f);
        if (!bt_future_is_settled(cp->open_f)) {
            if (e == BT_ECANCELED)
                bt_future_set_cancelled(cp->open_f);
            else
                bt_future_set_error(cp->open_f, e, "%s", bt_future_error_message(f));
        }
        bt_future_unref(f);
        cp->state = CP_DONE;
        maybe_free(cp);
        return;
    }
    bt_pq_conn *c = bt_future_take_value(f);
    bt_future_unref(f);
    cp->owns_conn = true;
    if (c->pool == NULL || c->state != BT__PQ_CS_READY) {
        /* Closed between the hand-over and this callback. */
        if (!bt_future_is_settled(cp->open_f))
            bt_future_set_error(cp->open_f, c->pool == NULL ? BT_ESHUTDOWN : BT_ECONNRESET,
                                "the connection was lost before the COPY started");
        cp->state = CP_DONE;
        bt__pq_pool_release(c);
        maybe_free(cp);
        return;
    }
    if (cp->dropped) {
        /* Cancelled in the same pass the connection came: give it back. */
        cp->state = CP_DONE;
        bt__pq_pool_release(c);
        maybe_free(cp);
        return;
    }
    start(cp, c);
}

/* ---- The handle's future and cancellation -------------------------------- */

static void abort_copy(bt_pq_copy *cp, const char *reason);

/* The user cancelled the COPY's future (OUT's result, IN's handle before
 * it came): stop it; the connection comes back when the server is done. */
static void on_open_cancel(bt_future *f, void *arg)
{
    bt_pq_copy *cp = arg;
    bt_future_set_cancelled(f);
    cp->dropped = true;
    if (cp->state == CP_ACQUIRING) {
        if (cp->acq != NULL)
            bt_future_cancel(cp->acq); /* on_acquired frees */
        return;
    }
    if (cp->conn == NULL)
        return;
    if (cp->out) {
        set_err(cp, BT_ECANCELED, "cancelled");
        if (cp->state == CP_STARTING || cp->state == CP_COPYING)
            bt__pq_cancel_send(cp->conn, cancel_done);
    } else if (cp->state == CP_COPYING && !cp->wrong_kind) {
        abort_copy(cp, "cancelled by the client");
    } else if (cp->state == CP_STARTING) {
        cp->aborting = true; /* CopyFail as soon as the server asks */
        cp->abort_msg = bt_strdup("cancelled by the client");
    }
}

/* The handle's future was freed with the handle still in it. */
static void handle_dtor(void *v)
{
    bt_pq_copy *cp = v;
    cp->user_ref = false;
    if (!cp->ended && cp->state != CP_DONE && cp->conn != NULL) {
        cp->ended = true;
        abort_copy(cp, "the COPY handle was dropped");
    }
    maybe_free(cp);
}

static bt_pq_copy *copy_new(bt_pq_pool *p, bt_loop *loop, const char *sql, bool out)
{
    bt_pq_copy *cp = bt_calloc(1, sizeof *cp);
    if (cp == NULL)
        return NULL;
    cp->sql = bt_strdup(sql);
    cp->ok_f = bt_future_new_value(loop, NULL, NULL);
    cp->open_f = bt_future_new(loop);
    if (cp->sql == NULL || cp->ok_f == NULL || cp->open_f == NULL) {
        bt_future_unref(cp->ok_f);
        bt_future_unref(cp->open_f);
        bt_free(cp->sql);
        bt_free(cp);
        return NULL;
    }
    cp->pool = p;
    cp->loop = loop;
    cp->out = out;
    cp->timeout_ms = p->o.query_timeout_ms;
    if (cp->timeout_ms > 0) {
        cp->timer = bt_timer_new(loop, on_stall, cp);
        if (cp->timer == NULL) {
            bt_future_unref(cp->ok_f);
            bt_future_unref(cp->open_f);
            bt_free(cp->sql);
            bt_free(cp);
            return NULL;
        }
    }
    bt__list_init(&cp->writes);
    if (out)
        cp->done_f = cp->open_f;
    return cp;
}

/* The common start of the four entry points: on the pool (target NULL) or
 * on an acquired connection. Returns: new reference, or NULL. */
static bt_future *copy_begin(bt_pq_pool *p, bt_pq_conn *target, const char *sql, bool out,
                             bt_pq_copy_data_cb cb, void *arg)
{
    bt_loop *loop = target != NULL ? target->loop : p->loop;
    if (sql == NULL)
        return bt_future_new_error(loop, BT_EINVAL, "no COPY statement (sql is NULL)");
    if (out && cb == NULL)
        return bt_future_new_error(loop, BT_EINVAL, "COPY OUT needs a data callback");
    if (target != NULL) {
        if (!target->acquired)
            return bt_future_new_error(loop, BT_EINVAL,
                                       "the connection is not acquired (released already?)");
        if (target->pool == NULL || target->state != BT__PQ_CS_READY)
            return bt_future_new_error(loop, BT_ECONNRESET,
                                       "the connection was lost; release it and acquire another");
        if (target->takeover != NULL)
            return bt_future_new_error(loop, BT_EBUSY, "a COPY already runs on the connection");
        if (target->ops_len > 0 || target->cancel_job != NULL)
            return bt_future_new_error(loop, BT_EBUSY,
                                       "queries are in flight on the connection: wait for "
                                       "them before a COPY (libpq runs COPY outside the pipeline)");
        p = target->pool;
    } else if (p->closed || p->closing) {
        return bt_future_new_error(loop, BT_ESHUTDOWN, "the pool is %s",
                                   p->closed ? "closed" : "closing");
    }
    bt_pq_copy *cp = copy_new(p, loop, sql, out);
    if (cp == NULL)
        return NULL;
    cp->cb = cb;
    cp->arg = arg;
    bt_future *f = bt_future_ref(cp->open_f);
    bt_future_on_cancel(cp->open_f, on_open_cancel, cp);
    if (target != NULL) {
        start(cp, target);
        return f;
    }
    cp->state = CP_ACQUIRING;
    cp->acq = bt_future_new(loop);
    if (cp->acq == NULL) {
        bt_future_set_error(cp->open_f, BT_ENOMEM, "out of memory");
        cp->state = CP_DONE;
        maybe_free(cp);
        return f;
    }
    bt__pq_pool_acquire(p, cp->acq);
    bt_future_add_callback(cp->acq, on_acquired, cp); /* takes our reference */
    return f;
}

/* ---- Input and output ------------------------------------------------------ */

/* One statement's result while STARTING or ENDING. */
static void take_result(bt_pq_copy *cp, PGresult *res)
{
    bt_pq_conn *c = cp->conn;
    switch (PQresultStatus(res)) {
    case PGRES_COPY_IN:
        PQclear(res);
        cp->state = CP_COPYING;
        if (cp->out) {
            cp->wrong_kind = true;
            set_err(cp, BT_EINVAL,
                    "the statement is a COPY FROM STDIN: use bt_pq_copy_in, not bt_pq_copy_out");
            PQputCopyEnd(c->pg, "wrong COPY direction for this call");
            cp->state = CP_ENDING;
            return;
        }
        if (cp->aborting) {
            PQputCopyEnd(c->pg, cp->abort_msg != NULL ? cp->abort_msg : "aborted");
            cp->state = CP_ENDING;
            return;
        }
        cp->user_ref = true;
        bt_future_set_value(cp->open_f, cp, handle_dtor);
        /* Let go of it now: a future dropped with the handle still in it
         * must reach handle_dtor, which aborts the COPY. */
        bt_future_unref(cp->open_f);
        cp->open_f = NULL;
        return;
    case PGRES_COPY_OUT:
        PQclear(res);
        cp->state = CP_COPYING;
        if (!cp->out) {
            cp->wrong_kind = true;
            set_err(cp, BT_EINVAL,
                    "the statement is a COPY TO STDOUT: use bt_pq_copy_out, not bt_pq_copy_in");
            bt__pq_cancel_send(c, cancel_done);
        }
        return;
    case PGRES_COPY_BOTH:
        PQclear(res);
        set_err(cp, BT_ENOTSUP, "COPY BOTH (replication) is not supported");
        bt__pq_conn_close(c, BT_ENOTSUP, "COPY BOTH is not supported");
        return;
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_EMPTY_QUERY:
        if (cp->state == CP_STARTING) {
            set_err(cp, BT_EINVAL,
                    cp->out ? "not a COPY ... TO STDOUT statement"
                            : "not a COPY ... FROM STDIN statement");
            PQclear(res);
            return;
        }
        if (cp->res != NULL)
            PQclear(cp->res);
        cp->res = res;
        return;
    default: {
        char *m = bt__pq_format_error(res, "COPY failed");
        set_err(cp, bt__pq_error_code(res), m != NULL ? m : "COPY failed");
        bt_free(m);
        PQclear(res);
        return;
    }
    }
}

/* COPY OUT: hand each complete row to the callback. Returns false if the
 * connection closed. */
static bool read_rows(bt_pq_copy *cp)
{
    bt_pq_conn *c = cp->conn;
    for (;;) {
        char *buf = NULL;
        int n = PQgetCopyData(c->pg, &buf, 1);
        if (n > 0) {
            cp->rows_out++;
            if (!cp->err && !cp->wrong_kind) {
                bt_loop_enter_cb(cp->loop, (const void *)cp->cb);
                int stop = cp->cb(buf, (size_t)n, cp->arg);
                bt_loop_leave_cb(cp->loop);
                if (stop != 0 && c->state == BT__PQ_CS_READY && !cp->err) {
                    set_err(cp, BT_ECANCELED, "the data callback stopped the COPY");
                    bt__pq_cancel_send(c, cancel_done);
                }
            }
            PQfreemem(buf);
            if (cp->conn == NULL)
                return false; /* the callback freed the pool */
            continue;
        }
        if (n == 0)
            return true; /* wait for more */
        if (n == -1) {
            cp->state = CP_ENDING;
            return true;
        }
        broken(cp);
        return false;
    }
}

/* Queued writes go out in order while there is room. Returns false if the
 * connection closed. */
static bool put(bt_pq_copy *cp, const char *data, size_t len);

static bool unblocked(bt_pq_copy *cp)
{
    cp->blocked = false;
    cp->buffered = 0;
    if (cp->pending != NULL) {
        bt_future *f = cp->pending;
        cp->pending = NULL;
        bt_future_set_value(f, NULL, NULL);
        bt_future_unref(f);
    }
    bt__list *n;
    while (!cp->blocked && (n = bt__list_pop_front(&cp->writes)) != NULL) {
        struct cp_write *w = BT__LIST_ENTRY(n, struct cp_write, link);
        if (!put(cp, w->data, w->len)) {
            bt_future_set_error(w->f, BT_ECONNRESET, "the connection was lost during the COPY");
            bt_future_unref(w->f);
            bt_free(w);
            return false;
        }
        if (cp->blocked) {
            cp->pending = w->f; /* settles when the buffer drains */
        } else {
            bt_future_set_value(w->f, NULL, NULL);
            bt_future_unref(w->f);
        }
        bt_free(w);
    }
    return true;
}

/* CopyDone or CopyFail, once the queued writes are out. */
static void send_end(bt_pq_copy *cp)
{
    bt_pq_conn *c = cp->conn;
    if (cp->blocked || !bt__list_empty(&cp->writes))
        return;
    int r = PQputCopyEnd(c->pg, cp->aborting ? cp->abort_msg : NULL);
    if (r < 0) {
        broken(cp);
        return;
    }
    if (r == 0) {
        watch(cp); /* no room yet: again when writable */
        return;
    }
    cp->state = CP_ENDING;
    r = PQflush(c->pg);
    if (r < 0) {
        broken(cp);
        return;
    }
    want_write(c, r == 1);
    watch(cp);
}

static void step(bt_pq_copy *cp)
{
    bt_pq_conn *c = cp->conn;
    for (;;) {
        if (cp->state == CP_COPYING) {
            if (cp->out || cp->wrong_kind) {
                if (!read_rows(cp))
                    return;
                if (cp->state == CP_COPYING)
                    return;
                continue;
            }
            if (cp->ended && !cp->blocked && bt__list_empty(&cp->writes)) {
                send_end(cp);
                if (cp->conn == NULL || cp->state != CP_ENDING)
                    return;
                continue;
            }
            return;
        }
        if (cp->state != CP_STARTING && cp->state != CP_ENDING)
            return;
        if (PQisBusy(c->pg))
            return;
        PGresult *res = PQgetResult(c->pg);
        if (res == NULL) {
            if (cp->state == CP_STARTING && !cp->err)
                set_err(cp, BT_EINVAL, "no COPY statement");
            if (cp->open_f != NULL && !bt_future_is_settled(cp->open_f) && cp->open_f != cp->done_f)
                bt_future_set_error(cp->open_f, cp->err, "%s", cp->errmsg);
            give_back(cp);
            return;
        }
        take_result(cp, res);
        if (cp->conn == NULL)
            return;
    }
}

/* Push libpq's buffer to the socket; EV_WRITE while some is left, and
 * the blocked writes go on once none is. Returns false if the connection
 * closed. */
static bool flush_out(bt_pq_copy *cp)
{
    bt_pq_conn *c = cp->conn;
    int r = PQflush(c->pg);
    if (r < 0) {
        broken(cp);
        return false;
    }
    want_write(c, r == 1);
    if (r == 0 && cp->blocked)
        return unblocked(cp) && cp->conn != NULL;
    return true;
}

static void copy_io(bt_pq_conn *c, short what)
{
    bt_pq_copy *cp = c->copy;
    cp->busy++;
    if ((what & EV_READ) && !PQconsumeInput(c->pg)) {
        broken(cp);
        goto out;
    }
    if (!flush_out(cp))
        goto out;
    step(cp);
    if (cp->conn != NULL && flush_out(cp))
        watch(cp); /* the server did something: its next wait starts now */
out:
    cp->busy--;
    maybe_free(cp);
}

/* Hand data to libpq; block (EV_WRITE) once the mark is passed and libpq
 * cannot empty its buffer. Returns false if the connection broke. */
static bool put(bt_pq_copy *cp, const char *data, size_t len)
{
    bt_pq_conn *c = cp->conn;
    while (len > 0) {
        int n = len > (size_t)INT_MAX / 2 ? INT_MAX / 2 : (int)len;
        if (PQputCopyData(c->pg, data, n) != 1) {
            broken(cp);
            return false;
        }
        data += n;
        len -= (size_t)n;
        cp->buffered += (size_t)n + 5;
    }
    if (cp->buffered > cp->max_buffered)
        cp->max_buffered = cp->buffered;
    if (cp->buffered >= BT__PQ_COPY_HIGH) {
        int r = PQflush(c->pg);
        if (r < 0) {
            broken(cp);
            return false;
        }
        if (r == 0) {
            cp->buffered = 0;
        } else {
            cp->blocked = true;
            cp->waits++;
            want_write(c, true);
            watch(cp);
        }
    }
    return true;
}

/* ---- COPY IN, the user's calls -------------------------------------------- */

static void on_write_cancel(bt_future *f, void *arg)
{
    bt_pq_copy *cp = arg;
    /* f is pending or queued: the COPY is aborted, and with it every
     * write after this one. */
    (void)f;
    abort_copy(cp, "cancelled by the client");
}

static void abort_copy(bt_pq_copy *cp, const char *reason)
{
    if (cp->aborting || cp->state == CP_DONE || cp->conn == NULL)
        return;
    cp->aborting = true;
    bt_free(cp->abort_msg);
    cp->abort_msg = bt_strdup(reason != NULL && reason[0] != '\0' ? reason : "aborted");
    fail_writes(cp, BT_ECANCELED, "the COPY was aborted");
    set_err(cp, BT_ECANCELED, "the COPY was aborted");
    cp->blocked = false;
    if (cp->state == CP_COPYING) {
        cp->ended = true;
        send_end(cp);
    }
}

static const char *ended_why(const bt_pq_copy *cp)
{
    return cp->aborting ? "the COPY was aborted" : "the COPY was ended already";
}

/* A future that settles once the writes queued before it went out (len
 * bytes of data join the queue). Returns: new reference. */
static bt_future *enqueue(bt_pq_copy *cp, const void *data, size_t len)
{
    struct cp_write *w = bt_malloc(sizeof *w + len);
    bt_future *f = bt_future_new(cp->loop);
    if (w == NULL || f == NULL) {
        bt_free(w);
        bt_future_unref(f);
        return bt_future_new_error(cp->loop, BT_ENOMEM, "out of memory");
    }
    if (len > 0)
        memcpy(w->data, data, len);
    w->len = len;
    w->f = bt_future_ref(f);
    bt__list_push_back(&cp->writes, &w->link);
    bt_future_on_cancel(f, on_write_cancel, cp);
    return f;
}

/* Why cp takes no data now (a BT_E* code), or 0. */
static int refuse(const bt_pq_copy *cp)
{
    if (cp->err)
        return cp->err;
    if (cp->ended || cp->state != CP_COPYING)
        return BT_EINVAL;
    return 0;
}

BT_EXPORT int bt_pq_copy_put(bt_pq_copy *cp, const void *data, size_t len)
{
    if (cp == NULL || (data == NULL && len > 0))
        return BT_EINVAL;
    int e = refuse(cp);
    if (e != 0)
        return e;
    if (cp->blocked || !bt__list_empty(&cp->writes))
        return BT_EAGAIN;
    if (len > 0 && !put(cp, data, len))
        return cp->err != 0 ? cp->err : BT_ECONNRESET;
    return 0;
}

BT_EXPORT bt_future *bt_pq_copy_ready(bt_pq_copy *cp)
{
    if (cp == NULL)
        return NULL;
    int e = refuse(cp);
    if (e != 0)
        return bt_future_new_error(cp->loop, e, "%s", cp->err ? cp->errmsg : ended_why(cp));
    if (!cp->blocked && bt__list_empty(&cp->writes))
        return bt_future_ref(cp->ok_f);
    return enqueue(cp, NULL, 0);
}

BT_EXPORT bt_future *bt_pq_copy_write(bt_pq_copy *cp, const void *data, size_t len)
{
    if (cp == NULL)
        return NULL;
    if (data == NULL && len > 0)
        return bt_future_new_error(cp->loop, BT_EINVAL, "data is NULL");
    int e = refuse(cp);
    if (e != 0)
        return bt_future_new_error(cp->loop, e, "%s", cp->err ? cp->errmsg : ended_why(cp));
    if (len == 0)
        return bt_future_ref(cp->ok_f);
    if (cp->blocked || !bt__list_empty(&cp->writes))
        return enqueue(cp, data, len);
    if (!put(cp, data, len))
        return bt_future_new_error(cp->loop, BT_ECONNRESET, "%s",
                                   cp->errmsg != NULL ? cp->errmsg : "connection lost");
    if (!cp->blocked)
        return bt_future_ref(cp->ok_f);
    bt_future *f = bt_future_new(cp->loop);
    if (f == NULL)
        return NULL;
    cp->pending = bt_future_ref(f);
    bt_future_on_cancel(f, on_write_cancel, cp);
    return f;
}

static void on_done_cancel(bt_future *f, void *arg)
{
    bt_pq_copy *cp = arg;
    bt_future_set_cancelled(f);
    if (cp->conn != NULL && cp->state == CP_ENDING && !cp->aborting)
        bt__pq_cancel_send(cp->conn, cancel_done);
    else if (cp->conn != NULL)
        abort_copy(cp, "cancelled by the client");
}

/* end and abort: the user lets go of the handle. */
static bt_future *finish(bt_pq_copy *cp, bool abort, const char *reason)
{
    if (!cp->user_ref) /* (an abort of our own may have ended the COPY) */
        return bt_future_new_error(cp->loop, BT_EINVAL, "%s", ended_why(cp));
    cp->ended = true;
    cp->user_ref = false;
    bt_future *f = bt_future_new(cp->loop);
    if (f == NULL) {
        abort_copy(cp, "out of memory");
        return NULL;
    }
    cp->done_f = bt_future_ref(f);
    cp->abort_ok = abort;
    if (cp->state == CP_DONE) {
        settle_done(cp); /* the connection was lost, or the COPY aborted, before */
        return f;
    }
    bt_future_on_cancel(f, on_done_cancel, cp);
    if (abort || cp->err)
        abort_copy(cp, reason != NULL ? reason : "aborted");
    else
        send_end(cp);
    return f;
}

BT_EXPORT bt_future *bt_pq_copy_end(bt_pq_copy *cp)
{
    if (cp == NULL)
        return NULL;
    cp->busy++;
    bt_future *f = finish(cp, false, NULL);
    cp->busy--;
    maybe_free(cp);
    return f;
}

BT_EXPORT bt_future *bt_pq_copy_abort(bt_pq_copy *cp, const char *reason)
{
    if (cp == NULL)
        return NULL;
    cp->busy++;
    bt_future *f = finish(cp, true, reason != NULL ? reason : "aborted by the client");
    cp->busy--;
    maybe_free(cp);
    return f;
}

BT_EXPORT size_t bt_pq_copy_buffered(const bt_pq_copy *cp)
{
    return cp != NULL ? cp->buffered : 0;
}

BT_EXPORT size_t bt_pq_copy_max_buffered(const bt_pq_copy *cp)
{
    return cp != NULL ? cp->max_buffered : 0;
}

BT_EXPORT uint64_t bt_pq_copy_waits(const bt_pq_copy *cp)
{
    return cp != NULL ? cp->waits : 0;
}

/* ---- Entry points ----------------------------------------------------------- */

BT_EXPORT bt_future *bt_pq_copy_in(bt_pq_pool *pool, const char *sql)
{
    if (pool == NULL)
        return NULL;
    return copy_begin(pool, NULL, sql, false, NULL, NULL);
}

BT_EXPORT bt_future *bt_pq_conn_copy_in(bt_pq_conn *c, const char *sql)
{
    if (c == NULL)
        return NULL;
    return copy_begin(NULL, c, sql, false, NULL, NULL);
}

BT_EXPORT bt_future *bt_pq_copy_out(bt_pq_pool *pool, const char *sql, bt_pq_copy_data_cb cb,
                                    void *arg)
{
    if (pool == NULL)
        return NULL;
    return copy_begin(pool, NULL, sql, true, cb, arg);
}

BT_EXPORT bt_future *bt_pq_conn_copy_out(bt_pq_conn *c, const char *sql, bt_pq_copy_data_cb cb,
                                         void *arg)
{
    if (c == NULL)
        return NULL;
    return copy_begin(NULL, c, sql, true, cb, arg);
}

/* ---- Text format ------------------------------------------------------------- */

BT_EXPORT size_t bt_pq_copy_text_row(char *buf, size_t cap, int n, const char *const *fields)
{
    size_t at = 0;
#define EMIT(ch)            \
    do {                    \
        if (at < cap)       \
            buf[at] = (ch); \
        at++;               \
    } while (0)
    for (int i = 0; i < n && fields != NULL; i++) {
        if (i > 0)
            EMIT('\t');
        const char *s = fields[i];
        if (s == NULL) {
            EMIT('\\');
            EMIT('N');
            continue;
        }
        for (; *s != '\0'; s++) {
            char e = 0;
            switch (*s) {
            case '\\':
                e = '\\';
                break;
            case '\t':
                e = 't';
                break;
            case '\n':
                e = 'n';
                break;
            case '\r':
                e = 'r';
                break;
            case '\b':
                e = 'b';
                break;
            case '\f':
                e = 'f';
                break;
            case '\v':
                e = 'v';
                break;
            default:
                break;
            }
            if (e != 0) {
                EMIT('\\');
                EMIT(e);
            } else {
                EMIT(*s);
            }
        }
    }
    EMIT('\n');
#undef EMIT
    return at;
}
