/* README.md's and docs/postgres.md's PostgreSQL snippets inside one
 * complete program. tests/check-snippets.sh checks that the pages quote
 * them verbatim; `make check` runs it against a throwaway server
 * (docs/snippets/postgres.sh, through tests/pg_run, which sets
 * DATABASE_URL), leak-free under --enable-asan. */
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

/* README.md, "Async with databases". */
static int readme(bt_loop *loop, const char *dsn)
{
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = dsn;
    bt_pq_pool *pool = bt_pq_pool_new(loop, &o);          /* asyncpg.create_pool */
    const char *params[] = {"1"};
    bt_future *row = bt_pq_query(pool, "SELECT id, name, email FROM users WHERE id = $1",
                                 1, params);              /* conn.fetchrow */

    bt_loop_run_until(loop, row);
    int rc = bt_future_error(row);
    if (rc == 0)
        printf("%s\n", bt_pq_result_get_named(bt_future_value(row), 0, "name"));
    bt_future_unref(row);
    bt_pq_pool_free(pool);
    return rc;
}

/* docs/postgres.md, "A tour". */
static void tour(bt_loop *loop)
{
    bt_pq_options o;
    bt_pq_options_init(&o);              /* min 1, max 10, pipeline depth 16, ... */
    o.conninfo = getenv("DATABASE_URL"); /* a URI or "host=... dbname=..." */
    bt_pq_pool *pool = bt_pq_pool_new(loop, &o);

    const char *args[] = {"42"};         /* text form; NULL means SQL NULL */
    bt_future *f = bt_pq_query(pool, "SELECT id, name, email FROM users WHERE id = $1",
                               1, args);
    bt_loop_run_until(loop, f);          /* or bt_future_add_callback, bt_future_then */
    if (bt_future_error(f) == 0) {
        const bt_pq_result *r = bt_future_value(f);
        if (bt_pq_result_rows(r) == 1)
            printf("%s\n", bt_pq_result_get_named(r, 0, "email"));
    } else {
        bt_pq_error e = BT_SIZED(bt_pq_error);                    /* SQLSTATE, message, detail, hint */
        bt_pq_error_parse(f, &e);
        fprintf(stderr, "%s %s (%s)\n", e.sqlstate, e.message, e.detail);
    }
    bt_future_unref(f);

    bt_pq_pool_free(pool);
}

int main(void)
{
    const char *dsn = getenv("DATABASE_URL");
    if (dsn == NULL) {
        fprintf(stderr, "postgres snippet: DATABASE_URL is not set (run it through tests/pg_run)\n");
        return 2;
    }
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = dsn;
    bt_pq_pool *setup = bt_pq_pool_new(loop, &o);
    int rc = setup == NULL ||
             run(loop, setup, "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, "
                              "name text NOT NULL, email text)") != 0 ||
             run(loop, setup, "INSERT INTO users VALUES (1, 'Ada', 'ada@example.com'), "
                              "(42, 'Grace', 'grace@example.com') ON CONFLICT DO NOTHING") != 0;
    bt_pq_pool_free(setup);
    if (rc == 0 && readme(loop, dsn) != 0)
        rc = 1;
    if (rc == 0)
        tour(loop); /* postgres.sh checks what it printed */
    bt_loop_free(loop);
    return rc;
}
