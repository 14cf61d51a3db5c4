/* The connection guard: what stands between a hostile client and evhttp.
 *
 * DESIGN
 * - libevent 2.1's evhttp has no hook between accepting a connection and
 *   parsing its bytes, and its parser is lax: it keeps the first of two
 *   Content-Length headers, reads "+4" as 4, folds obs-fold lines into the
 *   previous header, and restarts its read timeout at every byte. The
 *   guard makes each connection's bufferevent itself (evhttp_set_bevcb)
 *   and watches its input buffer (an evbuffer callback, which libevent
 *   runs when a read adds bytes, before evhttp's read callback parses
 *   them). It frames each request as RFC 9112 section 6 says, line by
 *   line and byte by byte: request line, field lines, Content-Length or
 *   chunked body, trailers. A line that breaks a rule is removed from the
 *   buffer before evhttp sees it, with everything after it, so evhttp
 *   only ever acts on well framed requests.
 *   (A bufferevent filter would be the obvious tool, but with evhttp in
 *   libevent 2.1 a filter loses responses: evhttp adds a reply to the
 *   filter while its write side is disabled, and enabling it does not
 *   flush, so the reply waits until the client's next event.)
 * - A request the guard refuses (400, 408, 413, 417, 431, 501, 503, 505)
 *   is answered by the guard itself, in the app's JSON shape, written to
 *   the bufferevent's output with evhttp's write callback taken off (it
 *   would take the write for its own). The answer waits until evhttp has
 *   nothing in hand on that connection (no request with a handler, no
 *   unparsed bytes, no reply being written), so it never overtakes the
 *   answer to an earlier pipelined request. Then the write side is shut,
 *   what the client still sends is dropped for up to LINGER_MS (closing
 *   with unread bytes would reset the connection before the client read
 *   the answer), and evhttp is handed an EOF, on which it frees the
 *   connection.
 * - Deadlines: a request head must be complete within head_timeout_ms of
 *   its first byte (of the accept, for a connection's first request),
 *   whatever the client sends meanwhile; a body must arrive at
 *   min_body_rate bytes a second after a grace of body_grace_ms. One timer
 *   per connection, armed while a head or a body is being read.
 * - Open connections are counted across the app's servers; past
 *   max_connections a new connection is answered 503 and closed, with one
 *   log line per LOG_INTERVAL_MS.
 * - When accept() fails (EMFILE, ENFILE, ENOBUFS), libevent logs and
 *   retries at once, forever: a core's worth of spinning. The guard
 *   pauses the listeners for ACCEPT_PAUSE_MS instead and logs one line per
 *   LOG_INTERVAL_MS.
 * - Lifetimes: the guard holds a reference on each bufferevent. evhttp's
 *   close callback (set once evhttp has made the connection, on the first
 *   timer run) tells the guard the connection is going; the guard then
 *   drops its state and its reference. When the server closes, the guard
 *   releases what is left.
 * - TLS (tls.c): the bufferevent the guard makes is then an OpenSSL one,
 *   whose input buffer holds decrypted bytes, so the framing rules apply
 *   unchanged. The head deadline runs from the accept, so it covers the
 *   handshake: a connection whose handshake is not done by then is
 *   closed at once (there is no channel to answer 408 on). A failed
 *   handshake (a client speaking plain HTTP, an old TLS version) is
 *   evhttp's to close, as an error on the bufferevent; the guard logs it
 *   at debug level when it lets go of the connection.
 * Everything here runs on the server's loop thread, except the listener
 * registry, which the servers of several loops share under a mutex.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

#include "http-internal.h"
#include "timeval.h"

#define LINGER_MS 2000        /* dropping input after a refusal, at most */
#define POLL_MS 20            /* waiting for evhttp to be idle, for the write to drain */
#define ACCEPT_PAUSE_MS 250   /* the listeners' pause after a failed accept() */
#define LOG_INTERVAL_MS 10000 /* at most one line per this, per kind */
#define CHUNK_LINE_MAX 256    /* a chunk-size line */

static uint64_t now_ns(void)
{
    return bt_hrtime();
}

/* ---- Listener registry --------------------------------------------------- */

/* evconnlistener's error callback gets the listener and evhttp's own
 * argument, not ours: a small registry maps a listener to its guard. */
typedef struct lreg {
    struct evconnlistener *lev;
    bt__guard *g;
    struct lreg *next;
} lreg;
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static lreg *registry;

static bt__guard *registry_find(struct evconnlistener *lev)
{
    bt__guard *g = NULL;
    pthread_mutex_lock(&reg_lock);
    for (lreg *r = registry; r != NULL; r = r->next)
        if (r->lev == lev)
            g = r->g;
    pthread_mutex_unlock(&reg_lock);
    return g;
}

static void registry_drop(bt__guard *g)
{
    pthread_mutex_lock(&reg_lock);
    for (lreg **pp = &registry; *pp != NULL;) {
        if ((*pp)->g == g) {
            lreg *dead = *pp;
            *pp = dead->next;
            bt_free(dead);
        } else {
            pp = &(*pp)->next;
        }
    }
    pthread_mutex_unlock(&reg_lock);
}

static void on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    bt__guard *g = arg;
    (void)fd;
    (void)what;
    for (size_t i = 0; i < g->nlisteners; i++)
        evconnlistener_enable(g->listeners[i]);
}

static void on_accept_error(struct evconnlistener *lev, void *ctx)
{
    (void)ctx;
    int err = errno;
    bt__guard *g = registry_find(lev);
    if (g == NULL)
        return;
    for (size_t i = 0; i < g->nlisteners; i++)
        evconnlistener_disable(g->listeners[i]);
    struct timeval tv = { 0, ACCEPT_PAUSE_MS * 1000 };
    event_add(g->accept_timer, &tv);
    g->accept_pauses++;
    atomic_fetch_add_explicit(&g->app->accept_pauses, 1, memory_order_relaxed);
    uint64_t now = now_ns();
    if (g->accept_logged_ns == 0 || now - g->accept_logged_ns >= LOG_INTERVAL_MS * 1000000ull) {
        bt_log(BT_LOG_WARN,
               "http: accept() failed: %s; accepting paused for %d ms "
               "(%llu pauses since the last such line)",
               strerror(err), ACCEPT_PAUSE_MS, (unsigned long long)g->accept_pauses);
        g->accept_logged_ns = now;
        g->accept_pauses = 0;
    }
}

int bt__guard_add_listener(bt__guard *g, struct evconnlistener *lev)
{
    if (g->nlisteners == BT__GUARD_MAX_LISTENERS)
        return BT_EBUSY;
    lreg *r = bt_calloc(1, sizeof *r);
    if (r == NULL)
        return BT_ENOMEM;
    r->lev = lev;
    r->g = g;
    pthread_mutex_lock(&reg_lock);
    r->next = registry;
    registry = r;
    pthread_mutex_unlock(&reg_lock);
    g->listeners[g->nlisteners++] = lev;
    evconnlistener_set_error_cb(lev, on_accept_error);
    return 0;
}

void bt__guard_forget_listeners(bt__guard *g)
{
    registry_drop(g);
    g->nlisteners = 0;
    if (g->accept_timer != NULL)
        event_del(g->accept_timer);
}

enum conn_state {
    C_HEAD,       /* the request line and field lines */
    C_BODY,       /* body_left Content-Length bytes */
    C_CHUNK_SIZE, /* a chunk-size line */
    C_CHUNK_DATA, /* body_left chunk bytes */
    C_CHUNK_END,  /* the CRLF after a chunk's data */
    C_TRAILER,    /* the trailer section */
    C_REFUSE,     /* dropping input; the answer waits for evhttp to be idle */
    C_CLOSING,    /* the answer is written; dropping input, then closing */
};

typedef struct conn {
    bt__guard *g;
    bt__list link;           /* on the guard's conns */
    struct bufferevent *bev; /* evhttp's; the guard holds a reference */
    struct evbuffer_cb_entry *watch;
    struct event *timer;
    enum conn_state st;
    bool started;          /* evhttp's close callback is set */
    bool head_started;     /* the current head's deadline runs */
    bool in_cb;            /* our own changes to the buffer, not the client's */
    bool shut;             /* the write side is shut */
    bool counted;          /* in the app's open connections */
    bool tls;              /* the bufferevent is an OpenSSL one (tls.c) */
    bt__tls_info tls_info; /* TLS: filled in by the handshake */
    /* The current message. */
    uint64_t msg_start; /* its first byte's position in the stream */
    uint64_t seen;      /* bytes of the stream looked at */
    uint64_t added;     /* bytes of the stream added to the buffer */
    size_t head_bytes;
    unsigned nlines;
    int ncl, nte;
    uint64_t cl;
    bool chunked, is_head;
    char *line; /* the current line, up to max_header_bytes */
    size_t linelen, linecap;
    bool cr; /* C_CHUNK_END: the CR was seen */
    uint64_t body_left;
    uint64_t body_total;  /* chunked: the chunk sizes declared (the 413 cap) */
    uint64_t body_recv;   /* the body's bytes received: the rate deadline */
    uint64_t since_ns;    /* the head's or the body's start */
    uint64_t close_at_ns; /* C_CLOSING: when to stop lingering */
    int status;           /* the refusal's */
    const char *msg;
} conn;

/* Until the timer's first run has set evhttp's close callback, that run
 * stays first: it also arms whatever deadline is due. */
static void arm(conn *c, uint64_t ms)
{
    if (!c->started)
        return;
    struct timeval tv = bt__timeval_ms(ms);
    event_add(c->timer, &tv);
}

/* ---- Refusals ------------------------------------------------------------ */

static const char *reason(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 417:
        return "Expectation Failed";
    case 431:
        return "Request Header Fields Too Large";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    }
    return "Error";
}

/* Refuse the current message: what the buffer holds of it (from
 * msg_start on) is removed, so evhttp never completes it; bytes of
 * earlier messages stay for evhttp. The timer answers once evhttp is
 * idle. */
static void refuse(conn *c, int status, const char *msg)
{
    if (c->st == C_REFUSE || c->st == C_CLOSING)
        return;
    c->st = C_REFUSE;
    c->status = status;
    c->msg = msg;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t len = evbuffer_get_length(in);
    uint64_t buf_start = c->added - len; /* the stream position of the buffer's first byte */
    c->in_cb = true;
    if (c->msg_start <= buf_start) {
        evbuffer_drain(in, len);
    } else {
        size_t keep = (size_t)(c->msg_start - buf_start);
        struct evbuffer *tmp = evbuffer_new();
        if (tmp != NULL) {
            evbuffer_remove_buffer(in, tmp, keep);
            evbuffer_drain(in, evbuffer_get_length(in));
            evbuffer_add_buffer(in, tmp);
            evbuffer_free(tmp);
        }
    }
    c->in_cb = false;
    atomic_fetch_add_explicit(&c->g->app->refused_requests, 1, memory_order_relaxed);
    arm(c, 0);
}

static void write_refusal(conn *c)
{
    char body[160], head[320];
    int bl = snprintf(body, sizeof body, "{\"error\":\"%s\"}", c->msg);
    int hl =
        snprintf(head, sizeof head,
                 "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                 "Content-Length: %d\r\nConnection: close\r\n%s\r\n",
                 c->status, reason(c->status), bl, c->status == 503 ? "Retry-After: 1\r\n" : "");
    /* evhttp's write callback would take this write's completion for the
     * end of a reply of its own. */
    bufferevent_data_cb rcb;
    bufferevent_event_cb ecb;
    void *cbarg;
    bufferevent_getcb(c->bev, &rcb, NULL, &ecb, &cbarg);
    bufferevent_setcb(c->bev, rcb, NULL, ecb, cbarg);
    bufferevent_write(c->bev, head, (size_t)hl);
    bufferevent_write(c->bev, body, (size_t)bl);
    bufferevent_enable(c->bev, EV_WRITE);
    bt__http_stats_observe(c->g->stats, c->status, 0);
    c->st = C_CLOSING;
    c->close_at_ns = now_ns() + LINGER_MS * 1000000ull;
    if (c->g->app->access_log)
        bt_log(BT_LOG_INFO, "http: - \"(refused by the server)\" %d %s", c->status, c->msg);
}

/* ---- Framing ------------------------------------------------------------- */

static bool is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return true;
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool is_hex(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static const char *const methods[] = { "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH" };

static void trim_ows(const char **v, size_t *n)
{
    while (*n > 0 && (**v == ' ' || **v == '\t')) {
        (*v)++;
        (*n)--;
    }
    while (*n > 0 && ((*v)[*n - 1] == ' ' || (*v)[*n - 1] == '\t'))
        (*n)--;
}

static bool value_is(const char *v, size_t n, const char *want)
{
    return n == strlen(want) && strncasecmp(v, want, n) == 0;
}

/* A line without its line end: CR is only allowed right before LF. */
static int check_chars(const char *line, size_t len, const char **msg)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)line[i];
        if (ch == '\0' || ch == '\r' || (ch < 0x20 && ch != '\t') || ch == 0x7f) {
            *msg = "control character in the request head";
            return 400;
        }
    }
    return 0;
}

/* request-line = method SP request-target SP HTTP-version */
int bt__guard_check_request_line(const char *line, size_t len, bool *is_head, const char **msg)
{
    if (len == 0) {
        *msg = "empty line before the request line";
        return 400;
    }
    int st = check_chars(line, len, msg);
    if (st != 0)
        return st;
    const char *sp1 = memchr(line, ' ', len);
    const char *sp2 = sp1 != NULL ? memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - line)) : NULL;
    if (sp1 == NULL || sp2 == NULL || sp1 == line || sp2 == sp1 + 1 ||
        memchr(sp2 + 1, ' ', len - (size_t)(sp2 + 1 - line)) != NULL) {
        *msg = "malformed request line";
        return 400;
    }
    size_t ml = (size_t)(sp1 - line);
    for (size_t i = 0; i < ml; i++)
        if (!is_tchar((unsigned char)line[i])) {
            *msg = "malformed request line";
            return 400;
        }
    const char *target = sp1 + 1;
    size_t tl = (size_t)(sp2 - target);
    for (size_t i = 0; i < tl; i++)
        if ((unsigned char)target[i] <= 0x20 || (unsigned char)target[i] >= 0x7f) {
            *msg = "malformed request target";
            return 400;
        }
    bool absolute = (tl > 7 && strncasecmp(target, "http://", 7) == 0) ||
                    (tl > 8 && strncasecmp(target, "https://", 8) == 0);
    if (!(target[0] == '/' || (tl == 1 && target[0] == '*') || absolute)) {
        *msg = "malformed request target";
        return 400;
    }
    if (absolute) {
        /* evhttp parses an absolute-form target itself and answers 400 in
         * HTML when it cannot: parse it the same way first. */
        char *copy = bt_malloc(tl + 1);
        if (copy == NULL) {
            *msg = "out of memory";
            return 503;
        }
        memcpy(copy, target, tl);
        copy[tl] = '\0';
        struct evhttp_uri *u = evhttp_uri_parse_with_flags(copy, EVHTTP_URI_NONCONFORMANT);
        bt_free(copy);
        if (u == NULL) {
            *msg = "malformed request target";
            return 400;
        }
        evhttp_uri_free(u);
    }
    const char *ver = sp2 + 1;
    size_t vl = len - (size_t)(ver - line);
    if (vl != 8 || strncmp(ver, "HTTP/", 5) != 0 || ver[6] != '.' || ver[5] < '0' || ver[5] > '9' ||
        ver[7] < '0' || ver[7] > '9') {
        *msg = "malformed HTTP version";
        return 400;
    }
    if (ver[5] != '1') {
        *msg = "HTTP version not supported";
        return 505;
    }
    bool known = false;
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (ml == strlen(methods[i]) && memcmp(line, methods[i], ml) == 0)
            known = true;
    if (!known) {
        *msg = "method not implemented";
        return 501;
    }
    *is_head = ml == 4 && memcmp(line, "HEAD", 4) == 0;
    return 0;
}

/* A field line of the head (trailer false) or of the trailer section. */
static int check_field_line(conn *c, const char *line, size_t len, bool trailer, const char **msg)
{
    int st = check_chars(line, len, msg);
    if (st != 0)
        return st;
    if (line[0] == ' ' || line[0] == '\t') {
        *msg = "obsolete line folding in a header";
        return 400;
    }
    const char *colon = memchr(line, ':', len);
    if (colon == NULL || colon == line) {
        *msg = "malformed header line";
        return 400;
    }
    for (const char *q = line; q < colon; q++)
        if (!is_tchar((unsigned char)*q)) {
            *msg = "malformed header name";
            return 400;
        }
    size_t nlen = (size_t)(colon - line);
    const char *v = colon + 1;
    size_t vlen = len - nlen - 1;
    trim_ows(&v, &vlen);
    bool is_cl = nlen == 14 && strncasecmp(line, "content-length", 14) == 0;
    bool is_te = nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0;
    if (trailer) {
        if (is_cl || is_te || (nlen == 4 && strncasecmp(line, "host", 4) == 0)) {
            *msg = "framing field in a trailer";
            return 400;
        }
        return 0;
    }
    if (is_cl) {
        if (++c->ncl > 1) {
            *msg = "more than one Content-Length";
            return 400;
        }
        if (vlen == 0 || vlen > 18) {
            *msg = "invalid Content-Length";
            return 400;
        }
        uint64_t n = 0;
        for (size_t i = 0; i < vlen; i++) {
            if (v[i] < '0' || v[i] > '9') {
                *msg = "invalid Content-Length";
                return 400;
            }
            n = n * 10 + (uint64_t)(v[i] - '0');
        }
        c->cl = n;
    } else if (is_te) {
        if (++c->nte > 1) {
            *msg = "more than one Transfer-Encoding";
            return 400;
        }
        /* evhttp decodes chunked and nothing else: a coding list, even one
         * that ends in chunked, would not be read the way it is framed. */
        if (!value_is(v, vlen, "chunked")) {
            *msg = "unsupported Transfer-Encoding";
            return 400;
        }
        c->chunked = true;
    } else if (nlen == 6 && strncasecmp(line, "expect", 6) == 0) {
        if (!value_is(v, vlen, "100-continue")) {
            *msg = "unsupported expectation";
            return 417;
        }
    }
    return 0;
}

/* The head is complete: how is the body framed? */
static int check_framing(conn *c, const char **msg)
{
    if (c->ncl && c->nte) {
        *msg = "both Transfer-Encoding and Content-Length";
        return 400;
    }
    /* evhttp reads no body after HEAD: its bytes would be parsed as the
     * next request. */
    if (c->is_head && (c->nte || c->cl > 0)) {
        *msg = "a HEAD request with a body";
        return 400;
    }
    if (c->ncl && c->cl > c->g->app->max_body_bytes) {
        *msg = "request body too large";
        return 413;
    }
    return 0;
}

/* chunk-size = 1*HEXDIG; chunk extensions are refused: evhttp 2.1 cannot
 * parse them (it answers 413 in HTML). */
static int parse_chunk_line(const char *line, size_t len, uint64_t *size, const char **msg)
{
    uint64_t n = 0;
    size_t i = 0;
    for (; i < len && is_hex((unsigned char)line[i]); i++) {
        if (i == 15)
            break;
        unsigned char ch = (unsigned char)line[i];
        n = n * 16 + (uint64_t)(ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
    }
    if (i == 0 || i != len) {
        *msg = i > 0 && i < len && line[i] == ';' ? "chunk extensions are not supported"
                                                  : "invalid chunk size";
        return 400;
    }
    *size = n;
    return 0;
}

static void message_reset(conn *c)
{
    c->st = C_HEAD;
    c->head_started = false;
    c->head_bytes = 0;
    c->nlines = 0;
    c->ncl = c->nte = 0;
    c->cl = 0;
    c->chunked = c->is_head = false;
    c->linelen = 0;
    c->body_total = 0;
    c->body_recv = 0;
    c->msg_start = c->seen;
    if (c->started)
        event_del(c->timer);
}

static void start_body(conn *c, enum conn_state st, uint64_t left)
{
    c->st = st;
    c->body_left = left;
    c->body_total = 0;
    c->body_recv = 0;
    c->linelen = 0;
    c->since_ns = now_ns();
    arm(c, c->g->app->body_grace_ms);
}

/* Returns 0, 1 when the line would pass cap, -1 out of memory. */
static int line_add(conn *c, unsigned char ch, size_t cap)
{
    if (c->linelen == cap)
        return 1;
    if (c->linelen == c->linecap) {
        size_t ncap = c->linecap ? c->linecap * 2 : 128;
        if (ncap > cap)
            ncap = cap;
        char *p = bt_realloc(c->line, ncap);
        if (p == NULL)
            return -1;
        c->line = p;
        c->linecap = ncap;
    }
    c->line[c->linelen++] = (char)ch;
    return 0;
}

/* Look at n new bytes of the stream. Returns how many it used; less than
 * n when the message was refused or ended (the caller goes on). */
static size_t look(conn *c, const unsigned char *b, size_t n)
{
    bt_http_app *app = c->g->app;
    const char *msg = NULL;
    int st;
    switch (c->st) {
    case C_HEAD:
    case C_TRAILER:
        if (!c->head_started) {
            c->head_started = true;
            c->since_ns = now_ns();
            arm(c, app->head_timeout_ms);
        }
        for (size_t i = 0; i < n; i++) {
            c->seen++;
            if (c->st == C_TRAILER)
                c->body_recv++;
            if (++c->head_bytes > app->max_header_bytes) {
                refuse(c, 431,
                       c->st == C_HEAD ? "request header fields too large"
                                       : "trailer fields too large");
                return i + 1;
            }
            if (b[i] != '\n') {
                int rc = line_add(c, b[i], app->max_header_bytes);
                if (rc != 0) {
                    refuse(c, rc < 0 ? 503 : 431,
                           rc < 0 ? "out of memory" : "request header fields too large");
                    return i + 1;
                }
                continue;
            }
            size_t len = c->linelen;
            if (len > 0 && c->line[len - 1] == '\r')
                len--;
            c->linelen = 0;
            if (c->st == C_HEAD && c->nlines++ == 0) {
                st = bt__guard_check_request_line(c->line, len, &c->is_head, &msg);
            } else if (len == 0) {
                if (c->st == C_TRAILER) {
                    message_reset(c);
                    return i + 1;
                }
                st = check_framing(c, &msg);
                if (st == 0) {
                    if (c->chunked)
                        start_body(c, C_CHUNK_SIZE, 0);
                    else if (c->cl > 0)
                        start_body(c, C_BODY, c->cl);
                    else
                        message_reset(c);
                    return i + 1;
                }
            } else {
                st = check_field_line(c, c->line, len, c->st == C_TRAILER, &msg);
            }
            if (st != 0) {
                refuse(c, st, msg);
                return i + 1;
            }
        }
        return n;
    case C_BODY:
    case C_CHUNK_DATA: {
        size_t k = n < c->body_left ? n : (size_t)c->body_left;
        c->seen += k;
        c->body_left -= k;
        c->body_recv += k;
        if (c->body_left == 0) {
            if (c->st == C_BODY)
                message_reset(c);
            else {
                c->st = C_CHUNK_END;
                c->cr = false;
            }
        }
        return k;
    }
    case C_CHUNK_END:
        c->seen++;
        c->body_recv++;
        if (b[0] == '\r' && !c->cr) {
            c->cr = true;
            return 1;
        }
        if (b[0] != '\n') {
            refuse(c, 400, "malformed chunked body");
            return 1;
        }
        c->st = C_CHUNK_SIZE;
        c->linelen = 0;
        return 1;
    case C_CHUNK_SIZE:
        for (size_t i = 0; i < n; i++) {
            c->seen++;
            c->body_recv++;
            if (b[i] != '\n') {
                int rc = line_add(c, b[i], CHUNK_LINE_MAX);
                if (rc != 0) {
                    refuse(c, rc < 0 ? 503 : 400, rc < 0 ? "out of memory" : "invalid chunk size");
                    return i + 1;
                }
                continue;
            }
            size_t len = c->linelen;
            if (len > 0 && c->line[len - 1] == '\r')
                len--;
            c->linelen = 0;
            uint64_t size;
            st = parse_chunk_line(c->line, len, &size, &msg);
            if (st == 0 && c->body_total + size > app->max_body_bytes) {
                st = 413;
                msg = "request body too large";
            }
            if (st != 0) {
                refuse(c, st, msg);
                return i + 1;
            }
            c->body_total += size; /* declared, not received: the cap only */
            if (size == 0) {
                c->st = C_TRAILER;
                c->head_bytes = 0;
                c->head_started = true; /* the trailers are timed with the body */
            } else {
                c->st = C_CHUNK_DATA;
                c->body_left = size;
            }
            return i + 1;
        }
        return n;
    case C_REFUSE:
    case C_CLOSING:
        break;
    }
    c->seen += n;
    return n;
}

/* The evbuffer callback on the connection's input: bytes were added by a
 * read (before evhttp's read callback sees them) or removed by evhttp. */
static void on_input(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    conn *c = arg;
    if (c->in_cb || info->n_added == 0 || c->g == NULL)
        return;
    c->added += info->n_added;
    if (c->st == C_REFUSE || c->st == C_CLOSING) {
        c->in_cb = true;
        evbuffer_drain(buf, info->n_added);
        c->in_cb = false;
        return;
    }
    size_t len = evbuffer_get_length(buf);
    size_t off = len - info->n_added;
    struct evbuffer_ptr ptr;
    while (off < len && c->st != C_REFUSE) {
        if (evbuffer_ptr_set(buf, &ptr, off, EVBUFFER_PTR_SET) != 0)
            break;
        struct evbuffer_iovec v;
        if (evbuffer_peek(buf, -1, &ptr, &v, 1) < 1 || v.iov_len == 0)
            break;
        size_t avail = v.iov_len < len - off ? v.iov_len : len - off;
        size_t used = look(c, v.iov_base, avail);
        if (c->st == C_REFUSE)
            return; /* refuse removed the message's bytes, this read's included */
        off += used;
    }
}

/* ---- Deadlines and life -------------------------------------------------- */

static void conn_release(conn *c)
{
    bt__guard *g = c->g;
#ifdef BT_HAVE_OPENSSL
    if (c->tls)
        bt__tls_log_failure(c->bev, &c->tls_info);
#endif
    bt__list_remove(&c->link);
    if (c->counted)
        atomic_fetch_sub_explicit(&g->app->open_conns, 1, memory_order_relaxed);
    evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->watch);
    event_free(c->timer);
    bt_free(c->line);
    bufferevent_decref(c->bev);
    bt_free(c);
}

/* evhttp frees the connection: the guard lets go. */
static void on_evhttp_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    conn_release(arg);
}

/* evhttp clears the callbacks of a bufferevent it frees. */
static bool conn_dead(conn *c)
{
    bufferevent_data_cb rcb = NULL;
    bufferevent_event_cb ecb = NULL;
    bufferevent_getcb(c->bev, &rcb, NULL, &ecb, NULL);
    return rcb == NULL && ecb == NULL;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    conn *c = arg;
    (void)fd;
    (void)what;
    if (!c->started) {
        /* evhttp has made its connection by now: ask it to say when it
         * frees it. */
        void *cbarg = NULL;
        if (conn_dead(c)) {
            conn_release(c);
            return;
        }
        bufferevent_getcb(c->bev, NULL, NULL, NULL, &cbarg);
        evhttp_connection_set_closecb(cbarg, on_evhttp_close, c);
        c->started = true;
        /* On to whatever is due: a refusal, a deadline. */
    }
    bt__guard *g = c->g;
    bt_http_app *app = g->app;
    uint64_t now = now_ns();
    switch (c->st) {
    case C_HEAD:
        if (!c->head_started)
            return;
        if (now - c->since_ns >= app->head_timeout_ms * 1000000ull) {
#ifdef BT_HAVE_OPENSSL
            if (c->tls && !c->tls_info.handshake_done) {
                /* evhttp ends the connection as on the client's EOF; its
                 * close callback releases c. */
                atomic_fetch_add_explicit(&app->refused_requests, 1, memory_order_relaxed);
                bt_log(BT_LOG_DEBUG, "http: TLS handshake not done within %llu ms: closed",
                       (unsigned long long)app->head_timeout_ms);
                bufferevent_trigger_event(c->bev, BEV_EVENT_EOF | BEV_EVENT_READING, 0);
                return;
            }
#endif
            refuse(c, 408, "request head not received in time");
            return;
        }
        arm(c, app->head_timeout_ms - (now - c->since_ns) / 1000000 + 1);
        return;
    case C_BODY:
    case C_CHUNK_SIZE:
    case C_CHUNK_DATA:
    case C_CHUNK_END:
    case C_TRAILER: {
        /* The body may take body_grace_ms, plus a second per min_body_rate
         * bytes received so far (chunk framing and trailers included; a
         * chunk's declared size counts only as its bytes arrive): a client
         * that stops or trickles falls behind. */
        uint64_t allowed_ms = app->body_grace_ms + c->body_recv * 1000 / app->min_body_rate;
        uint64_t spent_ms = (now - c->since_ns) / 1000000;
        if (spent_ms >= allowed_ms) {
            refuse(c, 408, "request body not received in time");
            return;
        }
        arm(c, allowed_ms - spent_ms + 1);
        return;
    }
    case C_REFUSE:
        if (evbuffer_get_length(bufferevent_get_input(c->bev)) != 0 ||
            evbuffer_get_length(bufferevent_get_output(c->bev)) != 0 ||
            bt__http_server_conn_busy(g->srv, c->bev)) {
            arm(c, POLL_MS);
            return;
        }
        write_refusal(c);
        arm(c, POLL_MS);
        return;
    case C_CLOSING:
        if (!c->shut && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
            evutil_socket_t s = bufferevent_getfd(c->bev);
            if (s >= 0)
                shutdown(s, SHUT_WR);
            c->shut = true;
        }
        if (now >= c->close_at_ns ||
            (c->shut && now + LINGER_MS * 1000000ull / 2 >= c->close_at_ns)) {
            /* evhttp ends the connection as on the client's EOF; its
             * close callback releases c. */
            bufferevent_trigger_event(c->bev, BEV_EVENT_EOF | BEV_EVENT_READING, 0);
            return;
        }
        arm(c, POLL_MS);
        return;
    }
}

static void log_refused(bt__guard *g)
{
    g->refused++;
    uint64_t now = now_ns();
    if (g->refused_logged_ns == 0 || now - g->refused_logged_ns >= LOG_INTERVAL_MS * 1000000ull) {
        bt_log(BT_LOG_WARN,
               "http: %llu connections refused (503) since the last such line: "
               "%u connections open, the most the app allows",
               (unsigned long long)g->refused, g->app->max_connections);
        g->refused = 0;
        g->refused_logged_ns = now;
    }
}

/* A new connection's bufferevent: an OpenSSL one when the app serves
 * TLS. NULL when out of memory. */
static struct bufferevent *new_bev(bt__guard *g, struct event_base *base, bt__tls_info *info)
{
#ifdef BT_HAVE_OPENSSL
    if (g->app->tls != NULL)
        return bt__tls_bev_new(g->app, base, info);
#endif
    return bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
}

static void no_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    (void)arg;
}

/* Out of memory with TLS: evhttp must not serve plain HTTP on the TLS
 * port, which it would do with a NULL from bt__guard_bevcb. An unguarded
 * OpenSSL bufferevent if one can be made, else a plain one that reports
 * an error as soon as the loop runs its deferred callbacks, after evhttp
 * has taken it: evhttp then closes the connection unread. */
static struct bufferevent *unguarded_bev(bt__guard *g, struct event_base *base)
{
    if (g->app->tls == NULL)
        return NULL;
    struct bufferevent *bev = new_bev(g, base, NULL);
    if (bev != NULL)
        return bev;
    bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev != NULL) {
        /* libevent drops an event for a bufferevent without an event
         * callback, but calls the one set when the deferred call runs:
         * evhttp's by then. */
        bufferevent_setcb(bev, NULL, NULL, no_event, NULL);
        bufferevent_trigger_event(bev, BEV_EVENT_ERROR | BEV_EVENT_READING,
                                  BEV_TRIG_DEFER_CALLBACKS);
    }
    return bev;
}

/* evhttp_set_bevcb's callback: a new connection's bufferevent, before
 * evhttp gives it the socket. NULL lets evhttp make a plain one (out of
 * memory without TLS: the connection goes unguarded rather than
 * refused). */
struct bufferevent *bt__guard_bevcb(struct event_base *base, void *arg)
{
    bt__guard *g = arg;
    conn *c = bt_calloc(1, sizeof *c);
    if (c == NULL)
        return unguarded_bev(g, base);
    bt__list_init(&c->link);
    c->tls = g->app->tls != NULL;
    c->bev = new_bev(g, base, &c->tls_info);
    c->timer = event_new(base, -1, 0, on_timer, c);
    if (c->bev != NULL)
        c->watch = evbuffer_add_cb(bufferevent_get_input(c->bev), on_input, c);
    if (c->bev == NULL || c->timer == NULL || c->watch == NULL) {
        if (c->bev != NULL)
            bufferevent_free(c->bev);
        if (c->timer != NULL)
            event_free(c->timer);
        bt_free(c);
        return unguarded_bev(g, base);
    }
    bufferevent_incref(c->bev); /* the guard's, until evhttp's close callback */
    c->g = g;
    bt__list_push_front(&g->conns, &c->link);
    unsigned open = atomic_fetch_add_explicit(&g->app->open_conns, 1, memory_order_relaxed);
    c->counted = true;
    c->head_started = true;
    c->since_ns = now_ns();
    if (open >= g->app->max_connections) {
        atomic_fetch_add_explicit(&g->app->refused_conns, 1, memory_order_relaxed);
        log_refused(g);
        c->st = C_REFUSE;
        c->status = 503;
        c->msg = "too many open connections";
    }
    struct timeval zero = { 0, 0 };
    event_add(c->timer, &zero); /* on_timer's first run, once evhttp has the connection */
    return c->bev;
}

int bt__guard_init(bt__guard *g, bt_http_server *srv, bt_http_app *app, struct event_base *base,
                   bt__http_stats *stats)
{
    memset(g, 0, sizeof *g);
    bt__list_init(&g->conns);
    g->srv = srv;
    g->app = app;
    g->stats = stats;
    g->accept_timer = event_new(base, -1, 0, on_accept_resume, g);
    return g->accept_timer != NULL ? 0 : BT_ENOMEM;
}

/* After evhttp_free, which has freed every connection (and called the
 * close callbacks of those it had started): what is left never started. */
void bt__guard_close(bt__guard *g)
{
    bt__guard_forget_listeners(g);
    while (!bt__list_empty(&g->conns))
        conn_release(BT__LIST_ENTRY(g->conns.next, conn, link));
    if (g->accept_timer != NULL) {
        event_free(g->accept_timer);
        g->accept_timer = NULL;
    }
}
