/* libbaton-pq internals: the pool, its connections and its queries.
 *
 * DESIGN
 * Everything runs on the pool's loop thread; there are no locks. The only
 * work that leaves the loop is host name resolution (on the offload pool's
 * blocking lane, resolve.c) and PQcancel (on a thread of its own, cancel.c),
 * each with a small context of its own so that a call finishing after its
 * connection or pool died touches nothing that was freed, and each bounded
 * by a timer on the loop: the pool never waits for either.
 *
 * A query (bt__pq_query) is in exactly one place at a time:
 *   new -> the pool's wait queue (BT__PQ_Q_WAITING) -> a connection (BT__PQ_Q_SENT) -> freed
 * or, for a query on an acquired connection, straight to BT__PQ_Q_SENT. On a
 * connection every query becomes a run of "ops" in the connection's FIFO,
 * matching what libpq will hand back in pipeline mode:
 *   [BT__PQ_OP_PREPARE]  results, then NULL     (first use of a statement)
 *   BT__PQ_OP_QUERY      results, then NULL
 *   BT__PQ_OP_SYNC       PGRES_PIPELINE_SYNC
 * The front op is the one whose results libpq returns next; results are
 * matched to queries by that order alone.
 *
 * Syncs and batches. Queries on an acquired connection, internal ones,
 * row-callback ones and retries each get a Sync of their own ("solo"): an
 * implicit transaction each, as without a pipeline. Pool queries sent to
 * one connection during one loop pass share one Sync ("a batch", synced by
 * sync_ev at the end of the pass), which is what makes pipelining pay: the
 * server flushes once per Sync, not once per query. A batch is one implicit
 * transaction, so its queries' outcomes are held until its
 * PGRES_PIPELINE_SYNC arrives (the commit), and if one query fails the
 * server rolls back the ones before it and skips the ones after it
 * (PGRES_PIPELINE_ABORTED). Then the failed query alone fails, and every
 * other query of the batch is put back in the wait queue as a solo query,
 * by the deadline it got when it came (so near the head): none of them
 * took effect, so running them again is safe. A
 * failure that only the batching caused (a deadlock 40P01, a serialization
 * failure 40001, a statement that refuses a transaction block 25001) is
 * retried solo too. A solo query is never retried.
 *
 * A query's future is settled exactly once, by whichever comes first: its
 * result, its connection breaking, its timeout, a cancel, or shutdown. A
 * query abandoned while on a connection (cancel, timeout) stays in the op
 * FIFO with `abandoned` set until its results have been read and dropped;
 * the connection takes no new pool work while it holds one, so a cancel
 * request can only hit the query it was meant for or one already in the
 * pipeline behind it (a race libpq's own PQcancel has; we narrow it by
 * sending the cancel only when the query is at the front).
 *
 * Object lifetimes: a connection may be destroyed from inside its own
 * event callback (libevent allows freeing the running event); functions
 * that can destroy it return -1 and the caller returns at once. A
 * connection handed to a user (acquired) is never freed under them: if it
 * breaks or the pool goes away it is "dead" (no PGconn, not in the pool's
 * list) until bt_pq_conn_release frees it.
 */
#ifndef BATON_PQ_INTERNAL_H
#define BATON_PQ_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include <baton/pq.h>

#include "list.h"

typedef struct bt__pq_query bt__pq_query;
typedef struct bt__pq_stmt bt__pq_stmt;
typedef struct bt__pq_chan bt__pq_chan;
typedef struct bt_pq_copy bt__pq_copy;

enum { BT__PQ_Q_NEW, BT__PQ_Q_WAITING, BT__PQ_Q_SENT };

/* Internal queries (ROLLBACK on release, LISTEN after a reconnect) report
 * here instead of through a future. err is 0 or a BT_E* code. */
typedef void (*bt__pq_internal_cb)(bt_pq_conn *c, bt__pq_query *q, int err);

struct bt__pq_query {
    bt__list link; /* on the pool's wait queue, or its connection's held batch */
    bt_pq_pool *pool;
    bt_pq_conn *conn;   /* once sent */
    bt_pq_conn *target; /* an acquired connection, or NULL */
    bt_future *f;       /* our own reference; NULL if internal */
    bt__pq_internal_cb internal;
    void *internal_arg;
    char *sql;
    int nparams;
    char **values;
    int *lengths;
    int *formats;
    Oid *types;
    int result_format;
    bool no_prepare;
    bt_pq_row_cb row_cb;
    void *row_arg;
    bool rows_stopped;
    bt_timer *timer; /* per-query timeout, if any */
    uint64_t timeout_ms;
    uint64_t deadline_ns; /* for the wait queue */
    uint64_t sent_ns;     /* when the pool sent it to a connection */
    int state;
    bool settled;
    bool abandoned;     /* settled early; results to be dropped */
    bool want_cancel;   /* send a cancel when it reaches the front */
    bool started;       /* its BT__PQ_OP_QUERY reached the front */
    bool aborted;       /* PGRES_PIPELINE_ABORTED: it never ran */
    bool solo;          /* send with a Sync of its own (no batch) */
    bool used_named;    /* ran a cached prepared statement: */
    uint64_t stmt_seq;  /* ... this one (its number) */
    uint64_t stmt_mark; /* its connection's stmt_seq when it was sent */
    bool replanned;     /* already retried for a stale statement */
    bool recancelled;   /* already retried after a stray cancel */
    PGresult *res;
    int err; /* first error seen, 0 if none */
    char *errmsg;
};

enum { BT__PQ_OP_PREPARE, BT__PQ_OP_QUERY, BT__PQ_OP_SYNC };
typedef struct {
    int kind;
    bt__pq_query *q;
    bt__pq_stmt *stmt; /* BT__PQ_OP_PREPARE: the statement being made */
} bt__pq_op;

struct bt__pq_stmt {
    bt__pq_stmt *next; /* hash chain */
    bt__list lru;      /* on its connection's lru, most recently used first */
    char *sql;
    uint32_t hash;
    uint64_t seq;  /* its number, in the order PREPAREs are sent; the name */
    unsigned refs; /* BT__PQ_OP_PREPAREs in the FIFO that point at it */
    bool cached;   /* on the lru (and, but for a failed make-over, hashed) */
    bool hashed;
    bool ready; /* PREPARE succeeded */
    char name[24];
};

enum { BT__PQ_CS_RESOLVING, BT__PQ_CS_CONNECTING, BT__PQ_CS_READY, BT__PQ_CS_DEAD };

/* How a connection reports to its pool: the one way up from conn.c and
 * connect.c. The pool fills in the table when it creates the connection
 * (bt__pq_conn_new); the connection calls these and never a pool function,
 * so the calls between the files run one way, down. Each is called on the
 * loop thread, with c->pool set (never once the connection is dead). */
struct bt__pq_conn_events {
    /* c is open, in pipeline mode, and may take queries. */
    void (*connected)(bt_pq_conn *c);
    /* Opening a connection failed. c is already closed (and maybe freed),
     * so the pool and the kind of connection are passed instead. */
    void (*connect_failed)(bt_pq_pool *p, bool listener, int code, const char *msg);
    /* c finished some work (or a cancel request for it returned): it may
     * take more, or be released, retired or rolled back. */
    void (*available)(bt_pq_conn *c);
    /* c is closing: the pool forgets it (unlinks it) and replaces it. */
    void (*gone)(bt_pq_conn *c);
    /* c has a batch open: Sync it at the end of this loop pass. */
    void (*batch_open)(bt_pq_conn *c);
    /* These queries of a failed batch (a list through their link) never
     * took effect: run them again, each alone. The pool takes them over
     * and leaves qs empty. */
    void (*retry)(bt_pq_conn *c, bt__list *qs);
    /* A notification arrived on the listener connection. */
    void (*notify)(bt_pq_conn *c, PGnotify *n);
};

/* A COPY running on c (copy.c) takes the connection over: libpq forbids
 * COPY in pipeline mode, so copy.c leaves it on an idle, lent connection
 * and enters it again when the COPY is over. Meanwhile conn.c hands the
 * connection's I/O events and its close to the copy through this table
 * (filled in by copy.c, so conn.c names no copy.c function). */
struct bt__pq_takeover {
    /* c's socket is readable or writable (what: EV_READ, EV_WRITE). */
    void (*io)(bt_pq_conn *c, short what);
    /* c was closed (code, why: as bt__pq_conn_close got them); c is dead
     * but still allocated (it is lent); the copy may release it. */
    void (*closed)(bt_pq_conn *c, int code, const char *why);
};

struct bt_pq_conn {
    bt_pq_pool *pool;                        /* NULL once dead (closed while acquired) */
    const struct bt__pq_conn_events *events; /* the pool's, see above */
    bt_loop *loop;
    bt__list link; /* on the pool's conns (not the listener) */
    PGconn *pg;
    int state;
    int fd;
    struct event *ev;  /* connect step, or persistent read */
    struct event *wev; /* write, while libpq has unsent data */
    bool flushing;
    bt_timer *timer;                /* connect timeout */
    PostgresPollingStatusType poll; /* last PQconnectPoll answer */
    struct bt__pq_resolve *resolve; /* a resolution job in flight */
    char *hostaddr;                 /* resolved lists for libpq (resolve.c) */
    bt__pq_op *ops;                 /* FIFO ring */
    size_t ops_cap, ops_head, ops_len;
    unsigned inflight; /* user queries (not abandoned) in flight */
    unsigned unsynced; /* queries sent since the last Sync */
    bt__list held;     /* answered queries, waiting for their Sync */
    unsigned nheld;
    bool held_error;    /* a query of the held batch failed */
    unsigned abandoned; /* abandoned queries still in the FIFO */
    bool acquired;      /* handed to a user */
    bool releasing;     /* released; finishing queries / rolling back */
    bool retiring;      /* past its lifetime: close once drained */
    bool is_listener;
    bool counted_connecting;          /* in the pool's nconnecting */
    struct bt__pq_cancel *cancel_job; /* a cancel request in flight for this one */
    bool cancel_again;                /* another abandoned query reached the front
                                  while cancel_job was in flight: when it
                                  returns, send one for that query */
    bool cancel_sent;                 /* since it was last idle: a 57014 on another
                                  query may be our stray cancel */
    unsigned busy;                    /* inside on_io: a close defers the free */
    bool zombie;                      /* closed while busy: on_io frees it */
    unsigned rollback_tries;          /* ROLLBACKs sent since the release */
    uint64_t born_ns;
    uint64_t idle_ns;    /* when it last became idle */
    bt__pq_stmt **stmts; /* hash buckets */
    bt__list lru;        /* the statements, most recently used first */
    unsigned nbuckets, nstmts;
    uint64_t stmt_seq; /* the number of the last statement prepared */
    /* The pool's view of its progress, for choosing a connection (pool.c,
     * "Choosing a connection"): inflight when the pool last looked, and
     * when its oldest query in flight then was sent. */
    unsigned seen_inflight;
    uint64_t oldest_sent_ns;
    const struct bt__pq_takeover *takeover; /* a COPY runs on it (copy.c) */
    bt__pq_copy *copy;                      /* ... this one */
};

struct bt__pq_chan {
    bt__pq_chan *next;
    char *name;
    bt_pq_notify_cb cb;
    void *arg;
};

struct bt__pq_listen_wait {
    struct bt__pq_listen_wait *next;
    char *channel;
    bt_future *f; /* our own reference */
};

struct bt__pq_acq {
    bt__list link;    /* on the pool's aq */
    bt_pq_pool *pool; /* for the cancel hook */
    bt_future *f;     /* our own reference */
    uint64_t deadline_ns;
};

struct bt_pq_result {
    PGresult *pg;
};

struct bt_pq_pool {
    bt_loop *loop;
    struct event_base *base;
    bt_pq_options o;
    char *conninfo;
    /* Parsed conninfo, NULL-terminated, for PQconnectStartParams. */
    const char **keys;
    const char **vals;
    int host_idx, hostaddr_idx; /* index in keys, or -1 */
    int port_idx;               /* index in keys, or -1 */
    char *host;                 /* the host list to resolve, or NULL */
    char *ports;                /* its port list if it has several entries */
    bt__list conns;             /* open and opening connections, not the listener */
    unsigned nconns, nconnecting;
    bt__list wq; /* queries waiting for a connection, by deadline */
    unsigned nwq;
    bt__list aq; /* acquires waiting for a connection, by deadline */
    unsigned naq;
    bt_timer *wait_timer;     /* earliest waiter deadline */
    uint64_t wait_due_ns;     /* ... the one it was started for */
    bt_timer *maint_timer;    /* lifetime, idleness, min size, retries */
    unsigned fails;           /* consecutive connect failures */
    uint64_t next_connect_ns; /* backoff: no new connect before this */
    bool ever_connected;
    int last_err;
    char *last_errmsg;
    bt_future **ready; /* bt_pq_pool_ready waiters */
    size_t nready;
    bt_pq_conn *listener;
    bt__pq_chan *chans;
    struct bt__pq_listen_wait *listen_waits; /* LISTENs waiting for the listener */
    bool pumping, repump;
    struct event *sync_ev; /* end of pass: Sync the open batches */
    bool sync_armed;
    struct event *pump_ev; /* end of pass: hand out and open connections */
    bool pump_armed;
    uint64_t maint_due_ns;
    bool closing;       /* bt_pq_pool_close: draining */
    bool drained;       /* ... and done: close_f gets a value */
    bt_future *close_f; /* our own reference */
    bool closed;        /* shut down (pool freed or loop closing) */
    bool loop_gone;     /* the loop's closer ran: do not touch it */
    uint32_t rng;
    uint64_t answer_ns; /* how long queries wait for their answer on a
                           connection, lately (a moving average; pool.c) */
    bt_pq_stats st;
    struct bt__pq_notices *notices;     /* notice.c's; NULL: notices are logged */
    unsigned pins;                      /* user callbacks may run: see bt__pq_pool_pin */
    bool free_pending;                  /* freed while pinned: the last unpin frees */
    void (*free_memory)(bt_pq_pool *p); /* pool.c's, for that last unpin */
};

/* A user callback (a row, a notification, a notice, COPY data) may free
 * the pool. The code that runs one pins the pool first, from the loop's
 * event to its end: bt_pq_pool_free then shuts the pool down at once
 * (every future settles, every connection closes, no callback runs
 * again) but leaves its memory to the last unpin, as libuv's uv_close
 * leaves a handle's memory alone until its close callback. The code after
 * the callback may read the pool (p->closed says it was shut down); the
 * connections and queries it closed follow their own rules (a connection
 * inside on_io is a zombie until on_io ends). */
static inline void bt__pq_pool_pin(bt_pq_pool *p)
{
    p->pins++;
}

/* Returns false if that freed p. */
static inline bool bt__pq_pool_unpin(bt_pq_pool *p)
{
    if (--p->pins > 0 || !p->free_pending)
        return true;
    p->free_memory(p);
    return false;
}

/* The files from the top of the wing down; each calls only the ones
 * below it (docs/postgres.md, "How the wing is built"). */

/* The error of a COPY FROM STDIN / TO STDOUT sent as a query. */
#define BT__PQ_COPY_REFUSED                                                                    \
    "COPY ... FROM STDIN and COPY ... TO STDOUT run through bt_pq_copy_in and bt_pq_copy_out " \
    "(bt_pq_conn_copy_in / _out on an acquired connection), not as a query"

/* query.c */
/* The common path of every query: target is an acquired connection or
 * NULL for the pool. Returns: new reference, or NULL. */
bt_future *bt__pq_submit(bt_pq_pool *p, bt_loop *loop, bt_pq_conn *target, const char *sql,
                         int nparams, const char *const *values, const bt_pq_query_opts *opts);

/* pool.c, for the files above it (query.c, acquire.c, listen.c) */
/* Take q off the pool's queue of queries waiting for a connection. */
void bt__pq_wq_unlink(bt_pq_pool *p, bt__pq_query *q);
/* A new query, taken over: to its acquired connection, a free one, or the
 * wait queue. */
void bt__pq_pool_run(bt_pq_pool *p, bt__pq_query *q);
/* bt_pq_acquire's and bt_pq_conn_release's work. */
void bt__pq_pool_acquire(bt_pq_pool *p, bt_future *f);
void bt__pq_pool_release(bt_pq_conn *c);
void bt__pq_start_listener(bt_pq_pool *p);
bool bt__pq_can_connect(bt_pq_pool *p);
void bt__pq_check_drained(bt_pq_pool *p);

/* channels.c: the LISTEN channels, below the pool. */
bt__pq_chan *bt__pq_chan_find(bt_pq_pool *p, const char *name);
/* "VERB "quoted"" for c, or NULL. Free with bt_free. */
char *bt__pq_chan_sql(bt_pq_conn *c, const char *verb, const char *channel);
/* LISTEN on c; f (taken over, or NULL for an internal one) settles with it. */
void bt__pq_chan_send_listen(bt_pq_conn *c, const char *channel, bt_future *f);
void bt__pq_chan_relisten(bt_pq_pool *p, bt_pq_conn *c);
void bt__pq_chan_dispatch(bt_pq_pool *p, PGnotify *n);

/* connect.c */
bt_pq_conn *bt__pq_conn_new(bt_pq_pool *p, bool listener, const struct bt__pq_conn_events *events);
void bt__pq_conn_begin(bt_pq_conn *c);

/* conn.c */
void bt__pq_conn_on_io(evutil_socket_t fd, short what, void *arg);
void bt__pq_conn_send(bt_pq_conn *c, bt__pq_query *q);
void bt__pq_conn_abandon(bt_pq_conn *c, bt__pq_query *q);
void bt__pq_conn_close(bt_pq_conn *c, int code, const char *why);
void bt__pq_conn_shutdown(bt_pq_conn *c, const char *why);
void bt__pq_conn_free_dead(bt_pq_conn *c);
int bt__pq_conn_sync(bt_pq_conn *c);
void bt__pq_conn_send_internal(bt_pq_conn *c, const char *sql);

/* request.c: the query object. */
bt__pq_query *bt__pq_query_new(bt_pq_pool *p, const char *sql, int nparams,
                               const char *const *values, const bt_pq_query_opts *opts, int *err);
/* Fail q now with code and msg (NULL: the code's own text) unless it has
 * settled; it stays where it is (a sent query that timed out). */
void bt__pq_query_settle(bt__pq_query *q, int code, const char *msg);
/* The end of q: settle it unless it has settled already (code 0: with what
 * it collected; else failed with code and the message), then free it. */
void bt__pq_query_end(bt__pq_query *q, int code, const char *fmt, ...) BT_PRINTF(3, 4);
void bt__pq_query_vend(bt__pq_query *q, int code, const char *fmt, va_list ap);
void bt__pq_query_set_error_from(bt__pq_query *q, const PGresult *res);
/* The callback of internal queries (logs a failure). */
void bt__pq_internal_done(bt_pq_conn *c, bt__pq_query *q, int err);

/* conninfo.c */
int bt__pq_parse_conninfo(bt_pq_pool *p);

/* resolve.c and cancel.c: the only work that leaves the loop. They call
 * nothing else of the wing: each reports to the callback it was given. */
/* The lookup for c ended: err 0 and lists, "HOSTS\0HOSTADDRS\0PORTS" (one
 * allocation, the callee's to keep or free: libpq's host, hostaddr and,
 * unless empty, port lists, one entry per address to try), or err and
 * msg. Not called once detached. */
typedef void (*bt__pq_resolved_cb)(bt_pq_conn *c, int err, const char *msg, char *lists);
/* Resolve every name of hosts (the conninfo's host list); ports is its
 * port list when it has several entries (else NULL). */
int bt__pq_resolve_start(bt_pq_conn *c, const char *hosts, const char *ports,
                         bt__pq_resolved_cb done);
void bt__pq_resolve_detach(bt_pq_conn *c);
/* The cancel request for c was answered (answered true), or got no answer
 * within timeout_ms (false: the request is abandoned). Not called once
 * detached. */
typedef void (*bt__pq_cancel_cb)(bt_pq_conn *c, bool answered, uint64_t timeout_ms);
void bt__pq_cancel_send(bt_pq_conn *c, bt__pq_cancel_cb done);
void bt__pq_cancel_detach(bt_pq_conn *c);
void bt__pq_cancel_fire(PGconn *pg);

/* stmt.c: the statement cache of one connection (books only). An entry
 * lives while it is cached or a PREPARE op points at it (see stmt.c). */
/* A BT__PQ_OP_PREPARE now points at s; _unref when it no longer does. */
void bt__pq_stmt_hold(bt__pq_stmt *s);
void bt__pq_stmt_unref(bt__pq_stmt *s);
/* The answer to s's PREPARE came (prepared: it succeeded; else it failed
 * or was skipped, and s is forgotten); the op lets go of s. */
void bt__pq_stmt_answered(bt_pq_conn *c, bt__pq_stmt *s, bool prepared);
/* Forget every statement (the connection is being freed). */
void bt__pq_stmt_clear(bt_pq_conn *c);
/* Forget the statement numbered seq, if still cached (the server no
 * longer has it, or its plan changed). */
void bt__pq_stmt_forget(bt_pq_conn *c, uint64_t seq);
/* Forget every statement numbered up to mark: the server dropped them
 * (DISCARD ALL, DEALLOCATE ALL) before a query sent when the numbering was
 * at mark; the ones prepared after it stay. */
void bt__pq_stmt_forget_upto(bt_pq_conn *c, uint64_t mark);
/* How to run sql on c with a cache of cap statements, the one question
 * conn.c asks: BT__PQ_STMT_RUN (*s is ready: execute it, now the most
 * recently used), BT__PQ_STMT_PREPARE (*s is a new entry: PREPARE it
 * first) or BT__PQ_STMT_UNNAMED (no statement: run the text; always with
 * cap 0, the cache off). When the
 * cache was full, its least recently used ready statement was forgotten
 * (its entry serves the new one) and its name is in evict (else evict is
 * ""): the caller sends the DEALLOCATE, before the PREPARE, since the
 * pipeline keeps order. */
enum { BT__PQ_STMT_UNNAMED, BT__PQ_STMT_RUN, BT__PQ_STMT_PREPARE };
int bt__pq_stmt_pick(bt_pq_conn *c, const char *sql, unsigned cap, bt__pq_stmt **s, char *evict,
                     size_t evict_size);

/* notice.c: the server's notices, to the pool's handler or the log. */
/* The notice receiver of every connection (arg: the bt_pq_conn). */
void bt__pq_notice_receive(void *arg, const PGresult *res);
/* Deliver the notices received so far; called where user code may run. */
void bt__pq_notice_flush(bt_pq_pool *p);
/* The pool is shutting down: log what is left and free it all. */
void bt__pq_notice_free(bt_pq_pool *p);

/* result.c */
bt_pq_result *bt__pq_result_wrap(PGresult *res);
int bt__pq_error_code(const PGresult *res);
char *bt__pq_format_error(const PGresult *res, const char *fallback);

#endif
