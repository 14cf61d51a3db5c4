/* The local HTTP server of the curl tests: see curl_server.h. */
#include "curl_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

struct curl_server {
    struct event_base *base;
    struct evhttp *http;
    struct evconnlistener *drop;
    struct evconnlistener *raw[4]; /* see raw_mode */
    int raw_port[4];
    _Atomic long raw_accepted[4], raw_requests[4], raw_open[4];
    struct event *stop_ev;
    int stop_pipe[2];
    pthread_t thread;
    int port, drop_port;
    _Atomic long accepted, open, peak_open, requests;
    _Atomic long slow_active, slow_peak, slow_aborted;
    _Atomic long flaky;     /* requests to /flaky so far */
    struct slow_ctx *slows; /* replies still waiting (server thread) */
};

static void peak(_Atomic long *cur, _Atomic long *pk, long delta)
{
    long now = atomic_fetch_add(cur, delta) + delta;
    long p = atomic_load(pk);
    while (now > p && !atomic_compare_exchange_weak(pk, &p, now))
        ;
}

/* ---- Connection counting ------------------------------------------------ */

static struct bufferevent *on_new_conn(struct event_base *base, void *arg)
{
    curl_server *s = arg;
    atomic_fetch_add(&s->accepted, 1);
    peak(&s->open, &s->peak_open, 1);
    return bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
}

static void on_conn_closed(struct evhttp_connection *evcon, void *arg)
{
    curl_server *s = arg;
    (void)evcon;
    atomic_fetch_sub(&s->open, 1);
}

/* ---- Routes -------------------------------------------------------------- */

static long query_long(struct evhttp_request *req, const char *name, long def)
{
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *q = evhttp_uri_get_query(u);
    struct evkeyvalq kv;
    long v = def;
    if (q && evhttp_parse_query_str(q, &kv) == 0) {
        const char *s = evhttp_find_header(&kv, name);
        if (s)
            v = atol(s);
        evhttp_clear_headers(&kv);
    }
    return v;
}

static void reply_text(struct evhttp_request *req, int code, const char *text)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, text, strlen(text));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Status", b);
    evbuffer_free(b);
}

static void route_echo(curl_server *s, struct evhttp_request *req)
{
    (void)s;
    static const char *methods[] = { "GET",     "POST",  "HEAD",    "PUT",  "DELETE",
                                     "OPTIONS", "TRACE", "CONNECT", "PATCH" };
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const char *m = "?";
    for (int i = 0; i < 9; i++)
        if ((int)cmd == (1 << i))
            m = methods[i];
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "X-Echo-Method", m);
    evhttp_add_header(out, "X-Echo-Uri", evhttp_request_get_uri(req));
    struct evkeyval *h;
    TAILQ_FOREACH(h, evhttp_request_get_input_headers(req), next)
    {
        char name[256];
        snprintf(name, sizeof name, "X-Req-%s", h->key);
        evhttp_add_header(out, name, h->value);
    }
    evhttp_add_header(out, "Content-Type", "application/octet-stream");
    evhttp_send_reply(req, 200, "OK", evhttp_request_get_input_buffer(req));
}

/* A slow reply polls its connection every 10 ms: evhttp does not notice a
 * client that leaves while a handler holds the request, and the tests want
 * to see cancelled transfers close their connections. */
typedef struct slow_ctx {
    struct slow_ctx *prev, *next;
    curl_server *s;
    struct evhttp_request *req;
    struct event *ev;
    int fd;
    long left_ms;
} slow_ctx;

static void slow_free(slow_ctx *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->s->slows = c->next;
    if (c->next)
        c->next->prev = c->prev;
    event_free(c->ev);
    free(c);
}

static void slow_tick(evutil_socket_t fd, short what, void *arg)
{
    slow_ctx *c = arg;
    (void)fd;
    (void)what;
    char b;
    ssize_t n = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    bool gone = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
    c->left_ms -= 10;
    if (!gone && c->left_ms > 0)
        return;
    if (gone)
        atomic_fetch_add(&c->s->slow_aborted, 1);
    atomic_fetch_sub(&c->s->slow_active, 1);
    reply_text(c->req, 200, "slow"); /* to a closed peer: evhttp cleans up */
    slow_free(c);
}

static void route_slow(curl_server *s, struct evhttp_request *req)
{
    slow_ctx *c = calloc(1, sizeof *c);
    c->s = s;
    c->req = req;
    c->left_ms = query_long(req, "ms", 1000);
    c->fd =
        bufferevent_getfd(evhttp_connection_get_bufferevent(evhttp_request_get_connection(req)));
    c->ev = event_new(s->base, -1, EV_PERSIST, slow_tick, c);
    c->next = s->slows;
    if (s->slows)
        s->slows->prev = c;
    s->slows = c;
    peak(&s->slow_active, &s->slow_peak, 1);
    struct timeval tv = { 0, 10000 };
    evtimer_add(c->ev, &tv);
}

/* The first `fail` requests to /flaky (all of them with fail=-1) get
 * status `code` (503 by default), with "Retry-After: <ra>" or an HTTP-date
 * radate seconds ahead if asked; later ones a 200 with the body (or "ok"). */
static void route_flaky(curl_server *s, struct evhttp_request *req)
{
    long n = atomic_fetch_add(&s->flaky, 1);
    long fail = query_long(req, "fail", 1);
    if (fail >= 0 && n >= fail) {
        /* The body back, so that a test sees a retried body arrive whole. */
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        if (evbuffer_get_length(in) > 0)
            evhttp_send_reply(req, 200, "OK", in);
        else
            reply_text(req, 200, "ok");
        return;
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    char v[64];
    long ra = query_long(req, "ra", -1), radate = query_long(req, "radate", -1);
    if (ra >= 0) {
        snprintf(v, sizeof v, "%ld", ra);
        evhttp_add_header(out, "Retry-After", v);
    } else if (radate >= 0) {
        time_t t = time(NULL) + radate;
        struct tm tm;
        strftime(v, sizeof v, "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&t, &tm));
        evhttp_add_header(out, "Retry-After", v);
    }
    reply_text(req, (int)query_long(req, "code", 503), "try again");
}

static void route_large(struct evhttp_request *req)
{
    long n = query_long(req, "n", 1 << 20);
    struct evbuffer *b = evbuffer_new();
    char chunk[4096];
    for (long off = 0; off < n; off += (long)sizeof chunk) {
        long k = n - off < (long)sizeof chunk ? n - off : (long)sizeof chunk;
        for (long i = 0; i < k; i++)
            chunk[i] = (char)('a' + (off + i) % 26);
        evbuffer_add(b, chunk, (size_t)k);
    }
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    curl_server *s = arg;
    atomic_fetch_add(&s->requests, 1);
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_conn_closed, s);
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (path == NULL)
        path = "/";
    if (strcmp(path, "/hello") == 0) {
        reply_text(req, 200, "hello world\n");
    } else if (strcmp(path, "/echo") == 0) {
        route_echo(s, req);
    } else if (strncmp(path, "/status/", 8) == 0) {
        int code = atoi(path + 8);
        char text[32];
        snprintf(text, sizeof text, "status %d", code);
        reply_text(req, code, text);
    } else if (strcmp(path, "/slow") == 0) {
        route_slow(s, req);
    } else if (strcmp(path, "/flaky") == 0) {
        route_flaky(s, req);
    } else if (strcmp(path, "/large") == 0) {
        route_large(req);
    } else if (strncmp(path, "/redirect/", 10) == 0) {
        int n = atoi(path + 10);
        if (n <= 0) {
            reply_text(req, 200, "done");
        } else {
            char loc[64];
            snprintf(loc, sizeof loc, "/redirect/%d", n - 1);
            evhttp_add_header(evhttp_request_get_output_headers(req), "Location", loc);
            reply_text(req, 302, "moved");
        }
    } else {
        reply_text(req, 404, "not found");
    }
}

/* ---- The dropping socket --------------------------------------------------- */

static void drop_read(evutil_socket_t fd, short what, void *arg)
{
    struct event **evp = arg;
    char buf[4096];
    (void)what;
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
        static const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n"
                                   "Content-Type: text/plain\r\n\r\n";
        char body[1000];
        memset(body, 'x', sizeof body);
        if (send(fd, head, sizeof head - 1, MSG_NOSIGNAL) < 0 ||
            send(fd, body, sizeof body, MSG_NOSIGNAL) < 0)
            perror("curl_server: drop send");
        usleep(20000); /* let the client read the part before the reset */
        struct linger lg = { 1, 0 };
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
    }
    event_free(*evp);
    free(evp);
    close(fd);
}

static void on_drop_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                           int len, void *arg)
{
    curl_server *s = arg;
    (void)l;
    (void)sa;
    (void)len;
    atomic_fetch_add(&s->accepted, 1);
    struct event **evp = malloc(sizeof *evp);
    *evp = event_new(s->base, fd, EV_READ | EV_PERSIST, drop_read, evp);
    event_add(*evp, NULL);
}

/* ---- Raw peers: endless, silent, closing ------------------------------------ */

/* Three misbehaving peers on raw sockets (bufferevents), one port each:
 * - RAW_ENDLESS answers any request with a 200 without a length and
 *   then body bytes for as long as the client reads them;
 * - RAW_SILENT accepts and reads, and never answers;
 * - RAW_CLOSING answers each request with a keep-alive 200 ("ok", a
 *   Content-Length, no "Connection: close") and then closes the
 *   connection, as a server whose keep-alive timeout is shorter than its
 *   client's does once it expires. */
enum { RAW_ENDLESS, RAW_SILENT, RAW_CLOSING, RAW_STALE, RAW_N };

typedef struct {
    curl_server *s;
    int mode;
    int served;
} raw_conn;

static void raw_free(struct bufferevent *bev, raw_conn *rc)
{
    atomic_fetch_sub(&rc->s->raw_open[rc->mode], 1);
    bufferevent_free(bev);
    free(rc);
}

static void raw_event(struct bufferevent *bev, short what, void *arg);

static void raw_endless_more(struct bufferevent *bev, void *arg)
{
    (void)arg;
    static char chunk[65536];
    memset(chunk, 'e', sizeof chunk);
    bufferevent_write(bev, chunk, sizeof chunk);
}

static void raw_closing_done(struct bufferevent *bev, void *arg)
{
    /* The reply is flushed: close, with nothing said about it. */
    raw_free(bev, arg);
}

static void raw_read(struct bufferevent *bev, void *arg)
{
    raw_conn *rc = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    /* One request per head; a body, if any, is ignored. */
    for (;;) {
        struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (end.pos < 0)
            return;
        evbuffer_drain(in, (size_t)end.pos + 4);
        atomic_fetch_add(&rc->s->raw_requests[rc->mode], 1);
        if (rc->mode == RAW_SILENT)
            continue;
        if (rc->mode == RAW_STALE && rc->served++ > 0) {
            /* The keep-alive race: this request crossed our close. */
            raw_free(bev, rc);
            return;
        }
        if (rc->mode == RAW_ENDLESS) {
            static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: "
                                       "application/octet-stream\r\nConnection: close\r\n\r\n";
            bufferevent_write(bev, head, sizeof head - 1);
            bufferevent_setwatermark(bev, EV_WRITE, 65536, 0);
            bufferevent_setcb(bev, NULL, raw_endless_more, raw_event, rc);
            raw_endless_more(bev, rc);
            return;
        }
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                 "Content-Length: 2\r\n\r\nok";
        bufferevent_write(bev, ok, sizeof ok - 1);
        if (rc->mode == RAW_STALE)
            continue;
        bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
        bufferevent_setcb(bev, NULL, raw_closing_done, raw_event, rc);
        evbuffer_drain(in, evbuffer_get_length(in));
        return;
    }
}

static void raw_event(struct bufferevent *bev, short what, void *arg)
{
    (void)what; /* EOF or an error: the client is gone */
    raw_free(bev, arg);
}

static void on_raw_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                          int len, void *arg)
{
    curl_server *s = arg;
    (void)sa;
    (void)len;
    int mode = 0;
    while (mode < RAW_N - 1 && s->raw[mode] != l)
        mode++;
    atomic_fetch_add(&s->raw_accepted[mode], 1);
    atomic_fetch_add(&s->raw_open[mode], 1);
    raw_conn *rc = calloc(1, sizeof *rc);
    rc->s = s;
    rc->mode = mode;
    struct bufferevent *bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(bev, raw_read, NULL, raw_event, rc);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

/* ---- Life ------------------------------------------------------------------ */

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    curl_server *s = arg;
    (void)fd;
    (void)what;
    event_base_loopbreak(s->base);
}

static void *server_main(void *arg)
{
    curl_server *s = arg;
    event_base_dispatch(s->base);
    return NULL;
}

static int bound_port(evutil_socket_t fd)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    if (getsockname(fd, (struct sockaddr *)&sin, &len) != 0)
        return -1;
    return ntohs(sin.sin_port);
}

static curl_server *server_new(void)
{
    curl_server *s = calloc(1, sizeof *s);
    s->stop_pipe[0] = s->stop_pipe[1] = -1;
    s->base = event_base_new();
    s->http = s->base ? evhttp_new(s->base) : NULL;
    if (s->http == NULL || pipe(s->stop_pipe) != 0)
        goto fail;
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(s->http, on_request, s);
    evhttp_set_bevcb(s->http, on_new_conn, s);
    evhttp_set_max_body_size(s->http, 64 << 20);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(s->http, "127.0.0.1", 0);
    if (bs == NULL)
        goto fail;
    s->port = bound_port(evhttp_bound_socket_get_fd(bs));

    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    s->drop = evconnlistener_new_bind(s->base, on_drop_accept, s,
                                      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 128,
                                      (struct sockaddr *)&sin, sizeof sin);
    if (s->drop == NULL)
        goto fail;
    s->drop_port = bound_port(evconnlistener_get_fd(s->drop));
    for (int i = 0; i < RAW_N; i++) {
        s->raw[i] = evconnlistener_new_bind(s->base, on_raw_accept, s,
                                            LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 128,
                                            (struct sockaddr *)&sin, sizeof sin);
        if (s->raw[i] == NULL)
            goto fail;
        s->raw_port[i] = bound_port(evconnlistener_get_fd(s->raw[i]));
    }
    s->stop_ev = event_new(s->base, s->stop_pipe[0], EV_READ, on_stop, s);
    event_add(s->stop_ev, NULL);
    return s;
fail:
    fprintf(stderr, "curl_server: could not start on 127.0.0.1: %s\n", strerror(errno));
    if (s->http)
        evhttp_free(s->http);
    if (s->base)
        event_base_free(s->base);
    free(s);
    return NULL;
}

curl_server *curl_server_start(void)
{
    /* The client under test hangs up on purpose (size limits, cancels):
     * evhttp's write(2) to it must not kill the test with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    curl_server *s = server_new();
    if (s && pthread_create(&s->thread, NULL, server_main, s) != 0) {
        fprintf(stderr, "curl_server: no thread\n");
        return NULL;
    }
    return s;
}

void curl_server_stop(curl_server *s)
{
    if (s == NULL)
        return;
    if (write(s->stop_pipe[1], "x", 1) != 1)
        perror("curl_server: stop");
    pthread_join(s->thread, NULL);
    while (s->slows)
        slow_free(s->slows); /* their requests go with evhttp_free */
    event_free(s->stop_ev);
    evconnlistener_free(s->drop);
    for (int i = 0; i < RAW_N; i++)
        evconnlistener_free(s->raw[i]);
    evhttp_free(s->http);
    event_base_free(s->base);
    close(s->stop_pipe[0]);
    close(s->stop_pipe[1]);
    free(s);
}

int curl_server_port(const curl_server *s)
{
    return s->port;
}
int curl_server_drop_port(const curl_server *s)
{
    return s->drop_port;
}
int curl_server_endless_port(const curl_server *s)
{
    return s->raw_port[RAW_ENDLESS];
}
int curl_server_silent_port(const curl_server *s)
{
    return s->raw_port[RAW_SILENT];
}
int curl_server_closing_port(const curl_server *s)
{
    return s->raw_port[RAW_CLOSING];
}
int curl_server_stale_port(const curl_server *s)
{
    return s->raw_port[RAW_STALE];
}
long curl_server_flaky(const curl_server *s)
{
    return atomic_load(&s->flaky);
}
long curl_server_raw_accepted(const curl_server *s, int port)
{
    for (int i = 0; i < RAW_N; i++)
        if (s->raw_port[i] == port)
            return atomic_load(&s->raw_accepted[i]);
    return -1;
}
long curl_server_raw_requests(const curl_server *s, int port)
{
    for (int i = 0; i < RAW_N; i++)
        if (s->raw_port[i] == port)
            return atomic_load(&s->raw_requests[i]);
    return -1;
}
long curl_server_raw_open(const curl_server *s, int port)
{
    for (int i = 0; i < RAW_N; i++)
        if (s->raw_port[i] == port)
            return atomic_load(&s->raw_open[i]);
    return -1;
}
long curl_server_accepted(const curl_server *s)
{
    return atomic_load(&s->accepted);
}
long curl_server_open(const curl_server *s)
{
    return atomic_load(&s->open);
}
long curl_server_peak_open(const curl_server *s)
{
    return atomic_load(&s->peak_open);
}
long curl_server_requests(const curl_server *s)
{
    return atomic_load(&s->requests);
}
long curl_server_slow_active(const curl_server *s)
{
    return atomic_load(&s->slow_active);
}
long curl_server_slow_peak(const curl_server *s)
{
    return atomic_load(&s->slow_peak);
}
long curl_server_slow_aborted(const curl_server *s)
{
    return atomic_load(&s->slow_aborted);
}

pid_t curl_server_fork(int *port)
{
    int p[2];
    if (pipe(p) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        close(p[0]);
        curl_server *s = server_new();
        int port_v = s ? s->port : -1;
        if (write(p[1], &port_v, sizeof port_v) != sizeof port_v || s == NULL)
            _exit(1);
        close(p[1]);
        server_main(s);
        _exit(0);
    }
    close(p[1]);
    int got = -1;
    if (read(p[0], &got, sizeof got) != sizeof got || got <= 0) {
        close(p[0]);
        curl_server_kill(pid);
        return -1;
    }
    close(p[0]);
    *port = got;
    return pid;
}

double curl_server_child_cpu(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (p == NULL)
        return -1;
    unsigned long ut = 0, st = 0;
    /* after ')': state ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

void curl_server_kill(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

int curl_blackhole_open(curl_blackhole *b)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof sin;
    b->lfd = socket(AF_INET, SOCK_STREAM, 0);
    for (int i = 0; i < 4; i++)
        b->fillers[i] = -1;
    if (b->lfd < 0 || bind(b->lfd, (struct sockaddr *)&sin, sizeof sin) != 0 ||
        listen(b->lfd, 0) != 0 || getsockname(b->lfd, (struct sockaddr *)&sin, &len) != 0) {
        curl_blackhole_close(b);
        return -1;
    }
    /* Nobody accepts: these fill the queue (a backlog of 0 holds one). */
    for (int i = 0; i < 4; i++) {
        b->fillers[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (b->fillers[i] >= 0)
            (void)connect(b->fillers[i], (struct sockaddr *)&sin, sizeof sin);
    }
    usleep(100000); /* the handshakes complete */
    b->port = ntohs(sin.sin_port);
    return 0;
}

void curl_blackhole_close(curl_blackhole *b)
{
    for (int i = 0; i < 4; i++)
        if (b->fillers[i] >= 0)
            close(b->fillers[i]);
    if (b->lfd >= 0)
        close(b->lfd);
}
