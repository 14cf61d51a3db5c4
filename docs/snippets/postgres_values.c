/* docs/postgres.md's snippets of "Typed values and binary results" and
 * "What the server says besides rows" inside one complete program.
 * tests/check-snippets.sh checks that the page quotes them verbatim;
 * `make check` runs it against a throwaway server
 * (docs/snippets/postgres_values.sh, through tests/pg_run, which sets
 * DATABASE_URL), leak-free under --enable-asan. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <baton/baton.h>
#include <baton/pq.h>

/* Run one statement on a pool and wait for it. Returns its error code. */
static int run(bt_loop *loop, bt_pq_pool *pool, const char *sql)
{
    bt_future *f = bt_pq_query(pool, sql, 0, NULL);
    bt_loop_run_until(loop, f);
    int rc = bt_future_error(f);
    if (rc != 0)
        fprintf(stderr, "%s: %s\n", sql, bt_future_error_message(f));
    bt_future_unref(f);
    return rc;
}

/* docs/postgres.md, "Typed values and binary results". */
static void typed(bt_loop *loop, bt_pq_pool *pool)
{
    bt_pq_query_opts qo = BT_SIZED(bt_pq_query_opts);
    qo.result_format = 1; /* binary results; the getters read text ones too */
    bt_future *f = bt_pq_query_ex(pool, "SELECT id, score, paid, at FROM orders ORDER BY id",
                                  0, NULL, &qo);
    bt_loop_run_until(loop, f);
    const bt_pq_result *r = bt_future_error(f) == 0 ? bt_future_value(f) : NULL;
    for (int i = 0; i < bt_pq_result_rows(r); i++) {
        int64_t id, at_us; /* timestamptz: microseconds since 1970 UTC */
        double score;
        bool paid;
        if (bt_pq_result_int64(r, i, 0, &id) != 0 || bt_pq_result_bool(r, i, 2, &paid) != 0 ||
            bt_pq_result_timestamptz(r, i, 3, &at_us) != 0)
            continue; /* BT_ETYPE, BT_EPROTO...: say so in real code */
        int rc = bt_pq_result_double(r, i, 1, &score);
        if (rc == BT_PQ_NULL)
            printf("order %" PRId64 ": no score, paid %d, at %" PRId64 "\n", id, paid, at_us);
        else if (rc == 0)
            printf("order %" PRId64 ": score %.2f, paid %d, at %" PRId64 "\n", id, score, paid,
                   at_us);
    }
    bt_future_unref(f);
}

/* docs/postgres.md, "What the server says besides rows". */
static void on_notice(const bt_pq_notice *n, void *arg)
{
    (void)arg; /* on the loop thread; the strings live for the call */
    printf("%s %s: %s\n", n->severity, n->sqlstate, n->message);
}

static void says(bt_loop *loop, bt_pq_pool *pool)
{
    bt_pq_pool_set_notice_handler(pool, on_notice, NULL); /* NULL: to bt_log */
    run(loop, pool, "DO $$ BEGIN RAISE WARNING 'stock is low'; END $$");

    bt_future *a = bt_pq_acquire(pool);
    bt_loop_run_until(loop, a);
    bt_pq_conn *c = bt_future_take_value(a);
    bt_future_unref(a);
    if (c != NULL) {
        const char *v = bt_pq_conn_parameter(c, "server_version");
        printf("server %s, TimeZone %s\n", v != NULL ? "known" : "unknown",
               bt_pq_conn_parameter(c, "TimeZone"));
        bt_pq_conn_release(c);
    }
}

int main(void)
{
    const char *dsn = getenv("DATABASE_URL");
    if (dsn == NULL) {
        fprintf(stderr, "postgres_values snippet: DATABASE_URL is not set (run it through "
                        "tests/pg_run)\n");
        return 2;
    }
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = dsn;
    o.max_size = 1;
    bt_pq_pool *pool = bt_pq_pool_new(loop, &o);
    int rc = pool == NULL ||
             run(loop, pool, "SET TimeZone = 'UTC'") != 0 ||
             run(loop, pool, "CREATE TABLE orders (id int8, score float8, paid bool, "
                             "at timestamptz)") != 0 ||
             run(loop, pool, "INSERT INTO orders VALUES (1, 4.5, true, "
                             "'2024-01-01 00:00:00+00'), (2, NULL, false, "
                             "'1970-01-01 00:00:01+00')") != 0;
    if (rc == 0) {
        typed(loop, pool);
        says(loop, pool);
    }
    bt_pq_pool_free(pool);
    bt_loop_free(loop);
    return rc;
}
