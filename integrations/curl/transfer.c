/* Transfers: one request from send to settled. Building the easy handle
 * (URL, headers, body, options), curl's per-transfer callbacks (headers,
 * body, upload, open-socket/pre-request for the timeouts), completion,
 * errors, cancellation and release. See multi.c for the wiring and the
 * rules on what may run while curl is on the stack. */
#include "config.h"

#include "curl-internal.h"
#include "timeval.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include <baton/future.h>
#include <baton/loop.h>

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

void bt__xfer_timer_stop(xfer *x)
{
    if (x->timer_armed) {
        evtimer_del(x->timer);
        x->timer_armed = false;
    }
}

/* The transfer no longer holds its body buffer (freed, or handed to the
 * future's value): take it out of the client's count. */
static void xfer_unhold(xfer *x)
{
    x->c->buffered -= x->held;
    x->held = 0;
}

/* Take x out of curl (its connection goes back to curl's cache, or is
 * closed if the attempt broke it), counting the connections it opened.
 * Must not run with curl on the stack. */
void bt__xfer_leave_multi(xfer *x)
{
    bt_http_client *c = x->c;
    long n = 0;
    if (curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &n) == CURLE_OK && n > 0)
        c->stats.connects += (uint64_t)n;
    curl_multi_remove_handle(c->multi, x->easy);
    x->in_multi = false;
    c->stats.in_flight--;
}

/* Detach from curl and free. Must not run with curl on the stack. */
void bt__xfer_release(xfer *x)
{
    bt_http_client *c = x->c;
    bt__xfer_timer_stop(x);
    bt__retry_stop(x);
    xfer_unhold(x);
    if (x->in_multi)
        bt__xfer_leave_multi(x);
    bt__list_remove(&x->node);
    bt__idle_arm(c); /* its connection may be idle in curl's cache now */
    if (x->easy) {
        if (c->nidle < IDLE_EASY_MAX && !c->closed) {
            if (x->plain && x->easy_gen == c->gen) {
                /* Keep the options; drop pointers into x. */
                curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, NULL);
                curl_easy_setopt(x->easy, CURLOPT_CURLU, NULL);
                curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, NULL);
                c->idle[c->nidle].gen = c->gen;
            } else {
                curl_easy_reset(x->easy);
                c->idle[c->nidle].gen = 0;
            }
            c->idle[c->nidle++].easy = x->easy;
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

void bt__xfer_fail(xfer *x, int code, const char *fmt, ...)
{
    if (x->future == NULL)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *detail = bt_vasprintf(fmt, ap);
    va_end(ap);
    char attempt[32] = "";
    if (x->attempt > 1)
        snprintf(attempt, sizeof attempt, " (attempt %u)", x->attempt);
    bt_future_set_error(x->future, code, "%s %s: %s%s", x->req->method, xfer_url(x),
                        detail ? detail : bt_strerror(code), attempt);
    bt_free(detail);
    x->future = NULL;
    x->c->stats.failed++;
}

/* Remove now, or once curl has returned if it is on the stack. */
static void xfer_remove_soon(xfer *x)
{
    bt_http_client *c = x->c;
    if (c->in_curl == 0) {
        bt__xfer_release(x);
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
    if (x->backoff) {
        bt__retry_wait_done(x); /* the wait between attempts is over */
        return;
    }
    if (x->got_conn)
        bt__xfer_fail(x, BT_ETIMEDOUT, "timed out after %llu ms (total timeout)",
                      (unsigned long long)x->total_ms);
    else
        bt__xfer_fail(x, BT_ETIMEDOUT,
                      "timed out after %llu ms waiting for a connection "
                      "(limits: %u in total, %u per host)",
                      (unsigned long long)x->wait_ms, x->c->max_total, x->c->max_per_host);
    bt__xfer_release(x); /* from a libevent timer: curl is not on the stack */
}

/* The transfer left the queue: switch its timer from waiting to total. */
static void xfer_got_conn(xfer *x)
{
    if (x->got_conn)
        return;
    x->got_conn = true;
    bt__xfer_timer_stop(x);
    if (x->total_tv && x->future) {
        evtimer_add(x->timer, x->total_tv);
        x->timer_armed = true;
    }
}

static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *addr)
{
    xfer *x = clientp;
    (void)purpose;
    xfer_got_conn(x);
    curl_socket_t s = socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
    if (s == CURL_SOCKET_BAD)
        return s;
    if (bt__http_socket_opened(x->c, s) != 0) {
        close(s);
        return CURL_SOCKET_BAD;
    }
    x->c->nsockets++;
    return s;
}

/* curl closes a connected socket through here (after CURL_POLL_REMOVE if
 * it was watched); one still connecting it closes with a plain close()
 * (multi.c's DESIGN). clientp is the client, not the transfer: a cached
 * connection outlives the transfer that opened it. */
static int on_close_socket(void *clientp, curl_socket_t s)
{
    bt_http_client *c = clientp;
    if (c->nsockets > 0)
        c->nsockets--;
    bt__http_socket_closing(c, s);
    return close(s);
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

/* Stop the transfer from a header or body callback, saying why: the
 * future gets code and msg once curl has returned. */
static size_t write_abort(xfer *x, int code, const char *msg)
{
    x->abort_code = code;
    x->abort_msg = msg;
    return CURL_WRITEFUNC_ERROR;
}

/* Stop the transfer because a cap was hit: the message names the cap and
 * the function that sets it. */
static size_t cap_abort(xfer *x, const char *msg, size_t limit, const char *setter)
{
    x->abort_limit = limit;
    x->abort_setter = setter;
    return write_abort(x, BT_EMSGSIZE, msg);
}

/* Make room for len more body bytes, within the response's cap and the
 * client's cap on all buffered bodies. The client counts what is
 * allocated (the buffer's capacity), not just what was received, so the
 * cap bounds memory: the buffer grows by doubling, never past the
 * response's cap, and only as far as needed once the client is near its
 * own. Returns true, or false with the transfer stopped (x->abort_*). */
static bool xfer_body_room(xfer *x, size_t len)
{
    bt_http_response *r = x->resp;
    bt_http_client *c = x->c;
    if (x->max_body && r->body_len + len > x->max_body) {
        cap_abort(x, "the body is larger than the per-response cap of", x->max_body,
                  "bt_http_client_set_max_body");
        return false;
    }
    size_t need = r->body_len + len + 1; /* and the trailing NUL */
    if (need <= r->body_cap)
        return true;
    size_t cap = r->body_cap ? r->body_cap : 1024;
    while (cap < need)
        cap *= 2;
    if (x->max_body && cap > x->max_body + 1)
        cap = x->max_body + 1;
    if (c->max_buffered) {
        size_t room = c->max_buffered > c->buffered ? c->max_buffered - c->buffered : 0;
        if (cap - r->body_cap > room)
            cap = need;
        if (cap - r->body_cap > room) {
            /* Free the buffer now: it is the memory the cap protects. */
            bt_free(r->body);
            r->body = NULL;
            r->body_len = r->body_cap = 0;
            xfer_unhold(x);
            cap_abort(x, "the response bodies this client buffers would exceed its cap of",
                      c->max_buffered, "bt_http_client_set_max_buffered");
            return false;
        }
    }
    size_t old = r->body_cap;
    if (bt__http_response_reserve(r, cap) < 0) {
        write_abort(x, BT_ENOMEM, "out of memory storing the body");
        return false;
    }
    c->buffered += cap - old;
    x->held = cap;
    if (c->buffered > c->buffered_peak)
        c->buffered_peak = c->buffered;
    return true;
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
    if (bt__http_response_add_header_line(x->resp, p, len) < 0)
        return write_abort(x, BT_ENOMEM, "out of memory storing a header");
    return len;
}

static size_t on_write(char *p, size_t size, size_t n, void *arg)
{
    xfer *x = arg;
    size_t len = size * n;
    if (x->future == NULL)
        return CURL_WRITEFUNC_ERROR; /* cancelled from a callback */
    if (x->discarding)
        return len; /* a reply that will be retried */
    if (x->req->body_cb) {
        bt_http_client *c = x->c;
        if (!x->delivered && x->retry && bt__retry_status_wanted(x)) {
            /* The body of a reply that will be retried never reaches the
             * callback, which could not take it back. */
            x->discarding = true;
            return len;
        }
        x->delivered = true;
        bt_loop_enter_cb(c->loop, (const void *)x->req->body_cb);
        int rc = x->req->body_cb(x->resp, p, len, x->req->body_cb_arg);
        bt_loop_leave_cb(c->loop);
        if (rc < 0)
            return write_abort(x, rc, "the body callback stopped the transfer");
        return x->future ? len : CURL_WRITEFUNC_ERROR;
    }
    if (!xfer_body_room(x, len))
        return CURL_WRITEFUNC_ERROR;
    if (bt__http_response_append_body(x->resp, p, len) < 0)
        return write_abort(x, BT_ENOMEM, "out of memory storing the body");
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

/* curl rewinds the body when it sends the request again: after a
 * redirect that keeps the method, and when a reused keep-alive connection
 * turns out to have been closed by the server before any byte of the
 * reply came (curl then retries once on a new connection). Without this
 * callback a body streamed from a file could not be rewound, and such a
 * request failed with "necessary data rewind wasn't possible". */
static int on_seek(void *arg, curl_off_t offset, int origin)
{
    xfer *x = arg;
    if (fseeko(x->file, (off_t)offset, origin) != 0)
        return CURL_SEEKFUNC_FAIL;
    return CURL_SEEKFUNC_OK;
}

void bt__xfer_done(xfer *x, CURLcode rc)
{
    bt_http_client *c = x->c;
    if (x->future != NULL && x->retry && bt__retry_after_attempt(x, rc))
        return; /* waiting for the next attempt, or failed by the deadline */
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
            if (eff == NULL || strcmp(eff, x->req->url) == 0) {
                r->url = x->req->url; /* the usual case: no copy */
                x->req->url = NULL;
            } else {
                r->url = bt_strdup(eff);
            }
            bt__http_response_finish(r);
            xfer_unhold(x); /* the body is the future's now */
            x->resp = NULL;
            bt_future_set_value(x->future, r, (bt_destroy_fn)bt_http_response_free);
            x->future = NULL;
            c->stats.succeeded++;
        } else if (x->abort_limit) {
            bt__xfer_fail(x, x->abort_code, "%s %zu bytes (%s)", x->abort_msg, x->abort_limit,
                          x->abort_setter);
        } else if (x->abort_code) {
            bt__xfer_fail(x, x->abort_code, "%s", x->abort_msg);
        } else if (rc == CURLE_FILESIZE_EXCEEDED) {
            /* The announced length is over the response's cap. */
            bt__xfer_fail(x, BT_EMSGSIZE,
                          "the announced body is larger than the per-response cap of %zu bytes "
                          "(bt_http_client_set_max_body)",
                          x->max_body);
        } else {
            int code = map_curl_error(rc, x->easy);
            bt__xfer_fail(x, code, "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
        }
    }
    bt__xfer_release(x);
}

/* ---- Sending --------------------------------------------------------------- */

bool bt__http_has_scheme(const char *url)
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
    bool has_scheme = bt__http_has_scheme(url);
    if (req->query_len == 0 && (has_scheme || c->base_url == NULL) &&
        (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0)) {
        /* Nothing to join or append: curl parses the string itself (and
         * reports a malformed one as CURLE_URL_MALFORMAT, BT_EINVAL). */
        curl_easy_setopt(x->easy, CURLOPT_CURLU, NULL);
        curl_easy_setopt(x->easy, CURLOPT_URL, url);
        curl_easy_setopt(x->easy, CURLOPT_PIPEWAIT,
                         (long)(c->http2 && strncasecmp(url, "https://", 8) == 0));
        return 0;
    }
    if (c->base_url && !has_scheme) {
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
    curl_easy_setopt(x->easy, CURLOPT_CURLU, x->cu);
    curl_easy_setopt(x->easy, CURLOPT_PIPEWAIT, (long)(tls && c->http2));
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

/* The methods whose requests carry content by definition: sent without a
 * body they still say "Content-Length: 0" (RFC 9110 8.6: a client SHOULD
 * send Content-Length for them; it SHOULD NOT for a bodiless request whose
 * method anticipates no content, such as DELETE). */
static bool method_expects_body(const char *m)
{
    return strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0;
}

/* Whether curl is told to send a body (req's, or an empty one). */
static bool xfer_sends_body(const bt_http_request *req)
{
    return req->has_body || method_expects_body(req->method);
}

static int xfer_headers(bt_http_client *c, xfer *x)
{
    bt_http_request *req = x->req;
    bool body_extra = xfer_sends_body(req);
    if (req->nheaders == 0 && !body_extra) {
        curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, c->default_hdrs); /* may be NULL */
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
         * curl would otherwise claim for a POST body: the body's own
         * default, or none at all for an empty body of a bodiless POST. */
        if ((t = curl_slist_append(l, "Expect:")) == NULL)
            goto oom;
        l = t;
        if (!req->has_content_type) {
            const char *ct =
                req->has_body ? "Content-Type: application/octet-stream" : "Content-Type:";
            if ((t = curl_slist_append(l, ct)) == NULL)
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

/* The method and the body. curl picks the method from the body options:
 * none means GET, POSTFIELDS or POST means POST, NOBODY means HEAD, and
 * CUSTOMREQUEST only replaces the word on the request line. So every
 * method but a bodiless GET or HEAD names itself with CUSTOMREQUEST (POST
 * excepted: curl's own word for it), and a bodiless POST, PUT or PATCH
 * still sends an empty body ("Content-Length: 0"): a bodiless POST given
 * neither would go out as a GET. */
static int xfer_body(xfer *x, const char **why, int *err)
{
    bt_http_request *req = x->req;
    CURL *e = x->easy;
    if (req->has_body && strcmp(req->method, "HEAD") == 0) {
        /* curl would send it and then wait for a response body that a HEAD
         * response never has. */
        *err = BT_EINVAL;
        *why = "a HEAD request cannot carry a body";
        return -1;
    }
    if (!req->has_body) {
        if (strcmp(req->method, "GET") == 0)
            return 0;
        if (strcmp(req->method, "HEAD") == 0) {
            curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
            return 0;
        }
    }
    if (strcmp(req->method, "POST") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
    if (!req->has_body) {
        if (method_expects_body(req->method)) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
        }
        return 0;
    }
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
        curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, on_seek);
        curl_easy_setopt(e, CURLOPT_SEEKDATA, x);
    } else {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body_len ? (char *)req->body : "");
    }
    return 0;
}

/* What every request sets: pointers into x and per-request values. */
static void xfer_request_options(xfer *x)
{
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, x);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, x);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)x->max_body);
}

/* What follows from the client's settings: set once per easy handle and
 * settings generation (see bt_http_client.idle). */
static void xfer_client_options(bt_http_client *c, xfer *x)
{
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, c);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
    curl_easy_setopt(e, CURLOPT_USERAGENT, c->user_agent ? c->user_agent : bt__http_default_ua);
    if (!c->no_accept_encoding)
        curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, c->accept_encoding ? c->accept_encoding : "");
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    if (c->follow) {
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, (long)c->max_redirects);
    }
    if (c->connect_ms)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_ms);
#if LIBCURL_VERSION_NUM >= 0x075700
    /* A transfer stopped while its name is being resolved (the connect
     * timeout, a cancel, the client's free) would otherwise wait for
     * curl's resolver thread to return from getaddrinfo, on the loop
     * thread: a lookup that hangs (a nameserver that never answers) then
     * froze the loop until glibc gave up, or for ever. With QUICK_EXIT
     * curl detaches the thread instead, and it frees itself when
     * getaddrinfo returns. */
    curl_easy_setopt(e, CURLOPT_QUICK_EXIT, 1L);
#endif
    if (!c->verify) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (c->ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                     c->http2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
    bt__idle_options(c, e);
    x->easy_gen = c->gen;
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
    /* Two events after the struct: the transfer's timer and the retry
     * deadline. */
    xfer *x = bt_calloc(1, sizeof *x + 2 * event_get_struct_event_size());
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
    x->deadline = (struct event *)((char *)x->timer + event_get_struct_event_size());
    evtimer_assign(x->timer, c->base, on_xfer_timer, x);
    bt__list_push_front(&c->xfers, &x->node);
    if (c->nidle) {
        c->nidle--;
        x->easy = c->idle[c->nidle].easy;
        x->easy_gen = c->idle[c->nidle].gen;
    } else {
        x->easy = curl_easy_init();
    }
    x->resp = bt__http_response_new();
    if (x->easy == NULL || x->resp == NULL) {
        bt__xfer_fail(x, BT_ENOMEM, "out of memory");
        bt__xfer_release(x);
        return f;
    }
    x->max_body = req->body_cb ? 0 : c->max_body;
    x->wait_ms = c->wait_ms;
    x->wait_tv = c->wait_ms ? c->wait_ctv : NULL;
    if (req->has_timeout) {
        x->total_ms = req->timeout_ms;
        x->own_total_tv = bt__timeval_ms(req->timeout_ms);
        x->total_tv = req->timeout_ms ? &x->own_total_tv : NULL;
    } else {
        x->total_ms = c->total_ms;
        x->total_tv = c->total_ms ? c->total_ctv : NULL;
    }

    x->plain = strcmp(req->method, "GET") == 0 && !req->has_body;
    if (x->easy_gen != c->gen) {
        if (x->easy_gen != 0)
            curl_easy_reset(x->easy); /* the settings changed since */
        xfer_client_options(c, x);
    }
    xfer_request_options(x);
    const char *why = NULL;
    int err = xfer_url_build(c, x, &why);
    if (err == 0)
        err = xfer_headers(c, x);
    if (err == 0 && xfer_body(x, &why, &err) != 0 && err == 0)
        err = BT_EIO;
    if (err) {
        bt__xfer_fail(x, err, "%s", why ? why : bt_strerror(err));
        bt__xfer_release(x);
        return f;
    }
    bt_future_on_cancel(f, on_cancel, x);
    bt__retry_setup(x);
    bt__xfer_start(x);
    return f;
}

void bt__xfer_start(xfer *x)
{
    bt_http_client *c = x->c;
    if (x->wait_tv) {
        evtimer_add(x->timer, x->wait_tv);
        x->timer_armed = true;
    }
    if (c->in_curl) {
        /* Sent from a body callback: curl is on the stack. */
        x->deferred = true;
        x->next_deferred = c->deferred;
        c->deferred = x;
        return;
    }
    if (curl_multi_add_handle(c->multi, x->easy) != CURLM_OK) {
        bt__xfer_fail(x, BT_ENOMEM, "curl refused the transfer");
        bt__xfer_release(x);
        return;
    }
    x->in_multi = true;
    c->stats.in_flight++;
    c->stats.started++;
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
