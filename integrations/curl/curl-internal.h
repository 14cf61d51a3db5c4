/* libbaton-curl's insides, shared by its files (never installed). */
#ifndef BATON_CURL_INTERNAL_H
#define BATON_CURL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/time.h>

#include <curl/curl.h>
#include <event2/event.h>

#include <baton/curl.h>

#include "list.h"

/* One header as the user gave it, kept as the line curl wants:
 * "Name: value", "Name;" (send empty) or "Name:" (remove). */
typedef struct bt__http_header {
    char *line;
    size_t name_len;
} bt__http_header;

struct bt_http_request {
    char *method;
    char *url;
    char *query; /* "a=1&b=2", already percent-encoded */
    size_t query_len;
    bt__http_header *headers;
    size_t nheaders;
    bool has_content_type;
    bool has_body;
    void *body;
    size_t body_len;
    char *body_file;
    bool has_timeout;
    uint64_t timeout_ms;
    bt_http_body_cb body_cb;
    void *body_cb_arg;
    /* Its own retry policy (has_retry), which may be "never" (retry_off). */
    bool has_retry, retry_off;
    bt_http_retry_policy retry;
};

typedef struct bt__resp_header {
    char *name; /* name and value share one allocation */
    char *value;
} bt__resp_header;

struct bt_http_response {
    int status;
    int version;
    char *url;
    bt__resp_header *headers;
    size_t nheaders, cap_headers;
    char *body;
    size_t body_len, body_cap;
};

/* Response building, used by the transfer code. Each returns 0 or
 * BT_ENOMEM. */
bt_http_response *bt__http_response_new(void);
void bt__http_response_clear_headers(bt_http_response *r);
int bt__http_response_add_header_line(bt_http_response *r, const char *line, size_t len);
int bt__http_response_append_body(bt_http_response *r, const void *data, size_t len);
/* Grow the body's buffer to exactly cap bytes (cap > body_len). */
int bt__http_response_reserve(bt_http_response *r, size_t cap);
/* Give the body its trailing NUL (an empty body gets a static ""). */
int bt__http_response_finish(bt_http_response *r);

/* True if s is an HTTP token (method and header names). */
bool bt__http_is_token(const char *s, size_t len);

/* ---- The client and its transfers (client.c, multi.c, transfer.c) ------- */

#ifndef CURL_WRITEFUNC_ERROR
#define CURL_WRITEFUNC_ERROR 0
#endif

#define IDLE_EASY_MAX 256
/* A response body is buffered whole, so these bound the client's memory:
 * 16 MiB for one body (an API reply is kilobytes; a larger download
 * should stream) and 128 MiB for all the bodies a client is receiving at
 * once (eight bodies at the per-response cap). See curl.h. */
#define DEFAULT_MAX_BODY ((size_t)16 << 20)
#define DEFAULT_MAX_BUFFERED ((size_t)128 << 20)
/* The longest wait the client accepts anywhere (a retry's delay, its
 * deadline, Retry-After, the idle period): 30 days. */
#define BT__CURL_MAX_WAIT_MS ((uint64_t)30 * 86400 * 1000)

typedef struct xfer xfer;
typedef struct sockwatch sockwatch;

/* A socket curl asked us to watch, or a connection's socket curl opened
 * through on_open_socket. libevent watches evfd, the client's own
 * duplicate of curl's fd, which only the client closes (multi.c says
 * why); events go back to curl as fd. evfd is -1 while the watch holds no
 * duplicate, and equals fd in the fallback when none could be made.
 *
 * A connection's watch (conn) is indexed by fd in the client's byfd from
 * the open socket callback to the close socket callback (or to a
 * CURL_POLL_REMOVE before it connected), and once connected keeps its
 * duplicate across CURL_POLL_REMOVE: a kept-alive connection is removed
 * after each transfer and watched again by the next. A watch is freed
 * once curl holds it no more (assigned) and it is not a connection's
 * (conn). */
struct sockwatch {
    bt__list node; /* on the client's watches */
    bt_http_client *c;
    curl_socket_t fd;
    evutil_socket_t evfd;
    short kind;
    bool armed;       /* ev is added */
    bool assigned;    /* curl holds it (curl_multi_assign), until CURL_POLL_REMOVE */
    bool conn;        /* in byfd: curl opened fd and has not closed it */
    bool connected;   /* curl asked to read fd: it closes it through the callback */
    struct event *ev; /* points just past the struct */
};

struct xfer {
    bt__list node; /* on the client's live transfers */
    xfer *next_deferred;
    bt_http_client *c;
    CURL *easy;
    CURLU *cu;
    bt_future *future; /* NULL once settled */
    bt_http_request *req;
    bt_http_response *resp;
    struct curl_slist *hdrs; /* this request's own header list, or NULL */
    FILE *file;
    size_t max_body;
    size_t held; /* body buffer bytes counted in c->buffered */
    uint64_t wait_ms, total_ms;
    const struct timeval *wait_tv, *total_tv;
    struct timeval own_total_tv;
    int abort_code; /* why a callback stopped the transfer */
    const char *abort_msg;
    size_t abort_limit;       /* the cap it hit, if one did (0: none) */
    const char *abort_setter; /* and the function that sets that cap */
    unsigned easy_gen;        /* as idle[].gen, for x->easy */
    bool plain;               /* a GET without body: no method options */
    bool got_conn;
    bool in_multi;
    bool timer_armed;
    bool deferred; /* on the client's deferred list */
    /* Retries (retry.c). pol is the policy in force when retry is set;
     * attempt counts from 1; the timer waits between attempts (backoff
     * set) as well as timing each attempt. */
    bool retry;
    bool backoff;    /* waiting for the next attempt, out of curl */
    bool delivered;  /* the body callback got a piece: no retry */
    bool discarding; /* this reply will be retried: its body goes nowhere */
    bool deadline_armed;
    unsigned attempt;
    uint64_t deadline_ns; /* bt_hrtime() at which it passes (0: none) */
    bt_http_retry_policy pol;
    struct event *deadline; /* after timer, when pol has a deadline */
    char errbuf[CURL_ERROR_SIZE];
    struct event *timer; /* points just past the struct */
};

struct bt_http_client {
    bt_loop *loop;
    struct event_base *base;
    CURLM *multi;
    struct event *curl_timer;
    bt__list xfers;   /* live transfers (xfer.node) */
    xfer *deferred;   /* to add or remove once curl returns */
    bt__list watches; /* watched sockets (sockwatch.node) */
    sockwatch **byfd; /* connections' watches by fd (sockwatch.conn) */
    size_t nbyfd;
    int in_curl;
    bool free_pending;
    bool closed; /* the closer ran: no multi, no events */
    size_t still_running;

    char *base_url;
    char *user_agent;
    struct curl_slist *default_hdrs;
    struct curl_slist *retired_hdrs[8]; /* old lists in-flight requests use */
    size_t nretired;
    unsigned max_total, max_per_host;
    uint64_t connect_ms, total_ms, wait_ms;
    struct timeval total_tv, wait_tv;
    const struct timeval *total_ctv, *wait_ctv; /* common timeouts */
    bool follow, verify, http2;
    unsigned max_redirects;
    char *ca_file;
    char *accept_encoding; /* NULL: none; "" by default */
    bool no_accept_encoding;
    size_t max_body;
    /* Bytes of body buffers held by transfers in flight (their capacity,
     * what is allocated), its cap (0: none) and the most it has been. */
    size_t buffered, max_buffered, buffered_peak;

    /* Idle easy handles. gen is the settings generation a handle was
     * configured for (0: reset, unconfigured); a handle last used by a
     * plain GET keeps its options and is reused without a reset while
     * the client's settings have not changed since. */
    struct {
        CURL *easy;
        unsigned gen;
    } idle[IDLE_EASY_MAX];
    size_t nidle;
    unsigned gen; /* bumped by every setter of easy options */
    bt_http_client_stats stats;
    /* The idle sweep (idle.c): the bound on a cached connection's idle
     * time (0: off), the timer, and the easy
     * handle that makes curl prune its cache. nsockets counts the sockets
     * curl opened through on_open_socket and has not closed. */
    uint64_t idle_ms;
    struct event *sweep_timer;
    CURL *sweep;
    bool sweep_in_multi, sweep_armed;
    size_t nsockets;
    bool has_retry; /* retry under `retry` (bt_http_client_set_retry) */
    bt_http_retry_policy retry;
    uint64_t rng; /* xorshift state for the backoff's jitter */
};

/* client.c */
extern char bt__http_default_ua[96];
void bt__http_client_destroy(bt_http_client *c);

/* multi.c: set the multi handle's socket and timer callbacks. Returns 0 or
 * BT_ENOMEM. */
int bt__http_multi_wire(bt_http_client *c);
/* Run what was deferred while curl was on the stack and settle finished
 * transfers; a no-op while curl is on the stack. */
void bt__http_flush(bt_http_client *c);
/* curl's open socket callback made socket s: a watch still on that
 * number belongs to a socket curl closed without telling us, and is moved
 * to s (curl still holds it) or dropped; s gets a connection's watch.
 * Returns 0, or BT_ENOMEM (curl fails the connection). */
int bt__http_socket_opened(bt_http_client *c, curl_socket_t s);
/* curl's close socket callback is about to close s: its watch lets go of
 * its duplicate, and goes too unless curl still holds it. */
void bt__http_socket_closing(bt_http_client *c, curl_socket_t s);
/* Stop watching and free every watch (client shutdown). */
void bt__http_watches_free(bt_http_client *c);

/* transfer.c */
void bt__xfer_release(xfer *x);
void bt__xfer_done(xfer *x, CURLcode rc);
void bt__xfer_fail(xfer *x, int code, const char *fmt, ...) BT_PRINTF(3, 4);
/* True if url starts with "scheme://". */
bool bt__http_has_scheme(const char *url);
/* Start an attempt: arm the wait-for-a-connection timer and add the handle
 * to curl (deferred while curl is on the stack). On failure x is failed
 * and released. */
void bt__xfer_start(xfer *x);
/* Disarm the transfer's timer (wait, total, or the wait between attempts). */
void bt__xfer_timer_stop(xfer *x);
/* Take x out of curl's multi handle, counting its connects (transfer.c). */
void bt__xfer_leave_multi(xfer *x);

/* idle.c */
/* Set up the sweep's timer and the default idle bound. Returns 0 or
 * BT_ENOMEM. */
int bt__idle_init(bt_http_client *c);
/* A connection may have gone back to curl's cache: arm the sweep. */
void bt__idle_arm(bt_http_client *c);
/* True if easy is the sweep's handle; it is then taken out of curl. */
bool bt__idle_sweep_done(bt_http_client *c, CURL *easy);
/* Remove the sweep's handle and timer (before curl_multi_cleanup). */
void bt__idle_shutdown(bt_http_client *c);
/* The options every transfer gets from the idle bound. */
void bt__idle_options(bt_http_client *c, CURL *easy);

/* retry.c */
/* Check a caller's policy (fn names the public function for the log).
 * Returns 0 with *out filled, or BT_EINVAL. */
int bt__retry_policy_read(bt_http_retry_policy *out, const bt_http_retry_policy *in,
                          const char *fn);
/* Set x up for retries under the request's or the client's policy, and
 * arm the deadline. Called once, at send, before the first attempt. */
void bt__retry_setup(xfer *x);
/* Whether the reply now in x->resp (status and headers complete) will be
 * retried, judged before its body: used to keep a retried reply's body
 * away from a streaming callback. */
bool bt__retry_status_wanted(xfer *x);
/* The attempt ended with rc (curl's, CURLE_OK for a reply): if it is to
 * be retried, detach it from curl, reset it and arm the wait, and return
 * true; else return false and the caller settles it. May instead fail x
 * with BT_ETIMEDOUT (the deadline) and return true. Curl must not be on
 * the stack. */
bool bt__retry_after_attempt(xfer *x, CURLcode rc);
/* The wait between attempts is over (x's timer): start the next one. */
void bt__retry_wait_done(xfer *x);
/* Disarm the deadline (the transfer is being released). */
void bt__retry_stop(xfer *x);

#endif
