/* bt_http_app with worker processes (bt_http_app_set_processes), as real
 * processes on 127.0.0.1: the test forks a child that runs
 * bt_http_app_run (the supervisor), which forks the workers; the test
 * talks to them over plain sockets and signals them. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <baton/http.h>

#include "harness.h"

/* Every wait of these tests has this deadline: generous, for a loaded
 * machine and sanitizer builds. */
#define DEADLINE_MS 60000

static int port_pipe[2]; /* supervisor -> test: the bound port */
static int mark_pipe[2]; /* workers -> test: one byte per event */
static int log_pipe[2];  /* supervisor and workers -> test: their log lines */

static uint64_t now_ms(void)
{
    return bt_hrtime() / 1000000u;
}

/* ---- In the app's processes ------------------------------------------------------ */

static void mark(char c)
{
    ssize_t w = write(mark_pipe[1], &c, 1);
    (void)w;
}

static void log_to_pipe(bt_log_level level, const char *msg, void *arg)
{
    (void)arg;
    char line[512];
    int n = snprintf(line, sizeof line, "%s\n", msg);
    if (n > (int)sizeof line - 1)
        n = (int)sizeof line - 1;
    ssize_t w = write(log_pipe[1], line, (size_t)n); /* nonblocking: dropped if full */
    if (level >= BT_LOG_WARN)
        w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

static bt_future *h_pid(bt_http_req *req, void *arg)
{
    (void)arg;
    char body[32];
    int n = snprintf(body, sizeof body, "%ld", (long)getpid());
    return bt_http_respond(bt_http_req_loop(req), 200, "text/plain", body, (size_t)n);
}

static bt_future *to_slow(bt_future *src, void *arg)
{
    (void)arg;
    return bt_http_respond(bt_future_loop(src), 200, "text/plain", "slow", 4);
}

/* Says it started (so the test signals only once it runs), then answers
 * after 500 ms. */
static bt_future *h_slow(bt_http_req *req, void *arg)
{
    (void)arg;
    mark('S');
    return bt_future_then(bt_sleep(bt_http_req_loop(req), 500), to_slow, NULL);
}

static int crash_on_start(bt_loop *loop, void *arg, void **data)
{
    (void)loop;
    (void)arg;
    (void)data;
    mark('I');
    _exit(7); /* a worker that cannot start, every time */
}

static void report_port(int port, void *arg)
{
    (void)arg;
    ssize_t w = write(port_pipe[1], &port, sizeof port);
    (void)w;
}

/* Set by a test before start_app: the program blocks SIGINT and SIGTERM
 * before bt_http_app_run (as one that reads them from a signalfd does). */
static bool block_stop_signals;

/* The supervisor's process: never returns. */
static _Noreturn void run_app(unsigned processes, bool crash)
{
    if (block_stop_signals) {
        sigset_t b;
        sigemptyset(&b);
        sigaddset(&b, SIGINT);
        sigaddset(&b, SIGTERM);
        sigprocmask(SIG_BLOCK, &b, NULL);
    }
    close(port_pipe[0]);
    close(mark_pipe[0]);
    close(log_pipe[0]);
    bt_log_set_handler(log_to_pipe, NULL);
    bt_log_set_level(BT_LOG_INFO);
    bt_http_app *a = bt_http_app_new();
    if (a == NULL)
        _exit(20);
    bt_http_app_route(a, "GET", "/pid", h_pid, NULL);
    bt_http_app_route(a, "GET", "/slow", h_slow, NULL);
    bt_http_app_enable_metrics(a, "/metrics");
    bt_http_app_set_processes(a, processes);
    bt_http_app_set_loops(a, 1);
    if (crash) {
        bt_http_app_on_loop(a, crash_on_start, NULL, NULL);
        bt_http_app_set_restart_limit(a, 3, 60000);
    }
    int rc = bt_http_app_run(a, "127.0.0.1", 0, report_port, NULL);
    bt_http_app_free(a);
    _exit(rc == 0 ? 0 : rc == BT_EIO ? 3 : rc == BT_ETIMEDOUT ? 4 : 5);
}

/* ---- In the test ------------------------------------------------------------------- */

static pid_t start_app(unsigned processes, bool crash)
{
    ck_assert_int_eq(pipe(port_pipe), 0);
    ck_assert_int_eq(pipe(mark_pipe), 0);
    ck_assert_int_eq(pipe2(log_pipe, O_NONBLOCK), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0)
        run_app(processes, crash);
    close(port_pipe[1]);
    close(mark_pipe[1]);
    close(log_pipe[1]);
    return pid;
}

/* The port, once every worker accepts; -1 if the supervisor ended first. */
static int wait_port(void)
{
    struct pollfd pf = { .fd = port_pipe[0], .events = POLLIN };
    ck_assert_msg(poll(&pf, 1, DEADLINE_MS) == 1, "the workers did not start");
    int port = -1;
    if (read(port_pipe[0], &port, sizeof port) != (ssize_t)sizeof port)
        return -1;
    return port;
}

/* Wait for the next mark byte; returns it, or 0 at the deadline or EOF. */
static char wait_mark(void)
{
    struct pollfd pf = { .fd = mark_pipe[0], .events = POLLIN };
    char c = 0;
    if (poll(&pf, 1, DEADLINE_MS) == 1 && read(mark_pipe[0], &c, 1) == 1)
        return c;
    return 0;
}

/* waitpid with a deadline; returns the status, or -1 at the deadline
 * (after SIGKILLing it, so that nothing outlives the test). */
static int wait_exit(pid_t pid, uint64_t deadline_ms)
{
    uint64_t until = now_ms() + deadline_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        if (now_ms() > until) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(10000);
    }
}

/* Everything the app's processes logged so far. */
static char logged[65536];
static size_t nlogged;
static void read_log(void)
{
    ssize_t r;
    while (nlogged < sizeof logged - 1 &&
           (r = read(log_pipe[0], logged + nlogged, sizeof logged - 1 - nlogged)) > 0)
        nlogged += (size_t)r;
    logged[nlogged] = '\0';
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct timeval tv = { .tv_sec = 30 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

typedef struct {
    int status; /* 0: no answer (refused, reset, closed early) */
    char body[4096];
} answer;

/* Read one Connection: close answer to its end. */
static void read_answer(int fd, answer *a)
{
    char buf[8192];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && (r = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)r;
    buf[len] = '\0';
    a->status = 0;
    a->body[0] = '\0';
    if (sscanf(buf, "HTTP/1.1 %d", &a->status) != 1)
        a->status = 0;
    const char *b = strstr(buf, "\r\n\r\n");
    if (b != NULL)
        snprintf(a->body, sizeof a->body, "%s", b + 4);
}

/* GET path on a fresh connection (so that the kernel picks a worker). */
static void get(int port, const char *path, answer *a)
{
    a->status = 0;
    a->body[0] = '\0';
    int fd = connect_to(port);
    if (fd < 0)
        return;
    char req[256];
    int n =
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
    if (write(fd, req, (size_t)n) == n)
        read_answer(fd, a);
    close(fd);
}

#define MAX_PIDS 64

typedef struct {
    long pids[MAX_PIDS];
    int n;
} pid_set;

static bool pid_set_add(pid_set *s, long pid)
{
    for (int i = 0; i < s->n; i++)
        if (s->pids[i] == pid)
            return false;
    if (s->n < MAX_PIDS)
        s->pids[s->n++] = pid;
    return true;
}

/* A loop of requests, one after the other, until told to stop. */
typedef struct {
    int port;
    pid_t victim; /* set by the test when it kills a worker */
    _Atomic bool stop;
    _Atomic bool killed;
    _Atomic int ok, failed_before_kill, failed_after_kill, ok_after_kill;
    _Atomic long new_pid; /* the first pid seen after the kill that was not there before */
    pid_set before;       /* the test's, read-only while the load runs */
    pthread_t th;
} load;

static void *load_main(void *arg)
{
    load *l = arg;
    while (!atomic_load(&l->stop)) {
        bool after = atomic_load(&l->killed);
        answer a;
        get(l->port, "/pid", &a);
        /* A request under way when the worker was killed counts as after. */
        after = after || atomic_load(&l->killed);
        if (a.status == 200) {
            atomic_fetch_add(&l->ok, 1);
            if (after) {
                atomic_fetch_add(&l->ok_after_kill, 1);
                long pid = atol(a.body);
                bool known = false;
                for (int i = 0; i < l->before.n; i++)
                    known = known || l->before.pids[i] == pid;
                if (!known && atomic_load(&l->new_pid) == 0)
                    atomic_store(&l->new_pid, pid);
            }
        } else if (after) {
            atomic_fetch_add(&l->failed_after_kill, 1);
        } else {
            atomic_fetch_add(&l->failed_before_kill, 1);
        }
    }
    return NULL;
}

/* ---- The tests ------------------------------------------------------------------------ */

START_TEST(workers_share_the_port_survive_a_kill_and_stop_on_sigterm)
{
    pid_t sup = start_app(3, false);
    int port = wait_port();
    ck_assert_int_gt(port, 0);

    /* Every answer is 200; fresh connections are spread by the kernel's
     * SO_REUSEPORT hash (of the client's port among others), so 60 of them
     * all on one worker of three would be a (1/3)^59 chance. */
    load l = { .port = port };
    for (int i = 0; i < 60; i++) {
        answer a;
        get(port, "/pid", &a);
        ck_assert_int_eq(a.status, 200);
        long pid = atol(a.body);
        ck_assert_int_gt(pid, 0);
        ck_assert_int_ne(pid, sup); /* the supervisor serves nothing */
        pid_set_add(&l.before, pid);
    }
    ck_assert_msg(l.before.n >= 2, "only %d worker answered 60 fresh connections", l.before.n);
    ck_assert_int_le(l.before.n, 3);

    /* Metrics are the answering worker's, labelled with it. */
    answer m;
    get(port, "/metrics", &m);
    ck_assert_int_eq(m.status, 200);
    ck_assert_ptr_nonnull(strstr(m.body, "baton_http_worker_info{worker=\""));
    ck_assert_ptr_nonnull(strstr(m.body, "baton_http_requests_in_flight{worker=\""));
    ck_assert_ptr_nonnull(strstr(m.body, "baton_http_requests_total{worker=\""));

    /* SIGKILL one worker under load. */
    ck_assert_int_eq(pthread_create(&l.th, NULL, load_main, &l), 0);
    uint64_t until = now_ms() + DEADLINE_MS;
    while (atomic_load(&l.ok) < 20 && now_ms() < until)
        usleep(1000);
    ck_assert_int_ge(atomic_load(&l.ok), 20);
    pid_t victim = (pid_t)l.before.pids[0];
    atomic_store(&l.killed, true);
    ck_assert_int_eq(kill(victim, SIGKILL), 0);
    /* A new worker takes its slot: its pid answers. */
    until = now_ms() + DEADLINE_MS;
    while (atomic_load(&l.new_pid) == 0 && now_ms() < until)
        usleep(1000);
    long fresh = atomic_load(&l.new_pid);
    int ok_at_new = atomic_load(&l.ok_after_kill);
    while (atomic_load(&l.ok_after_kill) < ok_at_new + 30 && now_ms() < until)
        usleep(1000);
    atomic_store(&l.stop, true);
    pthread_join(l.th, NULL);
    ck_assert_int_eq(atomic_load(&l.failed_before_kill), 0);
    ck_assert_msg(fresh != 0, "no new worker answered after the kill");
    ck_assert_int_ne(fresh, victim);
    /* The others kept serving: at most the few connections that were in
     * the killed worker's hands (or its accept queue) failed. */
    ck_assert_int_ge(atomic_load(&l.ok_after_kill), ok_at_new + 30);
    ck_assert_msg(atomic_load(&l.failed_after_kill) <= 5, "%d requests failed after the kill",
                  atomic_load(&l.failed_after_kill));
    for (int i = 0; i < 20; i++) {
        answer a;
        get(port, "/pid", &a);
        ck_assert_int_eq(a.status, 200);
        ck_assert_int_ne(atol(a.body), victim);
    }

    /* SIGTERM to the supervisor while a request is in flight: it finishes,
     * every worker exits, the supervisor exits 0. */
    int fd = connect_to(port);
    ck_assert_int_ge(fd, 0);
    const char *req = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
    ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    ck_assert_int_eq(wait_mark(), 'S'); /* the handler runs */
    ck_assert_int_eq(kill(sup, SIGTERM), 0);
    answer slow;
    read_answer(fd, &slow);
    close(fd);
    ck_assert_int_eq(slow.status, 200);
    ck_assert_str_eq(slow.body, "slow");
    int st = wait_exit(sup, DEADLINE_MS);
    ck_assert_msg(st != -1, "the supervisor did not exit within %d ms", DEADLINE_MS);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the supervisor ended with 0x%x", st);
    for (int i = 0; i < l.before.n; i++)
        ck_assert_msg(kill((pid_t)l.before.pids[i], 0) != 0 && errno == ESRCH,
                      "worker %ld outlived the supervisor", l.before.pids[i]);
    ck_assert(kill((pid_t)fresh, 0) != 0 && errno == ESRCH);

    /* The supervisor said what happened. */
    read_log();
    char want[96];
    snprintf(want, sizeof want, "(pid %ld) was killed by signal 9", (long)victim);
    ck_assert_msg(strstr(logged, want) != NULL, "no '%s' in the log:\n%s", want, logged);
    snprintf(want, sizeof want, "restarted as pid %ld", fresh);
    ck_assert_msg(strstr(logged, want) != NULL, "no '%s' in the log:\n%s", want, logged);
    ck_assert_ptr_nonnull(strstr(logged, "SIGTERM: stopping the workers gracefully"));
    ck_assert_ptr_nonnull(strstr(logged, "every worker shut down cleanly"));
    close(port_pipe[0]);
    close(mark_pipe[0]);
    close(log_pipe[0]);
}
END_TEST

START_TEST(a_worker_that_crashes_at_start_is_not_restarted_in_a_loop)
{
    uint64_t t0 = now_ms();
    pid_t sup = start_app(2, true);
    ck_assert_int_eq(wait_port(), -1); /* never ready: the port never comes */
    int st = wait_exit(sup, DEADLINE_MS);
    uint64_t took = now_ms() - t0;
    ck_assert_msg(st != -1, "the supervisor kept restarting past %d ms", DEADLINE_MS);
    /* Every slot given up: the supervisor stops, and says so (BT_EIO). */
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 3, "the supervisor ended with 0x%x", st);
    /* Each of the 2 slots started once, then was restarted 3 times (the
     * limit), each restart after a backoff (0, 100, 200 ms). */
    int starts = 0;
    while (wait_mark() == 'I')
        starts++;
    ck_assert_int_eq(starts, 2 * (1 + 3));
    ck_assert_msg(took >= 300, "6 restarts in %llu ms: no backoff", (unsigned long long)took);
    read_log();
    ck_assert_ptr_nonnull(strstr(logged, "worker 1 restarted 3 time(s) within 60000 ms and died "
                                         "again; giving up on it"));
    ck_assert_ptr_nonnull(strstr(logged, "every worker was given up"));
    close(port_pipe[0]);
    close(mark_pipe[0]);
    close(log_pipe[0]);
}
END_TEST

static void *sleeper(void *arg)
{
    int *fds = arg;
    char c;
    ssize_t r = read(fds[0], &c, 1);
    (void)r;
    return NULL;
}

START_TEST(processes_refused_once_threads_run)
{
    bt_test_log_capture();
    bt_http_app *a = bt_http_app_new();
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(bt_http_app_set_processes(a, 2000), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_set_processes(NULL, 2), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_set_restart_limit(a, 3, 0), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_worker(NULL), 0);
    ck_assert_int_eq(bt_http_app_worker(a), 0);
    ck_assert_int_eq(bt_http_app_set_processes(a, 2), 0);
    /* A thread of the program's: fork would copy the calling thread only. */
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, sleeper, fds), 0);
    ck_assert_int_eq(bt_http_app_run(a, "127.0.0.1", 0, NULL, NULL), BT_EBUSY);
    ck_assert(bt_test_log_contains("fork copies only the calling one"));
    ck_assert_int_eq(write(fds[1], "x", 1), 1);
    pthread_join(th, NULL);
    close(fds[0]);
    close(fds[1]);
    bt_http_app_free(a);
}
END_TEST

START_TEST(workers_stop_although_the_program_blocked_sigterm)
{
    /* Workers used to inherit the program's mask: SIGTERM blocked in
     * each, so the stop ended in SIGKILL at the deadline (exit 4). */
    block_stop_signals = true;
    pid_t sup = start_app(2, false);
    ck_assert_int_gt(wait_port(), 0);
    ck_assert_int_eq(kill(sup, SIGTERM), 0);
    int st = wait_exit(sup, DEADLINE_MS);
    ck_assert_msg(st != -1, "the supervisor did not exit within %d ms", DEADLINE_MS);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the supervisor ended with 0x%x", st);
    read_log();
    ck_assert_ptr_nonnull(strstr(logged, "every worker shut down cleanly"));
    close(port_pipe[0]);
    close(mark_pipe[0]);
    close(log_pipe[0]);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("http_workers");
    TCase *tc = tcase_create("processes");
    tcase_set_timeout(tc, 3 * DEADLINE_MS / 1000);
    tcase_add_test(tc, workers_share_the_port_survive_a_kill_and_stop_on_sigterm);
    tcase_add_test(tc, a_worker_that_crashes_at_start_is_not_restarted_in_a_loop);
    tcase_add_test(tc, processes_refused_once_threads_run);
    tcase_add_test(tc, workers_stop_although_the_program_blocked_sigterm);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(make_suite)
