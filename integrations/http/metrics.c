/* Prometheus text metrics for an app: every server keeps its own counters
 * (relaxed atomics written by its loop only), and a scrape, on whichever
 * loop receives it, sums them under the app's stats lock (which guards only
 * the list of servers, not the counters). */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "http-internal.h"

const double bt__http_buckets[BT__HTTP_NBUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

void bt__http_stats_observe(bt__http_stats *s, int status, uint64_t ns)
{
    if (status >= 100 && status < 600)
        atomic_fetch_add_explicit(&s->by_status[status], 1, memory_order_relaxed);
    double sec = (double)ns / 1e9;
    size_t b = 0;
    while (b < BT__HTTP_NBUCKETS && sec > bt__http_buckets[b])
        b++;
    atomic_fetch_add_explicit(&s->hist[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->sum_us, ns / 1000, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
}

typedef struct {
    char *buf;
    size_t len, cap;
    bool failed;
} sbuf;

static void sb_printf(sbuf *sb, const char *fmt, ...) BT_PRINTF(2, 3);
static void sb_printf(sbuf *sb, const char *fmt, ...)
{
    if (sb->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(sb->buf ? sb->buf + sb->len : NULL, sb->buf ? sb->cap - sb->len : 0,
                          fmt, ap);
        va_end(ap);
        if (n < 0) {
            sb->failed = true;
            return;
        }
        if (sb->buf && sb->len + (size_t)n < sb->cap) {
            sb->len += (size_t)n;
            return;
        }
        size_t cap = (sb->cap ? sb->cap : 4096);
        while (cap <= sb->len + (size_t)n)
            cap *= 2;
        char *nb = bt_realloc(sb->buf, cap);
        if (!nb) {
            sb->failed = true;
            return;
        }
        sb->buf = nb;
        sb->cap = cap;
    }
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

char *bt__http_metrics_render(bt_http_app *app)
{
    sbuf sb = {0};
    uint64_t hist[BT__HTTP_NBUCKETS + 1] = {0};
    uint64_t sum_us = 0, count = 0, in_flight = 0, cancelled = 0;
    uint64_t *status = bt_calloc(600, sizeof *status);
    if (!status)
        return NULL;
    pthread_mutex_lock(&app->stats_lock);
    for (bt__http_stats *s = app->stats; s; s = s->next) {
        for (int i = 100; i < 600; i++)
            status[i] += LOAD(s->by_status[i]);
        for (size_t b = 0; b <= BT__HTTP_NBUCKETS; b++)
            hist[b] += LOAD(s->hist[b]);
        sum_us += LOAD(s->sum_us);
        count += LOAD(s->count);
        in_flight += LOAD(s->in_flight);
        cancelled += LOAD(s->cancelled);
    }
    sb_printf(&sb, "# HELP baton_http_requests_total Requests answered, by status.\n"
                   "# TYPE baton_http_requests_total counter\n");
    for (int i = 100; i < 600; i++)
        if (status[i])
            sb_printf(&sb, "baton_http_requests_total{code=\"%d\"} %llu\n", i,
                      (unsigned long long)status[i]);
    sb_printf(&sb, "# HELP baton_http_request_duration_seconds Time from request to answer.\n"
                   "# TYPE baton_http_request_duration_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t b = 0; b < BT__HTTP_NBUCKETS; b++) {
        cum += hist[b];
        sb_printf(&sb, "baton_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                  bt__http_buckets[b], (unsigned long long)cum);
    }
    cum += hist[BT__HTTP_NBUCKETS];
    sb_printf(&sb, "baton_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
              (unsigned long long)cum);
    sb_printf(&sb, "baton_http_request_duration_seconds_sum %.6f\n", (double)sum_us / 1e6);
    sb_printf(&sb, "baton_http_request_duration_seconds_count %llu\n", (unsigned long long)count);
    sb_printf(&sb, "# HELP baton_http_requests_in_flight Requests whose handler has not answered.\n"
                   "# TYPE baton_http_requests_in_flight gauge\n"
                   "baton_http_requests_in_flight %llu\n",
              (unsigned long long)in_flight);
    sb_printf(&sb, "# HELP baton_http_handlers_cancelled_total Handlers cancelled (client gone, "
                   "shutdown deadline).\n"
                   "# TYPE baton_http_handlers_cancelled_total counter\n"
                   "baton_http_handlers_cancelled_total %llu\n",
              (unsigned long long)cancelled);
    sb_printf(&sb, "# HELP baton_loop_lag_seconds How late the loop ran a 250 ms timer, last time.\n"
                   "# TYPE baton_loop_lag_seconds gauge\n");
    for (bt__http_stats *s = app->stats; s; s = s->next)
        sb_printf(&sb, "baton_loop_lag_seconds{loop=\"%u\"} %.6f\n", s->loop_index,
                  (double)LOAD(s->lag_us) / 1e6);
    sb_printf(&sb, "# HELP baton_loop_lag_max_seconds The largest loop lag seen.\n"
                   "# TYPE baton_loop_lag_max_seconds gauge\n");
    for (bt__http_stats *s = app->stats; s; s = s->next)
        sb_printf(&sb, "baton_loop_lag_max_seconds{loop=\"%u\"} %.6f\n", s->loop_index,
                  (double)LOAD(s->lag_max_us) / 1e6);
    sb_printf(&sb, "# HELP baton_loop_pending_futures Futures pending on the loop.\n"
                   "# TYPE baton_loop_pending_futures gauge\n");
    for (bt__http_stats *s = app->stats; s; s = s->next)
        sb_printf(&sb, "baton_loop_pending_futures{loop=\"%u\"} %llu\n", s->loop_index,
                  (unsigned long long)LOAD(s->pending));
    pthread_mutex_unlock(&app->stats_lock);
    bt_free(status);
    for (size_t i = 0; i < app->nmsrc; i++) {
        char *extra = app->msrc[i].fn(app->msrc[i].arg);
        if (extra) {
            sb_printf(&sb, "%s", extra);
            if (sb.len && sb.buf[sb.len - 1] != '\n')
                sb_printf(&sb, "\n");
            bt_free(extra);
        }
    }
    if (sb.failed) {
        bt_free(sb.buf);
        return NULL;
    }
    return sb.buf;
}
