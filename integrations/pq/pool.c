/* The pool: its connections and, beside them, the queues of queries and
 * acquires waiting for one; who gets a connection, when connections are
 * opened, retired and replaced, lending and taking back, waiting with
 * bounds, and shutdown. It also handles what its connections report
 * (struct bt__pq_conn_events, filled in here).
 *
 * DESIGN
 * One FIFO of waiting queries and one of waiting acquires, both bounded in
 * length (max_waiters) and in time (acquire_timeout_ms, one timer for the
 * earliest deadline: FIFOs with one timeout are ordered by deadline).
 * pump() is the only place that hands out connections: acquires
 * first (they wait for a whole connection), then queries to an idle
 * connection, then, when the pool is at max_size, pipelined (see
 * "Choosing a connection for a query"). It then opens connections for what
 * still waits (and up to min_size), unless a connect failed recently:
 * failures back off exponentially with jitter, and the maintenance timer
 * retries. pump() is guarded against re-entry (a send can close a
 * connection, which pumps). A query that finds no free connection does not
 * pump inside the caller's call: it arms pump_ev, which pumps once at the
 * end of the loop pass for every query that came meanwhile (as sync_ev
 * Syncs the batches of the pass).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pq-internal.h"
#include "sized.h"

static void arm_maint(bt_pq_pool *p, uint64_t ms);

/* The pool's three lists (core/list.h): its connections, and the queues of
 * queries and of acquires waiting for one, each served from its head. */
#define CONN_OF(n) BT__LIST_ENTRY(n, bt_pq_conn, link)

static bt__pq_query *wq_first(const bt_pq_pool *p)
{
    return p->nwq > 0 ? BT__LIST_ENTRY(p->wq.next, bt__pq_query, link) : NULL;
}

static struct bt__pq_acq *aq_first(const bt_pq_pool *p)
{
    return p->naq > 0 ? BT__LIST_ENTRY(p->aq.next, struct bt__pq_acq, link) : NULL;
}
static void aq_unlink(bt_pq_pool *p, struct bt__pq_acq *a);
static void pump(bt_pq_pool *p);
static void arm_wait(bt_pq_pool *p);
static bt_pq_conn *pick(bt_pq_pool *p, const bt__pq_query *q);
static void observe(bt_pq_pool *p, bt_pq_conn *c, uint64_t now);
static bt_pq_conn *find_idle(bt_pq_pool *p);
static void hand_over(bt_pq_conn *c, struct bt__pq_acq *a);
static void on_connect_failed(bt_pq_pool *p, bool listener, int code, const char *msg);
static const struct bt__pq_conn_events conn_events;

static uint64_t now_ns(void)
{
    return bt_hrtime();
}

/* When a query or acquire that comes now stops waiting for a connection
 * (UINT64_MAX: never; a timeout too large to add saturates there). */
static uint64_t deadline(bt_pq_pool *p)
{
    uint64_t ms = p->o.acquire_timeout_ms, now = now_ns();
    if (ms == 0 || ms >= (UINT64_MAX - now) / 1000000)
        return UINT64_MAX;
    return now + ms * 1000000;
}

/* size is the caller's sizeof (the bt_pq_options_init macro): only that
 * much is written, whatever this library's layout. */
BT_EXPORT void bt_pq_options_init_size(bt_pq_options *dst, size_t size)
{
    if (dst == NULL || size < sizeof(size_t))
        return;
    bt_pq_options d, *o = &d;
    memset(o, 0, sizeof *o);
    o->min_size = 1;
    o->max_size = 10;
    o->pipeline_depth = 16;
    o->max_waiters = 10000;
    o->connect_timeout_ms = 10000;
    o->acquire_timeout_ms = 30000;
    o->max_lifetime_ms = 3600000;
    o->max_idle_ms = 600000;
    o->reconnect_min_ms = 50;
    o->reconnect_max_ms = 5000;
    o->stmt_cache_size = 256;
    o->resolve_timeout_ms = 5000;
    o->cancel_timeout_ms = 5000;
    memset(dst, 0, size); /* fields a newer header has: zero, "default" */
    bt__sized_write(dst, size, o, sizeof *o);
}

/* ---- Connections coming and going -------------------------------------- */

static void link_conn(bt_pq_pool *p, bt_pq_conn *c)
{
    bt__list_push_front(&p->conns, &c->link);
    p->nconns++;
}

static void unlink_conn(bt_pq_pool *p, bt_pq_conn *c)
{
    bt__list_remove(&c->link);
    p->nconns--;
}

bool bt__pq_can_connect(bt_pq_pool *p)
{
    if (p->closed)
        return false;
    uint64_t now = now_ns();
    if (now >= p->next_connect_ns)
        return true;
    arm_maint(p, (p->next_connect_ns - now) / 1000000 + 1);
    return false;
}

static void start_conn(bt_pq_pool *p)
{
    bt_pq_conn *c = bt__pq_conn_new(p, false, &conn_events);
    if (c == NULL) {
        on_connect_failed(p, false, BT_ENOMEM, "out of memory for a connection");
        return;
    }
    link_conn(p, c);
    c->counted_connecting = true;
    p->nconnecting++;
    if (c->state == BT__PQ_CS_CONNECTING)
        bt__pq_conn_begin(c); /* may fail (and unlink c) at once */
}

void bt__pq_start_listener(bt_pq_pool *p)
{
    if (p->listener != NULL || p->chans == NULL || !bt__pq_can_connect(p))
        return;
    bt_pq_conn *c = bt__pq_conn_new(p, true, &conn_events);
    if (c == NULL) {
        on_connect_failed(p, true, BT_ENOMEM, "out of memory for a connection");
        return;
    }
    p->listener = c;
    if (c->state == BT__PQ_CS_CONNECTING)
        bt__pq_conn_begin(c);
}

static void settle_ready(bt_pq_pool *p, int code, const char *msg)
{
    for (size_t i = 0; i < p->nready; i++) {
        if (code)
            bt_future_set_error(p->ready[i], code, "%s", msg);
        else
            bt_future_set_value(p->ready[i], NULL, NULL);
        bt_future_unref(p->ready[i]);
    }
    bt_free(p->ready);
    p->ready = NULL;
    p->nready = 0;
}

/* c was released and has nothing in flight: roll back a transaction left
 * open (never hand a connection to the next user mid-transaction), then
 * make it available. */
static void finish_release(bt_pq_conn *c)
{
    bt_pq_pool *p = c->pool;
    if (c->state != BT__PQ_CS_READY) {
        bt__pq_conn_close(c, BT_ECONNRESET, "broken");
        return;
    }
    if (bt_pq_conn_in_transaction(c) || PQtransactionStatus(c->pg) == PQTRANS_UNKNOWN) {
        if (c->rollback_tries++ > 0 || PQtransactionStatus(c->pg) == PQTRANS_UNKNOWN) {
            bt__pq_conn_close(c, BT_ECONNRESET, "could not roll back a released connection");
            return;
        }
        bt_log(BT_LOG_DEBUG, "pq: a connection was released inside a transaction; rolling back");
        bt__pq_conn_send_internal(c, "ROLLBACK");
        return; /* back here through on_available */
    }
    c->releasing = false;
    c->rollback_tries = 0;
    c->idle_ns = bt_hrtime();
    if (c->retiring) {
        bt__pq_conn_close(c, 0, "retired");
        return;
    }
    pump(p);
}

/* ---- What connections report (struct bt__pq_conn_events) ----------------- */

static void on_connected(bt_pq_conn *c)
{
    bt_pq_pool *p = c->pool;
    p->fails = 0;
    p->next_connect_ns = 0;
    p->st.connects++;
    if (c->is_listener) {
        bt__pq_chan_relisten(p, c);
        return;
    }
    if (c->counted_connecting) {
        c->counted_connecting = false;
        p->nconnecting--;
    }
    p->ever_connected = true;
    settle_ready(p, 0, NULL);
    pump(p);
}

/* The length of a leading "[SQLSTATE] " in msg (a connect error the server
 * reported, see connect.c), or 0. Messages built around msg keep it in
 * front, where bt_pq_error_parse looks for it. */
static int sqlstate_prefix(const char *msg)
{
    if (msg == NULL || msg[0] != '[' || strlen(msg) < 8 || msg[6] != ']' || msg[7] != ' ')
        return 0;
    for (int i = 1; i < 6; i++)
        if (!((msg[i] >= '0' && msg[i] <= '9') || (msg[i] >= 'A' && msg[i] <= 'Z')))
            return 0;
    return 8;
}

static void fail_waiters(bt_pq_pool *p, int code, const char *fmt, const char *msg)
{
    bt__pq_query *q;
    while ((q = wq_first(p)) != NULL) {
        bt__pq_wq_unlink(p, q);
        q->state = BT__PQ_Q_NEW;
        bt__pq_query_end(q, code, fmt, msg);
    }
    struct bt__pq_acq *a;
    while ((a = aq_first(p)) != NULL) {
        aq_unlink(p, a);
        bt_future_set_error(a->f, code, fmt, msg);
        bt_future_unref(a->f);
        bt_free(a);
    }
}

static void on_connect_failed(bt_pq_pool *p, bool listener, int code, const char *msg)
{
    if (p->closed)
        return;
    p->st.connect_failures++;
    /* Exponential backoff with "equal jitter": half fixed, half random, so
     * a fleet of clients does not reconnect in step. Attempts that were
     * already under way when the last backoff began (the pool opens several
     * at once) do not make it grow again: one outage, one step. */
    uint64_t now = now_ns(), delay;
    if (now >= p->next_connect_ns) {
        p->fails++;
        uint64_t d = p->o.reconnect_min_ms;
        for (unsigned i = 1; i < p->fails && d < p->o.reconnect_max_ms; i++)
            d *= 2;
        if (d > p->o.reconnect_max_ms)
            d = p->o.reconnect_max_ms;
        p->rng ^= p->rng << 13;
        p->rng ^= p->rng >> 17;
        p->rng ^= p->rng << 5;
        delay = d / 2 + (d > 1 ? p->rng % (d / 2 + 1) : 0);
        p->next_connect_ns = now + delay * 1000000;
    } else {
        delay = (p->next_connect_ns - now) / 1000000;
    }
    p->last_err = code;
    bt_free(p->last_errmsg);
    p->last_errmsg = bt_strdup(msg);
    bt_log(BT_LOG_DEBUG, "pq: connect failed (%s), retry in %llu ms", msg,
           (unsigned long long)delay);
    if (listener) {
        while (p->listen_waits != NULL) {
            struct bt__pq_listen_wait *w = p->listen_waits;
            p->listen_waits = w->next;
            int n = sqlstate_prefix(msg);
            bt_future_set_error(w->f, code, "%.*scould not connect to listen: %s", n, msg, msg + n);
            bt_future_unref(w->f);
            bt_free(w->channel);
            bt_free(w);
        }
    } else if (!p->ever_connected) {
        /* A pool that never connected is most likely misconfigured or its
         * server is down: fail what waits now rather than at the timeout.
         * Once a pool has worked, waiters ride out a restart instead. */
        settle_ready(p, code, msg);
        int n = sqlstate_prefix(msg);
        char *m = bt_asprintf("%.*scould not connect to the database: %s", n, msg, msg + n);
        fail_waiters(p, code, "%s", m != NULL ? m : msg);
        bt_free(m);
    }
    arm_maint(p, delay + 1);
}

static void on_gone(bt_pq_conn *c)
{
    bt_pq_pool *p = c->pool;
    if (c == p->listener) {
        p->listener = NULL;
        if (!p->closed && p->chans != NULL)
            arm_maint(p, 1);
    } else {
        unlink_conn(p, c);
        if (c->counted_connecting) {
            c->counted_connecting = false;
            p->nconnecting--;
        }
    }
    if (c->acquired)
        c->pool = NULL; /* dead until the user releases it */
    if (!p->closed)
        pump(p); /* replace it if anything waits or min_size says so */
}

static void on_available(bt_pq_conn *c)
{
    bt_pq_pool *p = c->pool;
    observe(p, c, now_ns());
    if (c->ops_len == 0) {
        if (c->releasing) {
            finish_release(c);
            return;
        }
        if (!c->acquired && bt_pq_conn_in_transaction(c)) {
            /* A pool query left a transaction open (a stray BEGIN): never
             * hand that to the next query. */
            bt_log(BT_LOG_WARN, "pq: a pool query left its connection inside a transaction; "
                                "rolling it back (use bt_pq_acquire for transactions)");
            c->releasing = true;
            finish_release(c);
            return;
        }
        if (c->retiring && !c->acquired) {
            bt__pq_conn_close(c, 0, "retired");
            return;
        }
    }
    /* The common case under load: nothing waits and the pool is at its
     * floor, so there is nothing to hand out or open. */
    if (p->nwq > 0 || p->naq > 0 || p->nready > 0 || p->nconns < p->o.min_size)
        pump(p);
    else
        bt__pq_check_drained(p);
}

/* ---- Handing out connections --------------------------------------------- */

/* Whether c may take pool work. Not while a cancel request for it is in
 * flight: PQcancel has not returned, so the server may not have acted yet,
 * and the request would hit the new query. */
static bool usable(const bt_pq_conn *c)
{
    return c->state == BT__PQ_CS_READY && !c->acquired && !c->releasing && !c->retiring &&
           c->cancel_job == NULL;
}

static bt_pq_conn *find_idle(bt_pq_pool *p)
{
    for (bt__list *n = p->conns.next; n != &p->conns; n = n->next)
        if (usable(CONN_OF(n)) && CONN_OF(n)->ops_len == 0)
            return CONN_OF(n);
    return NULL;
}

/* ---- Choosing a connection for a query ---------------------------------
 *
 * Once the pool is at max_size, a query goes, in this order of preference:
 *  1. to a connection whose only work is the batch being formed in this
 *     loop pass (sent, not yet synced): it is answered with that batch, in
 *     the same round trip, and its backend does the work of one wakeup for
 *     all of them. Several idle backends woken for one query each cost
 *     more on a server whose backends outnumber its cores. Only while
 *     answers come fast (answer_ns below BATCH_JOIN_MAX_NS), and only for
 *     a query that may share a Sync (not solo, no row callback): queries
 *     that take milliseconds each gain more from backends of their own
 *     than from a shared round trip, and a burst of them would otherwise
 *     run one after another on one backend while others sit idle;
 *  2. to an idle connection;
 *  3. pipelined onto the connection with the fewest queries in flight
 *     (below pipeline_depth) among those that do not look stalled;
 *  4. else onto the one with the fewest among the stalled ones.
 * A connection looks stalled when its oldest query in flight was sent
 * STALL_FACTOR times longer ago than queries lately waited for their
 * answer (answer_ns, and at least STALL_MIN_NS). When a backend is off its
 * core for a scheduling slice (several milliseconds on a loaded machine),
 * or stopped, every query queued on its connection waits with it: that is
 * the tail of the latency under pipelining. A stalled connection keeps
 * what it has (nothing can be taken back out of a pipeline) but is given
 * no more while another can take it. Below max_size the pool prefers an
 * idle connection, then opens one, as without pipelining.
 */
enum { STALL_FACTOR = 4 };
#define STALL_MIN_NS 1000000u
#define BATCH_JOIN_MAX_NS 2000000u

static uint64_t stall_after(const bt_pq_pool *p)
{
    uint64_t t = STALL_FACTOR * p->answer_ns;
    return t > STALL_MIN_NS ? t : STALL_MIN_NS;
}

/* When c's oldest query in flight was sent (0: none, or not by the pool). */
static uint64_t oldest_sent(const bt_pq_conn *c)
{
    for (size_t i = 0; i < c->ops_len; i++) {
        const bt__pq_query *q = c->ops[(c->ops_head + i) % c->ops_cap].q;
        if (q != NULL && !q->abandoned && q->sent_ns != 0)
            return q->sent_ns; /* the pool's own (DEALLOCATE...) are not stamped */
    }
    return 0;
}

/* Catch up with what c did since the pool last looked: if answers came
 * (fewer in flight), the oldest query then was answered, and the time it
 * waited is a sample of answer_ns (capped, so that one stall does not
 * make the next look normal). */
static void observe(bt_pq_pool *p, bt_pq_conn *c, uint64_t now)
{
    if (c->inflight == c->seen_inflight)
        return;
    if (c->inflight < c->seen_inflight && c->oldest_sent_ns != 0) {
        uint64_t took = now - c->oldest_sent_ns, cap = 2 * stall_after(p);
        if (took > cap)
            took = cap;
        p->answer_ns = p->answer_ns - p->answer_ns / 8 + took / 8;
    }
    c->oldest_sent_ns = oldest_sent(c);
    c->seen_inflight = c->inflight;
}

static bool stalled(const bt_pq_pool *p, const bt_pq_conn *c, uint64_t now)
{
    return c->inflight > 0 && c->oldest_sent_ns != 0 && now - c->oldest_sent_ns > stall_after(p);
}

/* A connection that may take one more pipelined query. */
static bool has_room(const bt_pq_pool *p, const bt_pq_conn *c)
{
    return usable(c) && c->abandoned == 0 && c->inflight < p->o.pipeline_depth;
}

/* The connection to pipeline a query onto (preferences 1, 3 and 4 above),
 * or NULL. */
static bt_pq_conn *least_busy(bt_pq_pool *p)
{
    uint64_t now = now_ns();
    bt_pq_conn *best = NULL, *best_stalled = NULL;
    for (bt__list *n = p->conns.next; n != &p->conns; n = n->next) {
        bt_pq_conn *c = CONN_OF(n);
        if (!has_room(p, c))
            continue;
        observe(p, c, now);
        bt_pq_conn **b = stalled(p, c, now) ? &best_stalled : &best;
        if (*b == NULL || c->inflight < (*b)->inflight)
            *b = c;
    }
    return best != NULL ? best : best_stalled;
}

/* A connection whose only work is the batch it is forming (preference 1). */
static bt_pq_conn *open_batch(bt_pq_pool *p)
{
    for (bt__list *n = p->conns.next; n != &p->conns; n = n->next) {
        bt_pq_conn *c = CONN_OF(n);
        if (c->unsynced > 0 && c->unsynced == c->inflight && has_room(p, c))
            return c;
    }
    return NULL;
}

/* A connection for a query now (see above). NULL: wait. */
static bt_pq_conn *pick(bt_pq_pool *p, const bt__pq_query *q)
{
    bool pipelining =
        p->o.pipeline_depth > 1 && p->nconns - p->nconnecting >= 1 && p->nconns >= p->o.max_size;
    bool join = pipelining && !q->solo && q->row_cb == NULL && p->answer_ns < BATCH_JOIN_MAX_NS;
    bt_pq_conn *c = join ? open_batch(p) : NULL;
    if (c == NULL)
        c = find_idle(p);
    if (c == NULL && pipelining)
        c = least_busy(p);
    return c;
}

/* Send q on c, counting it in the pool's view of c first (a failed send
 * may close and free c). */
static void send_to(bt_pq_pool *p, bt_pq_conn *c, bt__pq_query *q)
{
    uint64_t now = now_ns();
    observe(p, c, now);
    q->sent_ns = now;
    if (c->seen_inflight == 0)
        c->oldest_sent_ns = now;
    c->seen_inflight = c->inflight + 1;
    bt__pq_conn_send(c, q);
}

static void conn_value_release(void *v)
{
    bt__pq_pool_release(v);
}

static void hand_over(bt_pq_conn *c, struct bt__pq_acq *a)
{
    c->acquired = true;
    c->rollback_tries = 0;
    bt_future_set_value(a->f, c, conn_value_release);
    bt_future_unref(a->f);
    bt_free(a);
}

/* Take q off the queue of queries waiting for a connection. */
void bt__pq_wq_unlink(bt_pq_pool *p, bt__pq_query *q)
{
    bt__list_remove(&q->link);
    p->nwq--;
}

/* q waits for a connection at the tail of the wait queue, bounded in time
 * (its deadline was set when it came); or, when the queue is full, it
 * fails. */
static void wq_push(bt_pq_pool *p, bt__pq_query *q)
{
    if (p->nwq + p->naq < p->o.max_waiters) {
        q->state = BT__PQ_Q_WAITING;
        bt__list_push_back(&p->wq, &q->link);
        p->nwq++;
        arm_wait(p);
        /* No connection is free: the pool opens one (or hands one back) at
         * the end of this loop pass, once for every query that came
         * meanwhile, rather than inside each call. */
        if (!p->pump_armed && p->pump_ev != NULL) {
            p->pump_armed = true;
            event_active(p->pump_ev, EV_TIMEOUT, 0);
        }
        return;
    }
    bt__pq_query_end(q, BT_EAGAIN, "too many queries waiting for a connection (max_waiters %u)",
                     p->o.max_waiters);
}

/* A new query: to the connection lent for it (q->target), else to a
 * connection now, else into the wait queue. The pool takes q over. */
void bt__pq_pool_run(bt_pq_pool *p, bt__pq_query *q)
{
    if (q->target != NULL) {
        bt__pq_conn_send(q->target, q);
        return;
    }
    /* The wait for a connection is bounded from now on, across the
     * retries too (see on_retry). */
    q->deadline_ns = deadline(p);
    bt_pq_conn *c = p->nwq == 0 ? pick(p, q) : NULL;
    if (c == NULL) {
        wq_push(p, q);
        return;
    }
    send_to(p, c, q);
}

/* Take a waiter off the pool's acquire queue. */
static void aq_unlink(bt_pq_pool *p, struct bt__pq_acq *a)
{
    bt__list_remove(&a->link);
    p->naq--;
}

static void on_acquire_cancel(bt_future *f, void *arg)
{
    (void)f;
    struct bt__pq_acq *a = arg;
    /* a is still queued: hand_over and the timers free it otherwise, and
     * the future is settled then, so this hook cannot run. */
    bt_pq_pool *pool = a->pool;
    aq_unlink(pool, a);
    bt_future_set_cancelled(a->f);
    bt_future_unref(a->f);
    bt_free(a);
    bt__pq_check_drained(pool);
}

/* bt_pq_acquire's work, for an open pool: f gets a connection now, or
 * waits in the acquire queue (bounded in length and time), or fails. */
void bt__pq_pool_acquire(bt_pq_pool *p, bt_future *f)
{
    struct bt__pq_acq *a = bt_calloc(1, sizeof *a);
    if (a == NULL) {
        bt_future_set_error(f, BT_ENOMEM, "out of memory");
        return;
    }
    bt__list_init(&a->link);
    a->pool = p;
    a->f = bt_future_ref(f);
    bt_pq_conn *c = p->naq > 0 ? NULL : find_idle(p);
    if (c != NULL) {
        hand_over(c, a);
        return;
    }
    if (p->nwq + p->naq >= p->o.max_waiters) {
        bt_future_set_error(f, BT_EAGAIN, "too many waiting for a connection (max_waiters %u)",
                            p->o.max_waiters);
        bt_future_unref(a->f);
        bt_free(a);
        return;
    }
    a->deadline_ns = deadline(p);
    bt__list_push_back(&p->aq, &a->link);
    p->naq++;
    bt_future_on_cancel(f, on_acquire_cancel, a);
    arm_wait(p);
    pump(p);
}

/* bt_pq_conn_release: take c back (it may still be running queries; it is
 * rolled back if dirty once they are done), or free it if it died. */
void bt__pq_pool_release(bt_pq_conn *c)
{
    if (!c->acquired)
        return;
    c->acquired = false;
    if (c->pool == NULL || c->state == BT__PQ_CS_DEAD) {
        bt__pq_conn_free_dead(c);
        return;
    }
    c->releasing = true;
    if (c->ops_len == 0)
        finish_release(c);
}

static void grow(bt_pq_pool *p)
{
    for (;;) {
        unsigned waiting = p->nwq + p->naq + (p->nready ? 1 : 0);
        unsigned want = waiting > p->nconnecting ? waiting - p->nconnecting : 0;
        unsigned floor = p->o.min_size > p->nconns && !p->closing ? p->o.min_size - p->nconns : 0;
        if (floor > want)
            want = floor;
        if (want == 0 || p->nconns >= p->o.max_size || !bt__pq_can_connect(p))
            return;
        /* 64 bits, as the counter: in unsigned, 2^32 failed connects in a
         * process's life would wrap the sum and the guard would stop
         * working. */
        uint64_t before = (uint64_t)p->nconns + p->st.connect_failures;
        start_conn(p);
        if (p->closed || (uint64_t)p->nconns + p->st.connect_failures == before)
            return; /* nothing changed: do not spin */
    }
}

static void pump(bt_pq_pool *p)
{
    if (p->closed)
        return;
    if (p->pumping) {
        p->repump = true;
        return;
    }
    p->pumping = true;
    do {
        p->repump = false;
        while (p->naq > 0) {
            bt_pq_conn *c = find_idle(p);
            if (c == NULL)
                break;
            struct bt__pq_acq *a = aq_first(p);
            aq_unlink(p, a);
            hand_over(c, a);
        }
        while (p->nwq > 0 && !p->closed) {
            bt__pq_query *q = wq_first(p);
            bt_pq_conn *c = pick(p, q);
            if (c == NULL)
                break;
            bt__pq_wq_unlink(p, q);
            send_to(p, c, q);
        }
        if (!p->closed)
            grow(p);
    } while (p->repump && !p->closed);
    p->pumping = false;
    bt__pq_check_drained(p);
}

static void pool_shutdown(bt_pq_pool *p);

/* bt_pq_pool_close: once nothing waits, runs or is lent out, close. */
void bt__pq_check_drained(bt_pq_pool *p)
{
    if (!p->closing || p->closed || p->pumping || p->nwq || p->naq)
        return;
    for (bt__list *n = p->conns.next; n != &p->conns; n = n->next)
        if (CONN_OF(n)->acquired || CONN_OF(n)->releasing || CONN_OF(n)->ops_len > 0)
            return;
    p->drained = true;
    pool_shutdown(p);
}

/* Put a retried query back in the wait queue, ordered by deadline (which
 * arm_wait and on_wait_timer rely on: they look at its head only) and
 * ahead of those with the same one (it came before them: with no
 * acquire_timeout_ms every deadline is the same). *at is where the
 * previous retry of the same batch went: the search goes on from there,
 * so a batch keeps its order without a walk of the whole queue for each
 * of its queries. */
static void wq_insert(bt_pq_pool *p, bt__pq_query *q, bt__list **at)
{
    bt__list *n = *at;
    if (n->prev != &p->wq &&
        BT__LIST_ENTRY(n->prev, bt__pq_query, link)->deadline_ns > q->deadline_ns)
        n = p->wq.next; /* earlier than the one before: search from the head */
    while (n != &p->wq && BT__LIST_ENTRY(n, bt__pq_query, link)->deadline_ns < q->deadline_ns)
        n = n->next;
    bt__list__insert(&q->link, n->prev, n);
    p->nwq++;
    *at = n;
}

/* Put queries of a failed batch back in the wait queue, in their order,
 * each to be sent alone (see pq-internal.h). They keep the deadline they
 * got when they came: a query's wait for a connection is bounded as a
 * whole, retries included, and a fresh deadline would break the queue's
 * order (a later deadline ahead of an earlier one would hide it from the
 * timer). They go ahead of every query with the same deadline or a
 * later one: they came before those. */
static void on_retry(bt_pq_conn *c, bt__list *qs)
{
    bt_pq_pool *p = c->pool;
    bt__list *n, *at = p->wq.next;
    while ((n = bt__list_pop_front(qs)) != NULL) {
        bt__pq_query *q = BT__LIST_ENTRY(n, bt__pq_query, link);
        if (p->closed) {
            bt__pq_query_end(q, BT_ESHUTDOWN, "the pool was closed");
            continue;
        }
        q->state = BT__PQ_Q_WAITING;
        q->conn = NULL;
        q->solo = true;
        q->used_named = false;
        q->aborted = q->started = q->want_cancel = q->rows_stopped = false;
        q->err = 0;
        bt_free(q->errmsg);
        q->errmsg = NULL;
        if (q->res != NULL) {
            PQclear(q->res);
            q->res = NULL;
        }
        wq_insert(p, q, &at);
        p->st.retried++;
    }
    arm_wait(p);
}

/* End of the loop pass: Sync every connection's open batch. A Sync can
 * close its connection (which may start others), so look again from the
 * top each time rather than keep a pointer into the list. */
static void on_pump_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bt_pq_pool *p = arg;
    p->pump_armed = false;
    pump(p);
}

static void on_sync_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bt_pq_pool *p = arg;
    p->sync_armed = false;
    for (;;) {
        bt_pq_conn *c = NULL;
        for (bt__list *n = p->conns.next; n != &p->conns && c == NULL; n = n->next)
            if (CONN_OF(n)->unsynced > 0 && CONN_OF(n)->state == BT__PQ_CS_READY)
                c = CONN_OF(n);
        if (c == NULL)
            break;
        bt__pq_conn_sync(c);
    }
}

static void on_batch_open(bt_pq_conn *c)
{
    bt_pq_pool *p = c->pool;
    if (!p->sync_armed && p->sync_ev != NULL) {
        p->sync_armed = true;
        event_active(p->sync_ev, EV_TIMEOUT, 0);
    }
}

static void on_notify(bt_pq_conn *c, PGnotify *n)
{
    bt__pq_chan_dispatch(c->pool, n);
}

static const struct bt__pq_conn_events conn_events = {
    .connected = on_connected,
    .connect_failed = on_connect_failed,
    .available = on_available,
    .gone = on_gone,
    .batch_open = on_batch_open,
    .retry = on_retry,
    .notify = on_notify,
};

/* ---- Waiting with bounds ----------------------------------------------- */

static void on_wait_timer(bt_timer *t, void *arg)
{
    (void)t;
    bt_pq_pool *p = arg;
    uint64_t now = now_ns();
    char why[600];
    snprintf(why, sizeof why, "%llu ms; pool %u/%u open%s%s",
             (unsigned long long)p->o.acquire_timeout_ms, p->nconns - p->nconnecting, p->o.max_size,
             p->last_errmsg != NULL ? "; last connect error: " : "",
             p->last_errmsg != NULL ? p->last_errmsg : "");
    bt__pq_query *q;
    while ((q = wq_first(p)) != NULL && q->deadline_ns <= now) {
        bt__pq_wq_unlink(p, q);
        q->state = BT__PQ_Q_NEW;
        bt__pq_query_end(q, BT_ETIMEDOUT, "timed out waiting for a connection after %s", why);
    }
    struct bt__pq_acq *a;
    while ((a = aq_first(p)) != NULL && a->deadline_ns <= now) {
        aq_unlink(p, a);
        bt_future_set_error(a->f, BT_ETIMEDOUT, "timed out waiting for a connection after %s", why);
        bt_future_unref(a->f);
        bt_free(a);
    }
    arm_wait(p);
    bt__pq_check_drained(p);
}

static void arm_wait(bt_pq_pool *p)
{
    if (p->closed || p->o.acquire_timeout_ms == 0)
        return;
    uint64_t next = UINT64_MAX;
    if (p->nwq > 0)
        next = wq_first(p)->deadline_ns;
    if (p->naq > 0 && aq_first(p)->deadline_ns < next)
        next = aq_first(p)->deadline_ns;
    if (next == UINT64_MAX)
        return;
    /* A retried query may be due before the one the timer waits for. */
    if (bt_timer_is_active(p->wait_timer) && p->wait_due_ns <= next)
        return;
    p->wait_due_ns = next;
    uint64_t now = now_ns();
    bt_timer_start(p->wait_timer, next > now ? (next - now) / 1000000 + 1 : 0, 0);
}

/* ---- Maintenance: lifetime, idleness, retries ---------------------------- */

static uint64_t maint_period(const bt_pq_pool *p)
{
    uint64_t ms = 1000;
    if (p->o.max_idle_ms && p->o.max_idle_ms / 4 < ms)
        ms = p->o.max_idle_ms / 4;
    if (p->o.max_lifetime_ms && p->o.max_lifetime_ms / 4 < ms)
        ms = p->o.max_lifetime_ms / 4;
    return ms < 10 ? 10 : ms;
}

static void on_maint(bt_timer *t, void *arg)
{
    (void)t;
    bt_pq_pool *p = arg;
    p->maint_due_ns = 0;
    uint64_t now = now_ns();
    bt__list *n, *next;
    BT__LIST_FOREACH_SAFE (n, next, &p->conns) {
        bt_pq_conn *c = CONN_OF(n);
        if (c->state != BT__PQ_CS_READY)
            continue;
        bool idle = c->ops_len == 0 && !c->acquired && !c->releasing;
        if (p->o.max_lifetime_ms && now - c->born_ns > p->o.max_lifetime_ms * 1000000) {
            if (idle) {
                bt__pq_conn_close(c, 0, "retired (max_lifetime_ms)");
                continue;
            }
            c->retiring = true;
        }
        if (idle && p->o.max_idle_ms && p->nconns > p->o.min_size &&
            now - c->idle_ns > p->o.max_idle_ms * 1000000)
            bt__pq_conn_close(c, 0, "closed (max_idle_ms)");
    }
    if (p->closed)
        return;
    pump(p);
    bt__pq_start_listener(p);
    arm_maint(p, maint_period(p));
}

static void arm_maint(bt_pq_pool *p, uint64_t ms)
{
    if (p->closed || p->maint_timer == NULL)
        return;
    uint64_t due = now_ns() + ms * 1000000;
    if (p->maint_due_ns && p->maint_due_ns <= due && bt_timer_is_active(p->maint_timer))
        return;
    p->maint_due_ns = due;
    bt_timer_start(p->maint_timer, ms, 0);
}

/* ---- The pool's life ------------------------------------------------------ */

static void pool_shutdown(bt_pq_pool *p)
{
    if (p->closed)
        return;
    p->closed = true;
    if (p->wait_timer != NULL) {
        bt_timer_free(p->wait_timer);
        p->wait_timer = NULL;
    }
    if (p->maint_timer != NULL) {
        bt_timer_free(p->maint_timer);
        p->maint_timer = NULL;
    }
    if (p->sync_ev != NULL) {
        event_free(p->sync_ev);
        p->sync_ev = NULL;
    }
    if (p->pump_ev != NULL) {
        event_free(p->pump_ev);
        p->pump_ev = NULL;
    }
    fail_waiters(p, BT_ESHUTDOWN, "%s", "the pool was closed");
    settle_ready(p, BT_ESHUTDOWN, "the pool was closed");
    if (p->close_f != NULL) {
        if (p->drained)
            bt_future_set_value(p->close_f, NULL, NULL);
        else
            bt_future_set_error(p->close_f, BT_ESHUTDOWN,
                                "the pool was freed before it had drained");
        bt_future_unref(p->close_f);
        p->close_f = NULL;
    }
    while (p->listen_waits != NULL) {
        struct bt__pq_listen_wait *w = p->listen_waits;
        p->listen_waits = w->next;
        bt_future_set_error(w->f, BT_ESHUTDOWN, "the pool was closed");
        bt_future_unref(w->f);
        bt_free(w->channel);
        bt_free(w);
    }
    bt__list *n;
    while ((n = bt__list_first(&p->conns)) != NULL)
        bt__pq_conn_shutdown(CONN_OF(n), "the pool was closed");
    if (p->listener != NULL)
        bt__pq_conn_shutdown(p->listener, "the pool was closed");
    bt__pq_notice_free(p);
}

static void on_loop_close(void *arg)
{
    bt_pq_pool *p = arg;
    pool_shutdown(p);
    p->loop_gone = true;
}

static void pool_free_memory(bt_pq_pool *p)
{
    if (p->keys != NULL)
        for (size_t i = 0; p->keys[i] != NULL; i++) {
            bt_free((void *)p->keys[i]);
            bt_free((void *)p->vals[i]);
        }
    bt_free(p->keys);
    bt_free(p->vals);
    while (p->chans != NULL) {
        bt__pq_chan *ch = p->chans;
        p->chans = ch->next;
        bt_free(ch->name);
        bt_free(ch);
    }
    bt_free(p->host);
    bt_free(p->ports);
    bt_free(p->last_errmsg);
    bt_free(p->conninfo);
    bt_free(p);
}

BT_EXPORT bt_pq_pool *bt_pq_pool_new(bt_loop *loop, const bt_pq_options *o)
{
    /* A NULL without a word leaves a newcomer guessing: say why. */
    if (loop == NULL || o == NULL) {
        bt_log(BT_LOG_WARN, "pq: bt_pq_pool_new: %s",
               loop == NULL ? "the loop is NULL"
                            : "the options are NULL (bt_pq_options_init fills them)");
        return NULL;
    }
    /* The caller's options over the defaults, up to the caller's size. */
    if (bt__sized_check(o->size, BT__SIZE_V1(bt_pq_options, cancel_timeout_ms),
                        "pq: bt_pq_pool_new", "bt_pq_options", "bt_pq_options_init") != 0)
        return NULL;
    bt_pq_options given;
    bt_pq_options_init(&given);
    bt__sized_read(&given, sizeof given, o, o->size);
    o = &given;
    if (o->conninfo == NULL) {
        bt_log(BT_LOG_WARN, "pq: bt_pq_pool_new: no conninfo (set options.conninfo to a "
                            "libpq connection string or URI)");
        return NULL;
    }
    if (o->max_size == 0 || o->min_size > o->max_size) {
        bt_log(BT_LOG_WARN,
               "pq: bt_pq_pool_new: min_size %u and max_size %u: max_size must "
               "be at least 1 and at least min_size",
               o->min_size, o->max_size);
        return NULL;
    }
    bt_pq_pool *p = bt_calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->loop = loop;
    p->base = bt_loop_base(loop);
    p->free_memory = pool_free_memory;
    bt__list_init(&p->conns);
    bt__list_init(&p->wq);
    bt__list_init(&p->aq);
    p->o = *o;
    if (p->o.pipeline_depth == 0)
        p->o.pipeline_depth = 1;
    if (p->o.reconnect_min_ms == 0)
        p->o.reconnect_min_ms = 1;
    if (p->o.reconnect_max_ms < p->o.reconnect_min_ms)
        p->o.reconnect_max_ms = p->o.reconnect_min_ms;
    /* 0 would mean "wait forever": every wait has a deadline. */
    if (p->o.connect_timeout_ms == 0)
        p->o.connect_timeout_ms = 10000;
    if (p->o.resolve_timeout_ms == 0)
        p->o.resolve_timeout_ms = 5000;
    if (p->o.cancel_timeout_ms == 0)
        p->o.cancel_timeout_ms = 5000;
    /* Behind a transaction pooler a statement prepared in one transaction
     * is on a server connection the next one may not get. */
    if (p->o.transaction_pooling)
        p->o.stmt_cache_size = 0;
    p->rng = (uint32_t)(now_ns() ^ (uintptr_t)p) | 1;
    p->conninfo = bt_strdup(o->conninfo);
    p->o.conninfo = p->conninfo;
    p->wait_timer = bt_timer_new(loop, on_wait_timer, p);
    p->maint_timer = bt_timer_new(loop, on_maint, p);
    p->sync_ev = event_new(p->base, -1, 0, on_sync_ev, p);
    p->pump_ev = event_new(p->base, -1, 0, on_pump_ev, p);
    if (p->conninfo == NULL || p->wait_timer == NULL || p->maint_timer == NULL ||
        p->sync_ev == NULL || p->pump_ev == NULL || bt__pq_parse_conninfo(p) != 0 ||
        bt_loop_add_closer(loop, on_loop_close, p) != 0) {
        bt_timer_free(p->wait_timer);
        bt_timer_free(p->maint_timer);
        if (p->sync_ev != NULL)
            event_free(p->sync_ev);
        if (p->pump_ev != NULL)
            event_free(p->pump_ev);
        pool_free_memory(p);
        return NULL;
    }
    pump(p); /* opens min_size connections */
    arm_maint(p, maint_period(p));
    return p;
}

BT_EXPORT void bt_pq_pool_free(bt_pq_pool *p)
{
    if (p == NULL || p->free_pending)
        return;
    if (!p->loop_gone) {
        pool_shutdown(p);
        bt_loop_remove_closer(p->loop, on_loop_close, p);
    }
    /* Called from a callback that pool code runs (a row, a notification,
     * a notice, COPY data): that code reads the pool once the callback
     * returns, so the memory goes at its last unpin. */
    if (p->pins > 0) {
        p->free_pending = true;
        return;
    }
    pool_free_memory(p);
}

BT_EXPORT bt_future *bt_pq_pool_close(bt_pq_pool *p)
{
    if (p == NULL)
        return NULL;
    if (p->closed && !p->drained)
        return bt_future_new_error(p->loop, BT_ESHUTDOWN, "the pool was closed");
    if (p->closed)
        return bt_future_new_value(p->loop, NULL, NULL);
    if (p->close_f != NULL)
        return bt_future_ref(p->close_f);
    bt_future *f = bt_future_new(p->loop);
    if (f == NULL)
        return NULL;
    p->close_f = bt_future_ref(f);
    p->closing = true;
    settle_ready(p, BT_ESHUTDOWN, "the pool is closing");
    bt__pq_check_drained(p);
    return f;
}

BT_EXPORT bt_future *bt_pq_pool_ready(bt_pq_pool *p)
{
    if (p == NULL)
        return NULL;
    if (p->closed)
        return bt_future_new_error(p->loop, BT_ESHUTDOWN, "the pool was closed");
    for (bt__list *n = p->conns.next; n != &p->conns; n = n->next)
        if (CONN_OF(n)->state == BT__PQ_CS_READY)
            return bt_future_new_value(p->loop, NULL, NULL);
    bt_future *f = bt_future_new(p->loop);
    if (f == NULL)
        return NULL;
    bt_future **n = bt_realloc(p->ready, (p->nready + 1) * sizeof *n);
    if (n == NULL) {
        bt_future_unref(f);
        return NULL;
    }
    p->ready = n;
    p->ready[p->nready++] = bt_future_ref(f);
    pump(p);
    return f;
}

BT_EXPORT int bt_pq_pool_get_stats(const bt_pq_pool *p, bt_pq_stats *out)
{
    if (p == NULL || out == NULL)
        return BT_EINVAL;
    if (bt__sized_check(out->size, BT__SIZE_V1(bt_pq_stats, retried), "pq: bt_pq_pool_get_stats",
                        "bt_pq_stats", "BT_SIZED(bt_pq_stats)") != 0)
        return BT_EINVAL;
    bt_pq_stats st = p->st;
    st.conns = p->nconns;
    st.connecting = p->nconnecting;
    st.waiting = p->nwq + p->naq;
    st.idle = st.acquired = 0;
    for (const bt__list *n = p->conns.next; n != &p->conns; n = n->next) {
        const bt_pq_conn *c = CONN_OF(n);
        if (c->acquired)
            st.acquired++;
        else if (c->state == BT__PQ_CS_READY && c->ops_len == 0 && !c->releasing)
            st.idle++;
    }
    bt__sized_write(out, out->size, &st, sizeof st);
    return 0;
}
