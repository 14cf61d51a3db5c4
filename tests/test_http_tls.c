/* TLS on the HTTP server (libbaton-http with OpenSSL), against real
 * clients on 127.0.0.1: Baton's HTTP client with a CA file, and a small
 * blocking OpenSSL client where the test needs to hold a connection or
 * see what was negotiated (ALPN, the version, the certificate's subject).
 * The certificates are made at the suite's start with the openssl
 * command, in a temporary directory: two CAs, each signing one server
 * certificate, so that a client trusting one CA only tells which
 * certificate the server presents. The server runs under
 * bt_http_app_run on a thread of its own. */
#define _GNU_SOURCE
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <baton/curl.h>
#include <baton/http.h>

#include "harness.h"

#ifdef BT_HAVE_OPENSSL
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

static char dir[PATH_MAX]; /* the certificates */
static char ca1[PATH_MAX + 32], ca2[PATH_MAX + 32];
static char live_cert[PATH_MAX + 32], live_key[PATH_MAX + 32];

static void path_in(char *out, const char *name)
{
    snprintf(out, PATH_MAX + 32, "%s/%s", dir, name);
}

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    ck_assert_msg(rc == 0, "command failed (%d): %s", rc, cmd);
}

/* CA n (cert caN.pem) and the server certificate it signs (srvN.pem,
 * srvN.key), for 127.0.0.1 and localhost, CN "baton test server N". */
static void make_pki(int n)
{
    sh("cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
       "-keyout ca%d.key -out ca%d.pem -days 2 -subj '/CN=baton test CA %d' 2>/dev/null",
       dir, n, n, n);
    sh("cd '%s' && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
       "-keyout srv%d.key -out srv%d.csr -subj '/CN=baton test server %d' 2>/dev/null",
       dir, n, n, n);
    sh("cd '%s' && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext%d && "
       "openssl x509 -req -in srv%d.csr -CA ca%d.pem -CAkey ca%d.key -CAcreateserial "
       "-out srv%d.pem -days 2 -extfile ext%d 2>/dev/null",
       dir, n, n, n, n, n, n);
}

/* Once for the suite (an unchecked fixture): the openssl command is
 * required, loudly. */
static void make_certificates(void)
{
    if (system("openssl version >/dev/null 2>&1") != 0) {
        fprintf(stderr, "test_http_tls: the openssl command is needed to make the test "
                        "certificates (apt-get install openssl)\n");
        ck_abort_msg("the openssl command is missing");
    }
    snprintf(dir, sizeof dir, "%s/baton-tls.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    make_pki(1);
    make_pki(2);
    path_in(ca1, "ca1.pem");
    path_in(ca2, "ca2.pem");
    path_in(live_cert, "live.pem");
    path_in(live_key, "live.key");
}

static void remove_certificates(void)
{
    if (dir[0] != '\0')
        sh("rm -rf '%s'", dir);
}

/* The live files, which the server loads, become server n's. */
static void install(int n)
{
    sh("cd '%s' && cp srv%d.pem live.pem.new && cp srv%d.key live.key.new && "
       "mv live.pem.new live.pem && mv live.key.new live.key",
       dir, n, n);
}

/* ---- The server: bt_http_app_run on a thread ------------------------------ */

static bt_http_app *app;
static int port;
static pthread_t server_th;
static pthread_mutex_t ready_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready_cv = PTHREAD_COND_INITIALIZER;
static int run_rc;
static bool running;

static bt_future *h_hello(bt_http_req *req, void *arg)
{
    (void)arg;
    return bt_http_respond(bt_http_req_loop(req), 200, "text/plain", "hello", 5);
}

/* The answering process: which worker served a connection. */
static bt_future *h_pid(bt_http_req *req, void *arg)
{
    (void)arg;
    char body[32];
    int n = snprintf(body, sizeof body, "%ld", (long)getpid());
    return bt_http_respond(bt_http_req_loop(req), 200, "text/plain", body, (size_t)n);
}

static void on_ready(int p, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&ready_mu);
    port = p;
    pthread_cond_signal(&ready_cv);
    pthread_mutex_unlock(&ready_mu);
}

static void *server_main(void *arg)
{
    (void)arg;
    run_rc = bt_http_app_run(app, "127.0.0.1", 0, on_ready, NULL);
    pthread_mutex_lock(&ready_mu);
    port = -1;
    pthread_cond_signal(&ready_cv);
    pthread_mutex_unlock(&ready_mu);
    return NULL;
}

static void setup(void)
{
    app = bt_http_app_new();
    ck_assert_ptr_nonnull(app);
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    bt_http_app_route(app, "GET", "/pid", h_pid, NULL);
    bt_http_app_set_loops(app, 2);
    install(1);
    port = 0;
    running = false;
}

static void start(void)
{
    ck_assert_int_eq(pthread_create(&server_th, NULL, server_main, NULL), 0);
    pthread_mutex_lock(&ready_mu);
    while (port == 0)
        pthread_cond_wait(&ready_cv, &ready_mu);
    pthread_mutex_unlock(&ready_mu);
    ck_assert_int_gt(port, 0);
    running = true;
}

static pid_t sup_pid; /* a test's supervisor process, killed here if it failed */

static void teardown(void)
{
    if (sup_pid > 0) { /* its workers follow it (PR_SET_PDEATHSIG) */
        kill(sup_pid, SIGKILL);
        waitpid(sup_pid, NULL, 0);
        sup_pid = 0;
    }
    if (running) {
        bt_http_app_stop(app);
        pthread_join(server_th, NULL);
        ck_assert_int_eq(run_rc, 0);
    }
    bt_http_app_free(app);
}

/* ---- Clients --------------------------------------------------------------- */

static int tcp_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = { 10, 0 }; /* no wait in these tests is longer */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

typedef struct {
    SSL_CTX *ctx;
    SSL *ssl;
    int fd;
} tls_conn;

/* A blocking TLS connection verifying the server against ca (NULL: no
 * verification), offering alpn (wire format, NULL for none), with at
 * most max_version (0: any). Returns 0 after a handshake, -1 when it
 * failed (c is then closed). */
static int tls_open(tls_conn *c, const char *ca, const char *alpn, size_t alpn_len, int max_version)
{
    memset(c, 0, sizeof *c);
    c->ctx = SSL_CTX_new(TLS_client_method());
    ck_assert_ptr_nonnull(c->ctx);
    if (max_version != 0) {
        /* Let this client offer the old versions OpenSSL 3 turns off by
         * default, so that it is the server that refuses them. */
        SSL_CTX_set_security_level(c->ctx, 0);
        SSL_CTX_set_cipher_list(c->ctx, "DEFAULT:@SECLEVEL=0");
        SSL_CTX_set_min_proto_version(c->ctx, TLS1_VERSION);
        SSL_CTX_set_max_proto_version(c->ctx, max_version);
    }
    if (ca != NULL) {
        ck_assert_int_eq(SSL_CTX_load_verify_locations(c->ctx, ca, NULL), 1);
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    }
    if (alpn != NULL)
        SSL_CTX_set_alpn_protos(c->ctx, (const unsigned char *)alpn, (unsigned)alpn_len);
    c->fd = tcp_connect();
    c->ssl = SSL_new(c->ctx);
    SSL_set_fd(c->ssl, c->fd);
    SSL_set1_host(c->ssl, "127.0.0.1");
    if (SSL_connect(c->ssl) != 1) {
        ERR_clear_error();
        SSL_free(c->ssl);
        SSL_CTX_free(c->ctx);
        close(c->fd);
        memset(c, 0, sizeof *c);
        return -1;
    }
    return 0;
}

static void tls_close(tls_conn *c)
{
    if (c->ssl == NULL)
        return;
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    close(c->fd);
    memset(c, 0, sizeof *c);
}

static char last_body[256]; /* of the last response tls_request read */

/* Send req on c and read one response. Returns its status, 0 if the
 * connection failed; the body is left in last_body. */
static int tls_request(tls_conn *c, const char *req)
{
    if (SSL_write(c->ssl, req, (int)strlen(req)) != (int)strlen(req))
        return 0;
    char buf[4096];
    size_t got = 0;
    for (;;) {
        int n = SSL_read(c->ssl, buf + got, (int)(sizeof buf - 1 - got));
        if (n <= 0)
            return 0;
        got += (size_t)n;
        buf[got] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        const char *cl = strcasestr(buf, "Content-Length:");
        if (end != NULL && cl != NULL && got >= (size_t)(end + 4 - buf) + (size_t)atoi(cl + 15))
            break;
    }
    int status = 0;
    sscanf(buf, "HTTP/1.1 %d", &status);
    snprintf(last_body, sizeof last_body, "%s", strstr(buf, "\r\n\r\n") + 4);
    return status;
}

/* GET /hello on c (keep-alive). */
static int tls_get(tls_conn *c)
{
    return tls_request(c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
}

/* The common name of the certificate the server presented. */
static void peer_cn(tls_conn *c, char *out, size_t size)
{
    X509 *x = SSL_get1_peer_certificate(c->ssl);
    ck_assert_ptr_nonnull(x);
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, (int)size);
    X509_free(x);
}

/* GET /hello with Baton's client trusting ca on a loop of this thread.
 * Returns the status, or the client's error (negative). */
static int baton_get(const char *ca, int *version)
{
    bt_loop *loop = bt_loop_new();
    ck_assert_ptr_nonnull(loop);
    bt_http_client *cl = bt_http_client_new(loop);
    ck_assert_ptr_nonnull(cl);
    ck_assert_int_eq(bt_http_client_set_ca_file(cl, ca), 0);
    char url[64];
    snprintf(url, sizeof url, "https://127.0.0.1:%d/hello", port);
    bt_future *f = bt_http_get(cl, url);
    bt_test_run_until(loop, f, 10000);
    int rc = bt_future_error(f);
    if (rc == 0) {
        bt_http_response *r = bt_future_value(f);
        rc = bt_http_response_status(r);
        if (version != NULL)
            *version = bt_http_response_version(r);
        ck_assert_str_eq(bt_http_response_body(r, NULL), "hello");
    }
    bt_future_unref(f);
    bt_http_client_free(cl);
    bt_test_loop_free_clean(loop);
    return rc;
}

/* ---- Tests ----------------------------------------------------------------- */

START_TEST(tls_serves_http11_by_alpn)
{
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, live_key), 0);
    start();
    int version = 0;
    ck_assert_int_eq(baton_get(ca1, &version), 200);
    ck_assert_int_eq(version, 11); /* the client offered h2 too */

    tls_conn c;
    static const char h2_and_11[] = "\x02h2\x08http/1.1";
    ck_assert_int_eq(tls_open(&c, ca1, h2_and_11, sizeof h2_and_11 - 1, 0), 0);
    const unsigned char *sel = NULL;
    unsigned len = 0;
    SSL_get0_alpn_selected(c.ssl, &sel, &len);
    ck_assert_uint_eq(len, 8);
    ck_assert_int_eq(memcmp(sel, "http/1.1", 8), 0);
    ck_assert_int_eq(SSL_version(c.ssl), TLS1_3_VERSION);
    ck_assert_int_eq(tls_get(&c), 200);
    ck_assert_int_eq(tls_get(&c), 200); /* keep-alive */
    tls_close(&c);

    /* A client that wants h2 only is refused (no_application_protocol);
     * one that offers no ALPN is served. */
    static const char h2[] = "\x02h2";
    ck_assert_int_eq(tls_open(&c, ca1, h2, sizeof h2 - 1, 0), -1);
    ck_assert_int_eq(tls_open(&c, ca1, NULL, 0, 0), 0);
    ck_assert_int_eq(tls_get(&c), 200);
    tls_close(&c);
}
END_TEST

START_TEST(tls_old_versions_refused)
{
    bt_test_log_capture();
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, live_key), 0);
    start();
    tls_conn c;
    ck_assert_int_eq(tls_open(&c, ca1, NULL, 0, TLS1_1_VERSION), -1);
    ck_assert_int_eq(tls_open(&c, ca1, NULL, 0, TLS1_VERSION), -1);
    ck_assert_int_eq(tls_open(&c, ca1, NULL, 0, TLS1_2_VERSION), 0);
    ck_assert_int_eq(SSL_version(c.ssl), TLS1_2_VERSION);
    ck_assert_int_eq(tls_get(&c), 200);
    tls_close(&c);
    ck_assert_int_eq(baton_get(ca1, NULL), 200);
    /* Each refused handshake is one debug line. */
    ck_assert_int_eq(bt_test_log_count("TLS handshake with 127.0.0.1 failed"), 2);
}
END_TEST

/* A connection made before the reload keeps its certificate and goes on
 * serving; new ones get the new certificate. */
static void check_after_reload(tls_conn *old)
{
    ck_assert_int_eq(tls_get(old), 200);
    char cn[128];
    peer_cn(old, cn, sizeof cn);
    ck_assert_str_eq(cn, "baton test server 1");
    tls_close(old);

    tls_conn c;
    ck_assert_int_eq(tls_open(&c, ca1, NULL, 0, 0), -1); /* CA 1 does not sign it */
    ck_assert_int_eq(tls_open(&c, ca2, NULL, 0, 0), 0);
    peer_cn(&c, cn, sizeof cn);
    ck_assert_str_eq(cn, "baton test server 2");
    ck_assert_int_eq(tls_get(&c), 200);
    tls_close(&c);
    ck_assert_int_eq(baton_get(ca2, NULL), 200);
    ck_assert_int_lt(baton_get(ca1, NULL), 0);
}

/* Serve CA 1's certificate, open a connection with it, then put CA 2's
 * certificate in its place on disk (not yet loaded). */
static void open_before_reload(tls_conn *old)
{
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, live_key), 0);
    start();
    ck_assert_int_eq(tls_open(old, ca1, NULL, 0, 0), 0);
    ck_assert_int_eq(tls_get(old), 200);
    install(2);
}

START_TEST(tls_reload_keeps_open_connections)
{
    tls_conn old;
    open_before_reload(&old);
    ck_assert_int_eq(bt_http_app_reload_tls(app), 0);
    check_after_reload(&old);
}
END_TEST

START_TEST(tls_sighup_reloads)
{
    tls_conn old;
    open_before_reload(&old);
    kill(getpid(), SIGHUP);
    /* The server thread reloads when it wakes: wait for CA 2 to work. */
    tls_conn c;
    int tries = 0;
    while (tls_open(&c, ca2, NULL, 0, 0) != 0) {
        ck_assert_msg(++tries < 1000, "the certificate was not reloaded within 10 s");
        usleep(10000);
    }
    tls_close(&c);
    check_after_reload(&old);
}
END_TEST

/* With worker processes the supervisor catches SIGHUP and passes it to
 * every worker, and each reloads. The supervisor runs in a child of the
 * test (it forks the workers); its port comes back through a pipe. */
static int port_pipe[2];

static void report_port(int p, void *arg)
{
    (void)arg;
    ssize_t w = write(port_pipe[1], &p, sizeof p);
    (void)w;
}

/* The worker process that answers a fresh connection verified by ca, or 0
 * when the handshake fails. */
static pid_t worker_pid(const char *ca)
{
    tls_conn c;
    if (tls_open(&c, ca, NULL, 0, 0) != 0)
        return 0;
    int status = tls_request(&c, "GET /pid HTTP/1.1\r\nHost: x\r\n\r\n");
    tls_close(&c);
    ck_assert_int_eq(status, 200);
    return (pid_t)atol(last_body);
}

START_TEST(tls_sighup_reaches_every_worker)
{
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, live_key), 0);
    ck_assert_int_eq(pipe(port_pipe), 0);
    pid_t sup = sup_pid = fork();
    ck_assert_int_ge(sup, 0);
    if (sup == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed check leaves nothing running */
        close(port_pipe[0]);
        int rc = bt_http_app_set_processes(app, 2);
        if (rc == 0)
            rc = bt_http_app_run(app, "127.0.0.1", 0, report_port, NULL);
        _exit(rc == 0 ? 0 : 1);
    }
    close(port_pipe[1]);
    struct pollfd pf = { .fd = port_pipe[0], .events = POLLIN };
    ck_assert_msg(poll(&pf, 1, 60000) == 1, "the workers did not start");
    ck_assert_int_eq(read(port_pipe[0], &port, sizeof port), (ssize_t)sizeof port);
    close(port_pipe[0]);

    tls_conn old;
    ck_assert_int_eq(tls_open(&old, ca1, NULL, 0, 0), 0);
    ck_assert_int_eq(tls_get(&old), 200);
    install(2);
    ck_assert_int_eq(kill(sup, SIGHUP), 0);
    /* Fresh connections are spread over the two workers by the kernel
     * (SO_REUSEPORT): 20 in a row verified by CA 2, answered by two
     * processes, means both reloaded. */
    pid_t seen[2] = { 0, 0 };
    int tries = 0;
    for (int row = 0; row < 20 || seen[1] == 0;) {
        pid_t p = worker_pid(ca2);
        if (p != 0) {
            row++;
            if (seen[0] == 0 || seen[0] == p)
                seen[0] = p;
            else
                seen[1] = p;
            continue;
        }
        row = 0;
        ck_assert_msg(++tries < 2000, "a worker did not reload its certificate within 20 s");
        usleep(10000);
    }
    check_after_reload(&old);

    /* A worker that dies after the reload is restarted with the new
     * certificate (the supervisor reloaded its own copy too): a connection
     * verified by CA 2 is answered by the new process. */
    ck_assert_int_eq(kill(seen[0], SIGKILL), 0);
    for (int i = 0;; i++) {
        ck_assert_msg(i < 3000, "no restarted worker answered with the new certificate in 30 s");
        pid_t p = worker_pid(ca2);
        if (p != 0 && p != seen[0] && p != seen[1])
            break;
        usleep(10000);
    }

    ck_assert_int_eq(kill(sup, SIGTERM), 0);
    int st = 0;
    for (int i = 0; i < 6000 && waitpid(sup, &st, WNOHANG) == 0; i++)
        usleep(10000);
    sup_pid = 0;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the supervisor ended with 0x%x", st);
}
END_TEST

START_TEST(tls_bad_files_refused)
{
    bt_test_log_capture();
    char missing[PATH_MAX + 32], garbage[PATH_MAX + 32], key2[PATH_MAX + 32];
    path_in(missing, "missing.pem");
    path_in(garbage, "garbage.pem");
    path_in(key2, "srv2.key");
    sh("printf 'not a certificate\\n' > '%s'", garbage);

    ck_assert_int_eq(bt_http_app_set_tls(NULL, live_cert, live_key), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_set_tls(app, NULL, live_key), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_reload_tls(app), BT_EINVAL); /* no TLS yet */

    ck_assert_int_eq(bt_http_app_set_tls(app, missing, live_key), BT_EINVAL);
    ck_assert(bt_test_log_contains(missing));
    bt_test_log_clear();
    ck_assert_int_eq(bt_http_app_set_tls(app, garbage, live_key), BT_EINVAL);
    ck_assert(bt_test_log_contains(garbage));
    bt_test_log_clear();
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, missing), BT_EINVAL);
    ck_assert(bt_test_log_contains(missing));
    ck_assert(bt_test_log_contains("TLS key"));
    bt_test_log_clear();
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, garbage), BT_EINVAL);
    ck_assert(bt_test_log_contains(garbage));
    bt_test_log_clear();
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, key2), BT_EINVAL); /* not its key */
    ck_assert(bt_test_log_contains(key2));
    ck_assert(bt_test_log_contains("mismatch"));

    /* A reload that fails keeps the certificate serving. */
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, live_key), 0);
    start();
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, live_key), BT_EBUSY);
    sh("cp '%s' '%s'", garbage, live_cert);
    bt_test_log_clear();
    ck_assert_int_eq(bt_http_app_reload_tls(app), BT_EINVAL);
    ck_assert(bt_test_log_contains(live_cert));
    ck_assert(bt_test_log_contains("previous certificate keeps serving"));
    install(1);
    sh("cp '%s/srv2.key' '%s'", dir, live_key); /* the certificate's key no more */
    ck_assert_int_eq(bt_http_app_reload_tls(app), BT_EINVAL);
    ck_assert_int_eq(baton_get(ca1, NULL), 200);
}
END_TEST

START_TEST(tls_plaintext_client_closed)
{
    bt_test_log_capture();
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, live_key), 0);
    start();
    int fd = tcp_connect();
    static const char req[] = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    ck_assert_int_eq(send(fd, req, sizeof req - 1, 0), (ssize_t)sizeof req - 1);
    char buf[1024];
    size_t got = 0;
    bool closed = false;
    for (;;) {
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            closed = true;
            break;
        }
        if (n < 0)
            break; /* 10 s and still open */
        got += (size_t)n;
        if (got == sizeof buf - 1)
            break;
    }
    close(fd);
    buf[got] = '\0';
    ck_assert_msg(closed, "the server kept a plain-text connection open");
    ck_assert_ptr_null(strstr(buf, "HTTP/1.1 200")); /* at most a TLS alert */
    ck_assert_int_eq(baton_get(ca1, NULL), 200);     /* and it goes on serving */
    ck_assert_int_eq(bt_test_log_count("TLS handshake with 127.0.0.1 failed"), 1);
}
END_TEST

START_TEST(tls_handshake_under_head_deadline)
{
    bt_test_log_capture();
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, live_key), 0);
    ck_assert_int_eq(bt_http_app_set_head_timeout(app, 300), 0);
    start();
    /* Connects, never sends a ClientHello: closed by the server (the
     * client's own wait is 10 s, 30 times the deadline). */
    int fd = tcp_connect();
    char b;
    ssize_t n = recv(fd, &b, 1, 0);
    int err = errno;
    close(fd);
    ck_assert_msg(n == 0 || (n < 0 && err == ECONNRESET),
                  "the connection without a handshake was not closed (recv %zd, %s)", n,
                  strerror(err));
    ck_assert(bt_test_log_contains("TLS handshake not done within 300 ms"));
    /* A client that does its handshake in time is served. */
    ck_assert_int_eq(baton_get(ca1, NULL), 200);
}
END_TEST

/* The guard reads the decrypted bytes: framing and the connection cap
 * hold over TLS, and their answers go out encrypted. */
START_TEST(tls_guard_still_applies)
{
    ck_assert_int_eq(bt_http_app_set_tls(app, live_cert, live_key), 0);
    ck_assert_int_eq(bt_http_app_set_max_connections(app, 1), 0);
    start();
    tls_conn a, b;
    ck_assert_int_eq(tls_open(&a, ca1, NULL, 0, 0), 0);
    ck_assert_int_eq(tls_get(&a), 200);
    ck_assert_int_eq(tls_open(&b, ca1, NULL, 0, 0), 0); /* the handshake, then the 503 */
    ck_assert_int_eq(tls_get(&b), 503);
    tls_close(&b);
    ck_assert_int_eq(tls_request(&a, "GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                     "Content-Length: 1\r\n\r\nx"),
                     400);
    tls_close(&a);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("http_tls");
    TCase *tc = tcase_create("tls");
    tcase_set_timeout(tc, BT_TEST_TIMEOUT);
    tcase_add_unchecked_fixture(tc, make_certificates, remove_certificates);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, tls_serves_http11_by_alpn);
    tcase_add_test(tc, tls_old_versions_refused);
    tcase_add_test(tc, tls_reload_keeps_open_connections);
    tcase_add_test(tc, tls_sighup_reloads);
    tcase_add_test(tc, tls_sighup_reaches_every_worker);
    tcase_add_test(tc, tls_bad_files_refused);
    tcase_add_test(tc, tls_plaintext_client_closed);
    tcase_add_test(tc, tls_handshake_under_head_deadline);
    tcase_add_test(tc, tls_guard_still_applies);
    suite_add_tcase(s, tc);
    return s;
}

#else /* !BT_HAVE_OPENSSL */

/* Built without OpenSSL: the TLS calls say so. */
START_TEST(tls_not_supported)
{
    bt_http_app *a = bt_http_app_new();
    ck_assert_int_eq(bt_http_app_set_tls(a, "cert.pem", "key.pem"), BT_ENOTSUP);
    ck_assert_int_eq(bt_http_app_reload_tls(a), BT_ENOTSUP);
    bt_http_app_free(a);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("http_tls");
    TCase *tc = tcase_create("tls");
    tcase_add_test(tc, tls_not_supported);
    suite_add_tcase(s, tc);
    return s;
}

#endif

BT_TEST_MAIN(suite)
