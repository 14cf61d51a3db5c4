/* Worker processes for bt_http_app_run (bt_http_app_set_processes): the
 * calling process forks the workers, each of which serves the app as the
 * in-process bt_http_app_run does, and supervises them.
 *
 * DESIGN
 * - Binding. Each worker binds and listens on its own sockets, exactly as
 *   the in-process bt_http_app_run does (bt_http_server_listen with
 *   SO_REUSEPORT), so the kernel keeps one accept queue per listener and
 *   hashes each new connection to one of them: load balancing without a
 *   shared queue. Binding once in the parent and letting the workers
 *   inherit the socket would give them all one queue: every worker woken
 *   for each connection (the thundering herd), and the process that is
 *   awake already, the busiest, taking most of them (what nginx's
 *   accept_mutex and later its `reuseport` option are about). The parent
 *   still binds one SO_REUSEPORT socket first, without listening on it: it
 *   reports a bind error before any fork, picks the port for port 0, and
 *   holds the port for the workers restarted later. A socket that does not
 *   listen is given no connection. The cost of per-worker queues: the
 *   connections waiting in a worker's queue when it dies are reset.
 * - Fork before threads. fork copies only the calling thread; a pool, loop
 *   or lock made before would be copied without its threads (jobs never
 *   run, a lock held forever). So the parent refuses to fork while
 *   /proc/self/status counts more than one thread, and every worker makes
 *   its loops, servers, init hook resources and (on first use) its offload
 *   pool after the fork. The parent runs no loop and no thread: it polls
 *   three pipes.
 * - Signals. The parent catches SIGINT and SIGTERM (a byte on the app's
 *   stop pipe, which bt_http_app_stop writes too) and SIGCHLD (a byte on a
 *   wake pipe), and polls both. With TLS it also catches SIGHUP (the wake
 *   pipe) and forwards it to every worker, each of which reloads its own
 *   certificate. Around each fork the three are blocked, so
 *   a new worker never runs the parent's handlers: it makes its own stop
 *   pipe, puts the program's SIGCHLD action back and starts its loops
 *   through bt__http_run_loops, which installs the in-process handlers and
 *   only then unblocks them. A SIGTERM that arrived in between is still
 *   pending then, and becomes a graceful shutdown.
 * - Supervision. The parent reaps only its workers' pids (waitpid on each,
 *   never on -1: the program may have other children, like the flagship's
 *   PostgreSQL). A worker that dies is restarted after a backoff that
 *   doubles from 100 ms while its slot keeps dying, at most restart_max
 *   times per restart_window_ms; then the slot is given up, and when every
 *   slot is, the supervisor stops.
 * - Shutdown. SIGTERM to every worker; each drains within the app's
 *   shutdown deadline and exits 0. The parent waits for that deadline plus
 *   5 s, then SIGKILLs what is left and reaps it.
 * - Workers report readiness on a pipe ({slot, pid}: one write under
 *   PIPE_BUF, so never interleaved); the parent logs each start and calls
 *   on_ready once every slot has been ready.
 * - A worker ends with _exit: returning into the program's main would run
 *   the code that follows bt_http_app_run, and its atexit handlers, once
 *   per worker.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "http-internal.h"

/* Threads a process may run at bt_http_app_run besides the calling one:
 * ThreadSanitizer's runtime starts a background thread of its own (in a
 * child forked from a process with threads too), which its fork
 * interceptor stops and restarts around fork, so it is harmless. */
#if defined(__SANITIZE_THREAD__)
#define RUNTIME_THREADS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RUNTIME_THREADS 1
#endif
#endif
#ifndef RUNTIME_THREADS
#define RUNTIME_THREADS 0
#endif

#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 5000
#define KILL_SLACK_MS 5000
#define POLL_MAX_MS 1000

typedef enum { SLOT_IDLE, SLOT_RUNNING, SLOT_WAITING, SLOT_GIVEN_UP } slot_state;

typedef struct {
    slot_state state;
    pid_t pid;
    bool ready;          /* this pid said it accepts */
    uint64_t restart_at; /* ms, for SLOT_WAITING */
    uint64_t *restarts;  /* when the last restarts were scheduled (ms) */
    unsigned nrestarts;  /* of them, within the window */
    unsigned starts;     /* for the log */
} slot;

typedef struct {
    bt_http_app *app;
    const char *host;
    int port; /* the bound one */
    unsigned n;
    slot *slots;
    int reserve_fd;
    int ready_fd[2];
    int wake_fd[2];
    pid_t parent;
    sigset_t entry_mask;  /* the program's mask, restored on return */
    sigset_t worker_mask; /* what a worker runs with: entry_mask less the stop signals */
    struct sigaction old_int, old_term, old_chld, old_hup;
    unsigned my_slot; /* in a worker */
} sup;

typedef struct {
    uint32_t slot;
    int32_t pid;
} ready_msg;

/* For the handlers: one supervisor per process at a time. */
static _Atomic(bt_http_app *) stop_app;
static volatile sig_atomic_t stop_sig;
static volatile sig_atomic_t wake_wr = -1;
static volatile sig_atomic_t hup_seen;

static void on_stop(int sig)
{
    int saved = errno;
    stop_sig = sig;
    bt_http_app *app = atomic_load(&stop_app);
    if (app != NULL)
        bt_http_app_stop(app);
    errno = saved;
}

/* SIGCHLD, and SIGHUP with TLS set: the poll loop looks at the children,
 * or forwards the reload to every worker (each reloads its own
 * certificate). */
static void on_child(int sig)
{
    int saved = errno;
    if (sig == SIGHUP)
        hup_seen = 1;
    char c = 0;
    if (wake_wr >= 0) {
        ssize_t w = write(wake_wr, &c, 1);
        (void)w; /* a full pipe already holds a wake-up */
    }
    errno = saved;
}

static uint64_t now_ms(void)
{
    return bt_hrtime() / 1000000u;
}

/* Threads of this process, from /proc; -1 where there is no /proc. */
static int count_threads(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    if (f == NULL)
        return -1;
    char line[256];
    int n = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "Threads:", 8) == 0) {
            n = atoi(line + 8);
            break;
        }
    }
    fclose(f);
    return n;
}

/* Bind (without listening) a socket to host:port as bt_http_server_listen
 * would, to hold the port. Returns the fd and sets *bound, or a negative
 * BT_E* code. */
static int reserve_port(const char *host, int port, int *bound)
{
    return bt__http_bind(host, port, false, bound);
}

static void describe(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "ended (status 0x%x)", (unsigned)status);
}

/* ---- In the worker ----------------------------------------------------------- */

static void worker_ready(int port, void *arg)
{
    (void)port;
    sup *s = arg;
    ready_msg m = { .slot = s->my_slot, .pid = (int32_t)getpid() };
    ssize_t w = write(s->ready_fd[1], &m, sizeof m);
    (void)w; /* the supervisor is gone: PDEATHSIG stops us */
    close(s->ready_fd[1]);
    s->ready_fd[1] = -1;
}

static _Noreturn void worker_main(sup *s, unsigned i)
{
    bt_http_app *app = s->app;
    app->worker_index = i + 1;
    s->my_slot = i;
#ifdef __linux__
    /* A supervisor that dies (SIGKILL) takes its workers along, gracefully. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != s->parent)
        _exit(1);
#endif
    close(s->reserve_fd);
    close(s->ready_fd[0]);
    close(s->wake_fd[0]);
    close(s->wake_fd[1]);
    wake_wr = -1;
    atomic_store(&stop_app, NULL);
    /* The stop pipe is the supervisor's: a worker gets its own. */
    close(app->stop_fd[0]);
    close(app->stop_fd[1]);
    if (pipe2(app->stop_fd, O_NONBLOCK | O_CLOEXEC) != 0)
        _exit(1);
    sigaction(SIGCHLD, &s->old_chld, NULL);
    sigaction(SIGINT, &s->old_int, NULL);
    sigaction(SIGTERM, &s->old_term, NULL);
    sigaction(SIGHUP, &s->old_hup, NULL);
    /* SIGINT, SIGTERM, SIGHUP and SIGCHLD are still blocked: run_loops installs
     * its handlers, then restores the program's mask. */
    int rc = bt__http_run_loops(app, s->host, s->port, worker_ready, s, false, &s->worker_mask);
    if (rc != 0)
        bt_log(BT_LOG_ERROR, "http: worker %u (pid %ld) failed: %s", i + 1, (long)getpid(),
               bt_strerror(rc));
    fflush(NULL);
    _exit(rc == 0 ? 0 : 1);
}

/* ---- In the supervisor --------------------------------------------------------- */

static void spawn(sup *s, unsigned i);

/* A slot whose worker died (or could not be forked): restart it later, or
 * give it up. */
static void schedule(sup *s, unsigned i)
{
    slot *sl = &s->slots[i];
    bt_http_app *app = s->app;
    uint64_t now = now_ms();
    unsigned kept = 0;
    for (unsigned k = 0; k < sl->nrestarts; k++)
        if (now - sl->restarts[k] < app->restart_window_ms)
            sl->restarts[kept++] = sl->restarts[k];
    sl->nrestarts = kept;
    sl->pid = 0;
    sl->ready = false;
    if (kept >= app->restart_max) {
        sl->state = SLOT_GIVEN_UP;
        bt_log(BT_LOG_ERROR,
               "http: worker %u restarted %u time(s) within %llu ms and died again; "
               "giving up on it",
               i + 1, kept, (unsigned long long)app->restart_window_ms);
        return;
    }
    uint64_t delay = 0;
    if (kept > 0) {
        delay = BACKOFF_FIRST_MS;
        for (unsigned k = 1; k < kept && delay < BACKOFF_MAX_MS; k++)
            delay *= 2;
        if (delay > BACKOFF_MAX_MS)
            delay = BACKOFF_MAX_MS;
    }
    sl->restarts[sl->nrestarts++] = now;
    sl->state = SLOT_WAITING;
    sl->restart_at = now + delay;
    bt_log(BT_LOG_WARN,
           "http: restarting worker %u in %llu ms (restart %u of at most %u in %llu ms)", i + 1,
           (unsigned long long)delay, sl->nrestarts, app->restart_max,
           (unsigned long long)app->restart_window_ms);
}

static void spawn(sup *s, unsigned i)
{
    slot *sl = &s->slots[i];
    /* Checked before the first fork too; since then the supervisor ran the
     * program's on_ready and log hook, which may have started a thread. */
    int threads = count_threads();
    if (threads > 1 + RUNTIME_THREADS) {
        bt_log(BT_LOG_ERROR,
               "http: worker %u is not started: the supervisor now runs %d threads (started "
               "by on_ready or a log hook?) and fork copies only the calling one; giving up "
               "on it",
               i + 1, threads);
        sl->pid = 0;
        sl->ready = false;
        sl->state = SLOT_GIVEN_UP;
        return;
    }
    sigset_t block, prev;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGCHLD);
    sigaddset(&block, SIGHUP);
    fflush(NULL); /* or the worker would write the parent's buffered output again */
    pthread_sigmask(SIG_BLOCK, &block, &prev);
    pid_t pid = fork();
    if (pid == 0)
        worker_main(s, i);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &prev, NULL);
    if (pid < 0) {
        bt_log(BT_LOG_ERROR, "http: fork for worker %u failed: %s", i + 1, strerror(err));
        schedule(s, i);
        return;
    }
    sl->pid = pid;
    sl->ready = false;
    sl->state = SLOT_RUNNING;
    sl->starts++;
    if (sl->starts > 1)
        bt_log(BT_LOG_WARN, "http: worker %u restarted as pid %ld", i + 1, (long)pid);
}

/* Reap the workers that ended. Returns how many still run. */
static unsigned reap(sup *s, bool stopping, bool *failed)
{
    unsigned running = 0;
    for (unsigned i = 0; i < s->n; i++) {
        slot *sl = &s->slots[i];
        if (sl->state != SLOT_RUNNING)
            continue;
        int st = 0;
        pid_t r = waitpid(sl->pid, &st, WNOHANG);
        if (r == 0 || (r < 0 && errno == EINTR)) {
            running++;
            continue;
        }
        char how[96];
        if (r < 0) /* someone else reaped it (a SIGCHLD of SIG_IGN, waitpid(-1)) */
            snprintf(how, sizeof how, "is gone (%s)", strerror(errno));
        else
            describe(st, how, sizeof how);
        bool clean = r > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (stopping) {
            bt_log(clean ? BT_LOG_INFO : BT_LOG_WARN, "http: worker %u (pid %ld) %s", i + 1,
                   (long)sl->pid, how);
            if (!clean)
                *failed = true;
            sl->state = SLOT_IDLE;
            sl->pid = 0;
        } else {
            bt_log(BT_LOG_ERROR, "http: worker %u (pid %ld) %s", i + 1, (long)sl->pid, how);
            schedule(s, i);
        }
    }
    return running;
}

static void drain(int fd)
{
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0)
        ;
}

int bt__http_supervise(bt_http_app *app, const char *host, int port, bt_http_ready_fn on_ready,
                       void *ready_arg)
{
    unsigned n = (unsigned)app->processes;
    if (n == 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c > 0 ? (unsigned)c : 1;
    }
    int threads = count_threads();
    if (threads > 1 + RUNTIME_THREADS) {
        bt_log(BT_LOG_ERROR,
               "http: bt_http_app_run with worker processes: this process already runs %d "
               "threads, and fork copies only the calling one. Start threads, pools "
               "(bt_pool_default) and loops in the workers (the on_loop init hook, or on first "
               "use), not before bt_http_app_run",
               threads);
        return BT_EBUSY;
    }
    if (atomic_load(&stop_app) != NULL) {
        bt_log(BT_LOG_ERROR, "http: another bt_http_app_run supervises workers in this process");
        return BT_EBUSY;
    }

    sup s = { .app = app, .host = host, .n = n, .reserve_fd = -1 };
    s.ready_fd[0] = s.ready_fd[1] = s.wake_fd[0] = s.wake_fd[1] = -1;
    s.parent = getpid();
    int rc = reserve_port(host, port, &s.port);
    if (rc < 0) {
        bt_log(BT_LOG_ERROR, "http: cannot bind %s:%d: %s", host, port, bt_strerror(rc));
        return rc;
    }
    s.reserve_fd = rc;
    rc = 0;
    s.slots = bt_calloc(n, sizeof *s.slots);
    if (s.slots == NULL)
        rc = BT_ENOMEM;
    for (unsigned i = 0; rc == 0 && i < n && app->restart_max > 0; i++)
        if ((s.slots[i].restarts = bt_calloc(app->restart_max, sizeof(uint64_t))) == NULL)
            rc = BT_ENOMEM;
    if (rc == 0 &&
        (pipe2(s.ready_fd, O_CLOEXEC) != 0 || pipe2(s.wake_fd, O_NONBLOCK | O_CLOEXEC) != 0))
        rc = -errno;
    if (rc == 0 && fcntl(s.ready_fd[0], F_SETFL, O_NONBLOCK) != 0)
        rc = -errno;
    if (rc != 0)
        goto out;

    drain(app->stop_fd[0]);
    stop_sig = 0;
    wake_wr = s.wake_fd[1];
    atomic_store(&stop_app, app);
    pthread_sigmask(SIG_SETMASK, NULL, &s.entry_mask);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_stop;
    sigaction(SIGINT, &sa, &s.old_int);
    sigaction(SIGTERM, &sa, &s.old_term);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, &s.old_chld);
    hup_seen = 0;
    sigaction(SIGHUP, app->tls != NULL ? &sa : NULL, &s.old_hup);
    /* The supervisor must see these even if the program blocked them. */
    sigset_t ours;
    sigemptyset(&ours);
    sigaddset(&ours, SIGINT);
    sigaddset(&ours, SIGTERM);
    sigaddset(&ours, SIGCHLD);
    if (app->tls != NULL)
        sigaddset(&ours, SIGHUP);
    pthread_sigmask(SIG_UNBLOCK, &ours, NULL);
    /* A worker runs with the program's mask less these: it must see the
     * stop signals and the SIGHUP the supervisor passes on. */
    s.worker_mask = s.entry_mask;
    sigdelset(&s.worker_mask, SIGINT);
    sigdelset(&s.worker_mask, SIGTERM);
    if (app->tls != NULL)
        sigdelset(&s.worker_mask, SIGHUP);

    bt_log(BT_LOG_INFO, "http: supervisor (pid %ld) starting %u worker process(es) on %s:%d",
           (long)s.parent, n, host, s.port);
    for (unsigned i = 0; i < n; i++)
        spawn(&s, i);

    bool stopping = false, announced = false, killed = false, failed = false, gave_up = false;
    uint64_t kill_at = 0;
    for (;;) {
        unsigned running = reap(&s, stopping, &failed);
        uint64_t now = now_ms();
        int timeout = POLL_MAX_MS;
        if (stopping) {
            if (running == 0)
                break;
            if (!killed && now >= kill_at) {
                for (unsigned i = 0; i < n; i++) {
                    if (s.slots[i].state != SLOT_RUNNING)
                        continue;
                    bt_log(BT_LOG_ERROR,
                           "http: worker %u (pid %ld) still running %llu ms after the stop; "
                           "SIGKILL",
                           i + 1, (long)s.slots[i].pid,
                           (unsigned long long)(app->shutdown_deadline_ms + KILL_SLACK_MS));
                    kill(s.slots[i].pid, SIGKILL);
                }
                killed = true;
            }
            if (!killed && kill_at - now < (uint64_t)timeout)
                timeout = (int)(kill_at - now);
        } else {
            unsigned given_up = 0, ready = 0;
            for (unsigned i = 0; i < n; i++) {
                slot *sl = &s.slots[i];
                if (sl->state == SLOT_WAITING && now >= sl->restart_at)
                    spawn(&s, i);
                if (sl->state == SLOT_WAITING && sl->restart_at - now < (uint64_t)timeout)
                    timeout = (int)(sl->restart_at - now);
                given_up += sl->state == SLOT_GIVEN_UP;
                ready += sl->state == SLOT_RUNNING && sl->ready;
            }
            if (given_up == n) {
                bt_log(BT_LOG_ERROR, "http: every worker was given up; the supervisor stops");
                gave_up = true;
                break;
            }
            if (!announced && ready > 0 && ready + given_up == n) {
                announced = true;
                bt_log(BT_LOG_INFO, "http: %u worker process(es) serving on %s:%d", ready, host,
                       s.port);
                if (on_ready != NULL)
                    on_ready(s.port, ready_arg);
            }
        }
        struct pollfd pf[3] = {
            { .fd = app->stop_fd[0], .events = POLLIN },
            { .fd = s.ready_fd[0], .events = POLLIN },
            { .fd = s.wake_fd[0], .events = POLLIN },
        };
        int pr = poll(pf, 3, timeout);
        if (pr <= 0)
            continue; /* a timeout, or EINTR: look again */
        if (pf[2].revents != 0)
            drain(s.wake_fd[0]);
        if (hup_seen) {
            hup_seen = 0;
            bt_log(BT_LOG_INFO, "http: SIGHUP: every worker reloads its certificate");
            /* The supervisor's copy too: a worker forked later (a restart)
             * starts with it. A failure is logged and the old one kept. */
            bt_http_app_reload_tls(app);
            for (unsigned i = 0; i < n; i++)
                if (s.slots[i].state == SLOT_RUNNING)
                    kill(s.slots[i].pid, SIGHUP);
        }
        if (pf[1].revents != 0) {
            ready_msg m;
            while (read(s.ready_fd[0], &m, sizeof m) == (ssize_t)sizeof m) {
                if (m.slot < n && s.slots[m.slot].pid == m.pid &&
                    s.slots[m.slot].state == SLOT_RUNNING) {
                    s.slots[m.slot].ready = true;
                    bt_log(BT_LOG_INFO, "http: worker %u (pid %ld) accepts", m.slot + 1,
                           (long)m.pid);
                }
            }
        }
        if (pf[0].revents != 0 && !stopping) {
            drain(app->stop_fd[0]);
            stopping = true;
            kill_at = now_ms() + app->shutdown_deadline_ms + KILL_SLACK_MS;
            int sig = stop_sig;
            bt_log(BT_LOG_INFO, "http: %s: stopping the workers gracefully",
                   sig == SIGINT    ? "SIGINT"
                   : sig == SIGTERM ? "SIGTERM"
                                    : "bt_http_app_stop");
            for (unsigned i = 0; i < n; i++) {
                if (s.slots[i].state == SLOT_RUNNING)
                    kill(s.slots[i].pid, SIGTERM);
                else if (s.slots[i].state == SLOT_WAITING)
                    s.slots[i].state = SLOT_IDLE;
            }
        }
    }
    if (gave_up) {
        rc = BT_EIO;
        /* Slots still running (none: every one was given up) need no stop. */
    } else if (killed) {
        rc = BT_ETIMEDOUT;
    } else if (failed) {
        rc = BT_EIO;
    }
    bt_log(rc == 0 ? BT_LOG_INFO : BT_LOG_ERROR, "http: supervisor done: %s",
           rc == 0 ? "every worker shut down cleanly" : bt_strerror(rc));
    sigaction(SIGINT, &s.old_int, NULL);
    sigaction(SIGTERM, &s.old_term, NULL);
    sigaction(SIGCHLD, &s.old_chld, NULL);
    sigaction(SIGHUP, &s.old_hup, NULL);
    pthread_sigmask(SIG_SETMASK, &s.entry_mask, NULL);
    wake_wr = -1;
    atomic_store(&stop_app, NULL);
out:
    for (int k = 0; k < 2; k++) {
        if (s.ready_fd[k] >= 0)
            close(s.ready_fd[k]);
        if (s.wake_fd[k] >= 0)
            close(s.wake_fd[k]);
    }
    close(s.reserve_fd);
    for (unsigned i = 0; s.slots != NULL && i < n; i++)
        bt_free(s.slots[i].restarts);
    bt_free(s.slots);
    return rc;
}
