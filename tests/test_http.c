/* The HTTP server (libbaton-http) against real clients on 127.0.0.1:
 * curl's command line and raw sockets, run from a client thread while the
 * test's loop serves. Routing, parameters, every error status, limits, a
 * disconnecting client cancelling its handler, graceful shutdown with
 * requests in flight, the loop's closer, metrics, bt_http_app_run with
 * several loops and SIGTERM, and the API's refusals. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <baton/curl.h>
#include <baton/fiber.h>
#include <baton/watchdog.h>
#include <baton/http.h>

#include "harness.h"

static bt_loop *loop;
static bt_http_app *app;
static bt_http_server *srv;
static int port;

static _Atomic int handler_calls;
static _Atomic int states_freed;
static _Atomic int shutdown_begun;
static _Atomic int hook_calls;

static void setup(void)
{
    loop = bt_loop_new();
    ck_assert_ptr_nonnull(loop);
    app = bt_http_app_new();
    ck_assert_ptr_nonnull(app);
    atomic_store(&handler_calls, 0);
    atomic_store(&hook_calls, 0);
    atomic_store(&states_freed, 0);
    atomic_store(&shutdown_begun, 0);
    srv = NULL;
}

static void teardown(void)
{
    bt_http_server_free(srv);
    bt_test_loop_free_clean(loop);
    bt_http_app_free(app);
}

static void start_server(void)
{
    srv = bt_http_server_new(loop, app);
    ck_assert_ptr_nonnull(srv);
    ck_assert_int_eq(bt_http_server_listen(srv, "127.0.0.1", 0), 0);
    port = bt_http_server_port(srv);
    ck_assert_int_gt(port, 0);
}

/* ---- Clients (run on the client thread) ---------------------------------- */

typedef struct {
    int status;
    char head[4096];
    char body[8192];
    size_t body_len;
    int err; /* errno of a failed connect */
} result;

static int connect_to(int p)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)p) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static void send_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

/* Read one response (Connection: close, or Content-Length) into r. */
static void read_response(int fd, result *r)
{
    static __thread char buf[65536];
    size_t len = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end) {
            char *cl = strcasestr(buf, "\r\nContent-Length:");
            size_t want = cl && cl < end ? (size_t)atol(cl + 17) : (size_t)-1;
            if (want != (size_t)-1 && len - (size_t)(end + 4 - buf) >= want)
                break;
        }
    }
    buf[len] = '\0';
    r->status = 0;
    sscanf(buf, "HTTP/1.%*d %d", &r->status);
    char *end = strstr(buf, "\r\n\r\n");
    if (end) {
        size_t hl = (size_t)(end - buf);
        if (hl >= sizeof r->head)
            hl = sizeof r->head - 1;
        memcpy(r->head, buf, hl);
        r->head[hl] = '\0';
        r->body_len = len - (size_t)(end + 4 - buf);
        if (r->body_len >= sizeof r->body)
            r->body_len = sizeof r->body - 1;
        memcpy(r->body, end + 4, r->body_len);
        r->body[r->body_len] = '\0';
    }
}

static void raw(int p, const char *req, result *r)
{
    memset(r, 0, sizeof *r);
    int fd = connect_to(p);
    if (fd < 0) {
        r->err = -fd;
        return;
    }
    send_all(fd, req, strlen(req));
    read_response(fd, r);
    close(fd);
}

/* curl's command line: status and body of one request. extra is inserted
 * as is (shell words). */
static void curl_cli(const char *extra, const char *path, result *r)
{
    memset(r, 0, sizeof *r);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "curl -s -S --max-time 10 -o - -w '\\n%%{http_code}' %s 'http://127.0.0.1:%d%s'",
             extra, port, path);
    FILE *p = popen(cmd, "r");
    if (!p)
        return;
    r->body_len = fread(r->body, 1, sizeof r->body - 1, p);
    pclose(p);
    r->body[r->body_len] = '\0';
    char *nl = strrchr(r->body, '\n');
    if (nl) {
        r->status = atoi(nl + 1);
        *nl = '\0';
        r->body_len = (size_t)(nl - r->body);
    }
}

/* Run fn(arg) on a client thread while the loop serves; the loop stops
 * when fn returns. */
typedef void (*client_fn)(void *arg);
typedef struct {
    client_fn fn;
    void *arg;
} client;

static void stop_loop(void *arg)
{
    bt_loop_stop(arg);
}

static void *client_main(void *p)
{
    client *c = p;
    c->fn(c->arg);
    bt_loop_post(loop, stop_loop, loop);
    return NULL;
}

static void hang_guard(bt_timer *t, void *arg)
{
    (void)t;
    (void)arg;
    ck_abort_msg("the client thread hung");
}

static void with_client_guarded(client_fn fn, void *arg, uint64_t guard_ms)
{
    client c = { fn, arg };
    pthread_t th;
    bt_timer *guard = bt_timer_new(loop, hang_guard, NULL);
    bt_timer_start(guard, guard_ms, 0);
    ck_assert_int_eq(pthread_create(&th, NULL, client_main, &c), 0);
    bt_loop_run(loop);
    pthread_join(th, NULL);
    bt_timer_free(guard);
}

static void with_client(client_fn fn, void *arg)
{
    with_client_guarded(fn, arg, 25000);
}

static void wait_for(_Atomic int *counter, int n)
{
    for (int i = 0; i < 2000 && atomic_load(counter) < n; i++)
        usleep(5000);
}

/* ---- Handlers --------------------------------------------------------------- */

static bt_future *h_hello(bt_http_req *req, void *arg)
{
    (void)arg;
    atomic_fetch_add(&handler_calls, 1);
    return bt_http_respond(bt_http_req_loop(req), 200, "text/plain", "hello", 5);
}

static bt_future *h_user(bt_http_req *req, void *arg)
{
    (void)arg;
    const char *v = bt_http_req_query(req, "verbose");
    const char *x = bt_http_req_header(req, "x-test");
    return bt_http_respond_json(bt_http_req_loop(req), 200,
                                json_pack("{s:s, s:s?, s:s?, s:s}", "id",
                                          bt_http_req_param(req, "id"), "verbose", v, "x", x,
                                          "path", bt_http_req_path(req)));
}

static bt_future *h_me(bt_http_req *req, void *arg)
{
    (void)arg;
    return bt_http_respond(bt_http_req_loop(req), 200, "text/plain", "me", 2);
}

static bt_future *h_two(bt_http_req *req, void *arg)
{
    (void)arg;
    return bt_http_respond_json(bt_http_req_loop(req), 200,
                                json_pack("{s:s, s:s}", "a", bt_http_req_param(req, "a"), "b",
                                          bt_http_req_param(req, "b")));
}

static bt_future *h_echo(bt_http_req *req, void *arg)
{
    (void)arg;
    json_t *in = bt_http_req_json(req);
    if (!in)
        return bt_http_respond_error(bt_http_req_loop(req), 400, "body must be JSON");
    json_t *out = json_pack("{s:O, s:s}", "got", in, "method", bt_http_req_method(req));
    json_decref(in);
    bt_http_reply *r = bt_http_reply_new(201);
    bt_http_reply_set_json(r, out);
    bt_http_reply_add_header(r, "X-Echo", "yes");
    json_decref(out);
    return bt_http_reply_future(bt_http_req_loop(req), r);
}

static bt_future *h_fail(bt_http_req *req, void *arg)
{
    (void)arg;
    return bt_future_new_error(bt_http_req_loop(req), BT_EIO, "password=hunter2 leaked?");
}

static bt_future *h_null(bt_http_req *req, void *arg)
{
    (void)req;
    (void)arg;
    return NULL;
}

static bt_future *h_novalue(bt_http_req *req, void *arg)
{
    (void)arg;
    return bt_future_new_value(bt_http_req_loop(req), NULL, NULL);
}

/* A handler whose future stays pending until cancelled or released. */
#define MAX_HELD 8
static bt_future *held[MAX_HELD];
static int nheld;

static void held_hook(bt_future *f, void *arg)
{
    (void)arg;
    atomic_fetch_add(&hook_calls, 1);
    bt_future_set_cancelled(f);
}

static void count_state(void *p)
{
    ck_assert_ptr_eq(p, &states_freed);
    atomic_fetch_add(&states_freed, 1);
}

static bt_future *h_hold(bt_http_req *req, void *arg)
{
    (void)arg;
    ck_assert_int_eq(bt_http_req_set_state(req, &states_freed, count_state), 0);
    bt_future *f = bt_future_new(bt_http_req_loop(req));
    bt_future_on_cancel(f, held_hook, NULL);
    if (nheld < MAX_HELD)
        held[nheld++] = bt_future_ref(f);
    atomic_fetch_add(&handler_calls, 1);
    return f;
}

static void release_held(void *arg)
{
    (void)arg;
    for (int i = 0; i < nheld; i++) {
        if (!bt_future_is_settled(held[i]))
            bt_future_set_value(held[i], bt_http_reply_new(200), bt_http_reply_free);
        bt_future_unref(held[i]);
    }
    nheld = 0;
}

static void drop_held(void)
{
    for (int i = 0; i < nheld; i++)
        bt_future_unref(held[i]);
    nheld = 0;
}

static bt_future *to_ok(bt_future *src, void *arg)
{
    (void)arg;
    return bt_http_respond(bt_future_loop(src), 200, "text/plain", "slow", 4);
}

static bt_future *h_slow(bt_http_req *req, void *arg)
{
    (void)arg;
    atomic_fetch_add(&handler_calls, 1);
    return bt_future_then(bt_sleep(bt_http_req_loop(req), 300), to_ok, NULL);
}

/* ---- Routing and parameters ----------------------------------------------------- */

static result rs[16];

static void routing_client(void *arg)
{
    (void)arg;
    curl_cli("", "/hello", &rs[0]);
    curl_cli("-H 'X-Test: abc'", "/user/42?verbose=yes%20please&other=1", &rs[1]);
    curl_cli("", "/user/me", &rs[2]);
    curl_cli("", "/user/caf%C3%A9", &rs[3]);
    curl_cli("-X POST -H 'Content-Type: application/json' -d '{\"n\":1}'", "/echo", &rs[4]);
    curl_cli("", "/nope", &rs[5]);
    curl_cli("-X DELETE -i", "/hello", &rs[6]);
    curl_cli("-I", "/hello", &rs[7]);
    curl_cli("", "/user/", &rs[8]);
    curl_cli("", "/files/x%2Fy/to/b", &rs[9]);
    curl_cli("-X POST -d 'not json'", "/echo", &rs[10]);
    raw(port, "GET /user/%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &rs[11]);
}

START_TEST(routing_and_params)
{
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/hello", h_hello, NULL), 0);
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/user/{id}", h_user, NULL), 0);
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/user/me", h_me, NULL), 0);
    ck_assert_int_eq(bt_http_app_route(app, "POST", "/echo", h_echo, NULL), 0);
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/files/{a}/to/{b}", h_two, NULL), 0);
    start_server();
    with_client(routing_client, NULL);

    ck_assert_int_eq(rs[0].status, 200);
    ck_assert_str_eq(rs[0].body, "hello");
    ck_assert_int_eq(rs[1].status, 200);
    json_t *j = json_loads(rs[1].body, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "42");
    ck_assert_str_eq(json_string_value(json_object_get(j, "verbose")), "yes please");
    ck_assert_str_eq(json_string_value(json_object_get(j, "x")), "abc");
    ck_assert_str_eq(json_string_value(json_object_get(j, "path")), "/user/42");
    json_decref(j);
    ck_assert_int_eq(rs[2].status, 200); /* the literal beats {id} */
    ck_assert_str_eq(rs[2].body, "me");
    ck_assert_int_eq(rs[3].status, 200);
    ck_assert_ptr_nonnull(strstr(rs[3].body, "\"id\":\"caf\xc3\xa9\""));
    ck_assert_int_eq(rs[4].status, 201);
    ck_assert_str_eq(rs[4].body, "{\"got\":{\"n\":1},\"method\":\"POST\"}");
    ck_assert_int_eq(rs[5].status, 404);
    ck_assert_str_eq(rs[5].body, "{\"error\":\"not found\"}");
    ck_assert_int_eq(rs[6].status, 405);
    ck_assert_ptr_nonnull(strstr(rs[6].body, "Allow: GET, HEAD"));
    ck_assert_int_eq(rs[7].status, 200); /* HEAD answered by the GET route */
    ck_assert_ptr_null(strstr(rs[7].body, "hello"));
    ck_assert_int_eq(rs[8].status, 404);
    ck_assert_int_eq(rs[9].status, 200); /* %2F stays inside its segment */
    ck_assert_str_eq(rs[9].body, "{\"a\":\"x/y\",\"b\":\"b\"}");
    ck_assert_int_eq(rs[10].status, 400);
    ck_assert_int_eq(rs[11].status, 400); /* a NUL byte in a path segment */
    ck_assert_int_eq(bt_http_server_in_flight(srv), 0);
}
END_TEST

/* ---- Handler failures ---------------------------------------------------------- */

static void fail_client(void *arg)
{
    (void)arg;
    curl_cli("", "/fail", &rs[0]);
    curl_cli("", "/null", &rs[1]);
    curl_cli("", "/novalue", &rs[2]);
    curl_cli("", "/hello", &rs[3]); /* the server still serves */
}

START_TEST(failing_handler_gives_500)
{
    bt_test_log_capture();
    bt_http_app_route(app, "GET", "/fail", h_fail, NULL);
    bt_http_app_route(app, "GET", "/null", h_null, NULL);
    bt_http_app_route(app, "GET", "/novalue", h_novalue, NULL);
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    start_server();
    with_client(fail_client, NULL);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(rs[i].status, 500);
        ck_assert_str_eq(rs[i].body, "{\"error\":\"internal server error\"}");
    }
    ck_assert_int_eq(rs[3].status, 200);
    /* The details are logged, with the route, and never sent. */
    ck_assert(bt_test_log_contains("GET /fail: handler failed: password=hunter2 leaked? (BT_EIO)"));
    ck_assert(bt_test_log_contains("GET /null: handler returned no future"));
    ck_assert(bt_test_log_contains("GET /novalue: the handler's future has no response"));
}
END_TEST

/* ---- Limits --------------------------------------------------------------------- */

static void limits_client(void *arg)
{
    (void)arg;
    char big[4096];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char req[8192];
    snprintf(req, sizeof req,
             "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(big), big);
    raw(port, req, &rs[0]);
    snprintf(req, sizeof req,
             "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\nConnection: close\r\n\r\n", big);
    raw(port, req, &rs[1]);
    raw(port, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &rs[2]);

    /* A client that sends half a request is disconnected at the read
     * timeout. */
    int fd = connect_to(port);
    send_all(fd, "GET /hello HTTP/1.1\r\n", 21);
    char c;
    ssize_t n = recv(fd, &c, 1, 0);
    rs[3].status = n == 0 || (n < 0 && errno == ECONNRESET) ? 1 : 0;
    close(fd);
}

START_TEST(limits_sizes_and_timeout)
{
    bt_http_app_route(app, "POST", "/echo", h_echo, NULL);
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    ck_assert_int_eq(bt_http_app_set_max_body_bytes(app, 1024), 0);
    ck_assert_int_eq(bt_http_app_set_max_header_bytes(app, 2048), 0);
    ck_assert_int_eq(bt_http_app_set_timeouts(app, 300, 1000), 0);
    start_server();
    with_client(limits_client, NULL);
    ck_assert_int_eq(rs[0].status, 413);
    ck_assert_int_eq(rs[1].status, 431); /* RFC 6585; evhttp alone said 400 */
    ck_assert(strstr(rs[1].body, "\"error\"") != NULL);
    ck_assert(strstr(rs[0].body, "\"error\"") != NULL); /* 413 in JSON, not evhttp's HTML */
    ck_assert_int_eq(rs[2].status, 200);
    ck_assert_int_eq(rs[3].status, 1);
    ck_assert_int_eq(atomic_load(&handler_calls), 1); /* only the good one */
}
END_TEST

/* A client that stops reading is cut off at the write timeout. */
#define BIG (16 * 1024 * 1024)
static bt_future *h_big(bt_http_req *req, void *arg)
{
    (void)arg;
    char *body = malloc(BIG);
    memset(body, 'x', BIG);
    bt_future *f = bt_http_respond(bt_http_req_loop(req), 200, "text/plain", body, BIG);
    free(body);
    return f;
}

/* A client that hangs up while a large response is being written: the
 * server's write fails with EPIPE, which must not kill the process (the
 * test runs with SIGPIPE at its default, which would), and the server
 * goes on serving. A disposition the program chose itself is left alone. */
/* The client's whole run has one deadline, and each recv waits at most
 * what is left of it: under TSan on a loaded machine the four exchanges
 * once outlasted the 25 s guard, each recv being allowed 10 s of its own
 * (measured since: about 20 s before the first byte of each 16 MiB answer
 * under TSan at load 20, so the server's own 30 s timeouts closed
 * connections too). The server's timeouts, the guard and the test's
 * timeout now sit above the one deadline, so a slow machine gets the time
 * and a real hang fails in the client. */
#define HANG_UP_DEADLINE_MS 120000

static void recv_until(int fd, uint64_t deadline_ns)
{
    uint64_t now = bt_hrtime();
    uint64_t left = deadline_ns > now + 1000000 ? deadline_ns - now : 1000000;
    struct timeval tv = { (time_t)(left / 1000000000u), (suseconds_t)(left % 1000000000u / 1000) };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

static void hang_up_early(void *arg)
{
    result *r = arg;
    uint64_t deadline = bt_hrtime() + HANG_UP_DEADLINE_MS * 1000000ull;
    for (int i = 0; i < 3; i++) {
        int fd = connect_to(port);
        ck_assert_int_ge(fd, 0);
        const char *req = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
        send_all(fd, req, strlen(req));
        char buf[4096];
        recv_until(fd, deadline);
        ck_assert_int_gt(recv(fd, buf, sizeof buf, 0), 0); /* it started */
        struct linger lg = { 1, 0 };                       /* hang up with a reset */
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(fd);
    }
    usleep(100000); /* let the server write into the dead sockets */
    memset(r, 0, sizeof *r);
    int fd = connect_to(port);
    ck_assert_int_ge(fd, 0);
    const char *hello = "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send_all(fd, hello, strlen(hello));
    recv_until(fd, deadline);
    read_response(fd, r);
    close(fd);
}

static void keep_handler(int sig)
{
    (void)sig;
}

START_TEST(client_hanging_up_mid_response_is_not_fatal)
{
    signal(SIGPIPE, SIG_DFL);
    bt_http_app_route(app, "GET", "/big", h_big, NULL);
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    ck_assert_int_eq(
        bt_http_app_set_timeouts(app, 2 * HANG_UP_DEADLINE_MS, 2 * HANG_UP_DEADLINE_MS), 0);
    start_server();
    struct sigaction sa;
    sigaction(SIGPIPE, NULL, &sa);
    ck_assert_ptr_eq((void *)sa.sa_handler, (void *)SIG_IGN);
    result r;
    with_client_guarded(hang_up_early, &r, HANG_UP_DEADLINE_MS + 20000);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "hello");

    /* A program's own handler stays. */
    bt_http_server_free(srv);
    signal(SIGPIPE, keep_handler);
    start_server();
    sigaction(SIGPIPE, NULL, &sa);
    ck_assert_ptr_eq((void *)sa.sa_handler, (void *)keep_handler);
}
END_TEST

static size_t big_received;
static void slow_reader_client(void *arg)
{
    (void)arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = { 10, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        return;
    const char *req = "GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    send_all(fd, req, strlen(req));
    wait_for(&handler_calls, 1);
    usleep(1500 * 1000); /* not reading, for five write timeouts */
    char buf[65536];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, 0)) > 0)
        big_received += (size_t)n;
    close(fd);
}

static bt_future *h_big_counted(bt_http_req *req, void *arg)
{
    atomic_fetch_add(&handler_calls, 1);
    return h_big(req, arg);
}

START_TEST(limits_write_timeout)
{
    bt_http_app_route(app, "GET", "/big", h_big_counted, NULL);
    ck_assert_int_eq(bt_http_app_set_timeouts(app, 5000, 300), 0);
    start_server();
    with_client(slow_reader_client, NULL);
    /* Some of it may have arrived, or none (a reset drops what the client's
     * kernel had queued): never all of it. */
    ck_assert_msg(big_received < BIG, "the whole body arrived: the write timeout did not fire");
}
END_TEST

static int cap_fds[2];

static void cap_client(void *arg)
{
    (void)arg;
    const char *req = "GET /hold HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for (int i = 0; i < 2; i++) {
        cap_fds[i] = connect_to(port);
        send_all(cap_fds[i], req, strlen(req));
    }
    wait_for(&handler_calls, 2);
    raw(port, req, &rs[0]); /* the third: over the cap */
    bt_loop_post(loop, release_held, NULL);
    for (int i = 0; i < 2; i++) {
        read_response(cap_fds[i], &rs[1 + i]);
        close(cap_fds[i]);
    }
}

START_TEST(limits_concurrent_cap)
{
    bt_http_app_route(app, "GET", "/hold", h_hold, NULL);
    ck_assert_int_eq(bt_http_app_set_max_concurrent(app, 2), 0);
    start_server();
    with_client(cap_client, NULL);
    ck_assert_int_eq(rs[0].status, 503);
    ck_assert_ptr_nonnull(strstr(rs[0].head, "Retry-After: 1"));
    ck_assert_int_eq(rs[1].status, 200);
    ck_assert_int_eq(rs[2].status, 200);
    ck_assert_int_eq(atomic_load(&handler_calls), 2);
    ck_assert_int_eq(atomic_load(&states_freed), 2);
    drop_held();
}
END_TEST

/* ---- Handler deadline: 504 --------------------------------------------------------- */

static bt_future *h_upstream_timeout(bt_http_req *req, void *arg)
{
    (void)arg;
    return bt_future_new_error(bt_http_req_loop(req), BT_ETIMEDOUT, "upstream took too long");
}

static void timeout_client(void *arg)
{
    (void)arg;
    curl_cli("", "/hold", &rs[0]);
    curl_cli("", "/upstream", &rs[1]);
    curl_cli("", "/hello", &rs[2]);
}

START_TEST(handler_timeout_gives_504)
{
    bt_test_log_capture();
    bt_http_app_route(app, "GET", "/hold", h_hold, NULL);
    bt_http_app_route(app, "GET", "/upstream", h_upstream_timeout, NULL);
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    ck_assert_int_eq(bt_http_app_set_handler_timeout(app, 100), 0);
    start_server();
    with_client(timeout_client, NULL);
    ck_assert_int_eq(rs[0].status, 504);
    ck_assert_str_eq(rs[0].body, "{\"error\":\"timed out\"}");
    ck_assert_int_eq(atomic_load(&hook_calls), 1); /* the handler's work was cancelled */
    ck_assert_int_eq(atomic_load(&states_freed), 1);
    ck_assert_int_eq(rs[1].status, 504);
    ck_assert_int_eq(rs[2].status, 200);
    ck_assert(bt_test_log_contains("GET /upstream: handler failed: upstream took too long"));
    drop_held();
}
END_TEST

/* ---- Fiber routes (bt_http_app_route_async) ------------------------------------- */

static int job_forty_two(bt_job *job, void *arg)
{
    (void)arg;
    static int v = 42;
    return bt_job_set_value(job, &v, NULL);
}

static _Atomic int fiber_awaits;
static _Atomic int fiber_await_rc;

/* Reads top to bottom: sleep, a job on the pool, then the answer. */
static bt_future *hf_steps(bt_http_req *req, void *arg)
{
    (void)arg;
    bt_loop *l = bt_http_req_loop(req);
    ck_assert(bt_in_fiber());
    int rc = bt_await(bt_sleep(l, 20), NULL);
    ck_assert_int_eq(rc, 0);
    atomic_fetch_add(&fiber_awaits, 1);
    int *v;
    rc = bt_await(bt_to_thread(l, job_forty_two, NULL), (void **)&v);
    ck_assert_int_eq(rc, 0);
    atomic_fetch_add(&fiber_awaits, 1);
    char body[64];
    int n = snprintf(body, sizeof body, "%s=%d", bt_http_req_param(req, "id"), *v);
    return bt_http_respond(l, 200, "text/plain", body, (size_t)n);
}

/* Awaits far past the handler timeout; the await must come back
 * cancelled, and req must still be readable then. */
static bt_future *hf_slow(bt_http_req *req, void *arg)
{
    (void)arg;
    bt_loop *l = bt_http_req_loop(req);
    ck_assert_int_eq(bt_http_req_set_state(req, &states_freed, count_state), 0);
    atomic_fetch_add(&handler_calls, 1);
    int rc = bt_await(bt_sleep(l, 60000), NULL);
    atomic_store(&fiber_await_rc, rc);
    ck_assert_str_eq(bt_http_req_path(req), "/fslow"); /* still valid */
    atomic_fetch_add(&fiber_awaits, 1);
    return bt_http_respond(l, 200, "text/plain", "late", 4); /* dropped */
}

static bt_future *hf_fail(bt_http_req *req, void *arg)
{
    (void)arg;
    bt_loop *l = bt_http_req_loop(req);
    int rc = bt_await(bt_sleep(l, 1), NULL);
    ck_assert_int_eq(rc, 0);
    return bt_future_new_error(l, BT_EIO, "fiber says no");
}

static bt_future *hf_null(bt_http_req *req, void *arg)
{
    (void)req;
    (void)arg;
    return NULL;
}

static void fiber_client(void *arg)
{
    (void)arg;
    curl_cli("", "/f/7", &rs[0]);
    curl_cli("", "/ffail", &rs[1]);
    curl_cli("", "/fnull", &rs[2]);
    curl_cli("", "/hello", &rs[3]);
}

START_TEST(fiber_route_awaits_then_answers)
{
    bt_test_log_capture();
    atomic_store(&fiber_awaits, 0);
    ck_assert_int_eq(bt_http_app_route_async(app, "GET", "/f/{id}", hf_steps, NULL), 0);
    ck_assert_int_eq(bt_http_app_route_async(app, "GET", "/ffail", hf_fail, NULL), 0);
    ck_assert_int_eq(bt_http_app_route_async(app, "GET", "/fnull", hf_null, NULL), 0);
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/hello", h_hello, NULL), 0);
    /* The same checks as bt_http_app_route. */
    ck_assert_int_eq(bt_http_app_route_async(app, "GET", "/f/{id}", hf_steps, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_route_async(NULL, "GET", "/x", hf_steps, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_route_async(app, "GET", "/x", NULL, NULL), BT_EINVAL);
    start_server();
    with_client(fiber_client, NULL);
    ck_assert_int_eq(rs[0].status, 200);
    ck_assert_str_eq(rs[0].body, "7=42");
    ck_assert_int_eq(atomic_load(&fiber_awaits), 2);
    /* A fiber route's failure is a 500 like a plain route's, logged. */
    ck_assert_int_eq(rs[1].status, 500);
    ck_assert_str_eq(rs[1].body, "{\"error\":\"internal server error\"}");
    ck_assert(bt_test_log_contains("GET /ffail: handler failed: fiber says no (BT_EIO)"));
    ck_assert_int_eq(rs[2].status, 500);
    ck_assert_int_eq(rs[3].status, 200);
    ck_assert_int_eq(bt_http_server_in_flight(srv), 0);
}
END_TEST

static void fiber_timeout_client(void *arg)
{
    (void)arg;
    curl_cli("", "/fslow", &rs[0]);
    curl_cli("", "/hello", &rs[1]);
}

START_TEST(fiber_route_cancelled_by_handler_timeout)
{
    atomic_store(&fiber_awaits, 0);
    atomic_store(&fiber_await_rc, 1);
    ck_assert_int_eq(bt_http_app_route_async(app, "GET", "/fslow", hf_slow, NULL), 0);
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/hello", h_hello, NULL), 0);
    ck_assert_int_eq(bt_http_app_set_handler_timeout(app, 100), 0);
    start_server();
    with_client(fiber_timeout_client, NULL);
    ck_assert_int_eq(rs[0].status, 504);
    ck_assert_str_eq(rs[0].body, "{\"error\":\"timed out\"}");
    ck_assert_int_eq(rs[1].status, 200);
    /* The fiber unwinds on a turn after the cancel: run the loop until it
     * has returned and its request was freed (a deadline of 100 turns of
     * 10 ms, far beyond the one or two turns it takes). */
    for (int i = 0; i < 100 && atomic_load(&states_freed) == 0; i++) {
        bt_future *t = bt_sleep(loop, 10);
        bt_loop_run_until(loop, t);
        bt_future_unref(t);
    }
    ck_assert_int_eq(atomic_load(&fiber_awaits), 1);
    ck_assert_int_eq(atomic_load(&fiber_await_rc), BT_ECANCELED);
    ck_assert_int_eq(atomic_load(&states_freed), 1);
    ck_assert_int_eq(bt_http_server_in_flight(srv), 0);
}
END_TEST

/* ---- A disconnecting client cancels its handler ---------------------------------- */

static void disconnect_client(void *arg)
{
    (void)arg;
    int fd = connect_to(port);
    const char *req = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, req, strlen(req));
    wait_for(&handler_calls, 1);
    close(fd);
    wait_for(&hook_calls, 1);
    raw(port, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &rs[0]);
}

START_TEST(disconnect_cancels_handler)
{
    bt_http_app_route(app, "GET", "/hold", h_hold, NULL);
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    start_server();
    with_client(disconnect_client, NULL);
    ck_assert_int_eq(atomic_load(&hook_calls), 1);
    ck_assert_int_eq(bt_future_get_state(held[0]), BT_FUTURE_CANCELLED);
    ck_assert_int_eq(rs[0].status, 200);
    ck_assert_int_eq(bt_http_server_in_flight(srv), 0);
    ck_assert_int_eq(atomic_load(&states_freed), 1); /* freed though cancelled */
    drop_held();
}
END_TEST

/* The same with Baton's own client, on the server's loop: cancelling the
 * client's future removes the transfer and closes its connection, and the
 * server cancels the handler. */
static bt_future *hook_seen;

static void hold_hook_signal(bt_future *f, void *arg)
{
    (void)arg;
    atomic_fetch_add(&hook_calls, 1);
    bt_future_set_cancelled(f);
    bt_future_set_value(hook_seen, NULL, NULL);
}

static bt_future *h_hold_signal(bt_http_req *req, void *arg)
{
    (void)arg;
    bt_future *f = bt_future_new(bt_http_req_loop(req));
    bt_future_on_cancel(f, hold_hook_signal, NULL);
    atomic_fetch_add(&handler_calls, 1);
    return f;
}

static bt_future *started;
static bt_future *h_hold_then_mark(bt_http_req *req, void *arg)
{
    bt_future_set_value(started, NULL, NULL);
    return h_hold_signal(req, arg);
}

START_TEST(baton_client_cancel_reaches_handler)
{
    bt_http_app_route(app, "GET", "/hold", h_hold_then_mark, NULL);
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    start_server();
    bt_http_client *c = bt_http_client_new(loop);
    ck_assert_ptr_nonnull(c);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hello", port);
    bt_future *f = bt_http_get(c, url);
    bt_test_run_until(loop, f, 10000);
    ck_assert_int_eq(bt_future_error(f), 0);
    ck_assert_int_eq(bt_http_response_status(bt_future_value(f)), 200);
    ck_assert_str_eq(bt_http_response_body(bt_future_value(f), NULL), "hello");
    bt_future_unref(f);

    started = bt_future_new(loop);
    hook_seen = bt_future_new(loop);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hold", port);
    f = bt_http_get(c, url);
    bt_test_run_until(loop, started, 10000);
    ck_assert_int_eq(bt_future_cancel(f), 0);
    bt_test_run_until(loop, hook_seen, 10000);
    ck_assert_int_eq(atomic_load(&hook_calls), 1);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    bt_future_unref(f);
    bt_future_unref(started);
    bt_future_unref(hook_seen);
    bt_http_client_free(c);
}
END_TEST

/* ---- Graceful shutdown ------------------------------------------------------------- */

static bt_future *shut_f;
static uint64_t shut_deadline;

static bool release_on_shutdown;

/* Begin the shutdown while the handlers hold their requests; with
 * release_on_shutdown, let them answer right after it has begun. */
static void do_shutdown(void *arg)
{
    (void)arg;
    shut_f = bt_http_server_shutdown(srv, shut_deadline);
    if (release_on_shutdown)
        release_held(NULL);
    atomic_store(&shutdown_begun, 1);
}

/* A keep-alive connection open when the shutdown begins: its next request
 * is refused with 503 and the connection closed. */
static void keepalive_client(void *arg)
{
    (void)arg;
    const char *hello = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    int k = connect_to(port);
    send_all(k, hello, strlen(hello));
    read_response(k, &rs[0]);
    int h = connect_to(port);
    const char *hold = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(h, hold, strlen(hold));
    wait_for(&handler_calls, 2);
    bt_loop_post(loop, do_shutdown, NULL);
    wait_for(&shutdown_begun, 1);
    send_all(k, hello, strlen(hello));
    read_response(k, &rs[1]);
    char c;
    rs[2].status = recv(k, &c, 1, 0) == 0 ? 1 : 0; /* then closed */
    close(k);
    read_response(h, &rs[3]); /* the held one, cancelled at the deadline */
    close(h);
}

START_TEST(shutdown_refuses_requests_on_open_connections)
{
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    bt_http_app_route(app, "GET", "/hold", h_hold, NULL);
    start_server();
    shut_deadline = 300;
    release_on_shutdown = false; /* CK_FORK=no: an earlier test set it */
    with_client(keepalive_client, NULL);
    ck_assert_int_eq(rs[0].status, 200);
    ck_assert_int_eq(rs[1].status, 503);
    ck_assert_ptr_nonnull(strcasestr(rs[1].head, "Connection: close"));
    ck_assert_int_eq(rs[2].status, 1);
    ck_assert_int_eq(rs[3].status, 503);
    bt_test_run_until(loop, shut_f, 5000);
    bt_future_unref(shut_f);
    drop_held();
}
END_TEST

static void shutdown_client(void *arg)
{
    const char *path = arg;
    char req[256];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    int fds[2];
    for (int i = 0; i < 2; i++) {
        fds[i] = connect_to(port);
        send_all(fds[i], req, strlen(req));
    }
    wait_for(&handler_calls, 2);
    bt_loop_post(loop, do_shutdown, NULL);
    for (int i = 0; i < 2; i++) {
        read_response(fds[i], &rs[i]);
        close(fds[i]);
    }
    /* Not accepting any more. */
    int fd = connect_to(port);
    rs[2].err = fd < 0 ? -fd : 0;
    if (fd >= 0)
        close(fd);
}

START_TEST(graceful_shutdown_lets_inflight_finish)
{
    bt_http_app_route(app, "GET", "/hold", h_hold, NULL);
    start_server();
    shut_deadline = 10000;
    release_on_shutdown = true;
    with_client(shutdown_client, "/hold");
    ck_assert_int_eq(rs[0].status, 200);
    ck_assert_int_eq(rs[1].status, 200);
    ck_assert_int_eq(atomic_load(&hook_calls), 0); /* finished, not cancelled */
    ck_assert_ptr_nonnull(strcasestr(rs[0].head, "Connection: close"));
    ck_assert_ptr_nonnull(strcasestr(rs[1].head, "Connection: close"));
    ck_assert_int_eq(rs[2].err, ECONNREFUSED);
    ck_assert_ptr_nonnull(shut_f);
    bt_test_run_until(loop, shut_f, 5000);
    ck_assert_int_eq(bt_future_error(shut_f), 0);
    bt_future_unref(shut_f);
}
END_TEST

START_TEST(graceful_shutdown_cancels_at_deadline)
{
    bt_http_app_route(app, "GET", "/hold", h_hold, NULL);
    start_server();
    shut_deadline = 200;
    release_on_shutdown = false; /* CK_FORK=no: an earlier test set it */
    with_client(shutdown_client, "/hold");
    ck_assert_int_eq(rs[0].status, 503);
    ck_assert_int_eq(rs[1].status, 503);
    ck_assert_int_eq(atomic_load(&hook_calls), 2);
    bt_test_run_until(loop, shut_f, 5000);
    ck_assert_int_eq(bt_future_error(shut_f), 0);
    bt_future_unref(shut_f);
    drop_held();
}
END_TEST

/* ---- Freeing with requests in flight ----------------------------------------------- */

static void stop_when_held(void *arg)
{
    const char *req = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
    int fd = connect_to(port);
    send_all(fd, req, strlen(req));
    wait_for(&handler_calls, 1);
    *(int *)arg = fd; /* closed by the test after the server is gone */
}

START_TEST(server_free_cancels_inflight)
{
    bt_http_app_route(app, "GET", "/hold", h_hold, NULL);
    start_server();
    int fd = -1;
    with_client(stop_when_held, &fd);
    ck_assert_int_eq(bt_http_server_in_flight(srv), 1);
    bt_http_server_free(srv);
    srv = NULL;
    ck_assert_int_eq(atomic_load(&hook_calls), 1);
    /* The client sees its connection closed, without an answer. */
    result r = { 0 };
    read_response(fd, &r);
    ck_assert_int_eq(r.status, 0);
    close(fd);
    drop_held();
}
END_TEST

static int fini_calls;
static int init_hook(bt_loop *l, void *arg, void **data)
{
    (void)l;
    *data = arg;
    return 0;
}
static void fini_hook(bt_loop *l, void *data, void *arg)
{
    (void)l;
    ck_assert_ptr_eq(data, arg);
    fini_calls++;
}

START_TEST(loop_free_closer_cancels_inflight)
{
    static int token;
    bt_http_app_route(app, "GET", "/hold", h_hold, NULL);
    ck_assert_int_eq(bt_http_app_on_loop(app, init_hook, fini_hook, &token), 0);
    start_server();
    int fd = -1;
    with_client(stop_when_held, &fd);
    drop_held();
    /* The loop goes first: its closer cancels the handler and closes. */
    bt_test_loop_free_clean(loop);
    loop = bt_loop_new();
    ck_assert_int_eq(atomic_load(&hook_calls), 1);
    close(fd);
    bt_http_server_free(srv); /* releases the memory and runs fini */
    srv = NULL;
    ck_assert_int_eq(fini_calls, 1);
}
END_TEST

/* ---- Metrics ------------------------------------------------------------------------ */

static void metrics_client(void *arg)
{
    (void)arg;
    curl_cli("", "/hello", &rs[0]);
    curl_cli("", "/hello", &rs[1]);
    curl_cli("", "/missing", &rs[2]);
    curl_cli("", "/metrics", &rs[3]);
}

static char *extra_metrics(void *arg)
{
    (void)arg;
    return bt_strdup("my_pool_threads 4");
}

START_TEST(metrics_route)
{
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    ck_assert_int_eq(bt_http_app_enable_metrics(app, "/metrics"), 0);
    ck_assert_int_eq(bt_http_app_add_metrics(app, extra_metrics, NULL), 0);
    ck_assert_int_eq(bt_http_app_set_access_log(app, true), 0);
    bt_test_log_capture();
    bt_pool_config cfg;
    bt_pool_config_init(&cfg);
    cfg.cpu_threads = 1;
    bt_pool *pool = bt_pool_new(&cfg);
    ck_assert_ptr_nonnull(pool);
    ck_assert_int_eq(bt_http_app_add_pool_metrics(app, pool, "main"), 0);
    ck_assert_int_eq(bt_http_app_add_pool_metrics(app, pool, "bad\"name"), BT_EINVAL);
    start_server();
    with_client(metrics_client, NULL);
    ck_assert_int_eq(rs[3].status, 200);
    const char *m = rs[3].body;
    ck_assert_ptr_nonnull(strstr(m, "baton_http_requests_total{code=\"200\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(m, "baton_http_requests_total{code=\"404\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(m, "baton_http_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(m, "baton_http_request_duration_seconds_count 3\n"));
    ck_assert_ptr_nonnull(strstr(m, "baton_loop_lag_seconds{loop=\"0\"}"));
    ck_assert_ptr_nonnull(strstr(m, "baton_http_requests_in_flight 0\n"));
    ck_assert_ptr_nonnull(strstr(m, "my_pool_threads 4\n"));
    ck_assert_int_eq(bt_test_log_count("http: 127.0.0.1 \"GET /hello\" 200 "), 2);
    ck_assert_int_eq(bt_test_log_count("http: 127.0.0.1 \"GET /missing\" 404 "), 1);
    ck_assert_ptr_nonnull(strstr(m, "baton_pool_max_threads{pool=\"main\",lane=\"cpu\"} 1\n"));
    ck_assert_ptr_nonnull(
        strstr(m, "baton_pool_submitted_total{pool=\"main\",lane=\"blocking\"} 0\n"));
    bt_http_server_free(srv);
    srv = NULL;
    bt_pool_free(pool);
}
END_TEST

/* ---- bt_http_app_run: several loops, SIGTERM ---------------------------------------- */

typedef struct {
    pthread_t th;
    int port;
    result r[6];
} run_state;

static void *run_client(void *p)
{
    run_state *st = p;
    port = st->port;
    char req[128];
    snprintf(req, sizeof req, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    int fd = connect_to(port);
    send_all(fd, req, strlen(req));
    for (int i = 0; i < 4; i++)
        curl_cli("", "/hello", &st->r[i]);
    wait_for(&handler_calls, 5);
    kill(getpid(), SIGTERM); /* while /slow is in flight */
    read_response(fd, &st->r[4]);
    close(fd);
    return NULL;
}

static void on_ready(int p, void *arg)
{
    run_state *st = arg;
    st->port = p;
    pthread_create(&st->th, NULL, run_client, st);
}

START_TEST(app_run_multi_loop_sigterm)
{
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    bt_http_app_route(app, "GET", "/slow", h_slow, NULL);
    ck_assert_int_eq(bt_http_app_set_loops(app, 3), 0);
    run_state st = { 0 };
    ck_assert_int_eq(bt_http_app_run(app, "127.0.0.1", 0, on_ready, &st), 0);
    pthread_join(st.th, NULL);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(st.r[i].status, 200);
    ck_assert_int_eq(st.r[4].status, 200); /* in flight at SIGTERM: finished */
    ck_assert_str_eq(st.r[4].body, "slow");
    /* Frozen while running, free again after. */
    ck_assert_int_eq(bt_http_app_set_loops(app, 1), 0);
}
END_TEST

static void *stopper(void *arg)
{
    bt_http_app_stop(arg);
    return NULL;
}

static void stop_when_ready(int p, void *arg)
{
    (void)p;
    pthread_t *th = arg;
    pthread_create(th, NULL, stopper, app);
}

static void *interrupter(void *arg)
{
    (void)arg;
    kill(getpid(), SIGINT); /* as ^C does */
    return NULL;
}

static void interrupt_when_ready(int p, void *arg)
{
    (void)p;
    pthread_create(arg, NULL, interrupter, NULL); /* the handler is in place now */
}

START_TEST(app_run_stop_sigint_and_bind_error)
{
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    bt_http_app_set_loops(app, 2);
    pthread_t th;
    ck_assert_int_eq(bt_http_app_run(app, "127.0.0.1", 0, stop_when_ready, &th), 0);
    pthread_join(th, NULL);
    ck_assert_int_eq(bt_http_app_run(app, "127.0.0.1", 0, interrupt_when_ready, &th), 0);
    pthread_join(th, NULL);
    /* A port held by a socket without SO_REUSEPORT cannot be shared. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    listen(fd, 1);
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    ck_assert_int_eq(bt_http_app_run(app, "127.0.0.1", ntohs(sa.sin_port), NULL, NULL),
                     BT_EADDRINUSE);
    close(fd);
}
END_TEST

/* ---- The stall watchdog names a handler that blocks the loop -----------------------
 * Visible, and the test is linked with -export-dynamic, so dladdr names it. */
__attribute__((visibility("default"))) bt_future *bt_test_http_blocking_handler(bt_http_req *req,
                                                                                void *arg);
bt_future *bt_test_http_blocking_handler(bt_http_req *req, void *arg)
{
    (void)arg;
    /* The guide's time.sleep() inside async code: block until the watchdog
     * has reported us (10 s hang guard). */
    uint64_t until = bt_hrtime() + 10ull * 1000 * 1000 * 1000;
    while (bt_hrtime() < until && bt_test_log_count("still running") < 1)
        usleep(1000);
    return bt_http_respond(bt_http_req_loop(req), 200, "text/plain", "late", 4);
}

static void blocking_client(void *arg)
{
    (void)arg;
    curl_cli("", "/block", &rs[0]);
}

START_TEST(watchdog_names_a_blocking_handler)
{
    bt_test_log_capture();
    bt_http_app_route(app, "GET", "/block", bt_test_http_blocking_handler, NULL);
    start_server();
    ck_assert_int_eq(bt_watchdog_start(loop, 20), 0);
    with_client(blocking_client, NULL);
    ck_assert_int_eq(rs[0].status, 200);
    ck_assert_msg(bt_test_log_contains("bt_test_http_blocking_handler"),
                  "the watchdog did not name the handler");
    ck_assert_int_eq(bt_watchdog_stop(loop), 0);
}
END_TEST

/* ---- Allocation failures ---------------------------------------------------------
 * Every allocation Baton makes goes through bt_malloc, so a test can make
 * every k-th one fail while the server works. Each request must still get
 * an answer (200, or 500/503) or a closed connection, never a crash or a
 * hang, and the server must serve normally once allocations work again.
 * The failing allocator wraps malloc, so memory may cross between modes. */
static _Atomic int fail_every;
static _Atomic unsigned long alloc_count;

static bool should_fail(void)
{
    int k = atomic_load(&fail_every);
    return k && atomic_fetch_add(&alloc_count, 1) % (unsigned long)k == 0;
}
static void *failing_malloc(size_t n)
{
    return should_fail() ? NULL : malloc(n);
}
static void *failing_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : realloc(p, n);
}

static int alloc_statuses[4]; /* 200, 500, 503, closed */
static void alloc_client(void *arg)
{
    (void)arg;
    static const int every[] = { 2, 3, 5, 8, 13, 21, 34, 55, 89, 144 };
    for (size_t e = 0; e < sizeof every / sizeof every[0]; e++) {
        atomic_store(&fail_every, every[e]);
        for (int i = 0; i < 25; i++) {
            result r;
            raw(port,
                i % 2 ? "GET /user/7?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                      : "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                &r);
            int slot = r.status == 200 ? 0 : r.status == 500 ? 1 : r.status == 503 ? 2 : 3;
            if (r.status != 200 && r.status != 500 && r.status != 503 && r.status != 0)
                slot = -1;
            if (slot >= 0)
                alloc_statuses[slot]++;
            else
                alloc_statuses[3] += 1000; /* an unexpected status */
        }
    }
    atomic_store(&fail_every, 0);
    raw(port, "GET /user/7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &rs[0]);
}

START_TEST(allocation_failures)
{
    bt_set_allocator(failing_malloc, failing_realloc, free);
    bt_test_log_capture();
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    bt_http_app_route(app, "GET", "/user/{id}", h_user, NULL);
    start_server();
    with_client(alloc_client, NULL);
    ck_assert_msg(alloc_statuses[3] < 1000, "an unexpected status");
    fprintf(stderr, "allocation_failures: %d x 200, %d x 500, %d x 503, %d closed\n",
            alloc_statuses[0], alloc_statuses[1], alloc_statuses[2], alloc_statuses[3]);
    ck_assert_int_gt(alloc_statuses[0], 0);
    ck_assert_int_gt(alloc_statuses[1] + alloc_statuses[2] + alloc_statuses[3], 0);
    ck_assert_int_eq(rs[0].status, 200);
    ck_assert_int_eq(bt_http_server_in_flight(srv), 0);
}
END_TEST

/* ---- Hostile clients ------------------------------------------------------------- */

/* A small client for hostile requests: send req (len bytes, may hold NULs)
 * on a new connection and read until the server closes it, or 10 s.
 * Counts the responses seen (each "HTTP/1." in the text), fills
 * r with the first, and says whether the server closed the connection. */
typedef struct {
    int nresp;
    bool closed;
    int status;
    char text[8192];
} hostile_result;

static void hostile(int p, const char *req, size_t len, hostile_result *h)
{
    memset(h, 0, sizeof *h);
    int fd = connect_to(p);
    if (fd < 0)
        return;
    send_all(fd, req, len);
    size_t got = 0;
    for (;;) {
        ssize_t n = recv(fd, h->text + got, sizeof h->text - 1 - got, 0);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            h->closed = true;
            break;
        }
        if (n < 0)
            break; /* SO_RCVTIMEO: 10 s with the connection still open */
        got += (size_t)n;
        if (got == sizeof h->text - 1)
            break;
    }
    h->text[got] = '\0';
    close(fd);
    sscanf(h->text, "HTTP/1.%*d %d", &h->status);
    /* A response may follow the previous body on the same line. */
    for (const char *q = strstr(h->text, "HTTP/1."); q != NULL; q = strstr(q + 7, "HTTP/1."))
        h->nresp++;
}

typedef struct {
    const char *name;
    const char *req;
    int status;
} hostile_case;

static const hostile_case smuggling_cases[] = {
    { "two Content-Length, the second a pipelined request",
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n"
      "abcdGET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
      400 },
    { "Content-Length +4", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\n{}{}",
      400 },
    { "Content-Length 4 4", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4 4\r\n\r\n{}{}",
      400 },
    { "Content-Length not digits",
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0x4\r\n\r\n{}{}", 400 },
    { "Transfer-Encoding identity, chunked beside Content-Length",
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n"
      "Content-Length: 7\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
      400 },
    { "Transfer-Encoding chunked beside Content-Length",
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
      "2\r\n{}\r\n0\r\n\r\n",
      400 },
    { "Transfer-Encoding gzip",
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}", 400 },
    { "obs-fold", "GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400 },
    { "obs-fold with a tab, folding a Content-Length",
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\t0\r\n\r\n{}", 400 },
    { "invalid chunk size",
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
      400 },
    { "HEAD with a body that is a request",
      "HEAD /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\r\n"
      "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
      400 },
    { "space before the colon", "GET /hello HTTP/1.1\r\nHost : x\r\n\r\n", 400 },
    { "bare CR in a header", "GET /hello HTTP/1.1\r\nHost: x\rX-B: 1\r\n\r\n", 400 },
    { "absolute-form target evhttp cannot parse", "GET http://[::1/x HTTP/1.1\r\nHost: x\r\n\r\n",
      400 },
    { "unknown method", "BREW /hello HTTP/1.1\r\nHost: x\r\n\r\n", 501 },
    { "HTTP/2.0 request line", "GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", 505 },
    { "Expect other than 100-continue",
      "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\n{}", 417 },
    { "chunked body over max_body_bytes",
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      "100000\r\n",
      413 },
};
#define NCASES (sizeof smuggling_cases / sizeof smuggling_cases[0])
static hostile_result hres[NCASES + 4];

static void smuggling_client(void *arg)
{
    (void)arg;
    for (size_t i = 0; i < NCASES; i++)
        hostile(port, smuggling_cases[i].req, strlen(smuggling_cases[i].req), &hres[i]);
    /* Still strict and still serving after all that: a good request, and
     * a good chunked one (the guard passes chunked bodies to evhttp). */
    const char *ok = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     "Connection: close\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-T: 1\r\n\r\n";
    hostile(port, ok, strlen(ok), &hres[NCASES]);
    const char *two = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    hostile(port, two, strlen(two), &hres[NCASES + 1]);
    /* A good request, then a bad one in the same packet: the refusal waits
     * for the good one's answer and comes second. */
    const char *good_bad = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                           "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                           "Content-Length: 2\r\n\r\n{}";
    hostile(port, good_bad, strlen(good_bad), &hres[NCASES + 2]);
}

START_TEST(smuggling_and_malformed_framing_refused)
{
    bt_http_app_route(app, "POST", "/echo", h_echo, NULL);
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    ck_assert_int_eq(bt_http_app_set_max_body_bytes(app, 1024), 0);
    start_server();
    with_client(smuggling_client, NULL);
    for (size_t i = 0; i < NCASES; i++) {
        hostile_result *h = &hres[i];
        ck_assert_msg(h->status == smuggling_cases[i].status, "%s: status %d, not %d",
                      smuggling_cases[i].name, h->status, smuggling_cases[i].status);
        ck_assert_msg(h->nresp == 1, "%s: %d responses", smuggling_cases[i].name, h->nresp);
        ck_assert_msg(h->closed, "%s: the connection stayed open", smuggling_cases[i].name);
        ck_assert_msg(strstr(h->text, "Connection: close") != NULL, "%s: no Connection: close",
                      smuggling_cases[i].name);
        ck_assert_msg(strstr(h->text, "\r\n\r\n{\"error\":\"") != NULL, "%s: not JSON: %s",
                      smuggling_cases[i].name, h->text);
    }
    ck_assert_int_eq(atomic_load(&handler_calls), 3); /* the three good GETs only */
    ck_assert_int_eq(hres[NCASES].status, 201);
    ck_assert_msg(strstr(hres[NCASES].text, "\"got\":{\"a\":1}") != NULL, "%s", hres[NCASES].text);
    ck_assert_msg(hres[NCASES + 1].nresp == 2, "%s", hres[NCASES + 1].text);
    ck_assert_int_eq(hres[NCASES + 2].nresp, 2);
    ck_assert_int_eq(hres[NCASES + 2].status, 200);
    ck_assert(strstr(hres[NCASES + 2].text, "hello") <
              strstr(hres[NCASES + 2].text, "HTTP/1.1 400"));
    ck_assert(hres[NCASES + 2].closed);
}
END_TEST

/* Slowloris: one byte every 50 ms of a head that would take 10 s. The
 * server closes the connection at the head deadline (300 ms), whatever
 * the client sends; evhttp's read timeout (5 s here), restarted by every
 * byte, never would. Then a body that trickles the same way. */
static int slow_sent[2];
static hostile_result slow_res[2];

static void trickle(const char *prefix, size_t total, int slot)
{
    int fd = connect_to(port);
    send_all(fd, prefix, strlen(prefix));
    size_t sent = 0;
    char buf[4096];
    size_t got = 0;
    bool closed = false;
    while (sent < total && !closed) {
        if (send(fd, "a", 1, MSG_NOSIGNAL) != 1)
            break; /* the server closed: EPIPE or a reset */
        sent++;
        struct pollfd pfd = { fd, POLLIN, 0 };
        while (!closed && poll(&pfd, 1, 50) == 1) {
            ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
            if (n <= 0)
                closed = true;
            else
                got += (size_t)n;
        }
    }
    buf[got] = '\0';
    slow_sent[slot] = (int)sent;
    memcpy(slow_res[slot].text, buf, got + 1);
    sscanf(buf, "HTTP/1.%*d %d", &slow_res[slot].status);
    close(fd);
}

static int idle_status[2];
static void slowloris_client(void *arg)
{
    (void)arg;
    /* A keep-alive connection idle between requests for longer than the
     * head deadline is not cut: the deadline runs from a head's first
     * byte; idleness is the read timeout's business. */
    int fd = connect_to(port);
    result r;
    send_all(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 32);
    read_response(fd, &r);
    idle_status[0] = r.status;
    usleep(900 * 1000);
    send_all(fd, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 32);
    read_response(fd, &r);
    idle_status[1] = r.status;
    close(fd);

    trickle("GET /hello HTTP/1.1\r\nHost: x\r\nX-Pad: ", 200, 0);
    trickle("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n", 200, 1);
}

START_TEST(slowloris_head_and_body_deadlines)
{
    bt_http_app_route(app, "POST", "/echo", h_echo, NULL);
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    ck_assert_int_eq(bt_http_app_set_timeouts(app, 5000, 5000), 0);
    ck_assert_int_eq(bt_http_app_set_head_timeout(app, 300), 0);
    /* 1000 bytes a second after 300 ms: 20 bytes a second falls behind. */
    ck_assert_int_eq(bt_http_app_set_min_body_rate(app, 1000, 300), 0);
    ck_assert_int_eq(bt_http_app_set_head_timeout(app, 0), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_set_min_body_rate(app, 0, 1), BT_EINVAL);
    start_server();
    with_client(slowloris_client, NULL);
    /* Closed before the client finished sending (it needed 200 bytes). */
    ck_assert_int_lt(slow_sent[0], 200);
    ck_assert_int_eq(slow_res[0].status, 408);
    ck_assert(strstr(slow_res[0].text, "{\"error\":\"request head") != NULL);
    ck_assert_int_lt(slow_sent[1], 200);
    ck_assert_int_eq(slow_res[1].status, 408);
    ck_assert(strstr(slow_res[1].text, "{\"error\":\"request body") != NULL);
    ck_assert_int_eq(idle_status[0], 200);
    ck_assert_int_eq(idle_status[1], 200);
    ck_assert_int_eq(atomic_load(&handler_calls), 2); /* the idle connection's */
}
END_TEST

/* A chunked body is held to the same rate as a Content-Length one: what
 * counts is the bytes received, not the chunk sizes declared. A client
 * that declares a 1 MiB chunk and then sends nothing, or trickles, is
 * closed at the grace deadline, not given a second per 1000 declared
 * bytes (17 minutes). */
static int chunk_silent_status;
static uint64_t chunk_silent_ms;

static void slow_chunked_client(void *arg)
{
    (void)arg;
    const char *req = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "100000\r\n";
    int fd = connect_to(port);
    uint64_t t0 = bt_hrtime();
    send_all(fd, req, strlen(req));
    char buf[4096];
    size_t got = 0;
    struct pollfd pfd = { fd, POLLIN, 0 };
    /* Wait up to 5 s for the refusal and the close. */
    while (got < sizeof buf - 1 && poll(&pfd, 1, 5000) == 1) {
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    chunk_silent_ms = (bt_hrtime() - t0) / 1000000;
    sscanf(buf, "HTTP/1.%*d %d", &chunk_silent_status);
    close(fd);

    trickle("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            "100000\r\n",
            200, 0);
}

START_TEST(slowloris_chunked_body_deadline)
{
    bt_http_app_route(app, "POST", "/echo", h_echo, NULL);
    ck_assert_int_eq(bt_http_app_set_timeouts(app, 5000, 5000), 0);
    /* 1000 bytes a second after 300 ms. */
    ck_assert_int_eq(bt_http_app_set_min_body_rate(app, 1000, 300), 0);
    start_server();
    with_client(slow_chunked_client, NULL);
    ck_assert_int_eq(chunk_silent_status, 408);
    ck_assert_uint_lt(chunk_silent_ms, 2000);
    ck_assert_int_lt(slow_sent[0], 200);
    ck_assert_int_eq(slow_res[0].status, 408);
    ck_assert(strstr(slow_res[0].text, "{\"error\":\"request body") != NULL);
    ck_assert_int_eq(atomic_load(&handler_calls), 0);
}
END_TEST

/* A cap of two open connections: the third is answered 503 and closed;
 * once one of the two closes, a new connection is served. */
static hostile_result cap_res[2];
static void conn_cap_client(void *arg)
{
    (void)arg;
    int a = connect_to(port), b = connect_to(port);
    send_all(a, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 32);
    result r;
    read_response(a, &r); /* a is open and served */
    rs[0].status = r.status;
    const char *req = "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    hostile(port, req, strlen(req), &cap_res[0]);
    close(b);
    /* The server notices b's close when it reads its EOF: try for a while. */
    for (int i = 0; i < 200; i++) {
        hostile(port, req, strlen(req), &cap_res[1]);
        if (cap_res[1].status == 200)
            break;
        usleep(20000);
    }
    close(a);
}

START_TEST(connection_cap_refuses_with_503)
{
    bt_http_app_route(app, "GET", "/hello", h_hello, NULL);
    ck_assert_int_eq(bt_http_app_set_max_connections(app, 2), 0);
    ck_assert_int_eq(bt_http_app_set_max_connections(app, 0), BT_EINVAL);
    bt_test_log_capture();
    start_server();
    with_client(conn_cap_client, NULL);
    ck_assert_int_eq(rs[0].status, 200);
    ck_assert_int_eq(cap_res[0].status, 503);
    ck_assert(cap_res[0].closed);
    ck_assert(strstr(cap_res[0].text, "Retry-After: 1") != NULL);
    ck_assert(strstr(cap_res[0].text, "{\"error\":\"too many open connections\"}") != NULL);
    ck_assert_int_eq(cap_res[1].status, 200);
    ck_assert(bt_test_log_contains("connections refused (503)"));
}
END_TEST

/* Out of file descriptors: a child process serves under a low
 * RLIMIT_NOFILE and gets more connections than it has descriptors. Its
 * listener must pause and log one line per interval, not retry accept()
 * in a loop (libevent alone logs a line per try, millions a minute), and
 * serve again once the connections close. */
static void fd_child_ready(int p, void *arg)
{
    int fd = *(int *)arg;
    ssize_t n = write(fd, &p, sizeof p);
    (void)n;
    close(fd);
}

static void fd_exhaustion_client(void *arg)
{
    (void)arg;
}

START_TEST(fd_exhaustion_pauses_the_listener)
{
    (void)fd_exhaustion_client;
    char logpath[] = "/tmp/bt_test_http_fdXXXXXX";
    int logfd = mkstemp(logpath);
    ck_assert_int_ge(logfd, 0);
    int pp[2];
    ck_assert_int_eq(pipe(pp), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(pp[0]);
        dup2(logfd, 2);
        /* Baton's default handler writes to stderr: with CK_FORK=no an
         * earlier test's capture would otherwise swallow the lines. */
        bt_log_set_handler(NULL, NULL);
        int open_fds = 0;
        for (int fd = 0; fd < 1024; fd++)
            if (fcntl(fd, F_GETFD) != -1)
                open_fds++;
        struct rlimit rl = { (rlim_t)open_fds + 24, (rlim_t)open_fds + 24 };
        setrlimit(RLIMIT_NOFILE, &rl);
        bt_http_app *a = bt_http_app_new();
        bt_http_app_route(a, "GET", "/hello", h_hello, NULL);
        bt_http_app_set_loops(a, 1);
        int rc = bt_http_app_run(a, "127.0.0.1", 0, fd_child_ready, &pp[1]);
        bt_http_app_free(a);
        _exit(rc == 0 ? 0 : 3);
    }
    close(pp[1]);
    int cport = 0;
    ck_assert_int_eq(read(pp[0], &cport, sizeof cport), (ssize_t)sizeof cport);
    close(pp[0]);
    /* 100 connections: the kernel queues them all (backlog 1024); the
     * child has about 20 descriptors to accept them with. */
    int fds[100];
    for (int i = 0; i < 100; i++)
        fds[i] = connect_to(cport);
    usleep(1500 * 1000);
    char statpath[64], stat[1024];
    snprintf(statpath, sizeof statpath, "/proc/%d/stat", (int)pid);
    FILE *sf = fopen(statpath, "r");
    unsigned long ut = 0, st = 0;
    if (sf != NULL) {
        if (fgets(stat, sizeof stat, sf) != NULL) {
            const char *q = strrchr(stat, ')');
            sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st);
        }
        fclose(sf);
    }
    for (int i = 0; i < 100; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    /* Served again once the descriptors are free (the server closes its
     * side as it reads each client's EOF; the pause lasts 250 ms). */
    result r = { 0 };
    for (int i = 0; i < 200 && r.status != 200; i++) {
        raw(cport, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &r);
        if (r.status != 200)
            usleep(50000);
    }
    kill(pid, SIGTERM);
    int wst = 0;
    waitpid(pid, &wst, 0);
    /* Count the child's lines about accept(). */
    FILE *lf = fopen(logpath, "r");
    char line[512];
    int accept_lines = 0;
    while (lf != NULL && fgets(line, sizeof line, lf) != NULL)
        if (strstr(line, "accept") != NULL)
            accept_lines++;
    if (lf != NULL)
        fclose(lf);
    unlink(logpath);
    close(logfd);
    fprintf(stderr, "fd_exhaustion: %d lines about accept(), %lu ticks of CPU in 1.5 s\n",
            accept_lines, ut + st);
    ck_assert_int_eq(r.status, 200);
    ck_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    /* One line per 10 s: 1 here (a second one on a machine so loaded that
     * the test took over 10 s). */
    ck_assert_int_ge(accept_lines, 1);
    ck_assert_int_le(accept_lines, 3);
}
END_TEST

/* ---- Refusals ---------------------------------------------------------------------- */

static int failing_init(bt_loop *l, void *arg, void **data)
{
    (void)l;
    (void)arg;
    (void)data;
    return BT_ECONNREFUSED;
}

START_TEST(api_refusals)
{
    ck_assert_int_eq(bt_http_app_route(NULL, "GET", "/", h_hello, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_route(app, NULL, "/", h_hello, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_route(app, "get", "/", h_hello, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_route(app, "GET", "user", h_hello, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/user/{}", h_hello, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/user/{id", h_hello, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/user/{id}", NULL, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/user/{id}", h_hello, NULL), 0);
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/user/{id}", h_hello, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_set_max_body_bytes(app, 0), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_set_timeouts(app, 0, 1), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_set_max_concurrent(NULL, 1), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_enable_metrics(app, "metrics"), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_run(NULL, "127.0.0.1", 0, NULL, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_run(app, "127.0.0.1", 70000, NULL, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_app_stop(NULL), BT_EINVAL);

    ck_assert_ptr_null(bt_http_server_new(NULL, app));
    ck_assert_ptr_null(bt_http_server_new(loop, NULL));
    ck_assert_int_eq(bt_http_server_listen(NULL, "127.0.0.1", 0), BT_EINVAL);
    ck_assert_int_eq(bt_http_server_port(NULL), BT_EINVAL);

    start_server();
    ck_assert_int_eq(bt_http_server_listen(srv, "no.such.host.invalid", 0), BT_EINVAL);
    /* The app is frozen while a server uses it. */
    ck_assert_int_eq(bt_http_app_route(app, "GET", "/other", h_hello, NULL), BT_EBUSY);
    ck_assert_int_eq(bt_http_app_set_loops(app, 2), BT_EBUSY);
    bt_http_server_free(srv);
    srv = NULL;

    ck_assert_int_eq(bt_http_app_on_loop(app, failing_init, NULL, NULL), 0);
    bt_test_log_capture();
    ck_assert_ptr_null(bt_http_server_new(loop, app));
    ck_assert(bt_test_log_contains("init hook failed"));

    ck_assert_ptr_null(bt_http_reply_new(99));
    ck_assert_ptr_null(bt_http_reply_new(600));
    bt_http_reply *r = bt_http_reply_new(200);
    ck_assert_int_eq(bt_http_reply_add_header(r, "X-A", "b\r\nX-Injected: 1"), BT_EINVAL);
    ck_assert_int_eq(bt_http_reply_add_header(r, "X:A", "b"), BT_EINVAL);
    ck_assert_int_eq(bt_http_reply_add_header(r, NULL, "b"), BT_EINVAL);
    ck_assert_int_eq(bt_http_reply_set_body(r, NULL, NULL, 3), BT_EINVAL);
    ck_assert_int_eq(bt_http_reply_set_json(r, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_http_reply_status(r), 200);
    ck_assert_int_eq(bt_http_reply_set_body(r, "text/plain", "a", 1), 0);
    json_t *j = json_pack("[i]", 1);
    ck_assert_int_eq(bt_http_reply_set_json(r, j), 0); /* replaces, no second header */
    json_decref(j);
    ck_assert_int_eq(bt_http_reply_set_body(r, "text/x\r\nX-Injected: 1", "a", 1), BT_EINVAL);
    bt_http_reply_free(r);
    bt_http_reply_free(NULL);

    bt_future *f = bt_http_respond_json(loop, 200, NULL);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(bt_future_error(f), BT_EINVAL); /* the caller's mistake, not memory */
    ck_assert(strstr(bt_future_error_message(f), "json is NULL") != NULL);
    bt_future_unref(f);
    ck_assert_ptr_null(bt_http_req_param(NULL, "id"));
    ck_assert_ptr_null(bt_http_req_header(NULL, "id"));
    ck_assert_int_eq(bt_http_req_set_state(NULL, NULL, NULL), BT_EINVAL);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("http");
    TCase *tc = tcase_create("server");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, BT_TEST_TIMEOUT);
    tcase_add_test(tc, routing_and_params);
    tcase_add_test(tc, failing_handler_gives_500);
    tcase_add_test(tc, limits_sizes_and_timeout);
    tcase_add_test(tc, limits_concurrent_cap);
    tcase_add_test(tc, limits_write_timeout);
    tcase_add_test(tc, disconnect_cancels_handler);
    tcase_add_test(tc, handler_timeout_gives_504);
    tcase_add_test(tc, baton_client_cancel_reaches_handler);
    tcase_add_test(tc, graceful_shutdown_lets_inflight_finish);
    tcase_add_test(tc, graceful_shutdown_cancels_at_deadline);
    tcase_add_test(tc, shutdown_refuses_requests_on_open_connections);
    tcase_add_test(tc, server_free_cancels_inflight);
    tcase_add_test(tc, loop_free_closer_cancels_inflight);
    tcase_add_test(tc, metrics_route);
    tcase_add_test(tc, app_run_multi_loop_sigterm);
    tcase_add_test(tc, app_run_stop_sigint_and_bind_error);
    tcase_add_test(tc, api_refusals);
    tcase_add_test(tc, allocation_failures);
    tcase_add_test(tc, fiber_route_awaits_then_answers);
    tcase_add_test(tc, fiber_route_cancelled_by_handler_timeout);
    tcase_add_test(tc, watchdog_names_a_blocking_handler);
    tcase_add_test(tc, smuggling_and_malformed_framing_refused);
    tcase_add_test(tc, slowloris_head_and_body_deadlines);
    tcase_add_test(tc, slowloris_chunked_body_deadline);
    tcase_add_test(tc, connection_cap_refuses_with_503);
    tcase_add_test(tc, fd_exhaustion_pauses_the_listener);
    suite_add_tcase(s, tc);
    /* Tests whose client has a deadline of its own above the usual
     * timeout (slow sanitizer builds on a loaded machine). */
    TCase *slow = tcase_create("server-slow");
    tcase_add_checked_fixture(slow, setup, teardown);
    tcase_set_timeout(slow, (HANG_UP_DEADLINE_MS + 40000) / 1000);
    tcase_add_test(slow, client_hanging_up_mid_response_is_not_fatal);
    suite_add_tcase(s, slow);
    return s;
}

BT_TEST_MAIN(make_suite)
