/* bench http_get: 20,000 GETs of a small body at concurrency 100 against a
 * local evhttp server (a child process), Baton's client against a raw curl
 * multi + libevent client (http_get_anchor.c), in the same run, best of
 * five rounds each, alternating. Also reports CPU per request (median
 * round) of the client process and of the server process during each
 * client's rounds. */
#include "http_get.h"

#include <stdio.h>
#include <stdlib.h>

#include <baton/baton.h>
#include <baton/curl.h>

#include "../tests/curl_server.h"
#include "bench.h"

#define N 20000
#define CONC 100
#define ROUNDS 5

typedef struct {
    bt_loop *loop;
    bt_http_client *c;
    const char *url;
    int started, ok, failed;
} run_state;

static void start_one(run_state *s);

static void on_done(bt_future *f, void *arg)
{
    run_state *s = arg;
    if (bt_future_error(f) == 0 && bt_http_response_status(bt_future_value(f)) == 200)
        s->ok++;
    else
        s->failed++;
    bt_future_unref(f);
    if (s->started < N)
        start_one(s);
    else if (s->ok + s->failed == N)
        bt_loop_stop(s->loop);
}

static void start_one(run_state *s)
{
    s->started++;
    bt_future *f = bt_http_get(s->c, s->url);
    if (f == NULL || bt_future_add_callback(f, on_done, s) != 0) {
        fprintf(stderr, "http_get: could not send\n");
        exit(1);
    }
}

static int run_baton(const char *url, int n, http_get_result *out)
{
    run_state s = { .url = url };
    s.loop = bt_loop_new();
    s.c = bt_http_client_new(s.loop);
    bt_http_client_set_limits(s.c, CONC, 0);
    double t0 = http_get_now(), c0 = http_get_cpu();
    int first = n < CONC ? n : CONC;
    for (int i = 0; i < first; i++)
        start_one(&s);
    bt_loop_run(s.loop);
    out->seconds = http_get_now() - t0;
    out->cpu = http_get_cpu() - c0;
    out->ok = s.ok;
    out->failed = s.failed;
    bt_http_client_free(s.c);
    bt_loop_free(s.loop);
    return s.ok == n ? 0 : -1;
}

int main(void)
{
    int port;
    pid_t server = curl_server_fork(&port);
    if (server < 0) {
        fprintf(stderr, "http_get: the local server did not start\n");
        return 1;
    }
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hello", port);

    double best_b = 0, best_a = 0;
    double cpu_b[ROUNDS], cpu_a[ROUNDS], srv_b[ROUNDS], srv_a[ROUNDS];
    for (int round = 0; round < ROUNDS; round++) {
        http_get_result ra, rb;
        double s0 = curl_server_child_cpu(server);
        if (http_get_anchor(url, N, CONC, &ra) != 0) {
            fprintf(stderr, "http_get: anchor: %d failed\n", ra.failed);
            curl_server_kill(server);
            return 1;
        }
        double s1 = curl_server_child_cpu(server);
        if (run_baton(url, N, &rb) != 0) {
            fprintf(stderr, "http_get: baton: %d failed\n", rb.failed);
            curl_server_kill(server);
            return 1;
        }
        double s2 = curl_server_child_cpu(server);
        double va = N / ra.seconds, vb = N / rb.seconds;
        fprintf(stderr,
                "round %d: anchor %.0f req/s (client cpu %.2fs, server cpu %.2fs), "
                "baton %.0f req/s (client cpu %.2fs, server cpu %.2fs)\n",
                round, va, ra.cpu, s1 - s0, vb, rb.cpu, s2 - s1);
        best_a = va > best_a ? va : best_a;
        best_b = vb > best_b ? vb : best_b;
        cpu_a[round] = ra.cpu;
        cpu_b[round] = rb.cpu;
        srv_a[round] = s1 - s0;
        srv_b[round] = s2 - s1;
    }
    curl_server_kill(server);
    bench_line("http_get", best_b, "raw-curl-multi-libevent", best_a, "req/s", "higher");
    /* CPU: the median round of each, per request. */
    double ub = median_d(cpu_b, ROUNDS) * 1e6 / N, ua = median_d(cpu_a, ROUNDS) * 1e6 / N;
    bench_line("http_get_client_cpu", ub, "raw-curl-multi-libevent", ua, "cpu-us/req", "lower");
    double sb = median_d(srv_b, ROUNDS) * 1e6 / N, sa = median_d(srv_a, ROUNDS) * 1e6 / N;
    bench_line("http_get_server_cpu", sb, "raw-curl-multi-libevent", sa, "cpu-us/req", "lower");
    return 0;
}
