/* Baton: an async HTTP client on libcurl (libbaton-curl).
 *
 * The guide's httpx.AsyncClient / aiohttp.ClientSession, in C. A client owns
 * one curl multi handle driven by the loop's libevent base
 * (CURLMOPT_SOCKETFUNCTION, CURLMOPT_TIMERFUNCTION and
 * curl_multi_socket_action); every request is a future that settles on the
 * loop thread with a bt_http_response, an error, or cancellation.
 *
 *     bt_http_client *c = bt_http_client_new(loop);
 *     bt_http_client_set_base_url(c, "https://api.example.com/v1");
 *     bt_future *f = bt_http_get(c, "users/1");
 *     ... once f settles:
 *     bt_http_response *r = bt_future_value(f);
 *     printf("%d %s\n", bt_http_response_status(r), bt_http_response_body(r, NULL));
 *
 * Errors a request's future fails with (the message carries curl's own text
 * and the method and URL):
 *   BT_EINVAL        bad URL or bad argument
 *   BT_ENOTSUP       a scheme other than http/https
 *   BT_EDNS          the host name could not be resolved
 *   BT_ECONNREFUSED  connection refused (or -errno for other connect errors,
 *                    such as BT_ENETUNREACH)
 *   BT_ETIMEDOUT     connect, total or wait-for-a-connection timeout
 *   BT_ETLS          TLS handshake or certificate verification failed
 *   BT_ECONNRESET    the connection was reset or closed before the whole
 *                    reply arrived (a reset mid-body, an empty reply)
 *   BT_EPROTO        the server broke HTTP (a malformed reply, an HTTP/2
 *                    stream error)
 *   BT_EHTTP         too many redirects
 *   BT_EMSGSIZE      the body exceeded the per-response cap, or the
 *                    client's cap on all the bodies it buffers (the
 *                    message names the cap and its setter)
 *   BT_EIO           a body file could not be read; other curl failures
 *   BT_ESHUTDOWN     the client was freed (or its loop) with it in flight:
 *                    such requests are cancelled, not failed; BT_ESHUTDOWN
 *                    is for requests sent to a client that is closing
 * A reply with a 4xx or 5xx status is a response, not an error.
 *
 * Threads: every function here is loop-thread only (the client's loop),
 * except the request builder and response accessors, which touch no loop
 * and may be used on any thread as long as one thread at a time does.
 */
#ifndef BATON_CURL_H
#define BATON_CURL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <baton/common.h>
#include <baton/future.h>
#include <baton/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bt_http_client bt_http_client;
typedef struct bt_http_request bt_http_request;
typedef struct bt_http_response bt_http_response;

/* ---- The client -------------------------------------------------------
 * Defaults (httpx's and aiohttp's where they agree):
 *   connections: 100 in total, no per-host limit; idle ones kept for reuse
 *                up to 60 s, and closed by a sweep when the server closed
 *                them or their time is up
 *   timeouts: connect 10 s (DNS, TCP and TLS), total 300 s, wait for a
 *             connection 300 s; a name lookup abandoned at its deadline
 *             never blocks the loop (curl's resolver thread is detached)
 *   redirects: not followed (max 10 once turned on); http and https only
 *   TLS: peers verified against the system's CA store
 *   HTTP/2: negotiated by ALPN on https, with multiplexing; a burst of
 *           requests to a new host waits for the first connection to say
 *           whether it multiplexes instead of opening one per request
 *   bodies: at most 16 MiB buffered per response, and 128 MiB in all for
 *           the responses a client is receiving at once
 *   user agent: "baton/VERSION libcurl/VERSION"
 *   compression: every encoding libcurl decodes is offered and decoded
 * Settings apply to requests sent after the call. */

/* A new client on loop. It registers a loop closer, so bt_loop_free with
 * the client still alive cancels its requests and releases curl before
 * the event_base goes; the client must still be freed with
 * bt_http_client_free (its requests then fail with BT_ESHUTDOWN).
 * Returns: a new client to free with bt_http_client_free, or NULL (out of
 * memory, curl failed to initialise, NULL loop). Thread: the loop's. */
BT_EXPORT bt_http_client *bt_http_client_new(bt_loop *loop);

/* Cancel every request in flight (each future settles cancelled), close the
 * connections and free the client. Must not be called from inside a
 * streaming body callback of this client (it is then deferred to the end of
 * curl's call). NULL is a no-op. Thread: the loop's. */
BT_EXPORT void bt_http_client_free(bt_http_client *c);

/* A URL that relative request URLs are joined to, httpx-style: the base's
 * path is kept ("https://h/v1" + "users/1" -> "https://h/v1/users/1"); a
 * request URL with a scheme is used as it is. NULL removes it. Returns 0,
 * BT_EINVAL (not an absolute http(s) URL; the old base stays), BT_ENOMEM. */
BT_EXPORT int bt_http_client_set_base_url(bt_http_client *c, const char *url);

/* The User-Agent header. NULL restores the default. Returns 0, BT_EINVAL,
 * BT_ENOMEM. */
BT_EXPORT int bt_http_client_set_user_agent(bt_http_client *c, const char *ua);

/* A header sent with every request (a request's own header of the same
 * name wins). Returns 0, BT_EINVAL (NULL, or a name or value with CR/LF),
 * BT_ENOMEM. */
BT_EXPORT int bt_http_client_add_header(bt_http_client *c, const char *name, const char *value);

/* Connection limits: at most max_total connections open at once and at most
 * max_per_host to one host (0 = no limit). Requests beyond them wait for a
 * connection, which the wait timeout bounds. With HTTP/2 one connection
 * carries many requests. Returns 0 or BT_EINVAL. */
BT_EXPORT int bt_http_client_set_limits(bt_http_client *c, unsigned max_total,
                                        unsigned max_per_host);

/* How long a kept-alive connection may sit idle in the client's cache
 * (default 60000 ms). A connection idle that long is not reused and is
 * closed; one the server has closed (its socket readable at EOF, in
 * CLOSE_WAIT on our side) is closed as well. A libevent timer on the loop
 * sweeps the cache every max(1 s, idle_ms / 2) while the client has
 * sockets open, so a dead connection's socket is gone within that period
 * and an idle one within idle_ms plus that period, whether or not the
 * client sends anything. curl counts idle time in whole seconds: idle_ms
 * is rounded up to one. 0 turns the sweep off (curl's own rule: a cached
 * connection is checked, and one idle 118 s dropped, only when a request
 * starts). Applies to requests sent after the call. Returns 0 or
 * BT_EINVAL (NULL c, a closed client, 1 to 999 ms, more than 30 days).
 * Thread: the loop's. */
BT_EXPORT int bt_http_client_set_idle_timeout(bt_http_client *c, uint64_t idle_ms);

/* Timeouts in milliseconds, 0 = none:
 * - connect_ms: DNS, TCP and TLS set-up of a new connection;
 * - total_ms: from the moment the request has a connection (new or reused)
 *   to the last byte of the reply. Time spent queued behind the connection
 *   limits does NOT count (it does in curl's own CURLOPT_TIMEOUT);
 * - wait_ms: how long a request may wait for a connection (the limits
 *   above, plus DNS for a new one).
 * Each failure is BT_ETIMEDOUT with a message naming which one fired.
 * Returns 0 or BT_EINVAL. */
BT_EXPORT int bt_http_client_set_timeouts(bt_http_client *c, uint64_t connect_ms, uint64_t total_ms,
                                          uint64_t wait_ms);

/* Follow redirects (default off) up to max_redirects. Only http and https
 * targets are followed. Returns 0 or BT_EINVAL. */
BT_EXPORT int bt_http_client_set_redirects(bt_http_client *c, bool follow, unsigned max_redirects);

/* Verify TLS peers (default on). Turning it off makes TLS useless against
 * an active attacker; it is for tests and for nothing else. Returns 0 or
 * BT_EINVAL. */
BT_EXPORT int bt_http_client_set_tls_verify(bt_http_client *c, bool verify);

/* Trust the CA certificates in a PEM file instead of the system store.
 * NULL restores the system store. Returns 0, BT_EINVAL, BT_ENOMEM. */
BT_EXPORT int bt_http_client_set_ca_file(bt_http_client *c, const char *path);

/* Offer HTTP/2 (default on; on https, by ALPN). Off: HTTP/1.1 only.
 * Returns 0 or BT_EINVAL. */
BT_EXPORT int bt_http_client_set_http2(bt_http_client *c, bool enable);

/* Decompression: NULL sends no Accept-Encoding (bodies come as the server
 * sends them); "" (the default) offers every encoding this libcurl can
 * decode (gzip, deflate, br, zstd on Debian) and decodes the body; or a
 * list such as "gzip". Costs a little CPU per request even when the server
 * does not compress. Returns 0, BT_EINVAL (CR/LF), BT_ENOMEM. */
BT_EXPORT int bt_http_client_set_accept_encoding(bt_http_client *c, const char *encodings);

/* The largest body buffered for a response (default 16 MiB; 0 = no limit).
 * A larger one fails the request with BT_EMSGSIZE, early when the server
 * announces its length. Streaming requests are not limited. Returns 0 or
 * BT_EINVAL. Thread: the loop's. */
BT_EXPORT int bt_http_client_set_max_body(bt_http_client *c, size_t max_bytes);

/* The most memory the client's responses in flight may hold for their
 * bodies, all together (default 128 MiB; 0 = no limit): what protects a
 * server when many upstream replies are large or endless at once, which
 * the per-response cap alone does not (16 endless bodies under a 64 MiB
 * per-response cap could hold 1 GiB). What is counted is each body
 * buffer's allocated size until the request settles (then the response
 * is the caller's and is not counted). A transfer whose next piece would
 * take the total past the cap fails with BT_EMSGSIZE, its buffer freed at
 * once; the others go on. Headers and streaming requests are not counted.
 * Returns 0 or BT_EINVAL. Thread: the loop's. */
BT_EXPORT int bt_http_client_set_max_buffered(bt_http_client *c, size_t max_bytes);

/* The bytes of body buffers the client's responses in flight hold now
 * (*now) and the most they have held at once since the client was made
 * (*peak); either pointer may be NULL. Returns 0 or BT_EINVAL (NULL c).
 * Thread: the loop's. */
BT_EXPORT int bt_http_client_get_buffered(const bt_http_client *c, size_t *now, size_t *peak);

/* Counters, for tests and metrics. succeeded, failed and cancelled count
 * requests (a future settles once however many attempts it took). */
typedef struct {
    size_t size;        /* sizeof this struct, set by the caller (common.h) */
    uint64_t started;   /* attempts handed to curl (one per request,
                         * plus one per retry) */
    uint64_t succeeded; /* settled with a response */
    uint64_t failed;    /* settled with an error */
    uint64_t cancelled; /* settled cancelled */
    uint64_t connects;  /* new connections opened (reuse opens none) */
    uint64_t in_flight; /* requests now in curl, waiting or running */
    /* Appended after the first layout (see docs/design.md, "Structs that
     * can grow"): */
    uint64_t retries; /* attempts sent again under a retry policy (each is
                       * also counted in started) */
} bt_http_client_stats;

/* Fill *out (set out->size first with BT_SIZED, see common.h). Returns 0
 * or BT_EINVAL (NULL, an unset size). Thread: the loop's. */
BT_EXPORT int bt_http_client_get_stats(const bt_http_client *c, bt_http_client_stats *out);

/* ---- Retries -------------------------------------------------------------
 * Opt-in (off by default, as in httpx, urllib3 and Go's net/http). A
 * request sent under a policy is tried again, after a wait, when:
 * - its method is idempotent (GET, HEAD, PUT, DELETE, OPTIONS) and the
 *   attempt got a 429, 502, 503 or 504 reply, or failed on the connection:
 *   the errors of the next item, and a reset or a connection closed while
 *   sending or receiving (curl's CURLE_SEND_ERROR, CURLE_RECV_ERROR,
 *   CURLE_GOT_NOTHING, CURLE_PARTIAL_FILE);
 * - whatever its method (POST and PATCH included), the connection failed
 *   before any byte of the request was sent: CURLE_COULDNT_CONNECT
 *   (refused, unreachable), CURLE_COULDNT_RESOLVE_HOST (DNS) and
 *   CURLE_OPERATION_TIMEDOUT (the connect timeout: the client sets no
 *   other curl timeout), each only when curl reports 0 request bytes sent.
 * Never retried: TLS and protocol errors, the client's total and wait
 * timeouts, body caps, a body callback's stop, bad URLs, and a streamed
 * response (bt_http_request_set_body_cb) once a piece of its body has
 * reached the callback (those bytes cannot be taken back; the body of a
 * reply that will be retried is never handed to it).
 * The wait before attempt n+1 (n >= 1) is "full jitter": a uniform random
 * value in [0, min(max_delay_ms, base_delay_ms * 2^(n-1))]. A Retry-After
 * header on a retried reply (delta-seconds or an HTTP-date) replaces it;
 * one asking for more than max_delay_ms is not retried: its reply is
 * returned at once (Envoy's rule: retrying sooner than the server asked
 * only adds load). The deadline counts every attempt and every wait: when
 * it passes during an attempt, the attempt is cancelled; when the next wait
 * would end past it, no wait starts; either way the request fails with
 * BT_ETIMEDOUT, its message naming the last attempt's outcome. When the
 * attempts run out, the last outcome (a reply or an error) is the result.
 * Bodies are sent again whole: a body in memory as it is, a body file
 * re-read from its start. The client's timeouts apply to each attempt,
 * the deadline to all of them. The waits are libevent timers on the
 * client's loop. Cancelling the future cancels the attempt in flight or
 * the wait, and no further attempt starts. A failure after retries says
 * "(attempt N)" at the end of its message. */
typedef struct {
    size_t size;            /* sizeof this struct: bt_http_retry_policy_init */
    unsigned max_attempts;  /* attempts in all, the first included (default 3;
                             * 1: never retried, though the deadline holds) */
    uint64_t base_delay_ms; /* the backoff's first ceiling (default 100) */
    uint64_t max_delay_ms;  /* the longest wait between attempts, Retry-After
                             * included (default 30000) */
    uint64_t deadline_ms;   /* for all the attempts and waits together,
                             * from bt_http_client_send (default 0: none) */
    bool honor_retry_after; /* wait as Retry-After says (default true) */
} bt_http_retry_policy;

/* Fill *p with the defaults above and its size. Thread: any. */
#define bt_http_retry_policy_init(p) bt_http_retry_policy_init_size((p), sizeof *(p))
BT_EXPORT void bt_http_retry_policy_init_size(bt_http_retry_policy *p, size_t size);

/* Retry the client's requests under *policy (copied), or not at all with
 * NULL (the default). A request's own policy (bt_http_request_set_retry)
 * wins. Applies to requests sent after the call. Returns 0 or BT_EINVAL
 * (NULL c, a policy not filled by bt_http_retry_policy_init, max_attempts
 * 0, max_delay_ms smaller than base_delay_ms, a delay or the deadline over
 * 30 days; a bt_log line says which). Thread: the loop's. */
BT_EXPORT int bt_http_client_set_retry(bt_http_client *c, const bt_http_retry_policy *policy);

/* ---- Requests ---------------------------------------------------------- */

/* A request to build and then send with bt_http_client_send. method is any
 * token ("GET", "POST", "PATCH", "PROPFIND"...); url is absolute or relative
 * to the client's base URL and is checked when the request is sent. The
 * request goes out with exactly this method, body or not: a bodiless POST,
 * PUT or PATCH sends "Content-Length: 0" (and no Content-Type), a bodiless
 * DELETE or other method sends no body headers, HEAD reads no body.
 * Returns: a new request (free it with bt_http_request_free unless it is
 * sent), or NULL (NULL or empty argument, a method that is not a token,
 * out of memory). Thread: any. */
BT_EXPORT bt_http_request *bt_http_request_new(const char *method, const char *url);

/* NULL is a no-op. Thread: any. */
BT_EXPORT void bt_http_request_free(bt_http_request *req);

/* Add a header ("Name", "value"; copied). An empty value sends the header
 * empty; a NULL value removes a header curl or the client would add (such
 * as "Accept"). Returns 0, BT_EINVAL (CR/LF, a ':' in the name), BT_ENOMEM. */
BT_EXPORT int bt_http_request_add_header(bt_http_request *req, const char *name, const char *value);

/* Append name=value to the URL's query, both percent-encoded (RFC 3986
 * unreserved characters stay as they are). Returns 0, BT_EINVAL, BT_ENOMEM. */
BT_EXPORT int bt_http_request_add_query(bt_http_request *req, const char *name, const char *value);

/* The body, copied. Without a Content-Type header, application/octet-stream
 * is sent. Returns 0, BT_EINVAL, BT_ENOMEM. Replaces a previous body. */
BT_EXPORT int bt_http_request_set_body(bt_http_request *req, const void *data, size_t len);

/* The body, streamed from a regular file as curl sends it (never loaded
 * whole). The file is opened when the request is sent; a file that cannot
 * be opened fails the request with -errno. Returns 0, BT_EINVAL, BT_ENOMEM. */
BT_EXPORT int bt_http_request_set_body_file(bt_http_request *req, const char *path);

/* This request's total timeout (see bt_http_client_set_timeouts), instead of
 * the client's; 0 = none. Returns 0 or BT_EINVAL. */
BT_EXPORT int bt_http_request_set_timeout(bt_http_request *req, uint64_t total_ms);

/* This request's retry policy (copied) instead of the client's; NULL: this
 * request is never retried, whatever the client's policy. Returns 0 or
 * BT_EINVAL (as bt_http_client_set_retry). Thread: any. */
BT_EXPORT int bt_http_request_set_retry(bt_http_request *req, const bt_http_retry_policy *policy);

/* Streaming: called on the loop thread with each piece of the body as it
 * arrives, instead of buffering it (bt_http_response_body is then empty).
 * resp is the response so far (status and headers are complete, borrowed).
 * Return 0 to go on, or a negative BT_E* code to stop the transfer: the
 * request then fails with that code. The callback may cancel the request's
 * future or send new requests; it must not free the client. */
typedef int (*bt_http_body_cb)(bt_http_response *resp, const void *data, size_t len, void *arg);
BT_EXPORT int bt_http_request_set_body_cb(bt_http_request *req, bt_http_body_cb cb, void *arg);

/* Send req. The client takes req whatever happens: do not touch or free it
 * afterwards. Returns: a new reference to a future whose value is a
 * bt_http_response (owned by the future; take it with bt_future_take_value
 * and free it with bt_http_response_free to keep it longer). A bad URL, a
 * file that cannot be opened, or a HEAD request with a body gives an
 * already-failed future (BT_EINVAL for the last). Returns
 * NULL only when out of memory or for a NULL argument (req is then freed).
 * Cancelling the future removes the transfer from curl at once (its
 * connection slot is free for the next request). Thread: the loop's. */
BT_EXPORT bt_future *bt_http_client_send(bt_http_client *c, bt_http_request *req);

/* GET url: bt_http_client_send of a plain GET. Returns as send. */
BT_EXPORT bt_future *bt_http_get(bt_http_client *c, const char *url);

/* ---- Responses --------------------------------------------------------- */

/* The status code of the final response (after redirects, if followed). */
BT_EXPORT int bt_http_response_status(const bt_http_response *r);

/* The first value of header name, compared case-insensitively, or NULL.
 * Returns: borrowed, valid while r lives. */
BT_EXPORT const char *bt_http_response_header(const bt_http_response *r, const char *name);

/* Every header of the final response in the order received, for repeated
 * ones (Set-Cookie). */
BT_EXPORT size_t bt_http_response_header_count(const bt_http_response *r);
/* Returns 0, or BT_ERANGE past the end. *name and *value are borrowed. */
BT_EXPORT int bt_http_response_header_at(const bt_http_response *r, size_t i, const char **name,
                                         const char **value);

/* The body, NUL-terminated for convenience (it may hold NULs itself);
 * *len (if not NULL) gets its length. Returns: borrowed, valid while r
 * lives; "" when there is none. */
BT_EXPORT const char *bt_http_response_body(const bt_http_response *r, size_t *len);

/* The URL the response came from (after redirects). Returns: borrowed. */
BT_EXPORT const char *bt_http_response_url(const bt_http_response *r);

/* The HTTP version of the response: 10, 11, 20 or 30 (0 if unknown). */
BT_EXPORT int bt_http_response_version(const bt_http_response *r);

/* NULL is a no-op. Thread: any. */
BT_EXPORT void bt_http_response_free(bt_http_response *r);

#ifdef __cplusplus
}
#endif
#endif
