/* One HTTP server on one loop: evhttp in, handler futures out.
 *
 * DESIGN
 * - evhttp parses a request and calls dispatch() on the loop thread. The
 *   server copies what the handler may read (method, decoded path and
 *   parameters, headers, body, peer) into a bt_http_req of its own, so
 *   the request stays readable whatever happens to the connection, and
 *   calls the handler, bracketed for the stall watchdog. The handler's
 *   future is held until it settles; on_done() then sends the response.
 * - Every request in flight is on the server's list. evhttp stops reading
 *   a connection while its request is handled, so it would only notice a
 *   client that left when the reply fails. The server watches the socket
 *   itself (EV_CLOSED: epoll's EPOLLRDHUP) once a request has been in
 *   flight for SWEEP_MS; when the client closes, the connection is freed
 *   (which frees the unanswered evhttp_request) and the handler's future is
 *   cancelled, which reaches the query or upstream call it waits on.
 * - Graceful shutdown: the listeners are closed, new requests on open
 *   connections get 503 and "Connection: close", a timer cancels what is
 *   still in flight at the deadline, and the shutdown future settles when
 *   the list is empty.
 * - The loop's closer (bt_loop_free with the server alive) and
 *   bt_http_server_free detach every request (the handler's future is
 *   cancelled; its callback then only frees the request) before evhttp_free
 *   closes the connections, because evhttp_free frees the evhttp_requests
 *   still attached to them.
 * - Every connection's bytes pass the guard (guard.c) before evhttp parses
 *   them: strict framing, head and body deadlines, the cap on open
 *   connections, the pause on accept() errors. The request's copy and its
 *   accessors are in request.c.
 * - read and write timeouts: libevent 2.1 has one timeout per connection,
 *   so the write timeout is set on the connection just before a reply and
 *   the read timeout is put back when the reply is done.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include <baton/compose.h>
#include <baton/fiber.h>

#include "http-internal.h"
#include "response-internal.h"
#include "timeval.h"

#define MAX_LISTENERS 8
#define SWEEP_MS 20
/* The loop-lag probe of the metrics: a timer of this period measures how
 * late it fires. */
#define LAG_PERIOD_MS 250

struct bt_http_server {
    bt_loop *loop;
    bt_http_app *app;
    struct evhttp *http;
    void *loop_data;
    bt__http_stats *stats;
    struct evhttp_bound_socket *listeners[MAX_LISTENERS];
    size_t nlisteners;
    int port;

    bt__list inflight; /* requests in flight, newest first */
    unsigned nflight;

    bool shutting_down;
    bool closed;           /* evhttp freed: by the closer or free */
    bt_future *shutdown_f; /* the server's own reference */
    bt_timer *deadline;
    bt_timer *lag_timer;
    bt_timer *sweep; /* arms disconnect watches, while requests are in flight */
    uint64_t lag_last_ns;
    struct timeval read_tv, write_tv;
    bt__guard guard; /* framing, deadlines, caps: guard.c */
    bool guard_ready;
};

static void unwatch_peer(bt_http_req *req);

static const char *method_name(enum evhttp_cmd_type t)
{
    switch (t) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "UNKNOWN";
}

/* ---- Replies ------------------------------------------------------------- */

static void restore_read_timeout(struct evhttp_request *ev, void *arg)
{
    bt_http_server *srv = arg;
    struct evhttp_connection *evcon = evhttp_request_get_connection(ev);
    if (evcon != NULL)
        evhttp_connection_set_timeout_tv(evcon, &srv->read_tv);
}

static void access_log(bt_http_server *srv, struct evhttp_request *ev, int status,
                       uint64_t start_ns)
{
    if (!srv->app->access_log)
        return;
    struct evhttp_connection *evcon = ev != NULL ? evhttp_request_get_connection(ev) : NULL;
    char *addr = NULL;
    ev_uint16_t port = 0;
    if (evcon != NULL)
        evhttp_connection_get_peer(evcon, &addr, &port);
    const char *uri = ev != NULL ? evhttp_request_get_uri(ev) : "";
    bt_log(BT_LOG_INFO, "http: %s \"%s %s\" %d %.3f ms", addr != NULL ? addr : "-",
           ev != NULL ? method_name(evhttp_request_get_command(ev)) : "-", uri != NULL ? uri : "",
           status, (double)(bt_hrtime() - start_ns) / 1e6);
}

/* Send resp (taken) on ev. ev is answered (and freed by evhttp) after. */
static void send_response(bt_http_server *srv, struct evhttp_request *ev, bt_http_reply *resp,
                          uint64_t start_ns)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(ev);
    if (evcon != NULL && timercmp(&srv->read_tv, &srv->write_tv, !=)) {
        evhttp_connection_set_timeout_tv(evcon, &srv->write_tv);
        evhttp_request_set_on_complete_cb(ev, restore_read_timeout, srv);
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(ev);
    for (size_t i = 0; i < resp->nheaders; i++)
        evhttp_add_header(out, resp->headers[i].name, resp->headers[i].value);
    if (srv->shutting_down)
        evhttp_add_header(out, "Connection", "close");
    struct evbuffer *buf = evhttp_request_get_output_buffer(ev);
    if (resp->len)
        evbuffer_add(buf, resp->body, resp->len);
    access_log(srv, ev, resp->status, start_ns);
    evhttp_send_reply(ev, resp->status, NULL, NULL);
    bt__http_stats_observe(srv->stats, resp->status, bt_hrtime() - start_ns);
}

/* A small JSON answer the server makes itself: {"error": msg}. */
static void send_simple(bt_http_server *srv, struct evhttp_request *ev, int status, const char *msg,
                        const char *allow, uint64_t start_ns)
{
    bt_http_reply *r = bt_http_reply_new(status);
    json_t *j = json_pack("{s:s}", "error", msg);
    if (r == NULL || j == NULL || bt_http_reply_set_json(r, j) != 0 ||
        (allow != NULL && bt_http_reply_add_header(r, "Allow", allow) != 0) ||
        (status == 503 && bt_http_reply_add_header(r, "Retry-After", "1") != 0)) {
        /* Out of memory: still answer, with no body. */
        bt_http_reply_free(r);
        json_decref(j);
        access_log(srv, ev, status, start_ns);
        evhttp_send_reply(ev, status, NULL, NULL);
        bt__http_stats_observe(srv->stats, status, bt_hrtime() - start_ns);
        return;
    }
    json_decref(j);
    send_response(srv, ev, r, start_ns);
    bt_http_reply_free(r);
}

/* ---- Requests ------------------------------------------------------------- */

static void list_remove(bt_http_server *srv, bt_http_req *req)
{
    bt__list_remove(&req->link);
    srv->nflight--;
    atomic_fetch_sub_explicit(&srv->app->in_flight, 1, memory_order_relaxed);
    atomic_store_explicit(&srv->stats->in_flight, srv->nflight, memory_order_relaxed);
}

static void maybe_shutdown_done(bt_http_server *srv)
{
    if (srv->shutting_down && srv->nflight == 0 && srv->shutdown_f != NULL &&
        !bt_future_is_settled(srv->shutdown_f)) {
        bt_timer_stop(srv->deadline);
        bt_future_set_value(srv->shutdown_f, NULL, NULL);
    }
}

/* A fiber route's handler: the fiber's entry, with handler and arg found
 * through the request (so a fiber route allocates nothing per request
 * beyond what bt_async takes from the loop's stack cache). */
static bt_future *fiber_entry(bt_loop *loop, void *arg)
{
    (void)loop;
    bt_http_req *req = arg;
    return req->route->handler(req, req->route->arg);
}

static void on_fiber_end(bt_future *f, void *arg)
{
    bt_future_error(f); /* its outcome was answered (or dropped) by on_done */
    bt__http_req_free(arg);
}

/* Free req once nothing uses it. A fiber route's request outlives the
 * answer when the handler timeout fired: the timeout's future settles at
 * the deadline, but the fiber only unwinds on a later turn (its cancelled
 * bt_await returns then), and the handler may still read req until it
 * returns. Its future settles when it has returned: free req then. */
static void req_release(bt_http_req *req)
{
    if (req->fiber != NULL && !bt_future_is_settled(req->fiber) &&
        bt_future_add_callback(req->fiber, on_fiber_end, req) == 0)
        return;
    bt__http_req_free(req);
}

/* The handler's future settled: answer, account, free. */
static void on_done(bt_future *f, void *arg)
{
    bt_http_req *req = arg;
    bt_http_server *srv = req->srv;
    if (srv == NULL) { /* detached by free or the loop's closer: nobody to answer */
        bt_future_error(f);
        req_release(req);
        return;
    }
    list_remove(srv, req);
    bt_future_state st = bt_future_get_state(f);
    bt_http_reply *resp = NULL;
    bool timed_out = false;
    if (st == BT_FUTURE_VALUE) {
        resp = bt_future_take_value(f);
        if (resp == NULL)
            bt_log(BT_LOG_ERROR, "http: %s %s: the handler's future has no response", req->method,
                   req->path);
    } else if (st == BT_FUTURE_ERROR) {
        int code = bt_future_error(f);
        timed_out = code == BT_ETIMEDOUT;
        bt_log(BT_LOG_ERROR, "http: %s %s: handler failed: %s (%s)", req->method, req->path,
               bt_future_error_message(f), bt_err_name(code));
    } else {
        bt_future_error(f);
        atomic_fetch_add_explicit(&srv->stats->cancelled, 1, memory_order_relaxed);
    }
    unwatch_peer(req);
    if (req->disconnected) {
        /* The client is gone, and its evhttp_request with it. Counted as
         * 499, nginx's name for it. */
        bt__http_stats_observe(srv->stats, 499, bt_hrtime() - req->start_ns);
        if (srv->app->access_log)
            bt_log(BT_LOG_INFO, "http: - \"%s %s\" 499 %.3f ms (the client left)", req->method,
                   req->path, (double)(bt_hrtime() - req->start_ns) / 1e6);
    } else if (resp != NULL) {
        send_response(srv, req->ev, resp, req->start_ns);
    } else if (st == BT_FUTURE_CANCELLED) {
        send_simple(srv, req->ev, 503, "service unavailable", NULL, req->start_ns);
    } else if (timed_out) {
        send_simple(srv, req->ev, 504, "timed out", NULL, req->start_ns);
    } else {
        send_simple(srv, req->ev, 500, "internal server error", NULL, req->start_ns);
    }
    bt_http_reply_free(resp);
    req->ev = NULL;
    req_release(req);
    maybe_shutdown_done(srv);
}

/* The client closed its side while its handler runs. evhttp does not
 * read from a connection whose request is being handled, so it would only
 * notice when the reply fails; the server watches the socket itself
 * (EV_CLOSED, epoll's EPOLLRDHUP, where the backend has it; otherwise a
 * readable socket and a peek that reads 0 bytes). The connection is freed,
 * which frees the unanswered evhttp_request, and the handler's future is
 * cancelled, which reaches the query or upstream call it waits on. */
static void on_peer_closed(evutil_socket_t fd, short what, void *arg)
{
    bt_http_req *req = arg;
    if (!(what & EV_CLOSED)) {
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n > 0)
            return; /* a pipelined request, not a close: stop watching */
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            event_add(req->watch, NULL);
            return;
        }
    }
    event_free(req->watch);
    req->watch = NULL;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req->ev);
    req->disconnected = true;
    req->ev = NULL;
    if (evcon != NULL)
        evhttp_connection_free(evcon);
    bt_future_cancel(req->fut);
}

static void watch_peer(bt_http_server *srv, bt_http_req *req)
{
    req->watched = true;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req->ev);
    struct bufferevent *bev = evcon != NULL ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evutil_socket_t fd = bev != NULL ? bufferevent_getfd(bev) : -1;
    if (fd < 0)
        return;
    struct event_base *base = bt_loop_base(srv->loop);
    short what = (event_base_get_features(base) & EV_FEATURE_EARLY_CLOSE) ? EV_CLOSED : EV_READ;
    req->watch = event_new(base, fd, what, on_peer_closed, req);
    if (req->watch != NULL)
        event_add(req->watch, NULL); /* without it, a disconnect is noticed at the reply */
}

static void unwatch_peer(bt_http_req *req)
{
    if (req->watch != NULL) {
        event_free(req->watch);
        req->watch = NULL;
    }
}

/* Watching a socket costs two epoll_ctl calls, a noticeable share of a
 * request that takes a few microseconds. So a request is watched only once
 * it has been in flight for SWEEP_MS: a timer that runs while requests are
 * in flight arms the watch of every request older than that. The list is
 * newest first, and each sweep watches every request old enough, so the
 * sweep stops at the first one already watched. A client that leaves is
 * noticed within about 2 * SWEEP_MS. */
static void on_sweep(bt_timer *t, void *arg)
{
    bt_http_server *srv = arg;
    if (srv->nflight == 0) {
        bt_timer_stop(t);
        return;
    }
    uint64_t now = bt_hrtime();
    bt__list *pos;
    BT__LIST_FOREACH (pos, &srv->inflight) {
        bt_http_req *req = BT__LIST_ENTRY(pos, bt_http_req, link);
        if (now - req->start_ns < SWEEP_MS * 1000000ull)
            continue;
        if (req->watched)
            break;
        if (req->ev != NULL && !req->disconnected)
            watch_peer(srv, req);
        else
            req->watched = true;
    }
}

static void dispatch(struct evhttp_request *ev, void *arg)
{
    bt_http_server *srv = arg;
    bt_http_app *app = srv->app;
    uint64_t t0 = bt_hrtime();
    const char *method = method_name(evhttp_request_get_command(ev));
    int status = 503;
    const char *msg = "service unavailable";
    char *allow = NULL;
    bt_http_req *req = NULL;
    bt__match m;
    if (srv->shutting_down)
        goto reject;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(ev);
    const char *raw_path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;

    if (app->metrics_path != NULL && raw_path != NULL && strcmp(raw_path, app->metrics_path) == 0 &&
        (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)) {
        char *text = bt__http_metrics_render(app);
        bt_http_reply *r = bt_http_reply_new(text != NULL ? 200 : 500);
        if (r != NULL && text != NULL)
            bt_http_reply_set_body(r, "text/plain; version=0.0.4", text, strlen(text));
        bt_free(text);
        if (r != NULL)
            send_response(srv, ev, r, t0);
        else
            evhttp_send_reply(ev, 500, NULL, NULL);
        bt_http_reply_free(r);
        return;
    }

    req = bt_calloc(1, sizeof *req);
    if (req == NULL)
        goto reject;
    req->method = method;
    req->loop = srv->loop;
    req->loop_data = srv->loop_data;
    req->start_ns = t0;
    int rc = bt__http_req_split_path(req, raw_path);
    if (rc == BT_EINVAL) {
        status = 400;
        msg = "bad request";
        goto reject;
    }
    if (rc == 0)
        rc = bt__router_match(&app->router, method, req->segs, req->nsegs, &m);
    if (rc == 0 && m.route == NULL) {
        allow = m.allow;
        status = m.path_matched ? 405 : 404;
        msg = m.path_matched ? "method not allowed" : "not found";
        goto reject;
    }
    if (rc == 0)
        rc = bt__http_req_copy(req, ev);
    if (rc != 0)
        goto reject; /* out of memory: 503 */
    unsigned now = atomic_fetch_add_explicit(&app->in_flight, 1, memory_order_relaxed);
    if (now >= app->max_concurrent) {
        atomic_fetch_sub_explicit(&app->in_flight, 1, memory_order_relaxed);
        msg = "too many requests in flight";
        goto reject;
    }
    for (size_t i = 0; i < m.nparams; i++) {
        req->pnames[i] = m.names[i];
        req->pvalues[i] = m.values[i];
    }
    req->nparams = m.nparams;
    req->ev = ev;
    req->srv = srv;
    bt__list_push_front(&srv->inflight, &req->link);
    srv->nflight++;
    atomic_store_explicit(&srv->stats->in_flight, srv->nflight, memory_order_relaxed);

    bt_future *f;
    if (m.route->fiber) {
        /* The fiber's entry finds handler and arg through req: no block of
         * its own per request. bt_async's future adopts the handler's, and
         * cancelling it (client gone, handler timeout, shutdown) makes the
         * handler's pending bt_await return BT_ECANCELED. */
        req->route = m.route;
        f = bt_async(srv->loop, fiber_entry, req);
        if (f == NULL)
            bt_log(BT_LOG_ERROR, "http: %s %s: no fiber for the handler (out of memory?)",
                   req->method, req->path);
    } else {
        bt_loop_enter_cb(srv->loop, (const void *)m.route->handler);
        f = m.route->handler(req, m.route->arg);
        bt_loop_leave_cb(srv->loop);
    }
    if (f == NULL) {
        bt_log(BT_LOG_ERROR, "http: %s %s: handler returned no future", req->method, req->path);
        f = bt_future_new_error(srv->loop, BT_ENOMEM, "handler returned NULL");
        if (f == NULL) {
            list_remove(srv, req);
            bt__http_req_free(req);
            send_simple(srv, ev, 500, "internal server error", NULL, t0);
            return;
        }
        bt_future_error(f); /* logged above */
    }
    req->fut = f;
    if (bt_future_is_settled(f)) {
        /* A handler that answered at once (bt_http_respond...): reply now
         * rather than a loop pass later. on_done is the server's own code,
         * not a callback of the caller's, so nothing runs re-entrantly. */
        on_done(f, req);
        return;
    }
    if (srv->app->handler_timeout_ms) {
        /* A fiber route keeps its fiber's future: req must outlive the
         * fiber, which ends after the timeout's future settles. */
        if (m.route->fiber)
            req->fiber = bt_future_ref(f);
        /* bt_timeout takes over f; out of memory, it cancels f. */
        req->fut = f = bt_timeout(f, srv->app->handler_timeout_ms);
        if (f == NULL) {
            list_remove(srv, req);
            bt__http_req_free(req);
            send_simple(srv, ev, 500, "internal server error", NULL, t0);
            return;
        }
    }
    if (bt_future_add_callback(f, on_done, req) != 0) {
        /* Out of memory: answer now and drop the handler's work. */
        list_remove(srv, req);
        bt_future_cancel(f);
        bt_future_error(f);
        req_release(req);
        send_simple(srv, ev, 500, "internal server error", NULL, t0);
        return;
    }
    if (!bt_timer_is_active(srv->sweep))
        bt_timer_start(srv->sweep, SWEEP_MS, SWEEP_MS);
    return;

reject:
    /* Every refusal before a handler runs ends here: nothing is kept. */
    if (req != NULL)
        bt__http_req_free(req);
    send_simple(srv, ev, status, msg, allow, t0);
    bt_free(allow);
}

/* ---- Life ------------------------------------------------------------------ */

bool bt__http_server_conn_busy(bt_http_server *srv, const struct bufferevent *bev)
{
    bt__list *pos;
    BT__LIST_FOREACH (pos, &srv->inflight) {
        bt_http_req *req = BT__LIST_ENTRY(pos, bt_http_req, link);
        if (req->ev != NULL && !req->disconnected && req->bev == bev)
            return true;
    }
    return false;
}

static void close_listeners(bt_http_server *srv)
{
    if (srv->guard_ready)
        bt__guard_forget_listeners(&srv->guard);
    for (size_t i = 0; i < srv->nlisteners; i++)
        evhttp_del_accept_socket(srv->http, srv->listeners[i]);
    srv->nlisteners = 0;
}

/* Detach every request, cancel its handler, close every connection. */
static void server_close(bt_http_server *srv)
{
    if (srv->closed)
        return;
    srv->closed = true;
    srv->shutting_down = true;
    bt__list *pos, *tmp;
    BT__LIST_FOREACH_SAFE (pos, tmp, &srv->inflight) {
        bt_http_req *req = BT__LIST_ENTRY(pos, bt_http_req, link);
        unwatch_peer(req);
        req->ev = NULL; /* evhttp_free frees it with its connection */
        req->srv = NULL;
        list_remove(srv, req);
        atomic_fetch_add_explicit(&srv->stats->cancelled, 1, memory_order_relaxed);
        bt_future_cancel(req->fut);
    }
    close_listeners(srv);
    evhttp_free(srv->http);
    srv->http = NULL;
    bt__guard_close(&srv->guard);
    bt_timer_free(srv->deadline);
    srv->deadline = NULL;
    bt_timer_free(srv->lag_timer);
    srv->lag_timer = NULL;
    bt_timer_free(srv->sweep);
    srv->sweep = NULL;
    if (srv->shutdown_f != NULL) {
        bt_future_set_value(srv->shutdown_f, NULL, NULL);
        bt_future_unref(srv->shutdown_f);
        srv->shutdown_f = NULL;
    }
}

static void on_loop_close(void *arg)
{
    server_close(arg);
}

static void on_lag_timer(bt_timer *t, void *arg)
{
    bt_http_server *srv = arg;
    (void)t;
    uint64_t now = bt_hrtime();
    uint64_t expect = srv->lag_last_ns + LAG_PERIOD_MS * 1000000ull;
    uint64_t lag_us = now > expect ? (now - expect) / 1000 : 0;
    srv->lag_last_ns = now;
    atomic_store_explicit(&srv->stats->lag_us, lag_us, memory_order_relaxed);
    if (lag_us > atomic_load_explicit(&srv->stats->lag_max_us, memory_order_relaxed))
        atomic_store_explicit(&srv->stats->lag_max_us, lag_us, memory_order_relaxed);
    bt_loop_stats ls = BT_SIZED(bt_loop_stats);
    if (bt_loop_get_stats(srv->loop, &ls) == 0)
        atomic_store_explicit(&srv->stats->pending, ls.pending, memory_order_relaxed);
}

static void on_deadline(bt_timer *t, void *arg)
{
    bt_http_server *srv = arg;
    (void)t;
    bt__list *pos;
    BT__LIST_FOREACH (pos, &srv->inflight)
        bt_future_cancel(BT__LIST_ENTRY(pos, bt_http_req, link)->fut); /* on_done answers 503 */
}

/* evhttp writes responses with plain write(2): a client that hangs up
 * before the response is out would kill the process with SIGPIPE. Ignore
 * it, unless the program has chosen a disposition of its own (several
 * servers starting at once may both set it: the same value). */
static void sigpipe_ignore(void)
{
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        sa.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &sa, NULL);
    }
}

BT_EXPORT bt_http_server *bt_http_server_new(bt_loop *loop, bt_http_app *app)
{
    if (loop == NULL || app == NULL)
        return NULL;
    sigpipe_ignore();
    bt_http_server *srv = bt_calloc(1, sizeof *srv);
    if (srv == NULL)
        return NULL;
    srv->loop = loop;
    srv->app = app;
    srv->port = BT_EINVAL;
    bt__list_init(&srv->inflight);
    srv->read_tv = bt__timeval_ms(app->read_timeout_ms);
    srv->write_tv = bt__timeval_ms(app->write_timeout_ms);
    srv->stats = bt_calloc(1, sizeof *srv->stats);
    srv->http = evhttp_new(bt_loop_base(loop));
    srv->deadline = bt_timer_new(loop, on_deadline, srv);
    srv->sweep = bt_timer_new(loop, on_sweep, srv);
    if (srv->stats == NULL || srv->http == NULL || srv->deadline == NULL || srv->sweep == NULL)
        goto fail;
    if (bt__guard_init(&srv->guard, srv, app, bt_loop_base(loop), srv->stats) != 0)
        goto fail;
    srv->guard_ready = true;
    evhttp_set_bevcb(srv->http, bt__guard_bevcb, &srv->guard);
    if (app->metrics_path != NULL) {
        srv->lag_timer = bt_timer_new(loop, on_lag_timer, srv);
        if (srv->lag_timer == NULL)
            goto fail;
    }
    evhttp_set_gencb(srv->http, dispatch, srv);
    evhttp_set_allowed_methods(srv->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    /* The guard holds a head until it is complete and refuses one longer
     * than max_header_bytes (431) before evhttp sees it; evhttp's own
     * limit, which answers 400 in HTML, is set above it. */
    evhttp_set_max_headers_size(srv->http, (ev_ssize_t)app->max_header_bytes * 2 + 1024);
    evhttp_set_max_body_size(srv->http, (ev_ssize_t)app->max_body_bytes);
    evhttp_set_timeout_tv(srv->http, &srv->read_tv);
    if (bt_loop_add_closer(loop, on_loop_close, srv) != 0)
        goto fail;
    if (app->init != NULL) {
        int rc = app->init(loop, app->hook_arg, &srv->loop_data);
        if (rc != 0) {
            bt_log(BT_LOG_ERROR, "http: the app's loop init hook failed: %s", bt_strerror(rc));
            bt_loop_remove_closer(loop, on_loop_close, srv);
            goto fail;
        }
    }
    srv->stats->loop_index = atomic_fetch_add(&app->next_index, 1);
    pthread_mutex_lock(&app->stats_lock);
    srv->stats->next = app->stats;
    app->stats = srv->stats;
    pthread_mutex_unlock(&app->stats_lock);
    atomic_fetch_add(&app->servers, 1);
    if (srv->lag_timer != NULL) {
        srv->lag_last_ns = bt_hrtime();
        bt_timer_start(srv->lag_timer, LAG_PERIOD_MS, LAG_PERIOD_MS);
    }
    return srv;
fail:
    if (srv->http != NULL)
        evhttp_free(srv->http);
    if (srv->guard_ready)
        bt__guard_close(&srv->guard);
    bt_timer_free(srv->deadline);
    bt_timer_free(srv->sweep);
    bt_timer_free(srv->lag_timer);
    bt_free(srv->stats);
    bt_free(srv);
    return NULL;
}

/* One socket bound to host:port with SO_REUSEADDR and SO_REUSEPORT (the
 * first address that binds), listening and non-blocking if listening is
 * set: bt_http_server_listen's, and the supervisor's port reservation
 * (workers.c), which binds without listening. Returns the fd and sets
 * *bound to the port, or a negative BT_E* code. */
int bt__http_bind(const char *host, int port, bool listening, int *bound)
{
    struct addrinfo hints = { 0 }, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int gai = getaddrinfo(host, portstr, &hints, &res);
    if (gai != 0)
        return gai == EAI_MEMORY ? BT_ENOMEM : BT_EINVAL;
    int rc = BT_EINVAL;
    int fd = -1;
    int type = SOCK_CLOEXEC | (listening ? SOCK_NONBLOCK : 0);
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | type, ai->ai_protocol);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
            bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || (listening && listen(fd, 1024) != 0)) {
            rc = -errno;
            close(fd);
            fd = -1;
            continue;
        }
        rc = 0;
        break;
    }
    freeaddrinfo(res);
    if (rc != 0)
        return rc;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    *bound = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                      : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

BT_EXPORT int bt_http_server_listen(bt_http_server *srv, const char *host, int port)
{
    if (srv == NULL || host == NULL || port < 0 || port > 65535 || srv->closed)
        return BT_EINVAL;
    if (srv->nlisteners == MAX_LISTENERS || srv->shutting_down)
        return BT_EBUSY;
    int bound = -1;
    int fd = bt__http_bind(host, port, true, &bound);
    if (fd < 0)
        return fd;
    struct evhttp_bound_socket *bs = evhttp_accept_socket_with_handle(srv->http, fd);
    if (bs == NULL) {
        close(fd);
        return BT_ENOMEM;
    }
    int rc = bt__guard_add_listener(&srv->guard, evhttp_bound_socket_get_listener(bs));
    if (rc != 0) {
        evhttp_del_accept_socket(srv->http, bs);
        return rc;
    }
    srv->listeners[srv->nlisteners++] = bs;
    if (srv->port < 0)
        srv->port = bound;
    return 0;
}

BT_EXPORT int bt_http_server_port(const bt_http_server *srv)
{
    return srv != NULL ? srv->port : BT_EINVAL;
}

BT_EXPORT unsigned bt_http_server_in_flight(const bt_http_server *srv)
{
    return srv != NULL ? srv->nflight : 0;
}

BT_EXPORT bt_future *bt_http_server_shutdown(bt_http_server *srv, uint64_t deadline_ms)
{
    if (srv == NULL)
        return NULL;
    if (srv->closed)
        return bt_future_new_value(srv->loop, NULL, NULL);
    if (srv->shutdown_f != NULL)
        return bt_future_ref(srv->shutdown_f);
    srv->shutdown_f = bt_future_new(srv->loop);
    if (srv->shutdown_f == NULL)
        return NULL;
    srv->shutting_down = true;
    close_listeners(srv);
    if (srv->nflight == 0)
        bt_future_set_value(srv->shutdown_f, NULL, NULL);
    else
        bt_timer_start(srv->deadline, deadline_ms, 0);
    return bt_future_ref(srv->shutdown_f);
}

BT_EXPORT void bt_http_server_free(bt_http_server *srv)
{
    if (srv == NULL)
        return;
    bool loop_alive = !srv->closed;
    if (loop_alive) {
        server_close(srv);
        bt_loop_remove_closer(srv->loop, on_loop_close, srv);
    }
    bt_http_app *app = srv->app;
    if (app->fini != NULL)
        app->fini(loop_alive ? srv->loop : NULL, srv->loop_data, app->hook_arg);
    pthread_mutex_lock(&app->stats_lock);
    for (bt__http_stats **pp = &app->stats; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == srv->stats) {
            *pp = srv->stats->next;
            break;
        }
    }
    pthread_mutex_unlock(&app->stats_lock);
    atomic_fetch_sub(&app->servers, 1);
    bt_free(srv->stats);
    bt_free(srv);
}
