/* The log handler and the monotonic clock.
 *
 * The handler may be replaced while other threads log (the watchdog's, a
 * worker's), so handler and argument are read together under a mutex and
 * called outside it. */
#include "config.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include <baton/common.h>

static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static bt_log_cb g_log_cb;
static void *g_log_arg;
static _Atomic int g_log_min = BT_LOG_WARN;

static const char *level_name(bt_log_level l)
{
    switch (l) {
    case BT_LOG_DEBUG:
        return "debug";
    case BT_LOG_INFO:
        return "info";
    case BT_LOG_WARN:
        return "warning";
    default:
        return "error";
    }
}

BT_EXPORT void bt_log_set_handler(bt_log_cb cb, void *arg)
{
    pthread_mutex_lock(&g_log_mu);
    g_log_cb = cb;
    g_log_arg = arg;
    pthread_mutex_unlock(&g_log_mu);
}

BT_EXPORT void bt_log_set_level(bt_log_level min_level)
{
    atomic_store(&g_log_min, (int)min_level);
}

BT_EXPORT void bt_log(bt_log_level level, const char *fmt, ...)
{
    if (fmt == NULL || (int)level < atomic_load_explicit(&g_log_min, memory_order_relaxed))
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);

    pthread_mutex_lock(&g_log_mu);
    bt_log_cb cb = g_log_cb;
    void *arg = g_log_arg;
    pthread_mutex_unlock(&g_log_mu);
    if (cb != NULL)
        cb(level, buf, arg);
    else
        fprintf(stderr, "baton: %s: %s\n", level_name(level), buf);
}

BT_EXPORT uint64_t bt_hrtime(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
