/* Fibers over the integrations: the HTTP client against the test server
 * (tests/curl_server.c), the PostgreSQL pool, an acquired connection and a
 * transaction against a throwaway server (tests/pg_harness.c), and how much
 * stack those paths use (docs/fibers.md quotes it). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <baton/curl.h>
#include <baton/fiber.h>
#include <baton/pq.h>

#include "curl_server.h"
#include "harness.h"
#include "pg_harness.h"

static bt_test_pg *pg; /* started once by main; tests run in forked children */
static curl_server *srv;
static bt_loop *loop;

static void setup(void)
{
    ck_assert_msg(pg != NULL, "PostgreSQL did not start");
    srv = curl_server_start();
    ck_assert_msg(srv != NULL, "the test HTTP server did not start");
    loop = bt_loop_new();
    ck_assert_ptr_nonnull(loop);
}

static void teardown(void)
{
    bt_test_loop_free_clean(loop);
    curl_server_stop(srv);
}

/* The pages of the current fiber's stack that were ever touched: a new
 * stack is mapped untouched, so the resident pages of the mapping that
 * holds a local of the fiber are the deepest the fiber has been (the top
 * page also holds the fiber's own record). */
static size_t stack_touched(const void *local)
{
    uintptr_t p = (uintptr_t)local, lo = 0, hi = 0;
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    while (maps != NULL && fgets(line, sizeof line, maps) != NULL) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx", &s, &e) == 2 && s <= p && p < e) {
            lo = s;
            hi = e;
            break;
        }
    }
    if (maps != NULL)
        fclose(maps);
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    if (hi <= lo)
        return 0;
    size_t pages = (hi - lo) / ps;
    unsigned char *vec = malloc(pages);
    if (vec == NULL || mincore((void *)lo, pages * ps, vec) != 0) {
        free(vec);
        return 0;
    }
    size_t i = 0;
    while (i < pages && !(vec[i] & 1))
        i++;
    free(vec);
    return (pages - i) * ps;
}

typedef struct {
    bt_http_client *cli;
    bt_pq_pool *pool;
    char url[256];
    size_t touched;
} io_ctx;

static bt_future *tx_body(bt_pq_conn *c, void *arg)
{
    (void)arg;
    return bt_pq_conn_query(c, "INSERT INTO fiber_t VALUES (1)", 0, NULL);
}

static bt_future *io_fiber(bt_loop *l, void *arg)
{
    io_ctx *x = arg;
    char top;
    void *v;

    /* HTTP: a GET and a 404. */
    snprintf(x->url, sizeof x->url, "http://127.0.0.1:%d/hello", curl_server_port(srv));
    ck_assert_int_eq(bt_await(bt_http_get(x->cli, x->url), &v), 0);
    bt_http_response *resp = v;
    ck_assert_int_eq(bt_http_response_status(resp), 200);
    size_t len;
    const char *body = bt_http_response_body(resp, &len);
    ck_assert_uint_eq(len, 12);
    ck_assert_int_eq(memcmp(body, "hello world\n", 12), 0);
    bt_http_response_free(resp);

    /* PostgreSQL: a query through the pool, with a parameter. */
    const char *args[] = { "41" };
    ck_assert_int_eq(bt_await(bt_pq_query(x->pool, "SELECT $1::int + 1 AS n", 1, args), &v), 0);
    bt_pq_result *r = v;
    ck_assert_str_eq(bt_pq_result_get_named(r, 0, "n"), "42");
    bt_pq_result_free(r);
    /* A server error: its code and message. */
    ck_assert_int_eq(bt_await(bt_pq_query(x->pool, "SELECT nope", 0, NULL), NULL), BT_ESQL);
    ck_assert_ptr_nonnull(strstr(bt_await_error(), "nope"));

    /* An acquired connection, step by step: BEGIN, work, ROLLBACK. */
    ck_assert_int_eq(bt_await(bt_pq_query(x->pool, "CREATE TABLE fiber_t (x int)", 0, NULL), NULL),
                     0);
    ck_assert_int_eq(bt_await(bt_pq_acquire(x->pool), &v), 0);
    bt_pq_conn *c = v;
    ck_assert_int_eq(bt_await(bt_pq_conn_begin(c), NULL), 0);
    ck_assert_int_eq(bt_await(bt_pq_conn_query(c, "INSERT INTO fiber_t VALUES (0)", 0, NULL), NULL),
                     0);
    ck_assert(bt_pq_conn_in_transaction(c));
    ck_assert_int_eq(bt_await(bt_pq_conn_rollback(c), NULL), 0);
    bt_pq_conn_release(c);
    /* And the whole-transaction helper: committed. */
    ck_assert_int_eq(bt_await(bt_pq_transaction(x->pool, tx_body, NULL), NULL), 0);
    ck_assert_int_eq(bt_await(bt_pq_query(x->pool, "SELECT count(*) FROM fiber_t", 0, NULL), &v),
                     0);
    ck_assert_str_eq(bt_pq_result_get((r = v), 0, 0), "1");
    bt_pq_result_free(r);

    /* Cancelling a slow request from a timeout: the await says so. */
    snprintf(x->url, sizeof x->url, "http://127.0.0.1:%d/slow?ms=10000", curl_server_port(srv));
    ck_assert_int_eq(bt_await(bt_timeout(bt_http_get(x->cli, x->url), 50), NULL), BT_ETIMEDOUT);

    x->touched = stack_touched(&top);
    return bt_future_new_value(l, NULL, NULL);
}

START_TEST(await_the_http_client_and_postgres)
{
    io_ctx x = { 0 };
    x.cli = bt_http_client_new(loop);
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    x.pool = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(x.pool);
    bt_future *f = bt_async(loop, io_fiber, &x);
    bt_test_run_until(loop, f, 30000);
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f);
    fprintf(stderr, "stack touched by HTTP and PostgreSQL awaits: %zu bytes of %u\n", x.touched,
            BT_FIBER_STACK_DEFAULT);
    /* Half the default at most: the default keeps a margin over these
     * paths (docs/fibers.md). */
    ck_assert_uint_le(x.touched, BT_FIBER_STACK_DEFAULT / 2);
    bt_future *closed = bt_pq_pool_close(x.pool);
    bt_test_run_until(loop, closed, 20000);
    bt_future_unref(closed);
    bt_pq_pool_free(x.pool);
    bt_http_client_free(x.cli);
}
END_TEST

static Suite *fiber_io_suite(void)
{
    Suite *s = suite_create("fiber_io");
    TCase *tc = tcase_create("io");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, BT_TEST_TIMEOUT * 2);
    tcase_add_test(tc, await_the_http_client_and_postgres);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    pg = bt_test_pg_start();
    if (pg == NULL)
        fprintf(stderr, "test_fiber_io: could not start PostgreSQL: every test fails\n");
    int rc = bt_test_main(fiber_io_suite());
    bt_test_pg_free(pg);
    return rc;
}
