/* bench server_tls: what TLS costs the HTTP server.
 *
 * 1. Keep-alive: wrk (2 threads, 64 connections, 5 s after a 2 s warm-up)
 *    against GET /plain, a route that answers "hello" at once, served by
 *    the same Baton server over plain HTTP (the anchor) and over TLS
 *    (TLS 1.3, ECDSA P-256 certificate), each in its own process on one
 *    loop, three rounds in turn (A B A B A B), the median of each.
 * 2. Handshakes: one client on this process's thread opens 2,000
 *    connections one after the other, each with a full handshake (no
 *    session is kept) and one request with Connection: close, against
 *    plain HTTP, TLS with an ECDSA P-256 certificate and TLS with an
 *    RSA 2048 one. The server's CPU time per connection is what a
 *    handshake costs beyond a plain connection.
 * The certificates are made with the openssl command in a temporary
 * directory.
 *
 * Prints:
 *   bench server_user_tls baton=V anchor=plain_http anchor_value=V unit=req/s ratio=R better=higher
 *   bench server_user_tls_p99 (ms, lower), server_user_tls_cpu (us/request, lower)
 *   bench server_user_tls_handshake baton=V anchor=plain_http_connection anchor_value=V unit=us/connection ratio=R better=lower
 *   bench server_user_tls_handshake_rsa (the same with RSA 2048)
 * and, on stderr, the handshakes per second of the one client.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include <baton/baton.h>
#include <baton/http.h>

#include "bench.h"

#ifndef BT_BENCH_SRCDIR
#define BT_BENCH_SRCDIR "."
#endif

#define ROUNDS 3
#define SECONDS 5
#define CONNECTIONS 2000

static char dir[PATH_MAX];

/* ---- The server, in a child ------------------------------------------------ */

static bt_future *h_plain(bt_http_req *req, void *arg)
{
    (void)arg;
    return bt_http_respond(bt_http_req_loop(req), 200, "text/plain", "hello", 5);
}

static void on_ready(int port, void *arg)
{
    int fd = *(int *)arg;
    if (write(fd, &port, sizeof port) != (ssize_t)sizeof port)
        _exit(1);
    close(fd);
}

static int serve(int ready_fd, const char *cert, const char *key)
{
    bt_log_set_level(BT_LOG_WARN);
    bt_http_app *app = bt_http_app_new();
    bt_http_app_route(app, "GET", "/plain", h_plain, NULL);
    bt_http_app_set_loops(app, 1);
    if (cert != NULL && bt_http_app_set_tls(app, cert, key) != 0)
        return 1;
    int rc = bt_http_app_run(app, "127.0.0.1", 0, on_ready, &ready_fd);
    bt_http_app_free(app);
    return rc == 0 ? 0 : 1;
}

/* cert NULL: plain HTTP. Returns the child's pid, -1 on failure. */
static pid_t start(const char *cert, const char *key, int *port)
{
    int pfd[2];
    if (pipe(pfd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        _exit(serve(pfd[1], cert, key));
    }
    close(pfd[1]);
    int v = 0;
    ssize_t n = read(pfd[0], &v, sizeof v);
    close(pfd[0]);
    if (n != (ssize_t)sizeof v) {
        waitpid(pid, NULL, 0);
        return -1;
    }
    *port = v;
    return pid;
}

static void stop(pid_t pid)
{
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

/* ---- Keep-alive: wrk ---------------------------------------------------------- */

typedef struct {
    double rps, p99_ms, cpu_us;
    long errors, non2xx;
} wrk_result;

static int run_wrk(bool tls, int port, int seconds, wrk_result *out)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "wrk -t2 -c64 -d%ds --timeout 5s -s %s/bench/server_tls.lua %s://127.0.0.1:%d/plain",
             seconds, BT_BENCH_SRCDIR, tls ? "https" : "http", port);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    char line[512];
    int found = -1;
    while (fgets(line, sizeof line, p) != NULL) {
        long p99, errs, non2xx;
        double rps;
        if (sscanf(line, "RESULT rps=%lf p99_us=%ld errors=%ld non2xx=%ld", &rps, &p99, &errs,
                   &non2xx) == 4) {
            out->rps = rps;
            out->p99_ms = (double)p99 / 1000.0;
            out->errors = errs;
            out->non2xx = non2xx;
            found = 0;
        }
    }
    pclose(p);
    return found;
}

/* ---- Handshakes: one client, one connection after the other ----------------- */

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One connection: a full handshake when ctx is not NULL, one request,
 * read to the server's close. Returns 0 or -1. */
static int one_connection(SSL_CTX *ctx, int port)
{
    static const char req[] = "GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    int fd = connect_to(port);
    if (fd < 0)
        return -1;
    SSL *ssl = NULL;
    int rc = -1;
    char buf[1024];
    if (ctx != NULL) {
        ssl = SSL_new(ctx); /* no SSL_set_session: a full handshake */
        SSL_set_fd(ssl, fd);
        if (SSL_connect(ssl) != 1 || SSL_write(ssl, req, sizeof req - 1) <= 0)
            goto out;
        while (SSL_read(ssl, buf, sizeof buf) > 0)
            rc = 0;
    } else {
        if (send(fd, req, sizeof req - 1, 0) <= 0)
            goto out;
        while (recv(fd, buf, sizeof buf, 0) > 0)
            rc = 0;
    }
out:
    SSL_free(ssl);
    close(fd);
    return rc;
}

/* Server CPU microseconds per connection; *per_s gets the client's rate. */
static double connections(const char *cert, const char *key, double *per_s)
{
    int port;
    pid_t pid = start(cert, key, &port);
    if (pid < 0)
        return -1;
    SSL_CTX *ctx = NULL;
    if (cert != NULL) {
        ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    double out = -1;
    for (int i = 0; i < 200; i++) /* warm-up */
        if (one_connection(ctx, port) != 0)
            goto done;
    double cpu0 = proc_cpu_s(pid);
    uint64_t t0 = now_ns();
    for (int i = 0; i < CONNECTIONS; i++)
        if (one_connection(ctx, port) != 0)
            goto done;
    double wall = (double)(now_ns() - t0) / 1e9;
    out = (proc_cpu_s(pid) - cpu0) * 1e6 / CONNECTIONS;
    *per_s = CONNECTIONS / wall;
done:
    SSL_CTX_free(ctx);
    stop(pid);
    return out;
}

/* ---- Certificates ------------------------------------------------------------ */

static int make_cert(const char *name, const char *newkey)
{
    char cmd[PATH_MAX + 512];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && openssl req -x509 %s -nodes -keyout %s.key -out %s.pem -days 2 "
             "-subj '/CN=127.0.0.1' -addext 'subjectAltName=IP:127.0.0.1' 2>/dev/null",
             dir, newkey, name, name);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    if (system("command -v wrk >/dev/null") != 0 || system("command -v openssl >/dev/null") != 0) {
        fprintf(stderr, "server_tls: wrk and openssl are needed (apt-get install wrk openssl)\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    snprintf(dir, sizeof dir, "%s/baton-bench-tls.XXXXXX",
             getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp");
    if (mkdtemp(dir) == NULL ||
        make_cert("ec", "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1") != 0 ||
        make_cert("rsa", "-newkey rsa:2048") != 0) {
        fprintf(stderr, "server_tls: cannot make the certificates in %s\n", dir);
        return 1;
    }
    char ec_cert[PATH_MAX + 16], ec_key[PATH_MAX + 16], rsa_cert[PATH_MAX + 16],
        rsa_key[PATH_MAX + 16];
    snprintf(ec_cert, sizeof ec_cert, "%s/ec.pem", dir);
    snprintf(ec_key, sizeof ec_key, "%s/ec.key", dir);
    snprintf(rsa_cert, sizeof rsa_cert, "%s/rsa.pem", dir);
    snprintf(rsa_key, sizeof rsa_key, "%s/rsa.key", dir);
    int status = 0;

    /* 1. Keep-alive, plain (0) and TLS (1), in turn. */
    double rps[2][ROUNDS], p99[2][ROUNDS], cpu[2][ROUNDS];
    for (int r = 0; r < ROUNDS && status == 0; r++)
        for (int m = 0; m < 2 && status == 0; m++) {
            int port;
            pid_t pid = start(m ? ec_cert : NULL, m ? ec_key : NULL, &port);
            wrk_result warm, res;
            if (pid < 0 || run_wrk(m, port, 2, &warm) != 0) {
                fprintf(stderr, "server_tls: the %s server did not serve\n", m ? "TLS" : "plain");
                status = 1;
                if (pid > 0)
                    stop(pid);
                break;
            }
            double c0 = proc_cpu_s(pid);
            int rc = run_wrk(m, port, SECONDS, &res);
            double c1 = proc_cpu_s(pid);
            stop(pid);
            if (rc != 0 || res.errors != 0 || res.non2xx != 0) {
                fprintf(stderr, "server_tls: wrk failed or saw errors (%s)\n", m ? "TLS" : "plain");
                status = 1;
                break;
            }
            rps[m][r] = res.rps;
            p99[m][r] = res.p99_ms;
            cpu[m][r] = (c1 - c0) * 1e6 / (res.rps * SECONDS);
            fprintf(stderr,
                    "server_tls: round %d %s: %.0f req/s, p99 %.2f ms, %.1f us CPU/request\n",
                    r + 1, m ? "tls" : "plain", res.rps, res.p99_ms, cpu[m][r]);
        }
    if (status == 0) {
        bench_line("server_user_tls", median_d(rps[1], ROUNDS), "plain_http",
                   median_d(rps[0], ROUNDS), "req/s", "higher");
        bench_line("server_user_tls_p99", median_d(p99[1], ROUNDS), "plain_http",
                   median_d(p99[0], ROUNDS), "ms", "lower");
        bench_line("server_user_tls_cpu", median_d(cpu[1], ROUNDS), "plain_http",
                   median_d(cpu[0], ROUNDS), "us/request", "lower");
    }

    /* 2. A connection each: plain, TLS with ECDSA, TLS with RSA. */
    double rate_plain = 0, rate_ec = 0, rate_rsa = 0;
    double us_plain = connections(NULL, NULL, &rate_plain);
    double us_ec = connections(ec_cert, ec_key, &rate_ec);
    double us_rsa = connections(rsa_cert, rsa_key, &rate_rsa);
    if (us_plain < 0 || us_ec < 0 || us_rsa < 0) {
        fprintf(stderr, "server_tls: a connection failed in the handshake runs\n");
        status = 1;
    } else {
        fprintf(stderr,
                "server_tls: one client, %d connections one after the other: plain %.0f/s, "
                "TLS ECDSA P-256 %.0f handshakes/s, TLS RSA 2048 %.0f handshakes/s\n",
                CONNECTIONS, rate_plain, rate_ec, rate_rsa);
        bench_line("server_user_tls_handshake", us_ec, "plain_http_connection", us_plain,
                   "us/connection", "lower");
        bench_line("server_user_tls_handshake_rsa", us_rsa, "plain_http_connection", us_plain,
                   "us/connection", "lower");
    }
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "server_tls: could not remove %s\n", dir);
    return status;
}
