/* The pool: who gets a connection, when connections are opened, retired
 * and replaced, waiting with bounds, cancellation, and shutdown.
 *
 * DESIGN
 * One FIFO of waiting queries and one of waiting acquires, both bounded in
 * length (max_waiters) and in time (acquire_timeout_ms, one timer for the
 * earliest deadline: FIFOs with one timeout are ordered by deadline). pump()
 * is the only place that hands out connections: acquires first (they wait
 * for a whole connection), then queries to an idle connection, then, when
 * the pool is at max_size, to the least busy connection below
 * pipeline_depth. It then opens connections for what still waits (and up to
 * min_size), unless a connect failed recently: failures back off
 * exponentially with jitter, and the maintenance timer retries. pump() is
 * guarded against re-entry (a send can close a connection, which pumps).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pq-internal.h"

struct pq_listen_wait {
    struct pq_listen_wait *next;
    char *channel;
    bt_future *f; /* our own reference */
};

static void pump(bt_pq_pool *p);
static void arm_maint(bt_pq_pool *p, uint64_t ms);
static void arm_wait_timer(bt_pq_pool *p);
static void start_listener(bt_pq_pool *p);

static uint64_t now_ns(void) { return bt_hrtime(); }

static uint64_t deadline(bt_pq_pool *p)
{
    return p->o.acquire_timeout_ms ? now_ns() + p->o.acquire_timeout_ms * 1000000 : UINT64_MAX;
}

BT_EXPORT void bt_pq_options_init(bt_pq_options *o)
{
    if (!o)
        return;
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
}

/* ---- Connections coming and going -------------------------------------- */

static void link_conn(bt_pq_pool *p, bt_pq_conn *c)
{
    c->prev = NULL;
    c->next = p->conns;
    if (p->conns)
        p->conns->prev = c;
    p->conns = c;
    p->nconns++;
}

static void unlink_conn(bt_pq_pool *p, bt_pq_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    p->nconns--;
}

static bool can_connect(bt_pq_pool *p)
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
    bt_pq_conn *c = pq_conn_new(p, false);
    if (!c) {
        pq_pool_connect_failed(p, false, BT_ENOMEM, "out of memory for a connection");
        return;
    }
    link_conn(p, c);
    c->counted_connecting = true;
    p->nconnecting++;
    if (c->state == CS_CONNECTING)
        pq_conn_begin(c); /* may fail (and unlink c) at once */
}

static void start_listener(bt_pq_pool *p)
{
    if (p->listener || !p->chans || !can_connect(p))
        return;
    bt_pq_conn *c = pq_conn_new(p, true);
    if (!c) {
        pq_pool_connect_failed(p, true, BT_ENOMEM, "out of memory for a connection");
        return;
    }
    p->listener = c;
    if (c->state == CS_CONNECTING)
        pq_conn_begin(c);
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

void pq_pool_connected(bt_pq_pool *p, bt_pq_conn *c)
{
    p->fails = 0;
    p->next_connect_ns = 0;
    p->st.connects++;
    if (c->is_listener) {
        pq_pool_listener_ready(p, c);
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

static void fail_waiters(bt_pq_pool *p, int code, const char *fmt, const char *msg)
{
    while (p->wq_head) {
        pq_query *q = p->wq_head;
        p->wq_head = q->next;
        if (p->wq_head)
            p->wq_head->prev = NULL;
        else
            p->wq_tail = NULL;
        p->nwq--;
        q->state = Q_NEW;
        pq_query_fail(q, code, fmt, msg);
        pq_query_free(q);
    }
    while (p->aq_head) {
        struct pq_acq *a = p->aq_head;
        p->aq_head = a->next;
        if (p->aq_head)
            p->aq_head->prev = NULL;
        else
            p->aq_tail = NULL;
        p->naq--;
        bt_future_set_error(a->f, code, fmt, msg);
        bt_future_unref(a->f);
        bt_free(a);
    }
}

void pq_pool_connect_failed(bt_pq_pool *p, bool listener, int code, const char *msg)
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
        while (p->listen_waits) {
            struct pq_listen_wait *w = p->listen_waits;
            p->listen_waits = w->next;
            bt_future_set_error(w->f, code, "could not connect to listen: %s", msg);
            bt_future_unref(w->f);
            bt_free(w->channel);
            bt_free(w);
        }
    } else if (!p->ever_connected) {
        /* A pool that never connected is most likely misconfigured or its
         * server is down: fail what waits now rather than at the timeout.
         * Once a pool has worked, waiters ride out a restart instead. */
        settle_ready(p, code, msg);
        fail_waiters(p, code, "could not connect to the database: %s", msg);
    }
    arm_maint(p, delay + 1);
}

void pq_pool_conn_gone(bt_pq_pool *p, bt_pq_conn *c)
{
    if (c == p->listener) {
        p->listener = NULL;
        if (!p->closed && p->chans)
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

static void finish_release(bt_pq_conn *c);

void pq_pool_conn_available(bt_pq_pool *p, bt_pq_conn *c)
{
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
            pq_conn_close(c, 0, "retired");
            return;
        }
    }
    /* The common case under load: nothing waits and the pool is at its
     * floor, so there is nothing to hand out or open. */
    if (p->wq_head || p->aq_head || p->nready || p->nconns < p->o.min_size)
        pump(p);
}

/* ---- Handing out connections --------------------------------------------- */

/* Whether c may take pool work. Not while a cancel request for it is in
 * flight: PQcancel has not returned, so the server may not have acted yet,
 * and the request would hit the new query. */
static bool usable(const bt_pq_conn *c)
{
    return c->state == CS_READY && !c->acquired && !c->releasing && !c->retiring &&
           !c->cancel_job;
}

static bt_pq_conn *find_idle(bt_pq_pool *p)
{
    for (bt_pq_conn *c = p->conns; c; c = c->next)
        if (usable(c) && c->ops_len == 0)
            return c;
    return NULL;
}

static bt_pq_conn *least_busy(bt_pq_pool *p)
{
    bt_pq_conn *best = NULL;
    for (bt_pq_conn *c = p->conns; c; c = c->next)
        if (usable(c) && c->abandoned == 0 && c->inflight < p->o.pipeline_depth &&
            (!best || c->inflight < best->inflight))
            best = c;
    return best;
}

/* A connection for a query now: idle first, else pipelined when the pool
 * cannot grow. NULL: wait. */
static bt_pq_conn *pick(bt_pq_pool *p)
{
    bt_pq_conn *c = find_idle(p);
    if (!c && p->o.pipeline_depth > 1 && p->nconns - p->nconnecting >= 1 &&
        p->nconns >= p->o.max_size)
        c = least_busy(p);
    return c;
}

static void conn_value_release(void *v) { bt_pq_conn_release(v); }

static void hand_over(bt_pq_conn *c, struct pq_acq *a)
{
    c->acquired = true;
    c->rollback_tries = 0;
    bt_future_set_value(a->f, c, conn_value_release);
    bt_future_unref(a->f);
    bt_free(a);
}

static void grow(bt_pq_pool *p)
{
    for (;;) {
        unsigned waiting = p->nwq + p->naq + (p->nready ? 1 : 0);
        unsigned want = waiting > p->nconnecting ? waiting - p->nconnecting : 0;
        unsigned floor = p->o.min_size > p->nconns ? p->o.min_size - p->nconns : 0;
        if (floor > want)
            want = floor;
        if (want == 0 || p->nconns >= p->o.max_size || !can_connect(p))
            return;
        unsigned before = p->nconns + p->st.connect_failures;
        start_conn(p);
        if (p->closed || p->nconns + p->st.connect_failures == before)
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
        while (p->aq_head) {
            bt_pq_conn *c = find_idle(p);
            if (!c)
                break;
            struct pq_acq *a = p->aq_head;
            p->aq_head = a->next;
            if (p->aq_head)
                p->aq_head->prev = NULL;
            else
                p->aq_tail = NULL;
            p->naq--;
            hand_over(c, a);
        }
        while (p->wq_head && !p->closed) {
            bt_pq_conn *c = pick(p);
            if (!c)
                break;
            pq_query *q = p->wq_head;
            p->wq_head = q->next;
            if (p->wq_head)
                p->wq_head->prev = NULL;
            else
                p->wq_tail = NULL;
            p->nwq--;
            q->next = q->prev = NULL;
            pq_conn_send(c, q);
        }
        if (!p->closed)
            grow(p);
    } while (p->repump && !p->closed);
    p->pumping = false;
}

/* Put queries of a failed batch back at the head of the wait queue, in
 * their order, each to be sent alone (see pq-internal.h). */
void pq_pool_requeue(bt_pq_pool *p, pq_query **qs, size_t n)
{
    for (size_t i = n; i-- > 0;) {
        pq_query *q = qs[i];
        if (p->closed) {
            pq_query_fail(q, BT_ESHUTDOWN, "the pool was closed");
            pq_query_free(q);
            continue;
        }
        q->state = Q_WAITING;
        q->conn = NULL;
        q->solo = true;
        q->used_named = false;
        q->aborted = q->started = q->want_cancel = q->rows_stopped = false;
        q->err = 0;
        bt_free(q->errmsg);
        q->errmsg = NULL;
        if (q->res) {
            PQclear(q->res);
            q->res = NULL;
        }
        q->deadline_ns = deadline(p);
        q->prev = NULL;
        q->next = p->wq_head;
        if (p->wq_head)
            p->wq_head->prev = q;
        else
            p->wq_tail = q;
        p->wq_head = q;
        p->nwq++;
        p->st.retried++;
    }
    arm_wait_timer(p);
}

/* End of the loop pass: Sync every connection's open batch. A Sync can
 * close its connection (which may start others), so look again from the
 * top each time rather than keep a pointer into the list. */
static void on_sync_ev(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bt_pq_pool *p = arg;
    p->sync_armed = false;
    for (;;) {
        bt_pq_conn *c = p->conns;
        while (c && c->unsynced == 0)
            c = c->next;
        if (!c)
            break;
        pq_conn_sync(c);
    }
}

void pq_pool_arm_sync(bt_pq_pool *p)
{
    if (!p->sync_armed && p->sync_ev) {
        p->sync_armed = true;
        event_active(p->sync_ev, EV_TIMEOUT, 0);
    }
}

/* ---- Waiting with bounds ----------------------------------------------- */

static void on_wait_timer(bt_timer *t, void *arg)
{
    (void)t;
    bt_pq_pool *p = arg;
    uint64_t now = now_ns();
    char why[600];
    snprintf(why, sizeof why, "%llu ms; pool %u/%u open%s%s",
             (unsigned long long)p->o.acquire_timeout_ms, p->nconns - p->nconnecting,
             p->o.max_size, p->last_errmsg ? "; last connect error: " : "",
             p->last_errmsg ? p->last_errmsg : "");
    while (p->wq_head && p->wq_head->deadline_ns <= now) {
        pq_query *q = p->wq_head;
        p->wq_head = q->next;
        if (p->wq_head)
            p->wq_head->prev = NULL;
        else
            p->wq_tail = NULL;
        p->nwq--;
        q->state = Q_NEW;
        pq_query_fail(q, BT_ETIMEDOUT, "timed out waiting for a connection after %s", why);
        pq_query_free(q);
    }
    while (p->aq_head && p->aq_head->deadline_ns <= now) {
        struct pq_acq *a = p->aq_head;
        p->aq_head = a->next;
        if (p->aq_head)
            p->aq_head->prev = NULL;
        else
            p->aq_tail = NULL;
        p->naq--;
        bt_future_set_error(a->f, BT_ETIMEDOUT, "timed out waiting for a connection after %s",
                            why);
        bt_future_unref(a->f);
        bt_free(a);
    }
    arm_wait_timer(p);
}

static void arm_wait_timer(bt_pq_pool *p)
{
    if (p->closed || !p->o.acquire_timeout_ms || bt_timer_is_active(p->wait_timer))
        return;
    uint64_t next = UINT64_MAX;
    if (p->wq_head)
        next = p->wq_head->deadline_ns;
    if (p->aq_head && p->aq_head->deadline_ns < next)
        next = p->aq_head->deadline_ns;
    if (next == UINT64_MAX)
        return;
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
    bt_pq_conn *next;
    for (bt_pq_conn *c = p->conns; c; c = next) {
        next = c->next;
        if (c->state != CS_READY)
            continue;
        bool idle = c->ops_len == 0 && !c->acquired && !c->releasing;
        if (p->o.max_lifetime_ms && now - c->born_ns > p->o.max_lifetime_ms * 1000000) {
            if (idle) {
                pq_conn_close(c, 0, "retired (max_lifetime_ms)");
                continue;
            }
            c->retiring = true;
        }
        if (idle && p->o.max_idle_ms && p->nconns > p->o.min_size &&
            now - c->idle_ns > p->o.max_idle_ms * 1000000)
            pq_conn_close(c, 0, "closed (max_idle_ms)");
    }
    if (p->closed)
        return;
    pump(p);
    start_listener(p);
    arm_maint(p, maint_period(p));
}

static void arm_maint(bt_pq_pool *p, uint64_t ms)
{
    if (p->closed || !p->maint_timer)
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
    if (p->wait_timer) {
        bt_timer_free(p->wait_timer);
        p->wait_timer = NULL;
    }
    if (p->maint_timer) {
        bt_timer_free(p->maint_timer);
        p->maint_timer = NULL;
    }
    if (p->sync_ev) {
        event_free(p->sync_ev);
        p->sync_ev = NULL;
    }
    fail_waiters(p, BT_ESHUTDOWN, "%s", "the pool was closed");
    settle_ready(p, BT_ESHUTDOWN, "the pool was closed");
    while (p->listen_waits) {
        struct pq_listen_wait *w = p->listen_waits;
        p->listen_waits = w->next;
        bt_future_set_error(w->f, BT_ESHUTDOWN, "the pool was closed");
        bt_future_unref(w->f);
        bt_free(w->channel);
        bt_free(w);
    }
    while (p->conns)
        pq_conn_close(p->conns, BT_ESHUTDOWN, "the pool was closed");
    if (p->listener)
        pq_conn_close(p->listener, BT_ESHUTDOWN, "the pool was closed");
}

static void on_loop_close(void *arg)
{
    bt_pq_pool *p = arg;
    pool_shutdown(p);
    p->loop_gone = true;
}

static int parse_conninfo(bt_pq_pool *p)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(p->conninfo, &err);
    if (!opts) {
        size_t n = err ? strlen(err) : 0;
        while (n > 0 && err[n - 1] == '\n')
            n--;
        if (err)
            bt_log(BT_LOG_WARN, "pq: bad conninfo: %.*s", (int)n, err);
        else
            bt_log(BT_LOG_WARN, "pq: bad conninfo (or out of memory)");
        PQfreemem(err);
        return BT_EINVAL;
    }
    size_t n = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (o->val && *o->val)
            n++;
    /* + hostaddr + host + fallback_application_name + gssencmode + the
     * terminator */
    p->keys = bt_calloc(n + 5, sizeof *p->keys);
    p->vals = bt_calloc(n + 5, sizeof *p->vals);
    if (!p->keys || !p->vals) {
        PQconninfoFree(opts);
        return BT_ENOMEM;
    }
    size_t i = 0;
    const char *host = NULL, *hostaddr = NULL;
    bool gss = false;
    p->host_idx = p->hostaddr_idx = -1;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val)
            continue;
        p->keys[i] = bt_strdup(o->keyword);
        p->vals[i] = bt_strdup(o->val);
        if (!p->keys[i] || !p->vals[i]) {
            PQconninfoFree(opts);
            return BT_ENOMEM;
        }
        if (strcmp(o->keyword, "host") == 0) {
            host = p->vals[i];
            p->host_idx = (int)i;
        }
        if (strcmp(o->keyword, "gssencmode") == 0)
            gss = true;
        if (strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = p->vals[i];
            p->hostaddr_idx = (int)i;
        }
        i++;
    }
    PQconninfoFree(opts);
    if (!host && !hostaddr)
        host = getenv("PGHOST"); /* what libpq would use */
    if (host && !hostaddr) {
        /* Resolution happens on the blocking lane, then libpq gets
         * hostaddr (see offload.c). */
        bool names = false;
        const char *h = host;
        while (*h) {
            size_t len = strcspn(h, ",");
            if (len && h[0] != '/' && h[0] != '@')
                names = true; /* numeric ones pass through the job as is */
            h += len;
            if (*h == ',')
                h++;
        }
        if (names) {
            p->host = bt_strdup(host);
            p->keys[i] = bt_strdup("hostaddr");
            p->hostaddr_idx = (int)i;
            p->vals[i] = NULL;
            if (!p->host || !p->keys[i])
                return BT_ENOMEM;
            i++;
            if (p->host_idx < 0) {
                p->keys[i] = bt_strdup("host");
                p->vals[i] = bt_strdup(host);
                if (!p->keys[i] || !p->vals[i])
                    return BT_ENOMEM;
                i++;
            }
        }
    }
    p->keys[i] = bt_strdup("fallback_application_name");
    p->vals[i] = bt_strdup("baton");
    if (!p->keys[i] || !p->vals[i])
        return BT_ENOMEM;
    i++;
    if (!gss && !getenv("PGGSSENCMODE")) {
        /* Unless asked for, no GSSAPI encryption: probing for it costs a
         * round trip per connect, and looking for Kerberos credentials can
         * block inside PQconnectPoll. */
        p->keys[i] = bt_strdup("gssencmode");
        p->vals[i] = bt_strdup("disable");
        if (!p->keys[i] || !p->vals[i])
            return BT_ENOMEM;
    }
    return 0;
}

static void pool_free_memory(bt_pq_pool *p)
{
    if (p->keys)
        for (size_t i = 0; p->keys[i]; i++) {
            bt_free((void *)p->keys[i]);
            bt_free((void *)p->vals[i]);
        }
    bt_free(p->keys);
    bt_free(p->vals);
    while (p->chans) {
        pq_chan *ch = p->chans;
        p->chans = ch->next;
        bt_free(ch->name);
        bt_free(ch);
    }
    bt_free(p->host);
    bt_free(p->last_errmsg);
    bt_free(p->conninfo);
    bt_free(p);
}

BT_EXPORT bt_pq_pool *bt_pq_pool_new(bt_loop *loop, const bt_pq_options *o)
{
    if (!loop || !o || !o->conninfo || o->max_size == 0 || o->min_size > o->max_size)
        return NULL;
    bt_pq_pool *p = bt_calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->loop = loop;
    p->base = bt_loop_base(loop);
    p->o = *o;
    if (p->o.pipeline_depth == 0)
        p->o.pipeline_depth = 1;
    if (p->o.reconnect_min_ms == 0)
        p->o.reconnect_min_ms = 1;
    if (p->o.reconnect_max_ms < p->o.reconnect_min_ms)
        p->o.reconnect_max_ms = p->o.reconnect_min_ms;
    if (p->o.connect_timeout_ms == 0)
        p->o.connect_timeout_ms = 10000;
    p->rng = (uint32_t)(now_ns() ^ (uintptr_t)p) | 1;
    p->conninfo = bt_strdup(o->conninfo);
    p->o.conninfo = p->conninfo;
    p->wait_timer = bt_timer_new(loop, on_wait_timer, p);
    p->maint_timer = bt_timer_new(loop, on_maint, p);
    p->sync_ev = event_new(p->base, -1, 0, on_sync_ev, p);
    if (!p->conninfo || !p->wait_timer || !p->maint_timer || !p->sync_ev ||
        parse_conninfo(p) != 0 ||
        bt_loop_add_closer(loop, on_loop_close, p) != 0) {
        bt_timer_free(p->wait_timer);
        bt_timer_free(p->maint_timer);
        if (p->sync_ev)
            event_free(p->sync_ev);
        pool_free_memory(p);
        return NULL;
    }
    pump(p); /* opens min_size connections */
    arm_maint(p, maint_period(p));
    return p;
}

BT_EXPORT void bt_pq_pool_free(bt_pq_pool *p)
{
    if (!p)
        return;
    if (!p->loop_gone) {
        pool_shutdown(p);
        bt_loop_remove_closer(p->loop, on_loop_close, p);
    }
    pool_free_memory(p);
}

BT_EXPORT bt_future *bt_pq_pool_ready(bt_pq_pool *p)
{
    if (!p)
        return NULL;
    if (p->closed)
        return bt_future_new_error(p->loop, BT_ESHUTDOWN, "the pool was closed");
    for (bt_pq_conn *c = p->conns; c; c = c->next)
        if (c->state == CS_READY)
            return bt_future_new_value(p->loop, NULL, NULL);
    bt_future *f = bt_future_new(p->loop);
    if (!f)
        return NULL;
    bt_future **n = bt_realloc(p->ready, (p->nready + 1) * sizeof *n);
    if (!n) {
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
    if (!p || !out)
        return BT_EINVAL;
    *out = p->st;
    out->size = p->nconns;
    out->connecting = p->nconnecting;
    out->waiting = p->nwq + p->naq;
    out->idle = out->acquired = 0;
    for (const bt_pq_conn *c = p->conns; c; c = c->next) {
        if (c->acquired)
            out->acquired++;
        else if (c->state == CS_READY && c->ops_len == 0 && !c->releasing)
            out->idle++;
    }
    return 0;
}

/* ---- Queries -------------------------------------------------------------- */

static void unlink_waiting(bt_pq_pool *p, pq_query *q)
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
        unlink_waiting(q->pool, q);
        q->state = Q_NEW;
        if (code == BT_ECANCELED) {
            q->settled = true;
            bt_future_set_cancelled(q->f);
        } else {
            pq_query_fail(q, code, "timed out after %llu ms waiting for a connection",
                          (unsigned long long)q->timeout_ms);
        }
        pq_query_free(q);
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
            pq_query_fail(q, code, "query timed out after %llu ms (a cancel request was sent)",
                          (unsigned long long)q->timeout_ms);
        }
        pq_conn_abandon(q->conn, q);
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
static bt_future *submit(bt_pq_pool *p, bt_loop *loop, bt_pq_conn *target, const char *sql,
                         int nparams, const char *const *values, const bt_pq_query_opts *opts)
{
    bt_future *f = bt_future_new(loop);
    if (!f)
        return NULL;
    if (!p || p->closed) {
        bt_future_set_error(f, BT_ESHUTDOWN, "the pool was closed");
        return f;
    }
    int err;
    pq_query *q = pq_query_new(p, sql, nparams, values, opts, &err);
    if (!q) {
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
        pq_conn_send(target, q);
        return f;
    }
    bt_pq_conn *c = p->wq_head ? NULL : pick(p);
    if (c) {
        pq_conn_send(c, q);
        return f;
    }
    if (p->nwq + p->naq >= p->o.max_waiters) {
        pq_query_fail(q, BT_EAGAIN, "too many queries waiting for a connection (max_waiters %u)",
                      p->o.max_waiters);
        pq_query_free(q);
        return f;
    }
    q->state = Q_WAITING;
    q->deadline_ns = deadline(p);
    q->prev = p->wq_tail;
    q->next = NULL;
    if (p->wq_tail)
        p->wq_tail->next = q;
    else
        p->wq_head = q;
    p->wq_tail = q;
    p->nwq++;
    arm_wait_timer(p);
    pump(p);
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
    if (!p || !sql)
        return NULL;
    return submit(p, p->loop, NULL, sql, nparams, values, opts);
}

/* ---- Acquired connections ------------------------------------------------- */

static void on_acquire_cancel(bt_future *f, void *arg)
{
    (void)f;
    struct pq_acq *a = arg;
    /* a is still queued: hand_over and the timers free it otherwise, and
     * the future is settled then, so this hook cannot run. */
    bt_pq_pool *pool = *(bt_pq_pool **)(a + 1);
    if (a->prev)
        a->prev->next = a->next;
    else
        pool->aq_head = a->next;
    if (a->next)
        a->next->prev = a->prev;
    else
        pool->aq_tail = a->prev;
    pool->naq--;
    bt_future_set_cancelled(a->f);
    bt_future_unref(a->f);
    bt_free(a);
}

BT_EXPORT bt_future *bt_pq_acquire(bt_pq_pool *p)
{
    if (!p)
        return NULL;
    bt_future *f = bt_future_new(p->loop);
    if (!f)
        return NULL;
    if (p->closed) {
        bt_future_set_error(f, BT_ESHUTDOWN, "the pool was closed");
        return f;
    }
    /* The waiter carries its pool right after it, for the cancel hook. */
    struct pq_acq *a = bt_calloc(1, sizeof *a + sizeof(bt_pq_pool *));
    if (!a) {
        bt_future_set_error(f, BT_ENOMEM, "out of memory");
        return f;
    }
    *(bt_pq_pool **)(a + 1) = p;
    a->f = bt_future_ref(f);
    bt_pq_conn *c = p->aq_head ? NULL : find_idle(p);
    if (c) {
        hand_over(c, a);
        return f;
    }
    if (p->nwq + p->naq >= p->o.max_waiters) {
        bt_future_set_error(f, BT_EAGAIN, "too many waiting for a connection (max_waiters %u)",
                            p->o.max_waiters);
        bt_future_unref(a->f);
        bt_free(a);
        return f;
    }
    a->deadline_ns = deadline(p);
    a->prev = p->aq_tail;
    if (p->aq_tail)
        p->aq_tail->next = a;
    else
        p->aq_head = a;
    p->aq_tail = a;
    p->naq++;
    bt_future_on_cancel(f, on_acquire_cancel, a);
    arm_wait_timer(p);
    pump(p);
    return f;
}

BT_EXPORT bt_future *bt_pq_conn_query_ex(bt_pq_conn *c, const char *sql, int nparams,
                                           const char *const *values,
                                           const bt_pq_query_opts *opts)
{
    if (!c || !sql)
        return NULL;
    if (!c->acquired) {
        return bt_future_new_error(c->loop, BT_EINVAL,
                                   "the connection is not acquired (released already?)");
    }
    if (!c->pool || c->state != CS_READY)
        return bt_future_new_error(c->loop, BT_ECONNRESET,
                                   "the connection was lost; release it and acquire another");
    return submit(c->pool, c->loop, c, sql, nparams, values, opts);
}

BT_EXPORT bt_future *bt_pq_conn_query(bt_pq_conn *c, const char *sql, int nparams,
                                      const char *const *values)
{
    return bt_pq_conn_query_ex(c, sql, nparams, values, NULL);
}

static bt_future *simple(bt_pq_conn *c, const char *sql)
{
    bt_pq_query_opts o = {.no_prepare = true};
    return bt_pq_conn_query_ex(c, sql, 0, NULL, &o);
}

BT_EXPORT bt_future *bt_pq_conn_begin(bt_pq_conn *c) { return simple(c, "BEGIN"); }
BT_EXPORT bt_future *bt_pq_conn_commit(bt_pq_conn *c) { return simple(c, "COMMIT"); }
BT_EXPORT bt_future *bt_pq_conn_rollback(bt_pq_conn *c) { return simple(c, "ROLLBACK"); }

BT_EXPORT bool bt_pq_conn_in_transaction(const bt_pq_conn *c)
{
    if (!c || !c->pg)
        return false;
    PGTransactionStatusType ts = PQtransactionStatus(c->pg);
    return ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR;
}

static void internal_noop(bt_pq_conn *c, pq_query *q, int err)
{
    (void)c;
    (void)q;
    (void)err;
}

static void send_internal(bt_pq_conn *c, const char *sql)
{
    bt_pq_query_opts o = {.no_prepare = true};
    int err;
    pq_query *q = pq_query_new(c->pool, sql, 0, NULL, &o, &err);
    if (!q) {
        pq_conn_close(c, BT_ENOMEM, "out of memory");
        return;
    }
    q->internal = internal_noop;
    pq_conn_send(c, q);
}

/* c was released and has nothing in flight: roll back a transaction left
 * open (never hand a connection to the next user mid-transaction), then
 * make it available. */
static void finish_release(bt_pq_conn *c)
{
    bt_pq_pool *p = c->pool;
    if (c->state != CS_READY) {
        pq_conn_close(c, BT_ECONNRESET, "broken");
        return;
    }
    if (bt_pq_conn_in_transaction(c) ||
        PQtransactionStatus(c->pg) == PQTRANS_UNKNOWN) {
        if (c->rollback_tries++ > 0 || PQtransactionStatus(c->pg) == PQTRANS_UNKNOWN) {
            pq_conn_close(c, BT_ECONNRESET, "could not roll back a released connection");
            return;
        }
        bt_log(BT_LOG_DEBUG, "pq: a connection was released inside a transaction; rolling back");
        send_internal(c, "ROLLBACK");
        return; /* back here through pq_pool_conn_available */
    }
    c->releasing = false;
    c->rollback_tries = 0;
    c->idle_ns = now_ns();
    if (c->retiring) {
        pq_conn_close(c, 0, "retired");
        return;
    }
    pump(p);
}

BT_EXPORT void bt_pq_conn_release(bt_pq_conn *c)
{
    if (!c || !c->acquired)
        return;
    c->acquired = false;
    if (!c->pool || c->state == CS_DEAD) {
        pq_conn_free_dead(c);
        return;
    }
    c->releasing = true;
    if (c->ops_len == 0)
        finish_release(c);
}

/* ---- LISTEN / NOTIFY ------------------------------------------------------ */

static pq_chan *find_chan(bt_pq_pool *p, const char *name)
{
    for (pq_chan *ch = p->chans; ch; ch = ch->next)
        if (strcmp(ch->name, name) == 0)
            return ch;
    return NULL;
}

/* "LISTEN "quoted"" for c, or NULL. Free with bt_free. */
static char *listen_sql(bt_pq_conn *c, const char *verb, const char *channel)
{
    char *id = PQescapeIdentifier(c->pg, channel, strlen(channel));
    if (!id)
        return NULL;
    char *sql = bt_asprintf("%s %s", verb, id);
    PQfreemem(id);
    return sql;
}

static void send_listen(bt_pq_conn *c, const char *channel, bt_future *f)
{
    char *sql = listen_sql(c, "LISTEN", channel);
    if (!sql) {
        if (f) {
            bt_future_set_error(f, BT_EINVAL, "cannot quote channel name");
            bt_future_unref(f);
        }
        return;
    }
    bt_pq_query_opts o = {.no_prepare = true};
    int err;
    pq_query *q = pq_query_new(c->pool, sql, 0, NULL, &o, &err);
    bt_free(sql);
    if (!q) {
        if (f) {
            bt_future_set_error(f, err, "out of memory");
            bt_future_unref(f);
        }
        return;
    }
    if (f)
        q->f = f; /* takes the caller's reference */
    else
        q->internal = internal_noop;
    pq_conn_send(c, q);
}

void pq_pool_listener_ready(bt_pq_pool *p, bt_pq_conn *c)
{
    for (pq_chan *ch = p->chans; ch && c->state == CS_READY; ch = ch->next)
        send_listen(c, ch->name, NULL);
    while (p->listen_waits && c->state == CS_READY) {
        struct pq_listen_wait *w = p->listen_waits;
        p->listen_waits = w->next;
        send_listen(c, w->channel, w->f);
        bt_free(w->channel);
        bt_free(w);
    }
}

void pq_pool_notify(bt_pq_pool *p, PGnotify *n)
{
    pq_chan *ch = find_chan(p, n->relname);
    if (!ch || !ch->cb)
        return;
    bt_loop_enter_cb(p->loop, (const void *)ch->cb);
    ch->cb(n->relname, n->extra ? n->extra : "", n->be_pid, ch->arg);
    bt_loop_leave_cb(p->loop);
}

BT_EXPORT bt_future *bt_pq_listen(bt_pq_pool *p, const char *channel, bt_pq_notify_cb cb,
                                  void *arg)
{
    if (!p)
        return NULL;
    if (!channel || !*channel || !cb)
        return bt_future_new_error(p->loop, BT_EINVAL, "listen needs a channel and a callback");
    if (p->closed)
        return bt_future_new_error(p->loop, BT_ESHUTDOWN, "the pool was closed");
    pq_chan *ch = find_chan(p, channel);
    if (!ch) {
        ch = bt_calloc(1, sizeof *ch);
        if (!ch || !(ch->name = bt_strdup(channel))) {
            bt_free(ch);
            return bt_future_new_error(p->loop, BT_ENOMEM, "out of memory");
        }
        ch->next = p->chans;
        p->chans = ch;
    }
    ch->cb = cb;
    ch->arg = arg;
    bt_future *f = bt_future_new(p->loop);
    if (!f)
        return NULL;
    if (p->listener && p->listener->state == CS_READY) {
        send_listen(p->listener, channel, bt_future_ref(f));
        return f;
    }
    struct pq_listen_wait *w = bt_calloc(1, sizeof *w);
    if (!w || !(w->channel = bt_strdup(channel))) {
        bt_free(w);
        bt_future_set_error(f, BT_ENOMEM, "out of memory");
        return f;
    }
    w->f = bt_future_ref(f);
    w->next = p->listen_waits;
    p->listen_waits = w;
    if (!p->listener) {
        if (!can_connect(p)) {
            /* Backing off after failures: the maintenance timer starts the
             * listener; meanwhile the LISTEN waits. */
            return f;
        }
        start_listener(p);
    }
    return f;
}

BT_EXPORT int bt_pq_unlisten(bt_pq_pool *p, const char *channel)
{
    if (!p || !channel)
        return BT_EINVAL;
    for (pq_chan **pp = &p->chans; *pp; pp = &(*pp)->next) {
        pq_chan *ch = *pp;
        if (strcmp(ch->name, channel) != 0)
            continue;
        *pp = ch->next;
        if (p->listener && p->listener->state == CS_READY) {
            char *sql = listen_sql(p->listener, "UNLISTEN", channel);
            if (sql) {
                send_internal(p->listener, sql);
                bt_free(sql);
            }
        }
        bt_free(ch->name);
        bt_free(ch);
        return 0;
    }
    return BT_ENOENT;
}
