/* bench server_user: wrk against GET /user/{id}, random ids over 10,000
 * rows in a throwaway PostgreSQL, 64 connections, 10 seconds; requests per
 * second and p99 latency of a Baton server against the anchor, a hand-
 * written evhttp + nonblocking libpq server with 16 connections
 * (bench/server_user_anchor.c).
 *
 * Both servers answer the same JSON from the same query, on one loop (the
 * anchor is single-threaded, so the Baton server runs one loop too). The
 * anchor keeps 16 connections with one query each in flight, as plain
 * libpq code does; the Baton pool keeps one connection per core and
 * pipelines (SERVER_USER_POOL=16 gives it the anchor's 16). Each
 * runs in its own process; wrk (2 threads) runs in a third. Each server
 * is started fresh for each of three rounds (A B A B A B), gets a 2 s
 * warm-up and a 10 s measured run; the median of the three counts, for
 * req/s and for p99 apart, to damp the noise of a shared machine.
 *
 * It also runs the flagship-like handler (examples/server.c's GET /user/{id}
 * without the upstream call: the query, a fingerprint on the CPU lane,
 * JSON) twice, in callback style and as a fiber handler
 * (bt_http_app_route_async), in the same rounds.
 *
 * Prints:
 *   bench server_user_fiber baton=V anchor=server_user_callback anchor_value=V unit=req/s ratio=R better=higher
 *   bench server_user_fiber_p99 (ms, lower) and server_user_fiber_cpu (us/request, lower)
 *   bench server_user_rps baton=V anchor=evhttp_libpq anchor_value=V unit=req/s ratio=R better=higher
 *   bench server_user_p99 baton=V anchor=evhttp_libpq anchor_value=V unit=ms ratio=R better=lower
 *   bench server_user_cpu baton=V anchor=evhttp_libpq anchor_value=V unit=us/request ratio=R better=lower
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <baton/baton.h>
#include <baton/fiber.h>
#include <baton/http.h>
#include <baton/pq.h>

#include "bench.h"
#include "pg_harness.h"
#include "server_user.h"

#ifndef BT_BENCH_SRCDIR
#define BT_BENCH_SRCDIR "."
#endif

static const char *conninfo;

/* ---- The Baton server -------------------------------------------------- */

typedef struct {
    bt_loop *loop;
    char id[16];
} user_call;

static bt_future *on_row(bt_future *q, void *arg)
{
    user_call *uc = arg;
    bt_loop *loop = uc->loop;
    bt_future *out;
    int rc = bt_future_error(q);
    if (rc != 0)
        out = bt_future_new_error(loop, rc, "%s", bt_future_error_message(q));
    else {
        bt_pq_result *r = bt_future_value(q);
        if (bt_pq_result_rows(r) == 0)
            out = bt_http_respond_error(loop, 404, "user not found");
        else
            out = bt_http_respond_json(loop, 200,
                                       json_pack("{s:s, s:s, s:s}", "id", uc->id, "name",
                                                 bt_pq_result_get(r, 0, 0), "email",
                                                 bt_pq_result_get(r, 0, 1)));
    }
    return out;
}

static bt_future *get_user(bt_http_req *req, void *arg)
{
    (void)arg;
    bt_loop *loop = bt_http_req_loop(req);
    const char *id = bt_http_req_param(req, "id");
    size_t n = strlen(id);
    if (n == 0 || n > 10 || strspn(id, "0123456789") != n)
        return bt_http_respond_error(loop, 400, "id must be a positive integer");
    user_call *uc = bt_calloc(1, sizeof *uc);
    if (!uc)
        return NULL;
    bt_http_req_set_state(req, uc, bt_free); /* freed after the reply */
    uc->loop = loop;
    memcpy(uc->id, id, n + 1);
    const char *params[] = { uc->id };
    bt_future *q = bt_pq_query(bt_http_req_loop_data(req),
                               "SELECT name, email FROM users WHERE id = $1", 1, params);
    return q ? bt_future_after(q, on_row, uc) : NULL;
}

/* ---- The flagship-like handler, in callback style and as a fiber -------
 * What examples/server.c's GET /user/{id} does, minus the upstream call:
 * the query, then a fingerprint of the email on the pool's CPU lane, then
 * JSON. Both styles do the same work with the same allocations: the job
 * owns a copy of the email (bt_pool_submit_owned), as a fiber's job must
 * (a cancelled await returns while a running job goes on). */

static int fingerprint_job(bt_job *job, void *arg)
{
    const char *email = arg;
    uint64_t h = 1469598103934665603ull;
    for (int round = 0; round < 256 && !bt_job_cancelled(job); round++) {
        for (const char *p = email; *p; p++) {
            h ^= (unsigned char)*p;
            h *= 1099511628211ull;
        }
        h ^= (uint64_t)round;
    }
    char *hex = bt_asprintf("%016llx", (unsigned long long)h);
    if (hex == NULL)
        return bt_job_fail(job, BT_ENOMEM, "out of memory");
    return bt_job_set_value(job, hex, bt_free);
}

static bool valid_id(const char *id)
{
    size_t n = strlen(id);
    return n > 0 && n <= 10 && strspn(id, "0123456789") == n;
}

static json_t *user_json(const char *id, bt_pq_result *r)
{
    return json_pack("{s:s, s:s, s:s}", "id", id, "name", bt_pq_result_get(r, 0, 0), "email",
                     bt_pq_result_get(r, 0, 1));
}

/* Callback style: the request's state carries the steps' data. */
typedef struct {
    bt_loop *loop;
    char id[16];
    json_t *body;
} flag_call;

static void flag_call_free(void *p)
{
    flag_call *fc = p;
    json_decref(fc->body);
    bt_free(fc);
}

static bt_future *cb_hashed(bt_future *job, void *arg)
{
    flag_call *fc = arg;
    int rc = bt_future_error(job);
    if (rc != 0)
        return bt_future_new_error(fc->loop, rc, "%s", bt_future_error_message(job));
    json_object_set_new(fc->body, "fingerprint", json_string(bt_future_value(job)));
    json_t *body = fc->body;
    fc->body = NULL;
    return bt_http_respond_json(fc->loop, 200, body);
}

static bt_future *cb_row(bt_future *q, void *arg)
{
    flag_call *fc = arg;
    int rc = bt_future_error(q);
    if (rc != 0)
        return bt_future_new_error(fc->loop, rc, "%s", bt_future_error_message(q));
    bt_pq_result *r = bt_future_value(q);
    if (bt_pq_result_rows(r) == 0)
        return bt_http_respond_error(fc->loop, 404, "user not found");
    char *email = bt_strdup(bt_pq_result_get(r, 0, 1));
    fc->body = user_json(fc->id, r);
    if (email == NULL || fc->body == NULL) {
        bt_free(email);
        return NULL;
    }
    bt_future *job = bt_pool_submit_owned(bt_pool_default(), fc->loop, BT_LANE_CPU, fingerprint_job,
                                          email, bt_free);
    return job ? bt_future_after(job, cb_hashed, fc) : NULL;
}

static bt_future *get_user_callback(bt_http_req *req, void *arg)
{
    (void)arg;
    bt_loop *loop = bt_http_req_loop(req);
    const char *id = bt_http_req_param(req, "id");
    if (!valid_id(id))
        return bt_http_respond_error(loop, 400, "id must be a positive integer");
    flag_call *fc = bt_calloc(1, sizeof *fc);
    if (fc == NULL)
        return NULL;
    bt_http_req_set_state(req, fc, flag_call_free);
    fc->loop = loop;
    snprintf(fc->id, sizeof fc->id, "%s", id);
    const char *params[] = { fc->id };
    bt_future *q = bt_pq_query(bt_http_req_loop_data(req),
                               "SELECT name, email FROM users WHERE id = $1", 1, params);
    return q ? bt_future_after(q, cb_row, fc) : NULL;
}

/* Fiber style (bt_http_app_route_async): the same steps, top to bottom. */
static bt_future *get_user_fiber(bt_http_req *req, void *arg)
{
    (void)arg;
    bt_loop *loop = bt_http_req_loop(req);
    const char *id = bt_http_req_param(req, "id");
    if (!valid_id(id))
        return bt_http_respond_error(loop, 400, "id must be a positive integer");
    const char *params[] = { id };
    bt_pq_result *r;
    int rc = bt_await(bt_pq_query(bt_http_req_loop_data(req),
                                  "SELECT name, email FROM users WHERE id = $1", 1, params),
                      (void **)&r);
    if (rc != 0)
        return bt_future_new_error(loop, rc, "%s", bt_await_error());
    if (bt_pq_result_rows(r) == 0) {
        bt_pq_result_free(r);
        return bt_http_respond_error(loop, 404, "user not found");
    }
    char *email = bt_strdup(bt_pq_result_get(r, 0, 1));
    json_t *body = user_json(id, r);
    bt_pq_result_free(r);
    if (email == NULL || body == NULL) {
        bt_free(email);
        json_decref(body);
        return NULL;
    }
    char *hex;
    rc = bt_await(
        bt_pool_submit_owned(bt_pool_default(), loop, BT_LANE_CPU, fingerprint_job, email, bt_free),
        (void **)&hex);
    if (rc != 0) {
        json_decref(body);
        return bt_future_new_error(loop, rc, "%s", bt_await_error());
    }
    json_object_set_new(body, "fingerprint", json_string(hex));
    bt_free(hex);
    return bt_http_respond_json(loop, 200, body);
}

static int loop_init(bt_loop *loop, void *arg, void **data)
{
    (void)arg;
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = conninfo;
    /* As many connections as cores, each carrying a deep pipeline: on a
     * small machine, a few busy PostgreSQL backends beat many that take
     * turns on the CPU (the anchor's 16, one query each at a time). The
     * classic sizing rule for PostgreSQL pools says the same. */
    const char *size = getenv("SERVER_USER_POOL"); /* for experiments */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    o.max_size = size ? (unsigned)atoi(size) : (unsigned)(cores > 0 ? cores : 2);
    o.min_size = o.max_size;
    const char *depth = getenv("SERVER_USER_DEPTH"); /* for experiments */
    if (depth)
        o.pipeline_depth = (unsigned)atoi(depth);
    bt_pq_pool *db = bt_pq_pool_new(loop, &o);
    *data = db;
    return db ? 0 : BT_EINVAL;
}

static void loop_fini(bt_loop *loop, void *data, void *arg)
{
    (void)loop;
    (void)arg;
    bt_pq_pool_free(data);
}

static void on_ready(int port, void *arg)
{
    int fd = *(int *)arg;
    if (write(fd, &port, sizeof port) != (ssize_t)sizeof port)
        exit(1);
}

/* The servers: the anchor, and Baton with each handler. */
enum { ANCHOR, BATON, FLAG_CALLBACK, FLAG_FIBER, NMODES };
static const char *const mode_names[NMODES] = { "anchor", "baton", "callback", "fiber" };

static int baton_serve(int ready_fd, int mode)
{
    bt_http_app *app = bt_http_app_new();
    if (mode == FLAG_FIBER)
        bt_http_app_route_async(app, "GET", "/user/{id}", get_user_fiber, NULL);
    else if (mode == FLAG_CALLBACK)
        bt_http_app_route(app, "GET", "/user/{id}", get_user_callback, NULL);
    else
        bt_http_app_route(app, "GET", "/user/{id}", get_user, NULL);
    bt_http_app_set_loops(app, 1);
    bt_http_app_on_loop(app, loop_init, loop_fini, NULL);
    int rc = bt_http_app_run(app, "127.0.0.1", 0, on_ready, &ready_fd);
    bt_http_app_free(app);
    return rc == 0 ? 0 : 1;
}

/* ---- The driver ---------------------------------------------------------- */

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1024) != 0)
        return -1;
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* Start one server in a child; returns its pid and sets *port. */
static pid_t start(int mode, int *port)
{
    bool baton = mode != ANCHOR;
    int lfd = -1, pfd[2];
    if (!baton && (lfd = listen_any(port)) < 0)
        return -1;
    if (pipe(pfd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        if (baton)
            _exit(baton_serve(pfd[1], mode));
        int one = 1;
        if (write(pfd[1], &one, sizeof one) < 0)
            _exit(1);
        _exit(anchor_serve(conninfo, lfd));
    }
    close(pfd[1]);
    if (lfd >= 0)
        close(lfd);
    int v = 0;
    if (read(pfd[0], &v, sizeof v) != (ssize_t)sizeof v) {
        close(pfd[0]);
        return -1;
    }
    close(pfd[0]);
    if (baton)
        *port = v;
    return pid;
}

typedef struct {
    double rps, p99_ms, p50_ms;
    long requests, errors, non2xx;
    double cpu_us; /* the server's CPU time per request, user + system */
} wrk_result;

static int run_wrk(int port, int seconds, wrk_result *out)
{
    char cmd[512];
    const char *conns = getenv("SERVER_USER_CONNS"); /* for experiments; 64 is the bench */
    int c = conns ? atoi(conns) : 64;
    snprintf(cmd, sizeof cmd,
             "wrk -t%d -c%d -d%ds --timeout 5s -s %s/bench/server_user.lua http://127.0.0.1:%d/",
             c < 2 ? 1 : 2, c, seconds, BT_BENCH_SRCDIR, port);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char line[512];
    int found = -1;
    while (fgets(line, sizeof line, p)) {
        double rps;
        long p99, p50, reqs, errs, non2xx;
        if (sscanf(line, "RESULT rps=%lf p99_us=%ld p50_us=%ld requests=%ld errors=%ld non2xx=%ld",
                   &rps, &p99, &p50, &reqs, &errs, &non2xx) == 6) {
            out->rps = rps;
            out->requests = reqs;
            out->p99_ms = (double)p99 / 1000.0;
            out->p50_ms = (double)p50 / 1000.0;
            out->errors = errs;
            out->non2xx = non2xx;
            found = 0;
        }
    }
    pclose(p);
    return found;
}

/* Stop the server; returns the CPU time it used, in seconds. */
static double stop(pid_t pid)
{
    kill(pid, SIGTERM);
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    wait4(pid, NULL, 0, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int main(void)
{
    if (system("wrk -v >/dev/null 2>&1") == 127 || system("command -v wrk >/dev/null") != 0) {
        fprintf(stderr, "server_user: wrk is needed (apt-get install wrk)\n");
        return 1;
    }
    bt_test_pg *pg = bt_test_pg_start();
    if (!pg)
        return 1;
    conninfo = bt_test_pg_conninfo(pg);
    if (bt_test_pg_exec(pg, "CREATE TABLE users (id integer PRIMARY KEY, name text NOT NULL,"
                            " email text NOT NULL);"
                            "INSERT INTO users SELECT i, 'user ' || i, 'user' || i ||"
                            " '@example.com' FROM generate_series(1, 10000) AS i;"
                            "ANALYZE users;") != 0)
        return 1;

    /* For profiling: SERVER_USER_ONLY=a list of anchor, baton, callback,
     * fiber (e.g. "callback,fiber"); SERVER_USER_SECONDS=N. */
    const char *only = getenv("SERVER_USER_ONLY");
    int seconds = getenv("SERVER_USER_SECONDS") ? atoi(getenv("SERVER_USER_SECONDS")) : 10;
    enum { ROUNDS = 3 };
    wrk_result runs[NMODES][ROUNDS];
    bool ran[NMODES] = { false };
    memset(runs, 0, sizeof runs);
    for (int round = 0; round < ROUNDS; round++) {
        for (int b = 0; b < NMODES; b++) {
            if (only && strstr(only, mode_names[b]) == NULL)
                continue;
            ran[b] = true;
            int port = 0;
            pid_t pid = start(b, &port);
            if (pid < 0) {
                fprintf(stderr, "server_user: the %s server did not start\n", mode_names[b]);
                return 1;
            }
            wrk_result warm, r;
            double cpu0 = 0;
            if (run_wrk(port, 2, &warm) != 0 || (cpu0 = proc_cpu_s(pid), false) ||
                run_wrk(port, seconds, &r) != 0) {
                fprintf(stderr, "server_user: wrk failed\n");
                stop(pid);
                return 1;
            }
            r.cpu_us = (proc_cpu_s(pid) - cpu0) * 1e6 / (double)(r.requests ? r.requests : 1);
            stop(pid);
            fprintf(stderr,
                    "server_user: round %d %s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, %ld errors, "
                    "%ld non-2xx, server CPU %.1f us/request\n",
                    round + 1, mode_names[b], r.rps, r.p50_ms, r.p99_ms, r.errors, r.non2xx,
                    r.cpu_us);
            if (r.errors || r.non2xx) {
                fprintf(stderr, "server_user: the %s server answered with errors\n", mode_names[b]);
                return 1;
            }
            runs[b][round] = r;
        }
    }
    /* The median run of each, by requests per second and by p99 apart. */
    wrk_result best[NMODES];
    for (int b = 0; b < NMODES; b++) {
        double rps[ROUNDS], p99[ROUNDS], cpu[ROUNDS];
        for (int i = 0; i < ROUNDS; i++) {
            rps[i] = runs[b][i].rps;
            p99[i] = runs[b][i].p99_ms;
            cpu[i] = runs[b][i].cpu_us;
        }
        best[b].rps = median_d(rps, 3);
        best[b].p99_ms = median_d(p99, 3);
        best[b].cpu_us = median_d(cpu, 3);
    }
    if (ran[ANCHOR] && ran[BATON]) {
        bench_line("server_user_rps", best[BATON].rps, "evhttp_libpq", best[ANCHOR].rps, "req/s",
                   "higher");
        bench_line("server_user_p99", best[BATON].p99_ms, "evhttp_libpq", best[ANCHOR].p99_ms, "ms",
                   "lower");
        /* The server's own CPU per request: steadier than req/s on a
         * machine shared with wrk, PostgreSQL and other work. */
        bench_line("server_user_cpu", best[BATON].cpu_us, "evhttp_libpq", best[ANCHOR].cpu_us,
                   "us/request", "lower");
    }
    /* The flagship-like handler written as a fiber, against the same
     * handler in callback style, in the same run (rounds interleaved). */
    if (ran[FLAG_CALLBACK] && ran[FLAG_FIBER]) {
        bench_line("server_user_fiber", best[FLAG_FIBER].rps, "server_user_callback",
                   best[FLAG_CALLBACK].rps, "req/s", "higher");
        bench_line("server_user_fiber_p99", best[FLAG_FIBER].p99_ms, "server_user_callback",
                   best[FLAG_CALLBACK].p99_ms, "ms", "lower");
        bench_line("server_user_fiber_cpu", best[FLAG_FIBER].cpu_us, "server_user_callback",
                   best[FLAG_CALLBACK].cpu_us, "us/request", "lower");
    }
    bt_test_pg_free(pg);
    return 0;
}
