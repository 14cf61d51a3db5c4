/* The app: routes and settings, and bt_http_app_run, which serves them on
 * one loop per core until SIGINT or SIGTERM.
 *
 * DESIGN (bt_http_app_run)
 * - SIGINT and SIGTERM get a handler that writes a byte to the app's stop
 *   pipe (write(2) is async-signal-safe), as bt_http_app_stop does; the
 *   calling thread polls that pipe. The loop threads are started with both
 *   signals blocked, so no loop is interrupted; the handler runs in the
 *   calling thread or in one the program started (the offload pool's
 *   workers), and works in either. The old actions are restored on
 *   return. With TLS, SIGHUP writes a reload byte to the same pipe and the
 *   calling thread reloads the certificate (bt_http_app_reload_tls).
 * - Loop 0 is started first and binds the port (port 0 picks one); the
 *   others then bind the same port with SO_REUSEPORT and the kernel spreads
 *   connections across them.
 * - Shutdown is posted to every loop (bt_loop_post, the any-thread door):
 *   each stops accepting, drains within the deadline, then stops its loop;
 *   its thread frees the server and the loop. The calling thread joins
 *   them all.
 */
#include "config.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "http-internal.h"

BT_EXPORT bt_http_app *bt_http_app_new(void)
{
    bt_http_app *app = bt_calloc(1, sizeof *app);
    if (app == NULL)
        return NULL;
    app->max_header_bytes = 16 * 1024;
    app->max_body_bytes = 1024 * 1024;
    app->read_timeout_ms = 30000;
    app->write_timeout_ms = 30000;
    app->max_concurrent = 10000;
    app->shutdown_deadline_ms = 10000;
    app->head_timeout_ms = 15000;
    app->min_body_rate = 1024;
    app->body_grace_ms = 15000;
    app->max_connections = 10000;
    app->processes = -1;
    app->restart_max = 5;
    app->restart_window_ms = 10000;
    if (pipe2(app->stop_fd, O_NONBLOCK | O_CLOEXEC) != 0) {
        bt_free(app);
        return NULL;
    }
    pthread_mutex_init(&app->stats_lock, NULL);
    return app;
}

BT_EXPORT void bt_http_app_free(bt_http_app *app)
{
    if (app == NULL)
        return;
    if (atomic_load(&app->servers) != 0)
        bt_log(BT_LOG_ERROR, "http: bt_http_app_free with %u servers alive",
               atomic_load(&app->servers));
    bt__router_free(&app->router);
    bt_free(app->metrics_path);
    for (size_t i = 0; i < app->nmsrc; i++)
        if (app->msrc[i].owns_arg)
            bt_free(app->msrc[i].arg);
    bt_free(app->msrc);
    bt__tls_free(app);
    close(app->stop_fd[0]);
    close(app->stop_fd[1]);
    pthread_mutex_destroy(&app->stats_lock);
    bt_free(app);
}

static int frozen(const bt_http_app *app)
{
    return atomic_load(&app->servers) != 0 || atomic_load(&app->running);
}

#define CHECK_APP(app)        \
    do {                      \
        if ((app) == NULL)    \
            return BT_EINVAL; \
        if (frozen(app))      \
            return BT_EBUSY;  \
    } while (0)

BT_EXPORT int bt_http_app_route(bt_http_app *app, const char *method, const char *pattern,
                                bt_http_handler_fn handler, void *arg)
{
    CHECK_APP(app);
    return bt__router_add(&app->router, method, pattern, handler, arg, false);
}

BT_EXPORT int bt_http_app_route_async(bt_http_app *app, const char *method, const char *pattern,
                                      bt_http_handler_fn handler, void *arg)
{
    CHECK_APP(app);
    return bt__router_add(&app->router, method, pattern, handler, arg, true);
}

BT_EXPORT int bt_http_app_set_max_header_bytes(bt_http_app *app, size_t bytes)
{
    CHECK_APP(app);
    if (!bytes)
        return BT_EINVAL;
    app->max_header_bytes = bytes;
    return 0;
}

BT_EXPORT int bt_http_app_set_max_body_bytes(bt_http_app *app, size_t bytes)
{
    CHECK_APP(app);
    if (!bytes)
        return BT_EINVAL;
    app->max_body_bytes = bytes;
    return 0;
}

BT_EXPORT int bt_http_app_set_timeouts(bt_http_app *app, uint64_t read_ms, uint64_t write_ms)
{
    CHECK_APP(app);
    if (!read_ms || !write_ms)
        return BT_EINVAL;
    app->read_timeout_ms = read_ms;
    app->write_timeout_ms = write_ms;
    return 0;
}

BT_EXPORT int bt_http_app_set_max_concurrent(bt_http_app *app, unsigned max_concurrent)
{
    CHECK_APP(app);
    if (!max_concurrent)
        return BT_EINVAL;
    app->max_concurrent = max_concurrent;
    return 0;
}

BT_EXPORT int bt_http_app_set_head_timeout(bt_http_app *app, uint64_t ms)
{
    CHECK_APP(app);
    if (ms == 0)
        return BT_EINVAL;
    app->head_timeout_ms = ms;
    return 0;
}

BT_EXPORT int bt_http_app_set_min_body_rate(bt_http_app *app, uint64_t bytes_per_s,
                                            uint64_t grace_ms)
{
    CHECK_APP(app);
    if (bytes_per_s == 0 || grace_ms == 0)
        return BT_EINVAL;
    app->min_body_rate = bytes_per_s;
    app->body_grace_ms = grace_ms;
    return 0;
}

BT_EXPORT int bt_http_app_set_max_connections(bt_http_app *app, unsigned max_connections)
{
    CHECK_APP(app);
    if (max_connections == 0)
        return BT_EINVAL;
    app->max_connections = max_connections;
    return 0;
}

BT_EXPORT int bt_http_app_set_handler_timeout(bt_http_app *app, uint64_t ms)
{
    CHECK_APP(app);
    app->handler_timeout_ms = ms;
    return 0;
}

BT_EXPORT int bt_http_app_set_access_log(bt_http_app *app, bool on)
{
    CHECK_APP(app);
    app->access_log = on;
    return 0;
}

BT_EXPORT int bt_http_app_set_loops(bt_http_app *app, unsigned loops)
{
    CHECK_APP(app);
    if (loops > 1024)
        return BT_EINVAL;
    app->loops = loops;
    return 0;
}

BT_EXPORT int bt_http_app_set_processes(bt_http_app *app, unsigned processes)
{
    CHECK_APP(app);
    if (processes > 1024) {
        bt_log(BT_LOG_ERROR, "http: bt_http_app_set_processes(%u): at most 1024", processes);
        return BT_EINVAL;
    }
    app->processes = (int)processes;
    return 0;
}

BT_EXPORT int bt_http_app_set_restart_limit(bt_http_app *app, unsigned max_restarts,
                                            uint64_t window_ms)
{
    CHECK_APP(app);
    if (window_ms == 0)
        return BT_EINVAL;
    app->restart_max = max_restarts;
    app->restart_window_ms = window_ms;
    return 0;
}

BT_EXPORT unsigned bt_http_app_worker(const bt_http_app *app)
{
    return app != NULL ? app->worker_index : 0;
}

BT_EXPORT int bt_http_app_set_shutdown_deadline(bt_http_app *app, uint64_t ms)
{
    CHECK_APP(app);
    if (!ms)
        return BT_EINVAL;
    app->shutdown_deadline_ms = ms;
    return 0;
}

BT_EXPORT int bt_http_app_enable_metrics(bt_http_app *app, const char *path)
{
    CHECK_APP(app);
    if (path == NULL || path[0] != '/')
        return BT_EINVAL;
    char *p = bt_strdup(path);
    if (p == NULL)
        return BT_ENOMEM;
    bt_free(app->metrics_path);
    app->metrics_path = p;
    return 0;
}

BT_EXPORT int bt_http_app_add_metrics(bt_http_app *app, bt_http_metrics_fn fn, void *arg)
{
    CHECK_APP(app);
    if (fn == NULL)
        return BT_EINVAL;
    bt__metrics_src *n = bt_realloc(app->msrc, (app->nmsrc + 1) * sizeof *n);
    if (n == NULL)
        return BT_ENOMEM;
    app->msrc = n;
    app->msrc[app->nmsrc].fn = fn;
    app->msrc[app->nmsrc].arg = arg;
    app->msrc[app->nmsrc].owns_arg = false;
    app->nmsrc++;
    return 0;
}

BT_EXPORT int bt_http_app_add_pool_metrics(bt_http_app *app, bt_pool *pool, const char *name)
{
    CHECK_APP(app);
    if (pool == NULL || name == NULL || strlen(name) >= sizeof(((bt__pool_src *)0)->name) ||
        strpbrk(name, "\"\\\n") != NULL)
        return BT_EINVAL;
    bt__pool_src *src = bt_calloc(1, sizeof *src);
    if (src == NULL)
        return BT_ENOMEM;
    src->pool = pool;
    strcpy(src->name, name);
    int rc = bt_http_app_add_metrics(app, bt__http_pool_metrics, src);
    if (rc != 0) {
        bt_free(src);
        return rc;
    }
    app->msrc[app->nmsrc - 1].owns_arg = true;
    return 0;
}

BT_EXPORT int bt_http_app_on_loop(bt_http_app *app, bt_http_loop_init_fn init,
                                  bt_http_loop_fini_fn fini, void *arg)
{
    CHECK_APP(app);
    app->init = init;
    app->fini = fini;
    app->hook_arg = arg;
    return 0;
}

BT_EXPORT int bt_http_app_stop(bt_http_app *app)
{
    if (app == NULL)
        return BT_EINVAL;
    char c = 1;
    ssize_t w = write(app->stop_fd[1], &c, 1);
    (void)w; /* a full pipe already holds a stop request */
    return 0;
}

/* ---- bt_http_app_run ------------------------------------------------------- */

/* The app bt_http_app_run serves, for the signal handler (one at a time). */
static _Atomic(bt_http_app *) signal_app;
static volatile sig_atomic_t signal_seen;

/* What the stop pipe carries: bt_http_app_stop's byte is 1. */
#define RELOAD_BYTE 'R'

static void on_signal(int sig)
{
    int saved = errno;
    bt_http_app *app = atomic_load(&signal_app);
    if (sig == SIGHUP) {
        /* The polling thread reloads the certificate: OpenSSL is not
         * async-signal-safe. */
        char c = RELOAD_BYTE;
        if (app != NULL && write(app->stop_fd[1], &c, 1) < 0) {
            /* a full pipe already wakes the poller */
        }
        errno = saved;
        return;
    }
    signal_seen = sig;
    if (app != NULL)
        bt_http_app_stop(app);
    errno = saved;
}

typedef struct worker {
    bt_http_app *app;
    const char *host;
    int port;
    pthread_t thread;
    bool started;
    bt_loop *loop;
    bt_http_server *srv;
    bt_future *shut;
    /* Startup handshake with the calling thread. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool ready;
    int rc;
    int bound_port;
} worker;

static void on_drained(bt_future *f, void *arg)
{
    worker *w = arg;
    bt_future_error(f);
    bt_loop_stop(w->loop);
}

static void begin_shutdown(void *arg)
{
    worker *w = arg;
    if (w->shut != NULL)
        return;
    w->shut = bt_http_server_shutdown(w->srv, w->app->shutdown_deadline_ms);
    if (w->shut == NULL || bt_future_add_callback(w->shut, on_drained, w) != 0)
        bt_loop_stop(w->loop); /* out of memory: free cancels what is left */
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    int rc = 0;
    w->loop = bt_loop_new();
    if (w->loop == NULL)
        rc = BT_ENOMEM;
    if (rc == 0) {
        w->srv = bt_http_server_new(w->loop, w->app);
        if (w->srv == NULL)
            rc = BT_ENOMEM;
    }
    if (rc == 0)
        rc = bt_http_server_listen(w->srv, w->host, w->port);
    pthread_mutex_lock(&w->mu);
    w->rc = rc;
    w->bound_port = rc == 0 ? bt_http_server_port(w->srv) : -1;
    w->ready = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (rc == 0)
        bt_loop_run(w->loop);
    bt_http_server_free(w->srv);
    bt_future_unref(w->shut);
    bt_loop_free(w->loop);
    return NULL;
}

static int start_worker(worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        return BT_ENOMEM;
    w->started = true;
    pthread_mutex_lock(&w->mu);
    while (!w->ready)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    return w->rc;
}

BT_EXPORT int bt_http_app_run(bt_http_app *app, const char *host, int port,
                              bt_http_ready_fn on_ready, void *ready_arg)
{
    if (app == NULL || host == NULL || port < 0 || port > 65535)
        return BT_EINVAL;
    bool expect = false;
    if (!atomic_compare_exchange_strong(&app->running, &expect, true))
        return BT_EBUSY;
    int rc;
    if (app->processes >= 0)
        rc = bt__http_supervise(app, host, port, on_ready, ready_arg);
    else
        rc = bt__http_run_loops(app, host, port, on_ready, ready_arg, true, NULL);
    atomic_store(&app->running, false);
    return rc;
}

int bt__http_run_loops(bt_http_app *app, const char *host, int port, bt_http_ready_fn on_ready,
                       void *ready_arg, bool fresh, const sigset_t *main_mask)
{
    unsigned n = app->loops;
    if (n == 0 && app->worker_index != 0) {
        n = 1; /* a worker process: the processes are the parallelism */
    } else if (n == 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (unsigned)c : 1;
    }
    char drain[64];
    if (fresh) {
        while (read(app->stop_fd[0], drain, sizeof drain) > 0)
            ;
    }

    /* Block the signals in the threads this starts (they inherit the
     * mask), and catch them in whichever thread the kernel picks (threads
     * started earlier, such as the offload pool's workers, do not block
     * them): the handler only writes to the stop pipe. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    /* With TLS, SIGHUP reloads the certificate. */
    bool hup = app->tls != NULL;
    if (hup)
        sigaddset(&set, SIGHUP);
    struct sigaction sa, old_int, old_term, old_hup;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    atomic_store(&signal_app, app);
    if (fresh)
        signal_seen = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    if (hup)
        sigaction(SIGHUP, &sa, &old_hup);
    pthread_sigmask(SIG_BLOCK, &set, &old);

    worker *ws = bt_calloc(n, sizeof *ws);
    int rc = ws != NULL ? 0 : BT_ENOMEM;
    for (unsigned i = 0; rc == 0 && i < n; i++) {
        worker *w = &ws[i];
        w->app = app;
        w->host = host;
        w->port = i == 0 ? port : ws[0].bound_port;
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->cv, NULL);
        rc = start_worker(w);
    }
    /* The loops have the signals blocked; this thread takes them again. */
    pthread_sigmask(SIG_SETMASK, main_mask != NULL ? main_mask : &old, NULL);
    if (rc == 0) {
        if (app->worker_index != 0)
            bt_log(BT_LOG_INFO, "http: worker %u (pid %ld) serving on %s:%d with %u loop(s)",
                   app->worker_index, (long)getpid(), host, ws[0].bound_port, n);
        else
            bt_log(BT_LOG_INFO, "http: serving on %s:%d with %u loop(s)", host, ws[0].bound_port,
                   n);
        if (on_ready != NULL)
            on_ready(ws[0].bound_port, ready_arg);
        struct pollfd pf = { .fd = app->stop_fd[0], .events = POLLIN };
        for (;;) {
            int pr = poll(&pf, 1, -1);
            if (pr < 0 && errno == EINTR)
                continue;
            if (pr < 0)
                break;
            if (pr == 0)
                continue;
            /* A SIGHUP's byte asks for a reload; any other byte stops. */
            bool stop = false, reload = false;
            ssize_t k;
            while ((k = read(app->stop_fd[0], drain, sizeof drain)) > 0)
                for (ssize_t j = 0; j < k; j++) {
                    if (drain[j] == RELOAD_BYTE)
                        reload = true;
                    else
                        stop = true;
                }
            if (stop)
                break;
            if (reload) {
                bt_log(BT_LOG_INFO, "http: SIGHUP: reloading the TLS certificate");
                bt_http_app_reload_tls(app);
            }
        }
        if (signal_seen)
            bt_log(BT_LOG_INFO, "http: %s: shutting down gracefully",
                   signal_seen == SIGINT ? "SIGINT" : "SIGTERM");
        while (read(app->stop_fd[0], drain, sizeof drain) > 0)
            ;
    }
    for (unsigned i = 0; ws != NULL && i < n; i++) {
        worker *w = &ws[i];
        if (!w->started)
            continue;
        /* A worker whose startup failed has already left its loop. Out of
         * memory for the post, the loop stops without draining (its free
         * cancels what is left). */
        if (w->rc == 0 && bt_loop_post(w->loop, begin_shutdown, w) == BT_ENOMEM)
            bt_loop_stop(w->loop);
    }
    for (unsigned i = 0; ws != NULL && i < n; i++) {
        if (ws[i].started)
            pthread_join(ws[i].thread, NULL);
        if (ws[i].app != NULL) {
            pthread_mutex_destroy(&ws[i].mu);
            pthread_cond_destroy(&ws[i].cv);
        }
    }
    bt_free(ws);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (hup)
        sigaction(SIGHUP, &old_hup, NULL);
    atomic_store(&signal_app, NULL);
    return rc;
}
