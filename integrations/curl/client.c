/* The client object: settings, life, and shutdown (the loop closer). The
 * engine is in multi.c, the transfers in transfer.c. */
#include "config.h"

#include "curl-internal.h"
#include "sized.h"
#include "timeval.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#include <baton/loop.h>

/* ---- Global init ---------------------------------------------------------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;
char bt__http_default_ua[96];

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    snprintf(bt__http_default_ua, sizeof bt__http_default_ua, "baton/%s libcurl/%s",
             PACKAGE_VERSION, v ? v->version : "?");
    /* Name resolution must not block the loop: that takes curl's threaded
     * or c-ares resolver. A libcurl without one resolves inside
     * curl_multi_socket_action, on the loop thread. */
    if (v && !(v->features & CURL_VERSION_ASYNCHDNS))
        bt_log(BT_LOG_WARN,
               "libcurl %s has no asynchronous resolver: DNS lookups will "
               "block the loop",
               v->version);
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
    bt__list *n;
    while ((n = bt__list_first(&c->xfers)) != NULL) {
        xfer *x = BT__LIST_ENTRY(n, xfer, node);
        if (x->future) {
            bt_future_set_cancelled(x->future);
            x->future = NULL;
            c->stats.cancelled++;
        }
        bt__xfer_release(x);
    }
    c->closed = true;
    while (c->nidle)
        curl_easy_cleanup(c->idle[--c->nidle].easy);
    bt__idle_shutdown(c);
    /* Before the event_base goes: curl may still report sockets to stop
     * watching while it closes its cached connections. */
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    bt__http_watches_free(c);
    event_free(c->curl_timer);
    c->curl_timer = NULL;
}

static void on_loop_close(void *arg)
{
    client_shutdown(arg);
}

void bt__http_client_destroy(bt_http_client *c)
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
    bt_free(c->accept_encoding);
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
    bt__http_client_destroy(c);
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
    bt__list_init(&c->xfers);
    bt__list_init(&c->watches);
    c->multi = curl_multi_init();
    if (c->multi == NULL || bt__http_multi_wire(c) != 0 || bt__idle_init(c) != 0 ||
        bt_loop_add_closer(loop, on_loop_close, c)) {
        if (c->multi)
            curl_multi_cleanup(c->multi);
        if (c->curl_timer)
            event_free(c->curl_timer);
        bt__idle_shutdown(c);
        bt_free(c);
        return NULL;
    }
    curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    c->gen = 1;
    c->max_total = 100;
    c->max_per_host = 0;
    client_apply_limits(c);
    c->follow = false;
    c->max_redirects = 10;
    c->verify = true;
    c->http2 = true;
    c->max_body = DEFAULT_MAX_BODY;
    c->max_buffered = DEFAULT_MAX_BUFFERED;
    /* The retry jitter's seed: any non-zero value that differs between
     * clients and runs. */
    c->rng = (bt_hrtime() ^ (uint64_t)(uintptr_t)c) | 1;
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
    if (!bt__http_has_scheme(url) ||
        (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0))
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
    c->gen++;
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

BT_EXPORT int bt_http_client_set_timeouts(bt_http_client *c, uint64_t connect_ms, uint64_t total_ms,
                                          uint64_t wait_ms)
{
    if (c == NULL || c->closed || connect_ms > INT32_MAX)
        return BT_EINVAL;
    c->connect_ms = connect_ms;
    c->total_ms = total_ms;
    c->wait_ms = wait_ms;
    c->total_tv = bt__timeval_ms(total_ms);
    c->wait_tv = bt__timeval_ms(wait_ms);
    /* Every request with the client's durations shares a common-timeout
     * queue: O(1) to arm instead of a heap insert. */
    c->total_ctv = total_ms ? event_base_init_common_timeout(c->base, &c->total_tv) : NULL;
    c->wait_ctv = wait_ms ? event_base_init_common_timeout(c->base, &c->wait_tv) : NULL;
    if (c->total_ctv == NULL)
        c->total_ctv = &c->total_tv;
    if (c->wait_ctv == NULL)
        c->wait_ctv = &c->wait_tv;
    c->gen++;
    return 0;
}

BT_EXPORT int bt_http_client_set_redirects(bt_http_client *c, bool follow, unsigned max_redirects)
{
    if (c == NULL || max_redirects > INT32_MAX)
        return BT_EINVAL;
    c->follow = follow;
    c->max_redirects = max_redirects;
    c->gen++;
    return 0;
}

BT_EXPORT int bt_http_client_set_tls_verify(bt_http_client *c, bool verify)
{
    if (c == NULL)
        return BT_EINVAL;
    c->verify = verify;
    c->gen++;
    return 0;
}

BT_EXPORT int bt_http_client_set_accept_encoding(bt_http_client *c, const char *encodings)
{
    if (c == NULL || (encodings && strpbrk(encodings, "\r\n")))
        return BT_EINVAL;
    char *copy = NULL;
    if (encodings && encodings[0] && (copy = bt_strdup(encodings)) == NULL)
        return BT_ENOMEM;
    bt_free(c->accept_encoding);
    c->accept_encoding = copy;
    c->no_accept_encoding = encodings == NULL;
    c->gen++;
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
    c->gen++;
    return 0;
}

BT_EXPORT int bt_http_client_set_http2(bt_http_client *c, bool enable)
{
    if (c == NULL)
        return BT_EINVAL;
    c->http2 = enable;
    c->gen++;
    return 0;
}

BT_EXPORT int bt_http_client_set_max_body(bt_http_client *c, size_t max_bytes)
{
    if (c == NULL)
        return BT_EINVAL;
    c->max_body = max_bytes;
    return 0;
}

BT_EXPORT int bt_http_client_set_max_buffered(bt_http_client *c, size_t max_bytes)
{
    if (c == NULL)
        return BT_EINVAL;
    c->max_buffered = max_bytes;
    return 0;
}

BT_EXPORT int bt_http_client_get_buffered(const bt_http_client *c, size_t *now, size_t *peak)
{
    if (c == NULL)
        return BT_EINVAL;
    if (now != NULL)
        *now = c->buffered;
    if (peak != NULL)
        *peak = c->buffered_peak;
    return 0;
}

BT_EXPORT int bt_http_client_get_stats(const bt_http_client *c, bt_http_client_stats *out)
{
    if (c == NULL || out == NULL)
        return BT_EINVAL;
    if (bt__sized_check(out->size, BT__SIZE_V1(bt_http_client_stats, in_flight),
                        "bt_http_client_get_stats", "bt_http_client_stats",
                        "BT_SIZED(bt_http_client_stats)") != 0)
        return BT_EINVAL;
    bt_http_client_stats st = c->stats;
    bt__sized_write(out, out->size, &st, sizeof st);
    return 0;
}
