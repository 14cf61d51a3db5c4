/* The flagship (examples/server.c) end to end: the real binary, run as a
 * child process against the harness's PostgreSQL, asked by Baton's own
 * HTTP client: every route and status (200, 400, 404, 405, 500, 502), a
 * concurrent burst, the metrics route, and SIGTERM ending in exit 0. And,
 * in process, a client that leaves cancelling its handler's query. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include <baton/compose.h>
#include <baton/curl.h>
#include <baton/http.h>
#include <baton/pq.h>

#include "harness.h"
#include "pg_harness.h"

static bt_test_pg *pg;
static bt_loop *loop;
static bt_http_client *client;
static pid_t server_pid;
static char server_url[128];
static char log_path[256];

static void pg_up(void)
{
    pg = bt_test_pg_start();
    ck_assert_msg(pg != NULL, "could not start PostgreSQL for the flagship's tests");
}

static void pg_down(void)
{
    bt_test_pg_free(pg);
}

static char *read_log(void)
{
    FILE *f = fopen(log_path, "r");
    if (!f)
        return strdup("");
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return strdup(buf);
}

/* Start ./examples/server with PORT=0 and wait for its "listening on". */
static void start_server(const char *upstream)
{
    snprintf(log_path, sizeof log_path, "/tmp/baton-server-demo-%d.log", (int)getpid());
    unlink(log_path); /* a start after a stop must not read the last run's log */
    server_url[0] = '\0';
    server_pid = fork();
    ck_assert_int_ge(server_pid, 0);
    if (server_pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        setenv("DATABASE_URL", bt_test_pg_conninfo(pg), 1);
        setenv("PORT", "0", 1);
        setenv("LOOPS", "2", 1);
        if (upstream)
            setenv("UPSTREAM_URL", upstream, 1);
        else
            unsetenv("UPSTREAM_URL");
        execl("./examples/server", "server", (char *)NULL);
        perror("exec ./examples/server");
        _exit(127);
    }
    for (int i = 0; i < 600; i++) {
        char *log = read_log();
        char *p = strstr(log, "listening on ");
        if (p) {
            sscanf(p, "listening on %127s", server_url);
            free(log);
            break;
        }
        free(log);
        int st;
        ck_assert_msg(waitpid(server_pid, &st, WNOHANG) == 0, "the server exited early");
        usleep(100000);
    }
    ck_assert_msg(server_url[0], "the server did not listen within 60 s");
    loop = bt_loop_new();
    client = bt_http_client_new(loop);
    ck_assert_ptr_nonnull(client);
    ck_assert_int_eq(bt_http_client_set_base_url(client, server_url), 0);
}

/* SIGTERM: the server drains and exits 0. */
static void stop_server(void)
{
    bt_http_client_free(client);
    bt_test_loop_free_clean(loop);
    ck_assert_int_eq(kill(server_pid, SIGTERM), 0);
    int st = 0;
    ck_assert_int_eq(waitpid(server_pid, &st, 0), server_pid);
    char *log = read_log();
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "server status %d, log:\n%s", st, log);
    ck_assert_ptr_nonnull(strstr(log, "shut down cleanly"));
    free(log);
    unlink(log_path);
}

typedef struct {
    int status;
    char body[4096];
} answer;

static answer ask(const char *method, const char *path)
{
    answer a = { 0 };
    bt_http_request *req = bt_http_request_new(method, path);
    bt_future *f = bt_http_client_send(client, req);
    ck_assert_ptr_nonnull(f);
    bt_test_run_until(loop, f, 20000);
    ck_assert_msg(bt_future_error(f) == 0, "%s %s: %s", method, path, bt_future_error_message(f));
    bt_http_response *r = bt_future_value(f);
    a.status = bt_http_response_status(r);
    snprintf(a.body, sizeof a.body, "%s", bt_http_response_body(r, NULL));
    bt_future_unref(f);
    return a;
}

START_TEST(user_routes)
{
    start_server(NULL);
    answer a = ask("GET", "user/42");
    ck_assert_int_eq(a.status, 200);
    json_t *j = json_loads(a.body, 0, NULL);
    ck_assert_ptr_nonnull(j);
    /* The id is a number, as a users API returns it. */
    ck_assert_msg(json_is_integer(json_object_get(j, "id")), "id is not a number: %s", a.body);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "id")), 42);
    ck_assert_str_eq(json_string_value(json_object_get(j, "name")), "user 42");
    ck_assert_str_eq(json_string_value(json_object_get(j, "email")), "user42@example.com");
    json_t *prof = json_object_get(j, "profile");
    ck_assert_int_eq(json_integer_value(json_object_get(prof, "user_id")), 42);
    ck_assert_uint_eq(strlen(json_string_value(json_object_get(j, "fingerprint"))), 16);
    json_decref(j);

    a = ask("GET", "user/10001");
    ck_assert_int_eq(a.status, 404);
    ck_assert_str_eq(a.body, "{\"error\":\"user not found\"}");
    const char *bad[] = { "user/abc", "user/0", "user/-1", "user/99999999999", "user/4x" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        a = ask("GET", bad[i]);
        ck_assert_int_eq(a.status, 400);
        ck_assert_str_eq(a.body, "{\"error\":\"id must be a positive integer\"}");
    }
    ck_assert_int_eq(ask("GET", "user/42/more").status, 404);
    ck_assert_int_eq(ask("POST", "user/42").status, 405);
    ck_assert_int_eq(ask("GET", "healthz").status, 200);
    a = ask("GET", "upstream/profile/7");
    ck_assert_int_eq(a.status, 200);
    ck_assert_ptr_nonnull(strstr(a.body, "\"user_id\":7"));

    /* A burst, all at once, each with the right user. */
    enum { N = 100 };
    bt_future *fs[N];
    for (int i = 0; i < N; i++) {
        char path[32];
        snprintf(path, sizeof path, "user/%d", i * 97 + 1);
        fs[i] = bt_http_get(client, path);
        ck_assert_ptr_nonnull(fs[i]);
    }
    bt_future *all = bt_gather(loop, fs, N, BT_GATHER_FAIL_FAST); /* takes over fs[] */
    bt_test_run_until(loop, all, 30000);
    ck_assert_int_eq(bt_future_error(all), 0);
    for (int i = 0; i < N; i++) {
        bt_http_response *r = bt_results_value(bt_future_value(all), (size_t)i);
        ck_assert_int_eq(bt_http_response_status(r), 200);
        char want[64];
        snprintf(want, sizeof want, "\"name\":\"user %d\"", i * 97 + 1);
        ck_assert_ptr_nonnull(strstr(bt_http_response_body(r, NULL), want));
    }
    bt_future_unref(all);

    a = ask("GET", "metrics");
    ck_assert_int_eq(a.status, 200);
    ck_assert_ptr_nonnull(strstr(a.body, "baton_http_requests_total{code=\"400\"} 5\n"));
    ck_assert_ptr_nonnull(strstr(a.body, "baton_pool_done_total{pool=\"default\",lane=\"cpu\"}"));
    stop_server();
}
END_TEST

START_TEST(upstream_down_gives_502)
{
    char up[64];
    snprintf(up, sizeof up, "http://127.0.0.1:%d/upstream", bt_test_pg_closed_port());
    start_server(up);
    answer a = ask("GET", "user/1");
    ck_assert_int_eq(a.status, 502);
    ck_assert_str_eq(a.body, "{\"error\":\"profile service unavailable\"}");
    ck_assert_int_eq(ask("GET", "user/10001").status, 404); /* the database answers first */
    stop_server();
}
END_TEST

/* An upstream that accepts and never answers: a client that gives up on
 * the flagship cancels the handler, and with it the upstream call and the
 * query (under ASan, the server's clean exit also proves nothing leaked). */
START_TEST(client_leaving_cancels_upstream_call)
{
    int bh = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(bh, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(bh, 64), 0);
    socklen_t sl = sizeof sa;
    getsockname(bh, (struct sockaddr *)&sa, &sl);
    char up[64];
    snprintf(up, sizeof up, "http://127.0.0.1:%d/upstream", ntohs(sa.sin_port));
    start_server(up);

    bt_http_request *req = bt_http_request_new("GET", "user/5");
    bt_http_request_set_timeout(req, 300);
    bt_future *f = bt_http_client_send(client, req);
    bt_test_run_until(loop, f, 10000);
    ck_assert_int_eq(bt_future_error(f), BT_ETIMEDOUT);
    bt_future_unref(f);

    bool seen = false;
    for (int i = 0; i < 100 && !seen; i++) {
        answer a = ask("GET", "metrics");
        seen = strstr(a.body, "baton_http_handlers_cancelled_total 1\n") != NULL;
        if (!seen) {
            bt_future *nap = bt_sleep(loop, 50);
            bt_test_run_until(loop, nap, 1000);
            bt_future_unref(nap);
        }
    }
    ck_assert_msg(seen, "the handler was not cancelled");
    stop_server();
    close(bh);
}
END_TEST

START_TEST(database_error_gives_500_and_is_logged)
{
    start_server(NULL);
    ck_assert_int_eq(bt_test_pg_exec(pg, "ALTER TABLE baton_demo_users RENAME TO users_away"), 0);
    answer a = ask("GET", "user/3");
    ck_assert_int_eq(bt_test_pg_exec(pg, "ALTER TABLE users_away RENAME TO baton_demo_users"), 0);
    ck_assert_int_eq(a.status, 500);
    ck_assert_str_eq(a.body, "{\"error\":\"internal server error\"}"); /* nothing leaks */
    char *log = read_log();
    ck_assert_msg(strstr(log, "GET /user/3: handler failed") && strstr(log, "users"), "log:\n%s",
                  log);
    free(log);
    ck_assert_int_eq(ask("GET", "user/3").status, 200);
    stop_server();
}
END_TEST

/* In process: a client that leaves cancels the handler, and the handler's
 * cancellation reaches its PostgreSQL query (a cancel request is sent and
 * the server stops running it). */
static bt_pq_pool *db;
static bt_future *query_f, *handler_started;

static bt_future *answer_slept(bt_future *q, void *arg)
{
    (void)arg;
    return bt_http_respond(bt_future_loop(q), 200, "text/plain", "slept", 5);
}

static bt_future *h_sleep(bt_http_req *req, void *arg)
{
    (void)req;
    (void)arg;
    query_f = bt_pq_query(db, "SELECT pg_sleep(30) /* baton-cancel-test */", 0, NULL);
    bt_future_set_value(handler_started, NULL, NULL);
    return bt_future_then(bt_future_ref(query_f), answer_slept, NULL); /* query_f read later */
}

static void on_gone(bt_future *f, void *arg)
{
    (void)arg;
    bt_future_error(f);
}

static void nap(unsigned ms)
{
    bt_future *z = bt_sleep(loop, ms);
    bt_test_run_until(loop, z, 10000);
    bt_future_unref(z);
}

/* How many backends are running the test's query (a new string). */
static char *running_count(void)
{
    return bt_test_pg_scalar(pg, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                                 " AND query LIKE '%baton-cancel-test%'"
                                 " AND pid <> pg_backend_pid()");
}

/* Run the loop until the server reports `want` backends running the test's
 * query. The bound only guards against a hang (60 s of naps). Returns the
 * last count seen (a new string). */
static char *wait_running(const char *want)
{
    char *n = NULL;
    for (int i = 0; i < 1200; i++) {
        free(n);
        n = running_count();
        if (n && strcmp(n, want) == 0)
            break;
        nap(50);
    }
    return n;
}

START_TEST(disconnect_cancels_the_query)
{
    loop = bt_loop_new();
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    db = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(db);
    bt_http_app *app = bt_http_app_new();
    bt_http_app_route(app, "GET", "/sleep", h_sleep, NULL);
    bt_http_server *srv = bt_http_server_new(loop, app);
    ck_assert_int_eq(bt_http_server_listen(srv, "127.0.0.1", 0), 0);
    client = bt_http_client_new(loop);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/sleep", bt_http_server_port(srv));
    handler_started = bt_future_new(loop);
    bt_future *f = bt_http_get(client, url);
    bt_future_add_callback(f, on_gone, NULL);
    bt_test_run_until(loop, handler_started, 10000);
    /* The client must leave while the query runs on the server: one that
     * leaves while the query still waits for the pool's first connection
     * (or for its batch to go out) only removes it, rightly without a
     * cancel request. So wait until the server shows it running. */
    char *n = wait_running("1");
    ck_assert_msg(n && strcmp(n, "1") == 0, "the query never ran on the server (%s)",
                  n ? n : "no answer");
    free(n);
    ck_assert_int_eq(bt_future_get_state(query_f), BT_FUTURE_PENDING);
    bt_future_cancel(f); /* the client leaves */
    bt_test_run_until(loop, query_f, 10000);
    ck_assert_int_eq(bt_future_get_state(query_f), BT_FUTURE_CANCELLED);
    /* The server stops running it: pg_stat_activity no longer shows it. */
    n = wait_running("0");
    ck_assert_str_eq(n, "0");
    free(n);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(db, &st);
    ck_assert_uint_ge(st.cancels_sent, 1);
    /* The handler's chain settles after its query: wait for it (the bound
     * is a hang guard). */
    for (int i = 0; i < 1200 && bt_http_server_in_flight(srv) != 0; i++)
        nap(10);
    ck_assert_int_eq(bt_http_server_in_flight(srv), 0);
    bt_future_unref(f);
    bt_future_unref(query_f);
    bt_future_unref(handler_started);
    bt_http_client_free(client);
    bt_http_server_free(srv);
    bt_pq_pool_free(db);
    bt_test_loop_free_clean(loop);
    bt_http_app_free(app);
}
END_TEST

/* Pointed at a database that has a `users` table of its own, the server
 * leaves it alone: it makes (once) and reads only baton_demo_users, and
 * says which it did. */
START_TEST(existing_tables_are_left_alone)
{
    ck_assert_int_eq(bt_test_pg_exec(pg, "DROP TABLE IF EXISTS users;"
                                         " CREATE TABLE users (id integer PRIMARY KEY,"
                                         " name text NOT NULL, email text NOT NULL);"
                                         " INSERT INTO users VALUES (1, 'ada', 'ada@example.org')"),
                     0);
    start_server(NULL);
    char *log = read_log();
    ck_assert_msg(strstr(log, "created table baton_demo_users with 10000 rows") ||
                      strstr(log, "using the existing table baton_demo_users"),
                  "log:\n%s", log);
    free(log);
    ck_assert_int_eq(ask("GET", "user/2").status, 200); /* served from its own table */
    stop_server();
    char *n = bt_test_pg_scalar(pg, "SELECT count(*) || ' ' || max(name) FROM users");
    ck_assert_str_eq(n, "1 ada");
    free(n);

    /* A second start finds its table and does not fill it again. */
    ck_assert_int_eq(bt_test_pg_exec(pg, "DELETE FROM baton_demo_users WHERE id > 5000"), 0);
    start_server(NULL);
    log = read_log();
    ck_assert_msg(strstr(log, "using the existing table baton_demo_users"), "log:\n%s", log);
    free(log);
    ck_assert_int_eq(ask("GET", "user/6000").status, 404);
    stop_server();
    n = bt_test_pg_scalar(pg, "SELECT count(*) FROM baton_demo_users");
    ck_assert_str_eq(n, "5000");
    free(n);
    ck_assert_int_eq(bt_test_pg_exec(pg, "DROP TABLE users;"
                                         " INSERT INTO baton_demo_users SELECT i, 'user ' || i,"
                                         " 'user' || i || '@example.com'"
                                         " FROM generate_series(5001, 10000) AS i"),
                     0);
}
END_TEST

/* A database that refuses: the flagship says so and exits 1, at once. */
START_TEST(unreachable_database_fails_clearly)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd,
             "DATABASE_URL=postgresql://postgres@127.0.0.1:%d/x PORT=0 ./examples/server 2>&1",
             bt_test_pg_closed_port());
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    char out[4096];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status %d, output:\n%s", st, out);
    ck_assert_msg(strstr(out, "could not prepare the table baton_demo_users") &&
                      strstr(out, "refused"),
                  "output:\n%s", out);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("server_demo");
    TCase *tc = tcase_create("flagship");
    tcase_add_unchecked_fixture(tc, pg_up, pg_down);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, user_routes);
    tcase_add_test(tc, upstream_down_gives_502);
    tcase_add_test(tc, database_error_gives_500_and_is_logged);
    tcase_add_test(tc, client_leaving_cancels_upstream_call);
    tcase_add_test(tc, disconnect_cancels_the_query);
    tcase_add_test(tc, unreachable_database_fails_clearly);
    tcase_add_test(tc, existing_tables_are_left_alone);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(make_suite)
