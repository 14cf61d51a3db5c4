/* libbaton-http's insides, shared by its files (never installed). */
#ifndef BATON_HTTP_INTERNAL_H
#define BATON_HTTP_INTERNAL_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <baton/http.h>

#include "list.h"

#define BT__HTTP_MAX_PARAMS 16

/* ---- Router (router.c) --------------------------------------------------- */

typedef struct bt__route {
    char *method;
    char *pattern;
    char **segs; /* literal text, or the parameter name */
    bool *is_param;
    size_t nsegs;
    size_t nliteral; /* for precedence: more literals wins */
    size_t order;
    bt_http_handler_fn handler;
    void *arg;
    bool fiber; /* bt_http_app_route_async: the handler runs on a fiber */
} bt__route;

typedef struct bt__router {
    bt__route *routes;
    size_t n, cap;
} bt__router;

/* A match: the route (NULL if none), and the captured parameters pointing
 * into segs (which the caller owns). path_matched is true when some route
 * matched the path but none the method; allow then lists the methods
 * ("GET, HEAD, POST"), bt_malloc'd, for the Allow header. */
typedef struct {
    const bt__route *route;
    const char *names[BT__HTTP_MAX_PARAMS];
    const char *values[BT__HTTP_MAX_PARAMS];
    size_t nparams;
    bool path_matched;
    char *allow;
} bt__match;

int bt__router_add(bt__router *r, const char *method, const char *pattern,
                   bt_http_handler_fn handler, void *arg, bool fiber);
void bt__router_free(bt__router *r);
/* segs are the decoded segments of the request path. Returns 0 or
 * BT_ENOMEM (allow could not be built). */
int bt__router_match(const bt__router *r, const char *method, char **segs, size_t nsegs,
                     bt__match *m);

/* ---- Metrics (metrics.c) ------------------------------------------------- */

#define BT__HTTP_NBUCKETS 14
extern const double bt__http_buckets[BT__HTTP_NBUCKETS];

/* One server's counters. Written by its loop thread with relaxed atomics,
 * read by whichever loop answers a scrape. */
typedef struct bt__http_stats {
    struct bt__http_stats *next;
    unsigned loop_index;
    _Atomic uint64_t by_status[600];
    _Atomic uint64_t hist[BT__HTTP_NBUCKETS + 1]; /* last is +Inf */
    _Atomic uint64_t sum_us;
    _Atomic uint64_t count;
    _Atomic uint64_t in_flight;
    _Atomic uint64_t lag_us; /* last measured loop lag */
    _Atomic uint64_t lag_max_us;
    _Atomic uint64_t pending;   /* the loop's pending futures */
    _Atomic uint64_t cancelled; /* handlers cancelled (disconnect, deadline) */
} bt__http_stats;

void bt__http_stats_observe(bt__http_stats *s, int status, uint64_t ns);
/* The metrics text of every server of app. Returns bt_malloc'd or NULL. */
char *bt__http_metrics_render(bt_http_app *app);

/* ---- App ------------------------------------------------------------------ */

typedef struct bt__metrics_src {
    bt_http_metrics_fn fn;
    void *arg;
    bool owns_arg; /* bt_free(arg) with the app */
} bt__metrics_src;

/* The pool metrics source (metrics.c): arg is a bt__pool_src. */
typedef struct {
    bt_pool *pool;
    char name[64];
} bt__pool_src;
char *bt__http_pool_metrics(void *arg);

struct bt_http_app {
    bt__router router;
    size_t max_header_bytes;
    size_t max_body_bytes;
    uint64_t read_timeout_ms;
    uint64_t write_timeout_ms;
    unsigned max_concurrent;
    unsigned loops;
    uint64_t shutdown_deadline_ms;
    bool access_log;
    uint64_t handler_timeout_ms;
    uint64_t head_timeout_ms; /* guard.c: the whole request head */
    uint64_t min_body_rate;   /* guard.c: bytes a second, after body_grace_ms */
    uint64_t body_grace_ms;
    unsigned max_connections; /* guard.c: open connections, all servers */
    char *metrics_path;
    bt__metrics_src *msrc;
    size_t nmsrc;
    bt_http_loop_init_fn init;
    bt_http_loop_fini_fn fini;
    void *hook_arg;

    struct bt__tls *tls; /* tls.c: NULL without TLS */

    /* Shared by the servers of every loop. */
    _Atomic unsigned servers;   /* servers alive: the app is frozen while > 0 */
    _Atomic unsigned in_flight; /* for max_concurrent */
    _Atomic unsigned next_index;
    _Atomic unsigned open_conns;       /* for max_connections */
    _Atomic uint64_t refused_conns;    /* 503: max_connections reached */
    _Atomic uint64_t refused_requests; /* answered by the guard: 400, 408, 413, 431... */
    _Atomic uint64_t accept_pauses;    /* accept() failed: the listeners paused */
    pthread_mutex_t stats_lock;        /* guards stats list */
    bt__http_stats *stats;

    /* bt_http_app_run */
    _Atomic bool running;
    int stop_fd[2]; /* bt_http_app_stop writes here */

    /* Worker processes (workers.c). processes is -1 unless
     * bt_http_app_set_processes was called (then 0 means one per CPU);
     * worker_index is 1..n in a worker process, 0 elsewhere. */
    int processes;
    unsigned restart_max;
    uint64_t restart_window_ms;
    unsigned worker_index;
};

/* ---- TLS (tls.c) ---------------------------------------------------------- */

#include <netinet/in.h>

struct bufferevent;
struct event_base;
typedef struct bt__tls bt__tls;

/* What a connection's handshake tells the guard (the guard's, per
 * connection): the client's address, taken when the handshake starts,
 * and whether it completed. */
typedef struct {
    char peer[INET6_ADDRSTRLEN];
    bool handshake_done;
} bt__tls_info;

#ifdef BT_HAVE_OPENSSL
/* Load the files into a new context, replacing app's TLS. Returns 0,
 * BT_EINVAL (logged), BT_ENOMEM. */
int bt__tls_set(bt_http_app *app, const char *cert_file, const char *key_file);
/* Load the files again and swap the context. Returns 0 or BT_EINVAL
 * (logged; the old context stays). Thread: any. */
int bt__tls_reload(bt_http_app *app);
/* A connection's accepting OpenSSL bufferevent, without a socket yet
 * (evhttp gives it one), or NULL. If info is not NULL (zeroed, living as
 * long as the bufferevent) the handshake fills it in. Thread: the
 * server's loop. */
struct bufferevent *bt__tls_bev_new(bt_http_app *app, struct event_base *base, bt__tls_info *info);
/* A connection goes: if its handshake failed, one BT_LOG_DEBUG line with
 * the peer and OpenSSL's reason. */
void bt__tls_log_failure(struct bufferevent *bev, const bt__tls_info *info);
#endif
/* With the app. NULL-safe. */
void bt__tls_free(bt_http_app *app);

/* A socket bound to host:port with SO_REUSEPORT, listening if asked
 * (server.c). Returns the fd and sets *bound, or a negative BT_E* code. */
int bt__http_bind(const char *host, int port, bool listening, int *bound);

/* bt_http_app_run's loops in this process (app.c). fresh: forget stop
 * requests made before the call (bt_http_app_run); a worker process passes
 * false so that a SIGTERM received between fork and here is not lost.
 * main_mask: the signal mask the calling thread gets once the loop threads
 * are started (NULL: the one it had on entry). */
int bt__http_run_loops(bt_http_app *app, const char *host, int port, bt_http_ready_fn on_ready,
                       void *ready_arg, bool fresh, const sigset_t *main_mask);
/* bt_http_app_run with worker processes (workers.c). */
int bt__http_supervise(bt_http_app *app, const char *host, int port, bt_http_ready_fn on_ready,
                       void *ready_arg);

/* ---- Requests (request.c) ------------------------------------------------ */

#include <netinet/in.h>

struct evhttp_request;
struct evhttp_connection;
struct evkeyvalq;
struct event;

#define BT__HTTP_INLINE_SEGS 8

typedef struct {
    char *name;
    char *value;
} bt__http_kv;

struct bt_http_req {
    bt_http_server *srv; /* NULL once detached by close/free */
    bt_loop *loop;
    void *loop_data;
    struct evhttp_request *ev; /* NULL once answered or freed with evhttp */
    bool disconnected;         /* the client went away; ev is gone */
    struct event *watch;       /* notices the client closing, while in flight */
    bool watched;              /* watch_peer was tried (the sweep's mark) */
    bt_future *fut;
    const bt__route *route; /* for a fiber route's entry (set before bt_async) */
    bt_future *fiber;       /* a fiber route's bt_async future (a reference) */
    bt__list link;          /* on the server's requests in flight */
    uint64_t start_ns;

    const char *method;
    char *path;
    char **segs; /* into path's block */
    char *inline_segs[BT__HTTP_INLINE_SEGS];
    size_t nsegs;
    const char *pnames[BT__HTTP_MAX_PARAMS];
    const char *pvalues[BT__HTTP_MAX_PARAMS];
    size_t nparams;
    char *raw_query;
    struct evkeyvalq *query; /* parsed on first use */
    bt__http_kv *headers;
    size_t nheaders;
    char *body;
    size_t body_len;
    struct evhttp_connection *evcon; /* for the peer's address, looked up lazily */
    const struct bufferevent *bev;   /* the connection's, compared, never followed */
    void *state;                     /* bt_http_req_set_state */
    bt_destroy_fn state_dtor;
    char peer[INET6_ADDRSTRLEN + 1];
};

/* Free req: its state (through its destructor), copies, future. */
void bt__http_req_free(bt_http_req *req);
/* Split the raw path into req's percent-decoded path and segments.
 * Returns 0, BT_EINVAL (a segment decodes to a NUL byte, or the path is
 * not absolute), BT_ENOMEM. */
int bt__http_req_split_path(bt_http_req *req, const char *raw);
/* Copy ev's headers, body, query string and connection into req.
 * Returns 0 or BT_ENOMEM. */
int bt__http_req_copy(bt_http_req *req, struct evhttp_request *ev);

/* ---- Connection guard (guard.c) --------------------------------------------- */

struct bufferevent;
struct event;
struct event_base;
struct evconnlistener;

#define BT__GUARD_MAX_LISTENERS 8

/* One per server, inside it; runs on the server's loop thread. */
typedef struct bt__guard {
    bt_http_server *srv;
    bt_http_app *app;
    bt__http_stats *stats;
    bt__list conns; /* every connection not yet destroyed (struct conn) */
    struct evconnlistener *listeners[BT__GUARD_MAX_LISTENERS];
    size_t nlisteners;
    struct event *accept_timer; /* resumes accepting after a pause */
    uint64_t accept_pauses, accept_logged_ns;
    uint64_t refused, refused_logged_ns;
} bt__guard;

int bt__guard_init(bt__guard *g, bt_http_server *srv, bt_http_app *app, struct event_base *base,
                   bt__http_stats *stats);
/* After evhttp_free: detach the connections whose destruction is still
 * to come, forget the listeners. */
void bt__guard_close(bt__guard *g);
/* For evhttp_set_bevcb. */
struct bufferevent *bt__guard_bevcb(struct event_base *base, void *arg);
/* Pause lev on accept() errors. Returns 0, BT_ENOMEM, BT_EBUSY. */
int bt__guard_add_listener(bt__guard *g, struct evconnlistener *lev);
/* Before the listeners are freed. */
void bt__guard_forget_listeners(bt__guard *g);
/* Check a request line (without its line end). Returns 0 or an HTTP
 * status with *msg. */
int bt__guard_check_request_line(const char *line, size_t len, bool *is_head, const char **msg);
/* server.c: true while a request read on bev is with its handler. */
bool bt__http_server_conn_busy(bt_http_server *srv, const struct bufferevent *bev);

#endif
