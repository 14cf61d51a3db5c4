/* A real HTTP server on 127.0.0.1 for the curl tests and benchmark: evhttp
 * on its own event_base, in a thread (curl_server_start) or a child process
 * (curl_server_fork). Not part of any library.
 *
 * Routes (port):
 *   /hello           "hello world\n"
 *   /echo            the request body back; X-Echo-Method, X-Echo-Uri, and
 *                    every request header as X-Req-<name>
 *   /status/N        status N, body "status N"
 *   /slow?ms=N       replies "slow" after N ms (counts replies in flight)
 *   /large?n=N       N bytes, byte i = 'a' + i % 26
 *   /redirect/N      302 to /redirect/N-1; /redirect/0 is 200 "done"
 *   /flaky?fail=N&code=C&ra=S&radate=S
 *                    the first N requests to /flaky (every one with N=-1;
 *                    N defaults to 1) get status C (503) with Retry-After:
 *                    S, or an HTTP-date S seconds ahead, if asked; the
 *                    later ones 200 with the request's body, or "ok"
 *                    (curl_server_flaky counts them)
 * drop_port: a raw socket that answers any request with a header promising
 *   100000 bytes, sends 1000 and resets the connection (SO_LINGER 0).
 * Raw peers that misbehave, one port each (any path):
 *   endless_port  a 200 without a length, then body bytes for ever
 *   silent_port   accepts and reads, never answers
 *   closing_port  a keep-alive 200 "ok" (Content-Length, no
 *                 "Connection: close"), then closes the connection
 *   stale_port    answers the first request on a connection like
 *                 closing_port but keeps it open; closes it unanswered
 *                 when a second request comes (the keep-alive race: the
 *                 server's idle close crossing the client's request)
 */
#ifndef BATON_TESTS_CURL_SERVER_H
#define BATON_TESTS_CURL_SERVER_H

#include <stdint.h>
#include <sys/types.h>

typedef struct curl_server curl_server;

/* Start in a new thread. Returns NULL on failure (with a message on
 * stderr). */
curl_server *curl_server_start(void);
void curl_server_stop(curl_server *s);

int curl_server_port(const curl_server *s);
int curl_server_drop_port(const curl_server *s);
int curl_server_endless_port(const curl_server *s);
int curl_server_silent_port(const curl_server *s);
int curl_server_closing_port(const curl_server *s);
int curl_server_stale_port(const curl_server *s);
/* Counts of a raw peer, by its port: connections accepted, request heads
 * received, connections open now. */
long curl_server_raw_accepted(const curl_server *s, int port);
long curl_server_raw_requests(const curl_server *s, int port);
long curl_server_raw_open(const curl_server *s, int port);

/* Server-side counts. */
long curl_server_accepted(const curl_server *s);  /* connections accepted */
long curl_server_open(const curl_server *s);      /* open now */
long curl_server_peak_open(const curl_server *s); /* most open at once */
long curl_server_requests(const curl_server *s);  /* requests received */
long curl_server_slow_active(const curl_server *s);
long curl_server_slow_peak(const curl_server *s);
long curl_server_slow_aborted(const curl_server *s); /* closed before reply */
long curl_server_flaky(const curl_server *s);        /* requests to /flaky */

/* A listener on 127.0.0.1 whose accept queue is full: a further SYN is
 * dropped, so a connect to b->port hangs until the client's connect
 * timeout. Returns 0, or -1 when it cannot be set up. */
typedef struct {
    int port;
    int lfd, fillers[4];
} curl_blackhole;
int curl_blackhole_open(curl_blackhole *b);
void curl_blackhole_close(curl_blackhole *b);

/* Run the server in a child process instead (benchmarks: its CPU use is
 * then its own). Returns the child's pid (or -1), and its port in *port. */
pid_t curl_server_fork(int *port);
/* The child's user+system CPU time so far, in seconds (from /proc). */
double curl_server_child_cpu(pid_t pid);
void curl_server_kill(pid_t pid);

#endif
