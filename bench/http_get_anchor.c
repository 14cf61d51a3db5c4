/* The anchor of bench/http_get: what a competent C programmer writes with
 * no layer on top. One curl multi handle on a libevent base through the
 * socket and timer callbacks (curl's hiperfifo.c), easy handles reused
 * with their options kept, bodies buffered, at most conc in flight, and
 * the same request headers as Baton's defaults (Accept-Encoding and a
 * User-Agent of the same length). */
#include "http_get.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <curl/curl.h>
#include <event2/event.h>

typedef struct {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    const char *url;
    const char *ua;
    int n, conc, started, ok, failed;
    CURL **idle;
    int nidle;
} anchor;

typedef struct {
    char *data;
    size_t len, cap;
} body;

typedef struct {
    anchor *a;
    struct event *ev;
} sockinfo;

double http_get_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double http_get_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static size_t on_write(char *p, size_t size, size_t n, void *arg)
{
    body *b = arg;
    size_t len = size * n;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + len + 1)
            cap *= 2;
        b->data = realloc(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, len);
    b->len += len;
    return len;
}

static void start_one(anchor *a)
{
    CURL *e;
    if (a->nidle) {
        e = a->idle[--a->nidle];
    } else {
        e = curl_easy_init();
        body *b = calloc(1, sizeof *b);
        curl_easy_setopt(e, CURLOPT_URL, a->url);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, b);
        curl_easy_setopt(e, CURLOPT_PRIVATE, b);
        /* The same request on the wire as Baton's client sends by default,
         * so the comparison measures the layer, not the request. */
        curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
        curl_easy_setopt(e, CURLOPT_USERAGENT, a->ua);
    }
    a->started++;
    curl_multi_add_handle(a->multi, e);
}

static void check_done(anchor *a)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(a->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        long status = 0;
        body *b;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&b);
        if (m->data.result == CURLE_OK && status == 200 && b->len > 0)
            a->ok++;
        else
            a->failed++;
        b->len = 0;
        curl_multi_remove_handle(a->multi, e);
        a->idle[a->nidle++] = e;
        if (a->started < a->n)
            start_one(a);
    }
    if (a->ok + a->failed == a->n)
        event_base_loopbreak(a->base);
}

static void on_event(evutil_socket_t fd, short kind, void *arg)
{
    anchor *a = arg;
    int running;
    int mask =
        ((kind & EV_READ) ? CURL_CSELECT_IN : 0) | ((kind & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(a->multi, fd, mask, &running);
    check_done(a);
}

static void on_timeout(evutil_socket_t fd, short kind, void *arg)
{
    anchor *a = arg;
    int running;
    (void)fd;
    (void)kind;
    curl_multi_socket_action(a->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(a);
}

static int on_timer(CURLM *m, long ms, void *arg)
{
    anchor *a = arg;
    (void)m;
    if (ms < 0) {
        evtimer_del(a->timer);
    } else {
        struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
        evtimer_add(a->timer, &tv);
    }
    return 0;
}

static int on_socket(CURL *e, curl_socket_t s, int what, void *arg, void *sp)
{
    anchor *a = arg;
    sockinfo *si = sp;
    (void)e;
    if (what == CURL_POLL_REMOVE) {
        if (si) {
            event_free(si->ev);
            free(si);
        }
        return 0;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                 ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (si == NULL) {
        si = calloc(1, sizeof *si);
        si->a = a;
        curl_multi_assign(a->multi, s, si);
    } else {
        event_free(si->ev);
    }
    si->ev = event_new(a->base, s, kind, on_event, a);
    event_add(si->ev, NULL);
    return 0;
}

int http_get_anchor(const char *url, int n, int conc, http_get_result *out)
{
    char ua[96];
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    snprintf(ua, sizeof ua, "baton/%s libcurl/%s", "0.1.0", v->version);
    anchor a = { .url = url, .ua = ua, .n = n, .conc = conc };
    a.base = event_base_new();
    a.multi = curl_multi_init();
    a.timer = evtimer_new(a.base, on_timeout, &a);
    a.idle = calloc((size_t)conc, sizeof *a.idle);
    curl_multi_setopt(a.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(a.multi, CURLMOPT_SOCKETDATA, &a);
    curl_multi_setopt(a.multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(a.multi, CURLMOPT_TIMERDATA, &a);
    curl_multi_setopt(a.multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)conc);
    curl_multi_setopt(a.multi, CURLMOPT_MAXCONNECTS, (long)conc);

    double t0 = http_get_now(), c0 = http_get_cpu();
    for (int i = 0; i < conc && a.started < n; i++)
        start_one(&a);
    event_base_dispatch(a.base);
    out->seconds = http_get_now() - t0;
    out->cpu = http_get_cpu() - c0;
    out->ok = a.ok;
    out->failed = a.failed;

    for (int i = 0; i < a.nidle; i++) {
        body *b;
        curl_easy_getinfo(a.idle[i], CURLINFO_PRIVATE, (char **)&b);
        free(b->data);
        free(b);
        curl_easy_cleanup(a.idle[i]);
    }
    free(a.idle);
    curl_multi_cleanup(a.multi);
    event_free(a.timer);
    event_base_free(a.base);
    return a.ok == n ? 0 : -1;
}
