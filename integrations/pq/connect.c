/* Opening a connection without blocking the loop: PQconnectStartParams
 * and PQconnectPoll driven by libevent, the socket read again at every
 * step, our own timeout, and the resolved host lists swapped in. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pq-internal.h"

static void on_connect_io(evutil_socket_t fd, short what, void *arg);
static void on_connect_timeout(bt_timer *t, void *arg);
static void on_resolved(bt_pq_conn *c, int err, const char *msg, char *lists);

static uint64_t now_ns(void)
{
    return bt_hrtime();
}

/* ---- Connecting ----------------------------------------------------------- */

static void begin_connect(bt_pq_conn *c);

bt_pq_conn *bt__pq_conn_new(bt_pq_pool *p, bool listener, const struct bt__pq_conn_events *events)
{
    bt_pq_conn *c = bt_calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->pool = p;
    c->events = events;
    bt__list_init(&c->link);
    bt__list_init(&c->held);
    bt__list_init(&c->lru);
    c->loop = p->loop;
    c->fd = -1;
    c->is_listener = listener;
    c->state = BT__PQ_CS_RESOLVING;
    c->born_ns = now_ns();
    c->timer = bt_timer_new(p->loop, on_connect_timeout, c);
    if (c->timer == NULL) {
        bt_free(c);
        return NULL;
    }
    /* The lookup has a deadline of its own; the connect gets
     * connect_timeout_ms from when it begins (begin_connect). */
    bt_timer_start(c->timer, p->host != NULL ? p->o.resolve_timeout_ms : p->o.connect_timeout_ms,
                   0);
    if (p->host != NULL) {
        if (bt__pq_resolve_start(c, p->host, p->ports, on_resolved) != 0) {
            bt_timer_free(c->timer);
            bt_free(c);
            return NULL;
        }
    } else {
        /* Not yet: the caller links c into the pool first, and a connect
         * that fails at once reports through the pool. */
        c->state = BT__PQ_CS_CONNECTING;
    }
    return c;
}

/* Called by the pool once c is linked (and by the resolver when done). */
void bt__pq_conn_begin(bt_pq_conn *c)
{
    begin_connect(c);
}

static void connect_failed(bt_pq_conn *c, int code, const char *msg)
{
    bt_pq_pool *p = c->pool;
    const struct bt__pq_conn_events *c_events = c->events;
    bool listener = c->is_listener;
    char *m = bt_strdup(msg != NULL ? msg : bt_strerror(code));
    if (m != NULL) {
        size_t n = strlen(m);
        while (n > 0 && (m[n - 1] == '\n' || m[n - 1] == ' '))
            m[--n] = '\0';
    }
    bt__pq_conn_close(c, code, m);
    if (p != NULL)
        c_events->connect_failed(p, listener, code, m != NULL ? m : bt_strerror(code));
    bt_free(m);
}

/* Sort a libpq connect failure that the server did not explain (no
 * SQLSTATE: refused, unreachable, timed out, TLS) into a code. */
static int connect_code(const char *msg)
{
    if (msg == NULL)
        return BT_EIO;
    if (strstr(msg, "Connection refused") || strstr(msg, "No such file or directory"))
        return BT_ECONNREFUSED;
    if (strstr(msg, "could not translate host name"))
        return BT_EDNS;
    if (strstr(msg, "authentication failed") || strstr(msg, "no pg_hba.conf entry"))
        return BT_EACCES;
    if (strstr(msg, "timeout") || strstr(msg, "timed out"))
        return BT_ETIMEDOUT;
    if (strstr(msg, "Network is unreachable"))
        return BT_ENETUNREACH;
    if (strstr(msg, "No route to host"))
        return BT_EHOSTUNREACH;
    if (strstr(msg, "SSL") || strstr(msg, "certificate"))
        return BT_ETLS;
    return BT_EIO;
}

/* The code a program can branch on for an error the server reported while
 * we connected (see pq.h, "Errors"). */
static int sqlstate_code(const char *state)
{
    if (strncmp(state, "28", 2) == 0 || strcmp(state, "42501") == 0)
        return BT_EACCES; /* 28000 no such role or no pg_hba entry, 28P01 wrong
                             password, 42501 no CONNECT privilege */
    if (strcmp(state, "3D000") == 0)
        return BT_ENOENT; /* no such database */
    return BT_ESQL;
}

/* A connect failure as libpq tells it. While connecting, the PGconn's error
 * verbosity is PQERRORS_VERBOSE (begin_connect), so an error the server
 * sent (libpq 15 keeps its PGresult to itself) reads
 *   ...failed: FATAL:  3D000: database "x" does not exist\nLOCATION: ...
 * Turn that into the shape of a query's error, "[3D000] database "x" does
 * not exist" plus DETAIL and HINT lines, which bt_pq_error_parse splits,
 * and sort it by its SQLSTATE. Other failures keep libpq's text. Sets *out
 * to a new string (or NULL: out of memory) and returns the code. */
static int connect_error(const char *msg, char **out)
{
    *out = NULL;
    const char *sev = NULL;
    for (const char *at = msg; at != NULL && (at = strstr(at, "FATAL:  ")) != NULL; at++)
        sev = at; /* several hosts: the last attempt's error */
    if (sev == NULL)
        sev = msg != NULL ? strstr(msg, "ERROR:  ") : NULL;
    const char *st = sev != NULL ? sev + 8 : NULL;
    bool has_state = st != NULL && strlen(st) > 7 && st[5] == ':' && st[6] == ' ';
    for (int i = 0; has_state && i < 5; i++)
        if (!((st[i] >= '0' && st[i] <= '9') || (st[i] >= 'A' && st[i] <= 'Z')))
            has_state = false;
    if (!has_state) {
        *out = bt_strdup(msg != NULL ? msg : "could not connect");
        if (*out != NULL) {
            char *loc = strstr(*out, "\nLOCATION:");
            if (loc != NULL)
                *loc = '\0';
        }
        return connect_code(msg);
    }
    char state[6];
    memcpy(state, st, 5);
    state[5] = '\0';
    const char *prim = st + 7;
    size_t plen = strcspn(prim, "\n");
    const char *detail = strstr(prim, "\nDETAIL:  ");
    const char *hint = strstr(prim, "\nHINT:  ");
    size_t dlen = detail != NULL ? strcspn(detail + 10, "\n") : 0;
    size_t hlen = hint != NULL ? strcspn(hint + 8, "\n") : 0;
    *out = bt_asprintf("[%s] %.*s%s%.*s%s%.*s", state, (int)plen, prim,
                       detail != NULL ? "\nDETAIL: " : "", (int)dlen,
                       detail != NULL ? detail + 10 : "", hint != NULL ? "\nHINT: " : "", (int)hlen,
                       hint != NULL ? hint + 8 : "");
    return sqlstate_code(state);
}

static void connect_failed_pg(bt_pq_conn *c)
{
    char *m = NULL;
    int code = connect_error(PQerrorMessage(c->pg), &m);
    connect_failed(c, code, m);
    bt_free(m);
}

/* Watch the socket for what PQconnectPoll asked. libpq may open a new
 * socket between steps (another host, another address, SSL fallback), so
 * the descriptor is read again every time. */
static int watch_connect(bt_pq_conn *c)
{
    int fd = PQsocket(c->pg);
    if (fd < 0)
        return BT_EBADF;
    if (c->ev != NULL) {
        event_free(c->ev);
        c->ev = NULL;
    }
    c->fd = fd;
    short what = c->poll == PGRES_POLLING_READING ? EV_READ : EV_WRITE;
    c->ev = event_new(c->pool->base, fd, what, on_connect_io, c);
    if (c->ev == NULL || event_add(c->ev, NULL) != 0)
        return BT_ENOMEM;
    return 0;
}

static void connected(bt_pq_conn *c)
{
    bt_timer_stop(c->timer);
    if (c->ev != NULL) {
        event_free(c->ev);
        c->ev = NULL;
    }
    PQsetErrorVerbosity(c->pg, PQERRORS_DEFAULT);
    if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
        connect_failed(c, BT_EIO, PQerrorMessage(c->pg));
        return;
    }
    c->fd = PQsocket(c->pg);
    c->ev = event_new(c->pool->base, c->fd, EV_READ | EV_PERSIST, bt__pq_conn_on_io, c);
    c->wev = event_new(c->pool->base, c->fd, EV_WRITE | EV_PERSIST, bt__pq_conn_on_io, c);
    if (c->ev == NULL || c->wev == NULL || event_add(c->ev, NULL) != 0) {
        connect_failed(c, BT_ENOMEM, "out of memory for connection events");
        return;
    }
    c->state = BT__PQ_CS_READY;
    c->born_ns = c->idle_ns = now_ns();
    c->events->connected(c);
}

static void step(bt_pq_conn *c)
{
    c->poll = PQconnectPoll(c->pg);
    switch (c->poll) {
    case PGRES_POLLING_OK:
        connected(c);
        return;
    case PGRES_POLLING_FAILED:
        connect_failed_pg(c);
        return;
    default: {
        int rc = watch_connect(c);
        if (rc != 0)
            connect_failed(c, rc, "cannot watch the connection's socket");
        return;
    }
    }
}

static void begin_connect(bt_pq_conn *c)
{
    bt_pq_pool *p = c->pool;
    if (c->state == BT__PQ_CS_RESOLVING)
        bt_timer_start(c->timer, p->o.connect_timeout_ms, 0);
    c->state = BT__PQ_CS_CONNECTING;
    const char **vals = p->vals;
    /* The resolved lists (resolve.c) in place of the conninfo's host,
     * hostaddr and port lists, for this call only. */
    int idx[3] = { p->host_idx, p->hostaddr_idx, p->port_idx };
    const char *saved[3] = { NULL, NULL, NULL };
    bool swapped[3] = { false, false, false };
    if (c->hostaddr != NULL) {
        const char *list = c->hostaddr;
        for (int k = 0; k < 3; k++) {
            if (idx[k] >= 0 && (k < 2 || *list != '\0')) {
                saved[k] = vals[idx[k]];
                vals[idx[k]] = list;
                swapped[k] = true;
            }
            list += strlen(list) + 1;
        }
    }
    c->pg = PQconnectStartParams(p->keys, vals, 0);
    for (int k = 0; k < 3; k++)
        if (swapped[k])
            vals[idx[k]] = saved[k];
    if (c->pg == NULL) {
        connect_failed(c, BT_ENOMEM, "out of memory for a PGconn");
        return;
    }
    /* Server notices (and the FATAL an idle connection gets when the
     * server shuts down) go to the pool's handler or Baton's log, not to
     * libpq's default of stderr (notice.c). */
    PQsetNoticeReceiver(c->pg, bt__pq_notice_receive, c);
    /* Until connected: the server's SQLSTATE in the error text (see
     * connect_error). */
    PQsetErrorVerbosity(c->pg, PQERRORS_VERBOSE);
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        connect_failed_pg(c);
        return;
    }
    /* "If PQconnectStart succeeds, the next stage is to poll libpq so that
     * it can proceed with the connection sequence": behave as if the last
     * poll said WRITING. */
    c->poll = PGRES_POLLING_WRITING;
    int rc = watch_connect(c);
    if (rc != 0)
        connect_failed(c, rc, "cannot watch the connection's socket");
}

static void on_connect_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    step(arg);
}

static void on_connect_timeout(bt_timer *t, void *arg)
{
    (void)t;
    bt_pq_conn *c = arg;
    /* The lookup job, if any, is cancelled (bt__pq_resolve_detach): a
     * queued one never runs, a running one is left to the blocking lane and
     * its answer is dropped. */
    if (c->state == BT__PQ_CS_RESOLVING)
        connect_failed(c, BT_ETIMEDOUT,
                       "timed out resolving the database's host name (resolve_timeout_ms)");
    else if (c->state == BT__PQ_CS_CONNECTING)
        connect_failed(c, BT_ETIMEDOUT,
                       "timed out connecting to the database (connect_timeout_ms)");
}

/* resolve.c reports here: connect to the addresses (libpq walks the lists
 * and applies target_session_attrs; the connect timer bounds the whole
 * walk), or fail the connect (a lookup cancelled under us means the pool
 * is going away). */
static void on_resolved(bt_pq_conn *c, int err, const char *msg, char *lists)
{
    if (err == 0) {
        c->hostaddr = lists;
        begin_connect(c);
        return;
    }
    connect_failed(c, err == BT_ECANCELED ? BT_ESHUTDOWN : err,
                   msg != NULL ? msg : bt_strerror(err));
}
