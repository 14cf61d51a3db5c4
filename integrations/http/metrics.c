/* Prometheus text metrics for an app: every server keeps its own counters
 * (relaxed atomics written by its loop only), and a scrape, on whichever
 * loop receives it, sums them under the app's stats lock (which guards only
 * the list of servers, not the counters). */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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
        int n = vsnprintf(sb->buf != NULL ? sb->buf + sb->len : NULL,
                          sb->buf != NULL ? sb->cap - sb->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            sb->failed = true;
            return;
        }
        if (sb->buf != NULL && sb->len + (size_t)n < sb->cap) {
            sb->len += (size_t)n;
            return;
        }
        size_t cap = (sb->cap ? sb->cap : 4096);
        while (cap <= sb->len + (size_t)n)
            cap *= 2;
        char *nb = bt_realloc(sb->buf, cap);
        if (nb == NULL) {
            sb->failed = true;
            return;
        }
        sb->buf = nb;
        sb->cap = cap;
    }
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

/* In a worker process (bt_http_app_set_processes) every sample gets the
 * label worker="n", the extra sources' lines included: `name{a="b"} v`
 * becomes `name{worker="n",a="b"} v` and `name v` becomes
 * `name{worker="n"} v`. Comments are left as they are. Returns a new
 * bt_malloc'd text or NULL. */
static char *label_worker(const char *text, size_t len, unsigned worker)
{
    sbuf out = { 0 };
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        size_t n = eol != NULL ? (size_t)(eol - p) : (size_t)(end - p);
        const char *cut = NULL;
        for (size_t i = 0; i < n && cut == NULL; i++)
            if (p[i] == '{' || p[i] == ' ')
                cut = p + i;
        if (n == 0 || p[0] == '#' || cut == NULL) {
            sb_printf(&out, "%.*s\n", (int)n, p);
        } else if (*cut == '{') {
            sb_printf(&out, "%.*sworker=\"%u\"%s%.*s\n", (int)(cut + 1 - p), p, worker,
                      cut[1] == '}' ? "" : ",", (int)(n - (size_t)(cut + 1 - p)), cut + 1);
        } else {
            sb_printf(&out, "%.*s{worker=\"%u\"}%.*s\n", (int)(cut - p), p, worker,
                      (int)(n - (size_t)(cut - p)), cut);
        }
        p += n + 1;
    }
    if (out.failed) {
        bt_free(out.buf);
        return NULL;
    }
    return out.buf;
}

char *bt__http_metrics_render(bt_http_app *app)
{
    sbuf sb = { 0 };
    uint64_t hist[BT__HTTP_NBUCKETS + 1] = { 0 };
    uint64_t sum_us = 0, count = 0, in_flight = 0, cancelled = 0;
    uint64_t *status = bt_calloc(600, sizeof *status);
    if (status == NULL)
        return NULL;
    pthread_mutex_lock(&app->stats_lock);
    for (bt__http_stats *s = app->stats; s != NULL; s = s->next) {
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
    sb_printf(&sb,
              "# HELP baton_http_requests_in_flight Requests whose handler has not answered.\n"
              "# TYPE baton_http_requests_in_flight gauge\n"
              "baton_http_requests_in_flight %llu\n",
              (unsigned long long)in_flight);
    sb_printf(&sb,
              "# HELP baton_http_handlers_cancelled_total Handlers cancelled (client gone, "
              "shutdown deadline).\n"
              "# TYPE baton_http_handlers_cancelled_total counter\n"
              "baton_http_handlers_cancelled_total %llu\n",
              (unsigned long long)cancelled);
    sb_printf(&sb,
              "# HELP baton_loop_lag_seconds How late the loop ran a 250 ms timer, last time.\n"
              "# TYPE baton_loop_lag_seconds gauge\n");
    for (bt__http_stats *s = app->stats; s != NULL; s = s->next)
        sb_printf(&sb, "baton_loop_lag_seconds{loop=\"%u\"} %.6f\n", s->loop_index,
                  (double)LOAD(s->lag_us) / 1e6);
    sb_printf(&sb, "# HELP baton_loop_lag_max_seconds The largest loop lag seen.\n"
                   "# TYPE baton_loop_lag_max_seconds gauge\n");
    for (bt__http_stats *s = app->stats; s != NULL; s = s->next)
        sb_printf(&sb, "baton_loop_lag_max_seconds{loop=\"%u\"} %.6f\n", s->loop_index,
                  (double)LOAD(s->lag_max_us) / 1e6);
    sb_printf(&sb, "# HELP baton_loop_pending_futures Futures pending on the loop.\n"
                   "# TYPE baton_loop_pending_futures gauge\n");
    for (bt__http_stats *s = app->stats; s != NULL; s = s->next)
        sb_printf(&sb, "baton_loop_pending_futures{loop=\"%u\"} %llu\n", s->loop_index,
                  (unsigned long long)LOAD(s->pending));
    pthread_mutex_unlock(&app->stats_lock);
    bt_free(status);
    for (size_t i = 0; i < app->nmsrc; i++) {
        char *extra = app->msrc[i].fn(app->msrc[i].arg);
        if (extra != NULL) {
            sb_printf(&sb, "%s", extra);
            if (sb.len && sb.buf[sb.len - 1] != '\n')
                sb_printf(&sb, "\n");
            bt_free(extra);
        }
    }
    if (app->worker_index != 0)
        sb_printf(&sb,
                  "# HELP baton_http_worker_info The worker process that answered this scrape.\n"
                  "# TYPE baton_http_worker_info gauge\n"
                  "baton_http_worker_info{pid=\"%ld\"} 1\n",
                  (long)getpid());
    if (sb.failed) {
        bt_free(sb.buf);
        return NULL;
    }
    if (app->worker_index != 0) {
        char *labelled = label_worker(sb.buf, sb.len, app->worker_index);
        bt_free(sb.buf);
        return labelled;
    }
    return sb.buf;
}

char *bt__http_pool_metrics(void *arg)
{
    bt__pool_src *src = arg;
    bt_pool_stats st = BT_SIZED(bt_pool_stats);
    if (bt_pool_get_stats(src->pool, &st) != 0)
        return NULL;
    static const char *const lanes[BT_LANE_COUNT] = { "cpu", "blocking" };
    sbuf sb = { 0 };
    const struct {
        const char *name, *type, *help;
        size_t off;
        bool is_size, is_ns;
    } rows[] = {
#define ROW(n, t, h, field, sz, ns) { n, t, h, offsetof(bt_lane_stats, field), sz, ns }
        ROW("baton_pool_threads", "gauge", "Worker threads alive.", threads, false, false),
        ROW("baton_pool_busy_threads", "gauge", "Workers running a job.", busy, false, false),
        ROW("baton_pool_max_threads", "gauge", "The lane's size or cap.", max_threads, false,
            false),
        ROW("baton_pool_queued_jobs", "gauge", "Jobs waiting in the queue.", queued, true, false),
        ROW("baton_pool_submitted_total", "counter", "Jobs accepted.", submitted, false, false),
        ROW("baton_pool_rejected_total", "counter", "Jobs refused, queue full.", rejected, false,
            false),
        ROW("baton_pool_done_total", "counter", "Jobs run to completion.", done, false, false),
        ROW("baton_pool_failed_total", "counter", "Jobs that returned an error.", failed, false,
            false),
        ROW("baton_pool_cancelled_total", "counter", "Jobs cancelled before running.", cancelled,
            false, false),
        ROW("baton_pool_queue_seconds_total", "counter", "Time jobs waited, summed.",
            queue_ns_total, false, true),
        ROW("baton_pool_run_seconds_total", "counter", "Time jobs ran, summed.", run_ns_total,
            false, true),
#undef ROW
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        sb_printf(&sb, "# HELP %s %s\n# TYPE %s %s\n", rows[i].name, rows[i].help, rows[i].name,
                  rows[i].type);
        for (int l = 0; l < BT_LANE_COUNT; l++) {
            const char *base = (const char *)&st.lane[l] + rows[i].off;
            if (rows[i].is_ns) {
                uint64_t v;
                memcpy(&v, base, sizeof v);
                sb_printf(&sb, "%s{pool=\"%s\",lane=\"%s\"} %.6f\n", rows[i].name, src->name,
                          lanes[l], (double)v / 1e9);
            } else {
                unsigned long long v;
                if (rows[i].is_size) {
                    size_t z;
                    memcpy(&z, base, sizeof z);
                    v = z;
                } else if (strstr(rows[i].name, "total") != NULL) {
                    uint64_t u;
                    memcpy(&u, base, sizeof u);
                    v = u;
                } else {
                    unsigned u;
                    memcpy(&u, base, sizeof u);
                    v = u;
                }
                sb_printf(&sb, "%s{pool=\"%s\",lane=\"%s\"} %llu\n", rows[i].name, src->name,
                          lanes[l], v);
            }
        }
    }
    if (sb.failed) {
        bt_free(sb.buf);
        return NULL;
    }
    return sb.buf;
}
