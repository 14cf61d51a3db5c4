/* The HTTP client: one curl multi handle on the loop's event_base.
 *
 * DESIGN
 * - Wiring (curl's "multi_socket" API): curl tells us which sockets to
 *   watch (on_socket, CURLMOPT_SOCKETFUNCTION) and when to wake it
 *   (on_curl_timer, CURLMOPT_TIMERFUNCTION); we hand events back with
 *   curl_multi_socket_action, and drain curl_multi_info_read after every
 *   call. Both callbacks only touch libevent: curl forbids calling into
 *   the multi handle from its callbacks, so a timeout of 0 is a zero-delay
 *   libevent timer, not a direct socket_action. CURL_POLL_REMOVE means
 *   "stop watching": the socket may live on in curl's connection cache.
 * - User code runs inside curl only through a streaming body callback.
 *   While curl is on the stack (in_curl > 0), whatever would call into the
 *   multi handle is deferred: a cancelled transfer is marked and removed,
 *   a new request is added, and a client free is done, right after
 *   curl_multi_socket_action returns (still the same loop turn).
 * - Futures: a transfer keeps a plain pointer to its future until it
 *   settles it (the loop keeps a pending future alive). Settling never
 *   runs callbacks inline, so settling from inside curl is safe.
 *   Cancellation settles at once and removes the transfer at once (or
 *   right after curl returns), which closes or frees its connection slot.
 * - Timeouts: curl's CURLOPT_TIMEOUT counts the time a transfer waits
 *   behind CURLMOPT_MAX_*_CONNECTIONS, so the total timeout is our own
 *   libevent timer, started when the transfer gets a connection (curl's
 *   open-socket or pre-request callback, whichever comes first). Before
 *   that the same timer measures the wait for a connection. Timers with
 *   the client's default durations use libevent's common timeouts (O(1)).
 * - Shutdown: a loop closer cancels every transfer and cleans up the multi
 *   handle before the loop frees its event_base.
 */
#include "config.h"

#include "curl-internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <event2/event.h>

#include <baton/future.h>
#include <baton/loop.h>

#ifndef CURL_WRITEFUNC_ERROR
#define CURL_WRITEFUNC_ERROR 0
#endif

#define IDLE_EASY_MAX 256
#define DEFAULT_MAX_BODY ((size_t)64 << 20)

typedef struct xfer xfer;
typedef struct sockwatch sockwatch;

struct sockwatch {
    sockwatch *prev, *next;
    bt_http_client *c;
    curl_socket_t fd;
    short kind;
    struct event *ev;           /* points just past the struct */
};

struct xfer {
    xfer *prev, *next;          /* the client's live transfers */
    xfer *next_deferred;
    bt_http_client *c;
    CURL *easy;
    CURLU *cu;
    bt_future *future;          /* NULL once settled */
    bt_http_request *req;
    bt_http_response *resp;
    struct curl_slist *hdrs;    /* this request's own header list, or NULL */
    FILE *file;
    size_t max_body;
    uint64_t wait_ms, total_ms;
    const struct timeval *wait_tv, *total_tv;
    struct timeval own_total_tv;
    int abort_code;             /* why a callback stopped the transfer */
    const char *abort_msg;
    bool got_conn;
    bool in_multi;
    bool timer_armed;
    bool deferred;              /* on the client's deferred list */
    char errbuf[CURL_ERROR_SIZE];
    struct event *timer;        /* points just past the struct */
};

struct bt_http_client {
    bt_loop *loop;
    struct event_base *base;
    CURLM *multi;
    struct event *curl_timer;
    xfer *xfers;
    xfer *deferred;             /* to add or remove once curl returns */
    sockwatch *watches;
    int in_curl;
    bool free_pending;
    bool closed;                /* the closer ran: no multi, no events */
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
    size_t max_body;

    CURL *idle[IDLE_EASY_MAX];
    size_t nidle;
    bt_http_client_stats stats;
};

static void client_flush(bt_http_client *c);
static void client_destroy(bt_http_client *c);
static void xfer_settle_error(xfer *x, int code, const char *fmt, ...) BT_PRINTF(3, 4);

/* ---- Global init ---------------------------------------------------------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;
static char default_ua[96];

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    snprintf(default_ua, sizeof default_ua, "baton/%s libcurl/%s", PACKAGE_VERSION,
             v ? v->version : "?");
}

/* ---- Socket and timer wiring --------------------------------------------- */

static void curl_action(bt_http_client *c, curl_socket_t fd, int mask)
{
    int running = 0;
    c->in_curl++;
    curl_multi_socket_action(c->multi, fd, mask, &running);
    c->in_curl--;
    c->still_running = (size_t)running;
    client_flush(c);
}

static void on_sock_event(evutil_socket_t fd, short events, void *arg)
{
    sockwatch *w = arg;
    bt_http_client *c = w->c;
    int mask = ((events & EV_READ) ? CURL_CSELECT_IN : 0) |
               ((events & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    bt_loop *loop = c->loop; /* c may be freed by a deferred free */
    bt_loop_enter_cb(loop, (const void *)on_sock_event);
    curl_action(c, fd, mask); /* w may be gone after this */
    bt_loop_leave_cb(loop);
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    bt_http_client *c = userp;
    sockwatch *w = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        /* Stop watching; curl may keep the connection for reuse and will
         * tell us again when it wants events on it. */
        if (w) {
            event_del(w->ev);
            if (w->prev)
                w->prev->next = w->next;
            else
                c->watches = w->next;
            if (w->next)
                w->next->prev = w->prev;
            bt_free(w);
        }
        return 0;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                 ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (w == NULL) {
        w = bt_calloc(1, sizeof *w + event_get_struct_event_size());
        if (w == NULL)
            return -1; /* curl fails the transfer */
        w->c = c;
        w->fd = s;
        w->ev = (struct event *)(w + 1);
        w->next = c->watches;
        if (c->watches)
            c->watches->prev = w;
        c->watches = w;
        curl_multi_assign(c->multi, s, w);
    } else if (w->kind == kind) {
        return 0;
    } else {
        event_del(w->ev);
    }
    w->kind = kind;
    event_assign(w->ev, c->base, s, kind, on_sock_event, w);
    event_add(w->ev, NULL);
    return 0;
}

static void on_curl_timeout(evutil_socket_t fd, short events, void *arg)
{
    bt_http_client *c = arg;
    (void)fd;
    (void)events;
    bt_loop *loop = c->loop;
    bt_loop_enter_cb(loop, (const void *)on_curl_timeout);
    curl_action(c, CURL_SOCKET_TIMEOUT, 0);
    bt_loop_leave_cb(loop);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    bt_http_client *c = userp;
    (void)multi;
    if (timeout_ms < 0) {
        evtimer_del(c->curl_timer);
    } else {
        /* Never socket_action from here: a 0 ms timer runs it next. */
        struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
        evtimer_add(c->curl_timer, &tv);
    }
    return 0;
}

/* ---- Errors -------------------------------------------------------------- */

static int map_curl_error(CURLcode rc, CURL *easy)
{
    switch (rc) {
    case CURLE_OK:
        return 0;
    case CURLE_UNSUPPORTED_PROTOCOL:
        return BT_ENOTSUP;
    case CURLE_URL_MALFORMAT:
    case CURLE_BAD_FUNCTION_ARGUMENT:
        return BT_EINVAL;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return BT_EDNS;
    case CURLE_COULDNT_CONNECT: {
        long os = 0;
        curl_easy_getinfo(easy, CURLINFO_OS_ERRNO, &os);
        return os > 0 ? -(int)os : BT_ECONNREFUSED;
    }
    case CURLE_OPERATION_TIMEDOUT:
        return BT_ETIMEDOUT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
        return BT_ETLS;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
        return BT_ECONNRESET;
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_HTTP3:
        return BT_EPROTO;
    case CURLE_TOO_MANY_REDIRECTS:
        return BT_EHTTP;
    case CURLE_FILESIZE_EXCEEDED:
        return BT_EMSGSIZE;
    case CURLE_OUT_OF_MEMORY:
        return BT_ENOMEM;
    case CURLE_ABORTED_BY_CALLBACK:
        return BT_ECANCELED;
    default:
        return BT_EIO;
    }
}

/* ---- Transfers ------------------------------------------------------------ */

static const char *xfer_url(xfer *x)
{
    char *u = NULL;
    if (x->resp && x->resp->url)
        return x->resp->url;
    if (x->cu && curl_url_get(x->cu, CURLUPART_URL, &u, 0) == CURLUE_OK && x->resp) {
        x->resp->url = bt_strdup(u);
        curl_free(u);
        if (x->resp->url)
            return x->resp->url;
    }
    return x->req->url;
}

static void xfer_timer_stop(xfer *x)
{
    if (x->timer_armed) {
        evtimer_del(x->timer);
        x->timer_armed = false;
    }
}

/* Detach from curl and free. Must not run with curl on the stack. */
static void xfer_release(xfer *x)
{
    bt_http_client *c = x->c;
    xfer_timer_stop(x);
    if (x->in_multi) {
        long n = 0;
        if (curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &n) == CURLE_OK && n > 0)
            c->stats.connects += (uint64_t)n;
        curl_multi_remove_handle(c->multi, x->easy);
        x->in_multi = false;
        c->stats.in_flight--;
    }
    if (x->prev)
        x->prev->next = x->next;
    else if (c->xfers == x)
        c->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    if (x->easy) {
        if (c->nidle < IDLE_EASY_MAX && !c->closed) {
            curl_easy_reset(x->easy);
            c->idle[c->nidle++] = x->easy;
        } else {
            curl_easy_cleanup(x->easy);
        }
    }
    curl_url_cleanup(x->cu);
    curl_slist_free_all(x->hdrs);
    if (x->file)
        fclose(x->file);
    bt_http_response_free(x->resp);
    bt_http_request_free(x->req);
    bt_free(x);
}

static void xfer_settle_error(xfer *x, int code, const char *fmt, ...)
{
    if (x->future == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *detail = bt_vasprintf(fmt, ap);
    va_end(ap);
    bt_future_set_error(x->future, code, "%s %s: %s", x->req->method, xfer_url(x),
                        detail ? detail : bt_strerror(code));
    bt_free(detail);
    x->future = NULL;
    x->c->stats.failed++;
}

/* Remove now, or once curl has returned if it is on the stack. */
static void xfer_remove_soon(xfer *x)
{
    bt_http_client *c = x->c;
    if (c->in_curl == 0) {
        xfer_release(x);
    } else if (!x->deferred) {
        x->deferred = true;
        x->next_deferred = c->deferred;
        c->deferred = x;
    }
}

static void on_cancel(bt_future *f, void *arg)
{
    xfer *x = arg;
    (void)f;
    if (x->future == NULL)
        return;
    bt_future_set_cancelled(x->future);
    x->future = NULL;
    x->c->stats.cancelled++;
    xfer_remove_soon(x);
}

static void on_xfer_timer(evutil_socket_t fd, short events, void *arg)
{
    xfer *x = arg;
    (void)fd;
    (void)events;
    x->timer_armed = false;
    if (x->got_conn)
        xfer_settle_error(x, BT_ETIMEDOUT, "timed out after %llu ms (total timeout)",
                          (unsigned long long)x->total_ms);
    else
        xfer_settle_error(x, BT_ETIMEDOUT,
                          "timed out after %llu ms waiting for a connection "
                          "(limits: %u in total, %u per host)",
                          (unsigned long long)x->wait_ms, x->c->max_total, x->c->max_per_host);
    xfer_release(x); /* from a libevent timer: curl is not on the stack */
}

/* The transfer left the queue: switch its timer from waiting to total. */
static void xfer_got_conn(xfer *x)
{
    if (x->got_conn)
        return;
    x->got_conn = true;
    xfer_timer_stop(x);
    if (x->total_tv && x->future) {
        evtimer_add(x->timer, x->total_tv);
        x->timer_armed = true;
    }
}

static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *addr)
{
    xfer *x = clientp;
    (void)purpose;
    xfer_got_conn(x);
    return socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
}

static int on_prereq(void *clientp, char *conn_primary_ip, char *conn_local_ip,
                     int conn_primary_port, int conn_local_port)
{
    (void)conn_primary_ip;
    (void)conn_local_ip;
    (void)conn_primary_port;
    (void)conn_local_port;
    xfer_got_conn(clientp);
    return CURL_PREREQFUNC_OK;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    xfer *x = arg;
    size_t len = size * n;
    if (x->future == NULL)
        return CURL_WRITEFUNC_ERROR;
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        /* A new response (after a 1xx or a followed redirect). */
        bt__http_response_clear_headers(x->resp);
        const char *sp = memchr(p, ' ', len);
        x->resp->status = sp ? atoi(sp + 1) : 0;
        return len;
    }
    if (bt__http_response_add_header_line(x->resp, p, len) < 0) {
        x->abort_code = BT_ENOMEM;
        x->abort_msg = "out of memory storing a header";
        return CURL_WRITEFUNC_ERROR;
    }
    return len;
}

static size_t on_write(char *p, size_t size, size_t n, void *arg)
{
    xfer *x = arg;
    size_t len = size * n;
    if (x->future == NULL)
        return CURL_WRITEFUNC_ERROR; /* cancelled from a callback */
    if (x->req->body_cb) {
        bt_http_client *c = x->c;
        bt_loop_enter_cb(c->loop, (const void *)x->req->body_cb);
        int rc = x->req->body_cb(x->resp, p, len, x->req->body_cb_arg);
        bt_loop_leave_cb(c->loop);
        if (rc < 0) {
            x->abort_code = rc;
            x->abort_msg = "the body callback stopped the transfer";
            return CURL_WRITEFUNC_ERROR;
        }
        return x->future ? len : CURL_WRITEFUNC_ERROR;
    }
    if (x->max_body && x->resp->body_len + len > x->max_body) {
        x->abort_code = BT_EMSGSIZE;
        x->abort_msg = "the body is larger than the maximum size";
        return CURL_WRITEFUNC_ERROR;
    }
    if (bt__http_response_append_body(x->resp, p, len) < 0) {
        x->abort_code = BT_ENOMEM;
        x->abort_msg = "out of memory storing the body";
        return CURL_WRITEFUNC_ERROR;
    }
    return len;
}

static size_t on_read(char *p, size_t size, size_t n, void *arg)
{
    xfer *x = arg;
    size_t got = fread(p, size, n, x->file);
    if (got < n && ferror(x->file)) {
        x->abort_code = BT_EIO;
        x->abort_msg = "reading the body file failed";
        return CURL_READFUNC_ABORT;
    }
    return got;
}

static void xfer_done(xfer *x, CURLcode rc)
{
    bt_http_client *c = x->c;
    if (x->future) {
        if (rc == CURLE_OK) {
            bt_http_response *r = x->resp;
            long status = 0, ver = 0;
            curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
            curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &ver);
            char *eff = NULL;
            curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &eff);
            r->status = (int)status;
            r->version = ver == CURL_HTTP_VERSION_1_0   ? 10
                         : ver == CURL_HTTP_VERSION_1_1 ? 11
                         : ver == CURL_HTTP_VERSION_2_0 ? 20
                         : ver == CURL_HTTP_VERSION_3   ? 30
                                                        : 0;
            bt_free(r->url);
            r->url = bt_strdup(eff ? eff : x->req->url);
            bt__http_response_finish(r);
            x->resp = NULL;
            bt_future_set_value(x->future, r, (bt_destroy_fn)bt_http_response_free);
            x->future = NULL;
            c->stats.succeeded++;
        } else if (x->abort_code) {
            xfer_settle_error(x, x->abort_code, "%s", x->abort_msg);
        } else {
            int code = map_curl_error(rc, x->easy);
            xfer_settle_error(x, code, "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
        }
    }
    xfer_release(x);
}

/* ---- Deferred work and completions --------------------------------------- */

static void client_flush(bt_http_client *c)
{
    if (c->in_curl > 0)
        return;
    for (;;) {
        /* Adds and removes asked for while curl was on the stack. */
        while (c->deferred) {
            xfer *x = c->deferred;
            c->deferred = x->next_deferred;
            x->deferred = false;
            if (x->future == NULL) {
                xfer_release(x);
            } else if (!x->in_multi) {
                if (curl_multi_add_handle(c->multi, x->easy) == CURLM_OK) {
                    x->in_multi = true;
                    c->stats.in_flight++;
                    c->stats.started++;
                } else {
                    xfer_settle_error(x, BT_ENOMEM, "curl refused the transfer");
                    xfer_release(x);
                }
            }
        }
        int left;
        CURLMsg *m;
        bool any = false;
        while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            xfer *x = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            CURLcode rc = m->data.result;
            any = true;
            xfer_done(x, rc); /* m is invalid after this */
        }
        if (!any && c->deferred == NULL)
            break;
    }
    if (c->free_pending) {
        c->free_pending = false;
        client_destroy(c);
    }
}

/* ---- Sending --------------------------------------------------------------- */

static bool has_scheme(const char *url)
{
    const char *p = url;
    while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
           *p == '+' || *p == '-' || *p == '.')
        p++;
    return p != url && p[0] == ':' && p[1] == '/' && p[2] == '/';
}

/* Build and check the URL into x->cu. Returns 0, or a code with *why set. */
static int xfer_url_build(bt_http_client *c, xfer *x, const char **why)
{
    bt_http_request *req = x->req;
    char *joined = NULL;
    const char *url = req->url;
    if (c->base_url && !has_scheme(url)) {
        size_t bl = strlen(c->base_url);
        while (bl > 0 && c->base_url[bl - 1] == '/')
            bl--;
        while (*url == '/')
            url++;
        joined = bt_asprintf("%.*s/%s", (int)bl, c->base_url, url);
        if (joined == NULL)
            return BT_ENOMEM;
        url = joined;
    }
    x->cu = curl_url();
    if (x->cu == NULL) {
        bt_free(joined);
        return BT_ENOMEM;
    }
    CURLUcode uc = curl_url_set(x->cu, CURLUPART_URL, url, 0);
    bt_free(joined);
    if (uc != CURLUE_OK) {
        *why = curl_url_strerror(uc);
        return uc == CURLUE_OUT_OF_MEMORY ? BT_ENOMEM : BT_EINVAL;
    }
    char *scheme = NULL;
    if (curl_url_get(x->cu, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK) {
        *why = "no scheme";
        return BT_EINVAL;
    }
    bool ok = strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0;
    bool tls = strcmp(scheme, "https") == 0;
    curl_free(scheme);
    if (!ok) {
        *why = "only http and https URLs are supported";
        return BT_ENOTSUP;
    }
    if (req->query_len &&
        (uc = curl_url_set(x->cu, CURLUPART_QUERY, req->query, CURLU_APPENDQUERY)) != CURLUE_OK) {
        *why = curl_url_strerror(uc);
        return BT_EINVAL;
    }
    if (tls && c->http2)
        curl_easy_setopt(x->easy, CURLOPT_PIPEWAIT, 1L);
    return 0;
}

static bool default_overridden(bt_http_client *c, bt_http_request *req, const char *line)
{
    (void)c;
    const char *colon = strpbrk(line, ":;");
    size_t nl = colon ? (size_t)(colon - line) : strlen(line);
    for (size_t i = 0; i < req->nheaders; i++)
        if (req->headers[i].name_len == nl && strncasecmp(req->headers[i].line, line, nl) == 0)
            return true;
    return false;
}

static int xfer_headers(bt_http_client *c, xfer *x)
{
    bt_http_request *req = x->req;
    bool body_extra = req->has_body;
    if (req->nheaders == 0 && !body_extra) {
        if (c->default_hdrs)
            curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, c->default_hdrs);
        return 0;
    }
    struct curl_slist *l = NULL, *t;
    for (struct curl_slist *d = c->default_hdrs; d; d = d->next) {
        if (default_overridden(c, req, d->data))
            continue;
        if ((t = curl_slist_append(l, d->data)) == NULL)
            goto oom;
        l = t;
    }
    for (size_t i = 0; i < req->nheaders; i++) {
        if ((t = curl_slist_append(l, req->headers[i].line)) == NULL)
            goto oom;
        l = t;
    }
    if (body_extra) {
        /* No "Expect: 100-continue" round trip, and no form content type
         * curl would otherwise claim for a POST body. */
        if ((t = curl_slist_append(l, "Expect:")) == NULL)
            goto oom;
        l = t;
        if (!req->has_content_type) {
            if ((t = curl_slist_append(l, "Content-Type: application/octet-stream")) == NULL)
                goto oom;
            l = t;
        }
    }
    x->hdrs = l;
    curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, l);
    return 0;
oom:
    curl_slist_free_all(l);
    return BT_ENOMEM;
}

static int xfer_body(xfer *x, const char **why, int *err)
{
    bt_http_request *req = x->req;
    CURL *e = x->easy;
    bool is_post = strcmp(req->method, "POST") == 0;
    if (strcmp(req->method, "GET") == 0 && !req->has_body)
        return 0;
    if (strcmp(req->method, "HEAD") == 0 && !req->has_body) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        return 0;
    }
    if (!is_post)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    if (!req->has_body)
        return 0;
    if (req->body_file) {
        x->file = fopen(req->body_file, "rbe");
        struct stat st;
        if (x->file == NULL || fstat(fileno(x->file), &st) != 0) {
            *err = -errno;
            *why = strerror(errno);
            return -1;
        }
        if (!S_ISREG(st.st_mode)) {
            *err = BT_EINVAL;
            *why = "the body file is not a regular file";
            return -1;
        }
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)st.st_size);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(e, CURLOPT_READDATA, x);
    } else {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body_len ? (char *)req->body : "");
    }
    return 0;
}

static void xfer_options(bt_http_client *c, xfer *x)
{
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_CURLU, x->cu);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, x);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, x);
    curl_easy_setopt(e, CURLOPT_USERAGENT, c->user_agent ? c->user_agent : default_ua);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (c->follow) {
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)c->max_redirects);
    }
    if (c->connect_ms)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_ms);
    if (!c->verify) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (c->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                     c->http2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
    if (x->max_body)
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)x->max_body);
}

BT_EXPORT bt_future *bt_http_client_send(bt_http_client *c, bt_http_request *req)
{
    if (c == NULL || req == NULL) {
        bt_http_request_free(req);
        return NULL;
    }
    if (c->closed || c->free_pending) {
        bt_future *f = bt_future_new_error(c->loop, BT_ESHUTDOWN, "%s %s: the client is closed",
                                           req->method, req->url);
        bt_http_request_free(req);
        return f;
    }
    bt_future *f = bt_future_new(c->loop);
    xfer *x = bt_calloc(1, sizeof *x + event_get_struct_event_size());
    if (f == NULL || x == NULL) {
        bt_future_unref(f);
        bt_free(x);
        bt_http_request_free(req);
        return NULL;
    }
    x->c = c;
    x->req = req;
    x->future = f;
    x->timer = (struct event *)(x + 1);
    evtimer_assign(x->timer, c->base, on_xfer_timer, x);
    x->next = c->xfers;
    if (c->xfers)
        c->xfers->prev = x;
    c->xfers = x;
    x->easy = c->nidle ? c->idle[--c->nidle] : curl_easy_init();
    x->resp = bt__http_response_new();
    if (x->easy == NULL || x->resp == NULL) {
        xfer_settle_error(x, BT_ENOMEM, "out of memory");
        xfer_release(x);
        return f;
    }
    x->max_body = req->body_cb ? 0 : c->max_body;
    x->wait_ms = c->wait_ms;
    x->wait_tv = c->wait_ms ? c->wait_ctv : NULL;
    if (req->has_timeout) {
        x->total_ms = req->timeout_ms;
        x->own_total_tv.tv_sec = (time_t)(req->timeout_ms / 1000);
        x->own_total_tv.tv_usec = (suseconds_t)(req->timeout_ms % 1000) * 1000;
        x->total_tv = req->timeout_ms ? &x->own_total_tv : NULL;
    } else {
        x->total_ms = c->total_ms;
        x->total_tv = c->total_ms ? c->total_ctv : NULL;
    }

    const char *why = NULL;
    int err = xfer_url_build(c, x, &why);
    if (err == 0)
        xfer_options(c, x);
    if (err == 0)
        err = xfer_headers(c, x);
    if (err == 0 && xfer_body(x, &why, &err) != 0 && err == 0)
        err = BT_EIO;
    if (err) {
        xfer_settle_error(x, err, "%s", why ? why : bt_strerror(err));
        xfer_release(x);
        return f;
    }
    bt_future_on_cancel(f, on_cancel, x);
    if (x->wait_tv) {
        evtimer_add(x->timer, x->wait_tv);
        x->timer_armed = true;
    }
    if (c->in_curl) {
        /* Sent from a body callback: curl is on the stack. */
        x->deferred = true;
        x->next_deferred = c->deferred;
        c->deferred = x;
        return f;
    }
    if (curl_multi_add_handle(c->multi, x->easy) != CURLM_OK) {
        xfer_settle_error(x, BT_ENOMEM, "curl refused the transfer");
        xfer_release(x);
        return f;
    }
    x->in_multi = true;
    c->stats.in_flight++;
    c->stats.started++;
    return f;
}

BT_EXPORT bt_future *bt_http_get(bt_http_client *c, const char *url)
{
    if (c == NULL || url == NULL)
        return NULL;
    bt_http_request *req = bt_http_request_new("GET", url);
    if (req == NULL)
        return url[0] == '\0' ? bt_future_new_error(c->loop, BT_EINVAL, "GET: empty URL") : NULL;
    return bt_http_client_send(c, req);
}

/* ---- The client ------------------------------------------------------------ */

/* Cancel every transfer and release curl: the loop closer, and the first
 * half of bt_http_client_free. */
static void client_shutdown(bt_http_client *c)
{
    if (c->closed)
        return;
    while (c->deferred) {
        xfer *x = c->deferred;
        c->deferred = x->next_deferred;
        x->deferred = false;
    }
    while (c->xfers) {
        xfer *x = c->xfers;
        if (x->future) {
            bt_future_set_cancelled(x->future);
            x->future = NULL;
            c->stats.cancelled++;
        }
        xfer_release(x);
    }
    c->closed = true;
    while (c->nidle)
        curl_easy_cleanup(c->idle[--c->nidle]);
    /* Before the event_base goes: curl may still report sockets to stop
     * watching while it closes its cached connections. */
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    while (c->watches) {
        sockwatch *w = c->watches;
        c->watches = w->next;
        event_del(w->ev);
        bt_free(w);
    }
    event_free(c->curl_timer);
    c->curl_timer = NULL;
}

static void on_loop_close(void *arg)
{
    client_shutdown(arg);
}

static void client_destroy(bt_http_client *c)
{
    if (!c->closed) {
        bt_loop_remove_closer(c->loop, on_loop_close, c);
        client_shutdown(c);
    }
    curl_slist_free_all(c->default_hdrs);
    for (size_t i = 0; i < c->nretired; i++)
        curl_slist_free_all(c->retired_hdrs[i]);
    bt_free(c->base_url);
    bt_free(c->user_agent);
    bt_free(c->ca_file);
    bt_free(c);
}

BT_EXPORT void bt_http_client_free(bt_http_client *c)
{
    if (c == NULL)
        return;
    if (c->in_curl) {
        c->free_pending = true;
        return;
    }
    client_destroy(c);
}

static void tv_from_ms(struct timeval *tv, uint64_t ms)
{
    tv->tv_sec = (time_t)(ms / 1000);
    tv->tv_usec = (suseconds_t)(ms % 1000) * 1000;
}

static void client_apply_limits(bt_http_client *c)
{
    curl_multi_setopt(c->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)c->max_total);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)c->max_per_host);
    /* Keep as many idle connections as may be open at once. */
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)(c->max_total ? c->max_total : 100));
}

BT_EXPORT bt_http_client *bt_http_client_new(bt_loop *loop)
{
    if (loop == NULL)
        return NULL;
    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK)
        return NULL;
    bt_http_client *c = bt_calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->loop = loop;
    c->base = bt_loop_base(loop);
    c->multi = curl_multi_init();
    c->curl_timer = evtimer_new(c->base, on_curl_timeout, c);
    if (c->multi == NULL || c->curl_timer == NULL || bt_loop_add_closer(loop, on_loop_close, c)) {
        if (c->multi)
            curl_multi_cleanup(c->multi);
        if (c->curl_timer)
            event_free(c->curl_timer);
        bt_free(c);
        return NULL;
    }
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    c->max_total = 100;
    c->max_per_host = 0;
    client_apply_limits(c);
    c->follow = false;
    c->max_redirects = 10;
    c->verify = true;
    c->http2 = true;
    c->max_body = DEFAULT_MAX_BODY;
    bt_http_client_set_timeouts(c, 10000, 300000, 300000);
    return c;
}

BT_EXPORT int bt_http_client_set_base_url(bt_http_client *c, const char *url)
{
    if (c == NULL)
        return BT_EINVAL;
    if (url == NULL) {
        bt_free(c->base_url);
        c->base_url = NULL;
        return 0;
    }
    if (!has_scheme(url) || (strncasecmp(url, "http://", 7) != 0 &&
                             strncasecmp(url, "https://", 8) != 0))
        return BT_EINVAL;
    CURLU *u = curl_url();
    if (u == NULL)
        return BT_ENOMEM;
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    curl_url_cleanup(u);
    if (uc != CURLUE_OK)
        return uc == CURLUE_OUT_OF_MEMORY ? BT_ENOMEM : BT_EINVAL;
    char *copy = bt_strdup(url);
    if (copy == NULL)
        return BT_ENOMEM;
    bt_free(c->base_url);
    c->base_url = copy;
    return 0;
}

BT_EXPORT int bt_http_client_set_user_agent(bt_http_client *c, const char *ua)
{
    if (c == NULL || (ua && strpbrk(ua, "\r\n")))
        return BT_EINVAL;
    char *copy = NULL;
    if (ua && (copy = bt_strdup(ua)) == NULL)
        return BT_ENOMEM;
    bt_free(c->user_agent);
    c->user_agent = copy;
    return 0;
}

BT_EXPORT int bt_http_client_add_header(bt_http_client *c, const char *name, const char *value)
{
    if (c == NULL || name == NULL || value == NULL || strpbrk(value, "\r\n") ||
        !bt__http_is_token(name, strlen(name)))
        return BT_EINVAL;
    if (c->nretired == sizeof c->retired_hdrs / sizeof c->retired_hdrs[0])
        return BT_ENOSPC;
    char *line = value[0] ? bt_asprintf("%s: %s", name, value) : bt_asprintf("%s;", name);
    if (line == NULL)
        return BT_ENOMEM;
    /* Requests in flight may point at the current list: build a new one and
     * keep the old until the client is freed. */
    struct curl_slist *l = NULL, *t;
    for (struct curl_slist *d = c->default_hdrs; d; d = d->next) {
        if ((t = curl_slist_append(l, d->data)) == NULL)
            goto oom;
        l = t;
    }
    if ((t = curl_slist_append(l, line)) == NULL)
        goto oom;
    l = t;
    bt_free(line);
    if (c->default_hdrs)
        c->retired_hdrs[c->nretired++] = c->default_hdrs;
    c->default_hdrs = l;
    return 0;
oom:
    bt_free(line);
    curl_slist_free_all(l);
    return BT_ENOMEM;
}

BT_EXPORT int bt_http_client_set_limits(bt_http_client *c, unsigned max_total,
                                        unsigned max_per_host)
{
    if (c == NULL || c->closed || c->in_curl)
        return BT_EINVAL;
    c->max_total = max_total;
    c->max_per_host = max_per_host;
    client_apply_limits(c);
    return 0;
}

BT_EXPORT int bt_http_client_set_timeouts(bt_http_client *c, uint64_t connect_ms,
                                          uint64_t total_ms, uint64_t wait_ms)
{
    if (c == NULL || c->closed || connect_ms > INT32_MAX)
        return BT_EINVAL;
    c->connect_ms = connect_ms;
    c->total_ms = total_ms;
    c->wait_ms = wait_ms;
    tv_from_ms(&c->total_tv, total_ms);
    tv_from_ms(&c->wait_tv, wait_ms);
    /* Every request with the client's durations shares a common-timeout
     * queue: O(1) to arm instead of a heap insert. */
    c->total_ctv = event_base_init_common_timeout(c->base, &c->total_tv);
    c->wait_ctv = event_base_init_common_timeout(c->base, &c->wait_tv);
    if (c->total_ctv == NULL)
        c->total_ctv = &c->total_tv;
    if (c->wait_ctv == NULL)
        c->wait_ctv = &c->wait_tv;
    return 0;
}

BT_EXPORT int bt_http_client_set_redirects(bt_http_client *c, bool follow, unsigned max_redirects)
{
    if (c == NULL || max_redirects > INT32_MAX)
        return BT_EINVAL;
    c->follow = follow;
    c->max_redirects = max_redirects;
    return 0;
}

BT_EXPORT int bt_http_client_set_tls_verify(bt_http_client *c, bool verify)
{
    if (c == NULL)
        return BT_EINVAL;
    c->verify = verify;
    return 0;
}

BT_EXPORT int bt_http_client_set_ca_file(bt_http_client *c, const char *path)
{
    if (c == NULL || (path && path[0] == '\0'))
        return BT_EINVAL;
    char *copy = NULL;
    if (path && (copy = bt_strdup(path)) == NULL)
        return BT_ENOMEM;
    bt_free(c->ca_file);
    c->ca_file = copy;
    return 0;
}

BT_EXPORT int bt_http_client_set_http2(bt_http_client *c, bool enable)
{
    if (c == NULL)
        return BT_EINVAL;
    c->http2 = enable;
    return 0;
}

BT_EXPORT int bt_http_client_set_max_body(bt_http_client *c, size_t max_bytes)
{
    if (c == NULL)
        return BT_EINVAL;
    c->max_body = max_bytes;
    return 0;
}

BT_EXPORT int bt_http_client_get_stats(const bt_http_client *c, bt_http_client_stats *out)
{
    if (c == NULL || out == NULL)
        return BT_EINVAL;
    *out = c->stats;
    return 0;
}
