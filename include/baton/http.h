/* Baton: an HTTP server on libevent's evhttp whose handlers return futures
 * (libbaton-http; pkg-config baton-http).
 *
 * The shape is FastAPI's: an app holds routes like `GET /user/{id}`; a
 * handler receives the request and returns a future of a response, so it
 * can query PostgreSQL, call another service and offload CPU work before it
 * answers. The server answers 404 when no route matches the path, 405 (with
 * an Allow header) when a route matches the path but not the method, 500
 * with a short body when a handler fails (the error is logged, never sent),
 * 504 when a handler runs past the app's handler timeout or fails with
 * BT_ETIMEDOUT, 503 when the cap on concurrent requests or on open
 * connections is reached or the server is shutting down.
 *
 * Before a handler sees a request, the server frames it strictly (RFC 9112
 * section 6.3) and answers, then closes the connection: 400 for a
 * malformed request line or header line, obs-fold (a header line starting
 * with a space or tab), more than one Content-Length or a Content-Length
 * that is not plain digits, Transfer-Encoding beside Content-Length, a
 * Transfer-Encoding other than exactly "chunked", an invalid chunk size,
 * a HEAD request with a body; 408 when the head or the body comes too
 * slowly; 413 when the body is too large; 417 for an Expect other than
 * 100-continue; 431 when the head is too large; 501 for a method the
 * server does not implement; 505 for an HTTP version other than 1.x.
 * Every answer the server makes itself has the body {"error": "..."}.
 * When accept() fails (out of file descriptors: EMFILE, ENFILE), the
 * server stops accepting for 250 ms and logs one line per 10 s, rather
 * than retrying at once.
 *
 *   bt_http_app *app = bt_http_app_new();
 *   bt_http_app_route(app, "GET", "/user/{id}", get_user, NULL);
 *   return bt_http_app_run(app, "0.0.0.0", 8000); // until SIGINT/SIGTERM
 *
 * Two ways to serve:
 * - bt_http_app_run: several loops (one per core by default), each with a
 *   server accepting on the same port (SO_REUSEPORT), until SIGINT or
 *   SIGTERM, then a graceful shutdown. Per-loop resources (a PostgreSQL
 *   pool, an HTTP client) are made by the app's loop hooks.
 * - bt_http_server_new + bt_http_server_listen: one server on a loop the
 *   caller runs, for tests and for programs that own their loops.
 *
 * Names: the server's side of an exchange is bt_http_req (the request it
 * received) and bt_http_reply (the answer a handler gives), so that a
 * handler can use the HTTP client's bt_http_request / bt_http_response
 * (<baton/curl.h>) in the same file.
 *
 * Threads: an app is configured from one thread before it serves, and is
 * read-only while any server uses it (servers on several loops share it).
 * A server, its requests and responses belong to the server's loop thread.
 */
#ifndef BATON_HTTP_H
#define BATON_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <baton/common.h>
#include <baton/future.h>
#include <baton/loop.h>
#include <baton/pool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bt_http_app bt_http_app;
typedef struct bt_http_server bt_http_server;
typedef struct bt_http_req bt_http_req;
typedef struct bt_http_reply bt_http_reply;

/* A handler. req is borrowed and valid until the returned future settles
 * (copy what you need past that). Returns a future (new reference) whose
 * value is a bt_http_reply * with bt_http_reply_free as destructor
 * (bt_http_respond* make one). A future that fails, or a NULL return,
 * answers 500 and logs the error; a future that is cancelled (the client
 * went away, or shutdown reached its deadline) answers nothing or 503.
 * Runs on the server's loop thread. */
typedef bt_future *(*bt_http_handler_fn)(bt_http_req *req, void *arg);

/* ---- The app: routes and settings -------------------------------------- */

/* A new app with no routes and the default limits (see the setters).
 * Returns: new, free with bt_http_app_free; NULL when out of memory.
 * Thread: any. */
BT_EXPORT bt_http_app *bt_http_app_new(void);

/* Free the app. Every server made from it must be freed first.
 * NULL is a no-op. Thread: the one that configured it. */
BT_EXPORT void bt_http_app_free(bt_http_app *app);

/* Route method + pattern to handler(req, arg). method is an HTTP method in
 * capitals ("GET", "POST", ...). pattern is an absolute path whose segments
 * are literal or a parameter in braces: "/user/{id}", "/a/{x}/b/{y}". A
 * literal segment beats a parameter (so "/user/me" wins over "/user/{id}"
 * whatever the order they were added in); otherwise the first route added
 * wins. A GET route also answers HEAD. Parameters are percent-decoded
 * before the handler sees them.
 * Returns 0, BT_EINVAL (NULL argument, pattern not starting with '/', an
 * empty or unclosed "{}", a duplicate method + pattern), BT_ENOMEM,
 * BT_EBUSY once a server uses the app. Thread: the configuring one. */
BT_EXPORT int bt_http_app_route(bt_http_app *app, const char *method, const char *pattern,
                                bt_http_handler_fn handler, void *arg);

/* Like bt_http_app_route, but the handler runs on a fiber of the server's
 * loop (bt_async, include/baton/fiber.h), so it may bt_await and read top
 * to bottom:
 *
 *     static bt_future *get_user(bt_http_req *req, void *arg)
 *     {
 *         bt_loop *loop = bt_http_req_loop(req);
 *         bt_pq_result *r;
 *         if (bt_await(bt_pq_query(pool, sql, 1, params), (void **)&r) != 0)
 *             return bt_future_new_error(loop, BT_EIO, "%s", bt_await_error());
 *         ...
 *         return bt_http_respond_json(loop, 200, body);
 *     }
 *
 * Same handler signature and outcomes as a plain route (its returned
 * future answers; a failure is a 500, a timeout a 504). The fiber starts
 * on the loop turn after the request was read. Cancelling the handler (the
 * client went away, the handler timeout, shutdown) cancels the fiber: its
 * pending bt_await and every later one return BT_ECANCELED, and the
 * handler should return at once (whatever it returns is dropped). req stays
 * valid until the handler has returned, even after a timeout answered.
 * Costs one fiber per request in flight (a stack from the loop's cache, see
 * bt_loop_set_fiber_stack), no allocation of its own.
 * Returns: as bt_http_app_route. Thread: the configuring one. */
BT_EXPORT int bt_http_app_route_async(bt_http_app *app, const char *method, const char *pattern,
                                      bt_http_handler_fn handler, void *arg);

/* Limits. Each returns 0, BT_EINVAL (NULL app or a zero value) or BT_EBUSY
 * once a server uses the app.
 * - max_header_bytes: the request line and headers (default 16 KiB);
 *   beyond it the request is refused with 431.
 * - max_body_bytes: the body (default 1 MiB); beyond it, 413.
 * - read_timeout_ms: the longest wait for a request's bytes, and for the
 *   next request on an idle keep-alive connection (default 30 s).
 * - write_timeout_ms: the longest wait to hand a response to the client
 *   (default 30 s).
 * - max_concurrent: requests in flight across all the app's servers
 *   (default 10000); beyond it the server answers 503 at once, without
 *   calling the handler. */
BT_EXPORT int bt_http_app_set_max_header_bytes(bt_http_app *app, size_t bytes);
BT_EXPORT int bt_http_app_set_max_body_bytes(bt_http_app *app, size_t bytes);
BT_EXPORT int bt_http_app_set_timeouts(bt_http_app *app, uint64_t read_timeout_ms,
                                       uint64_t write_timeout_ms);
BT_EXPORT int bt_http_app_set_max_concurrent(bt_http_app *app, unsigned max_concurrent);

/* Hostile clients. Each returns 0, BT_EINVAL (NULL app or a zero value) or
 * BT_EBUSY once a server uses the app.
 * - head_timeout_ms: a request head (request line and headers) must be
 *   complete within this time of its first byte (of the accept, for a
 *   connection's first request), however the client trickles it
 *   (slowloris); then the client gets 408 and the connection is closed.
 *   Default 15 s. An idle keep-alive connection is governed by the read
 *   timeout instead.
 * - min_body_rate: a request body may take grace_ms, plus one second per
 *   bytes_per_s bytes received so far; a body that falls behind gets 408
 *   and the connection is closed. Default 1024 bytes a second after 15 s.
 * - max_connections: open connections across all the app's servers
 *   (default 10000). A connection beyond it is answered 503 (JSON,
 *   Retry-After: 1) and closed; one log line per 10 s counts them. */
BT_EXPORT int bt_http_app_set_head_timeout(bt_http_app *app, uint64_t ms);
BT_EXPORT int bt_http_app_set_min_body_rate(bt_http_app *app, uint64_t bytes_per_s,
                                            uint64_t grace_ms);
BT_EXPORT int bt_http_app_set_max_connections(bt_http_app *app, unsigned max_connections);

/* TLS. Serve HTTPS with the certificate chain in cert_file (PEM: the
 * server's certificate first, then the intermediates) and the private key
 * in key_file (PEM), both read now. TLS 1.2 and later only; ALPN answers
 * http/1.1 (a client that offers ALPN without it is refused). The
 * handshake counts against head_timeout_ms: a client that connects and
 * does not finish it in time is closed. A client speaking plain HTTP to
 * the port is closed (logged at BT_LOG_DEBUG).
 * Returns 0; BT_EINVAL for a NULL argument, a file that cannot be read, a
 * certificate or key that OpenSSL refuses, or a key that does not match
 * the certificate (each logged, naming the file and OpenSSL's reason);
 * BT_ENOTSUP when libbaton-http was built without OpenSSL; BT_ENOMEM;
 * BT_EBUSY once a server uses the app. A second call replaces the files.
 * Thread: the configuring one. */
BT_EXPORT int bt_http_app_set_tls(bt_http_app *app, const char *cert_file, const char *key_file);

/* Read the files given to bt_http_app_set_tls again (a renewed
 * certificate): new handshakes use them from now on, open connections
 * keep theirs and are not dropped. bt_http_app_run calls it on SIGHUP.
 * Returns 0; BT_EINVAL for a NULL app, an app without TLS, or files that
 * do not load (logged as for bt_http_app_set_tls; the certificate loaded
 * before keeps serving); BT_ENOTSUP without OpenSSL; BT_ENOMEM.
 * Thread: any, at any time while the app lives. */
BT_EXPORT int bt_http_app_reload_tls(bt_http_app *app);

/* A deadline for every handler: a handler's future still pending after ms
 * milliseconds is cancelled (so is the work it waits on) and the client
 * gets 504. 0 (the default) means none. Whatever the deadline, a handler
 * that fails with BT_ETIMEDOUT (an upstream or query timeout) answers 504
 * rather than 500. Returns 0, BT_EINVAL, BT_EBUSY. */
BT_EXPORT int bt_http_app_set_handler_timeout(bt_http_app *app, uint64_t ms);

/* Log one line per answered request at BT_LOG_INFO (off by default):
 * `http: 127.0.0.1 "GET /user/42" 200 1.234 ms`. The log handler's level
 * must let INFO through (bt_log_set_level). Returns 0, BT_EINVAL,
 * BT_EBUSY. */
BT_EXPORT int bt_http_app_set_access_log(bt_http_app *app, bool on);

/* How many loops bt_http_app_run starts: 0 (the default) means one per
 * online core; at most 1024. Returns 0, BT_EINVAL (NULL app, more than
 * 1024), BT_EBUSY. */
BT_EXPORT int bt_http_app_set_loops(bt_http_app *app, unsigned loops);

/* Serve with worker processes: bt_http_app_run forks `processes` workers
 * (0: one per online CPU; at most 1024), each with its own loops (loops
 * defaults to 1 per worker then), servers, init hooks and offload pool,
 * all accepting on one port through SO_REUSEPORT. The calling process
 * becomes their supervisor and runs no loop: it restarts a worker that
 * dies (see bt_http_app_set_restart_limit), and on SIGINT or SIGTERM (or
 * bt_http_app_stop) sends SIGTERM to every worker, which shuts down
 * gracefully, and SIGKILLs those still alive after the shutdown deadline
 * plus 5 s. Without this call bt_http_app_run serves in the calling
 * process; with it, even processes = 1 runs one supervised worker.
 * fork copies only the calling thread, so bt_http_app_run refuses
 * (BT_EBUSY, logged) when the process already runs other threads: create
 * threads, pools (bt_pool_default) and loops in the init hook or on first
 * use in a worker, never before bt_http_app_run.
 * Returns 0, BT_EINVAL (NULL app, more than 1024), BT_EBUSY.
 * Thread: the configuring one. */
BT_EXPORT int bt_http_app_set_processes(bt_http_app *app, unsigned processes);

/* How often a dead worker is restarted: at most max_restarts times within
 * window_ms per worker slot (default 5 in 10 s), each restart after a
 * backoff that doubles from 100 ms (up to 5 s) while the slot keeps dying;
 * past the limit the slot is given up (logged). 0 never restarts.
 * Returns 0, BT_EINVAL (NULL app, window_ms 0), BT_EBUSY. */
BT_EXPORT int bt_http_app_set_restart_limit(bt_http_app *app, unsigned max_restarts,
                                            uint64_t window_ms);

/* Which worker process this is: 1..n in worker n (stable across its
 * restarts), 0 in the supervisor or without worker processes. Its
 * metrics carry it as the label worker="n". Thread: any. */
BT_EXPORT unsigned bt_http_app_worker(const bt_http_app *app);

/* How long a graceful shutdown lets in-flight requests run before it
 * cancels them (default 10 s). Returns 0, BT_EINVAL, BT_EBUSY. */
BT_EXPORT int bt_http_app_set_shutdown_deadline(bt_http_app *app, uint64_t ms);

/* Serve Prometheus text metrics at GET path (say "/metrics"): requests by
 * status, a latency histogram, requests in flight, per-loop lag, and the
 * loops' pending futures. The counters span every server of the app.
 * Returns 0, BT_EINVAL, BT_ENOMEM, BT_EBUSY. */
BT_EXPORT int bt_http_app_enable_metrics(bt_http_app *app, const char *path);

/* Extra metric lines, appended to the metrics route's answer: fn is called
 * on the scraping loop's thread and returns a new string (bt_malloc'd, in
 * Prometheus text format, freed by the server) or NULL. The offload pool's
 * stats are added this way. Returns 0, BT_EINVAL, BT_EBUSY. */
typedef char *(*bt_http_metrics_fn)(void *arg);
BT_EXPORT int bt_http_app_add_metrics(bt_http_app *app, bt_http_metrics_fn fn, void *arg);

/* Add the offload pool's stats to the metrics route: per lane, threads,
 * busy threads, queued jobs, and counters of jobs submitted, done, failed,
 * cancelled and rejected, and time spent queued and running, labelled
 * pool=name. pool must outlive the app's servers. Returns 0, BT_EINVAL,
 * BT_ENOMEM, BT_EBUSY. */
BT_EXPORT int bt_http_app_add_pool_metrics(bt_http_app *app, bt_pool *pool, const char *name);

/* Per-loop hooks: init(loop, arg, &data) runs on each server's loop thread
 * when the server is made (bt_http_server_new), before it accepts; it
 * returns 0 or a negative BT_E* code, which fails bt_http_server_new. The
 * data it sets is what bt_http_req_loop_data returns. fini(loop, data,
 * arg) runs in bt_http_server_free, after the server has stopped and its
 * requests have settled. Either may be NULL. Returns 0, BT_EINVAL, BT_EBUSY. */
typedef int (*bt_http_loop_init_fn)(bt_loop *loop, void *arg, void **data);
typedef void (*bt_http_loop_fini_fn)(bt_loop *loop, void *data, void *arg);
BT_EXPORT int bt_http_app_on_loop(bt_http_app *app, bt_http_loop_init_fn init,
                                  bt_http_loop_fini_fn fini, void *arg);

/* Serve on host:port with the configured number of loops, each on its own
 * thread with its own server, all accepting on the port through
 * SO_REUSEPORT, until SIGINT or SIGTERM (or bt_http_app_stop). Then, on
 * every loop: stop accepting, let in-flight requests finish within the
 * shutdown deadline, cancel the rest, free the servers (fini hooks) and
 * the loops.
 * Signals: while it runs, SIGINT and SIGTERM have a handler that asks for
 * the shutdown (the previous actions are restored on return), and the
 * loop threads start with both blocked. Threads the program started
 * before (the offload pool's workers) may receive them harmlessly. One
 * bt_http_app_run per process at a time should rely on signals. With TLS
 * set, SIGHUP has a handler too: the calling thread then reloads the
 * certificate (bt_http_app_reload_tls) and goes on serving.
 * A bt_http_app_stop made before the call starts is ignored.
 * If on_ready is not NULL it is called once, on the calling thread, when
 * every loop accepts, with the bound port (useful with port 0).
 * Returns 0 after a graceful shutdown; BT_EINVAL (NULL, bad host),
 * BT_EADDRINUSE or another bind error, BT_ENOMEM (also when a loop's init
 * hook failed; its error is logged), BT_EBUSY (already running).
 * With worker processes (bt_http_app_set_processes), on_ready runs in the
 * supervisor once every worker accepts (it must not start threads: the
 * supervisor forks restarted workers, and a worker that would be forked
 * from a threaded supervisor is given up, with an error logged), and it returns 0 once every
 * worker exited 0 after the stop; BT_ETIMEDOUT if some had to be killed
 * at the deadline; BT_EIO if a worker failed its shutdown, or if every
 * slot was given up (each kept dying: see the log); BT_EBUSY if the
 * process runs other threads. It then returns in the supervisor only:
 * a worker leaves with _exit (status 0 after a graceful shutdown) and
 * never returns into the caller's code.
 * Thread: any. */
typedef void (*bt_http_ready_fn)(int port, void *arg);
BT_EXPORT int bt_http_app_run(bt_http_app *app, const char *host, int port,
                              bt_http_ready_fn on_ready, void *ready_arg);

/* Ask a running bt_http_app_run to shut down gracefully, as SIGTERM does.
 * Returns 0, or BT_EINVAL if app is NULL. Thread: any (async-signal-safe). */
BT_EXPORT int bt_http_app_stop(bt_http_app *app);

/* ---- One server on one loop -------------------------------------------- */

/* A server for app on loop: runs the app's init hook, then is ready to
 * listen. The app must outlive the server. Making a server sets
 * SIGPIPE to be ignored if its disposition is still the default (evhttp
 * writes with write(2), and a client hanging up mid-response would
 * otherwise kill the process).
 * Returns: new, free with bt_http_server_free; NULL on failure (a NULL
 * loop or app, out of memory, or the init hook failed, in which case
 * nothing is left behind).
 * Thread: the loop's. */
BT_EXPORT bt_http_server *bt_http_server_new(bt_loop *loop, bt_http_app *app);

/* Listen on host:port (an IPv4 or IPv6 literal, or "localhost"; port 0
 * picks a free one) with SO_REUSEADDR and SO_REUSEPORT, so that servers on
 * other loops may listen on the same port. May be called more than once,
 * for up to 8 sockets. Returns 0, BT_EINVAL (a NULL argument, a port
 * outside 0..65535, a server whose loop was freed), BT_EBUSY (8 sockets
 * already, or bt_http_server_shutdown has begun), BT_EADDRINUSE,
 * BT_EACCES, BT_ENOMEM or another -errno from socket/bind/listen.
 * Thread: the loop's. */
BT_EXPORT int bt_http_server_listen(bt_http_server *srv, const char *host, int port);

/* The port the first listening socket is bound to, or BT_EINVAL if none
 * is or for a NULL server. Thread: the loop's. */
BT_EXPORT int bt_http_server_port(const bt_http_server *srv);

/* Graceful shutdown: stop accepting, answer new requests on open
 * connections with 503 and close them, let in-flight requests finish for
 * up to deadline_ms, then cancel the rest. Returns: a future (new
 * reference) that settles with a NULL value once no request is in flight;
 * NULL for a NULL server, when out of memory, or once bt_loop_free has
 * begun. A second call returns a future of the same shutdown. Call it
 * while the loop lives (unlike bt_http_server_free). Thread: the loop's. */
BT_EXPORT bt_future *bt_http_server_shutdown(bt_http_server *srv, uint64_t deadline_ms);

/* Requests in flight on this server now; 0 for NULL. Thread: the loop's. */
BT_EXPORT unsigned bt_http_server_in_flight(const bt_http_server *srv);

/* Free the server: stop accepting, cancel the handlers still in flight
 * (their futures settle cancelled; their clients are disconnected), close
 * every connection, run the fini hook. If the loop is freed first, its
 * closer does all of that except the fini hook and the server's memory,
 * which bt_http_server_free (called after bt_loop_free) still releases.
 * NULL is a no-op. Thread: the loop's. */
BT_EXPORT void bt_http_server_free(bt_http_server *srv);

/* ---- The request received (borrowed by the handler) ----------------------
 * Thread: the server's loop, while the handler's future is pending. A NULL
 * req gives NULL (0 for a length). */

/* "GET", "POST", ... Returns: borrowed, valid while req is. */
BT_EXPORT const char *bt_http_req_method(const bt_http_req *req);
/* The decoded path, without the query. Returns: borrowed. */
BT_EXPORT const char *bt_http_req_path(const bt_http_req *req);
/* The path parameter name of the matched pattern ("id" for "{id}"),
 * decoded, or NULL. Returns: borrowed. */
BT_EXPORT const char *bt_http_req_param(const bt_http_req *req, const char *name);
/* The first query parameter name (decoded; '+' reads as a space), "" for a
 * key without a value, or NULL if absent. Returns: borrowed. */
BT_EXPORT const char *bt_http_req_query(const bt_http_req *req, const char *name);
/* A request header by case-insensitive name, or NULL. Returns: borrowed. */
BT_EXPORT const char *bt_http_req_header(const bt_http_req *req, const char *name);
/* The body (not NUL-terminated; len may be NULL) or NULL when empty.
 * Returns: borrowed. */
BT_EXPORT const void *bt_http_req_body(const bt_http_req *req, size_t *len);
/* The body parsed as JSON. Returns: new reference (json_decref), or NULL
 * if the body is empty or not JSON. */
BT_EXPORT json_t *bt_http_req_json(const bt_http_req *req);
/* The client's address as text ("127.0.0.1"), or "" once the client has
 * gone. Returns: borrowed. */
BT_EXPORT const char *bt_http_req_peer(const bt_http_req *req);
/* The loop the request runs on, and the data of the app's init hook for
 * that loop. Returns: borrowed. */
BT_EXPORT bt_loop *bt_http_req_loop(const bt_http_req *req);
BT_EXPORT void *bt_http_req_loop_data(const bt_http_req *req);

/* Attach the handler's own state to the request: dtor(state) runs once
 * the handler's future has settled and its callbacks have run, whatever
 * the outcome (a reply, a failure, or cancellation because the client
 * left). The steps of a chain may use the state freely until then, even
 * the steps that never run because the chain was cancelled. A second call
 * destroys the first state. Returns 0 or BT_EINVAL (NULL req). */
BT_EXPORT int bt_http_req_set_state(bt_http_req *req, void *state, bt_destroy_fn dtor);

/* ---- Replies: what a handler answers ------------------------------------
 * A reply touches no loop: it may be built on any thread (a worker job may
 * make one), by one thread at a time. */

/* A reply with status (100..599) and no body.
 * Returns: new, owned by the caller until handed to a future (then free
 * with nothing: the future's destructor does it); NULL on a bad status or
 * out of memory. Thread: any. */
BT_EXPORT bt_http_reply *bt_http_reply_new(int status);
/* Free a reply nobody handed to a future. Takes void * so that it is the
 * reply's bt_destroy_fn. NULL is a no-op. Thread: any. */
BT_EXPORT void bt_http_reply_free(void *resp);

/* Add a header (copied). An empty name, a name with ':', and names or
 * values with CR or LF are refused. Returns 0, BT_EINVAL (those, or a NULL
 * argument), BT_ENOMEM. */
BT_EXPORT int bt_http_reply_add_header(bt_http_reply *resp, const char *name, const char *value);
/* Set the body (copied; a second call replaces it) and, if content_type is
 * not NULL, the Content-Type (replacing any). Returns 0, BT_EINVAL,
 * BT_ENOMEM. */
BT_EXPORT int bt_http_reply_set_body(bt_http_reply *resp, const char *content_type,
                                     const void *body, size_t len);
/* Set a JSON body (compact) and Content-Type application/json (replacing
 * any body and Content-Type). json is borrowed. Returns 0, BT_EINVAL, BT_ENOMEM. */
BT_EXPORT int bt_http_reply_set_json(bt_http_reply *resp, const json_t *json);
/* The reply's status, or BT_EINVAL for NULL. */
BT_EXPORT int bt_http_reply_status(const bt_http_reply *resp);

/* Already-settled futures of a reply, for handlers:
 * - bt_http_respond: status and a body (copied; body may be NULL).
 * - bt_http_respond_json: status and json, which it steals (json_decref
 *   follows even on failure), so `bt_http_respond_json(loop, 200,
 *   json_pack(...))` leaks nothing; a NULL json (a json_pack that
 *   failed) gives a future failed with BT_EINVAL, logged, hence a 500.
 * - bt_http_respond_error: status and {"error": message}.
 * - bt_http_reply_future: wraps resp (taken, even on failure).
 * Returns: new reference, or NULL (a NULL loop, a status outside 100..599,
 * a NULL body with len > 0, a NULL resp, out of memory).
 * Thread: the loop's. */
BT_EXPORT bt_future *bt_http_respond(bt_loop *loop, int status, const char *content_type,
                                     const void *body, size_t len);
BT_EXPORT bt_future *bt_http_respond_json(bt_loop *loop, int status, json_t *json);
BT_EXPORT bt_future *bt_http_respond_error(bt_loop *loop, int status, const char *message);
BT_EXPORT bt_future *bt_http_reply_future(bt_loop *loop, bt_http_reply *resp);

#ifdef __cplusplus
}
#endif
#endif
