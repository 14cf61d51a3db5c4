/* The PostgreSQL pool against a real server started by the harness: CRUD
 * with parameters, injection stored as text, SQL errors with SQLSTATE,
 * pool exhaustion, transactions and dirty release, LISTEN/NOTIFY across a
 * reconnect, cancel and timeout of pg_sleep, pipelining, single-row mode,
 * a server restart in the middle of 10,000 queries, a closed port, bad
 * arguments, shutdown with work pending. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <baton/pool.h>
#include <baton/pq.h>

#include "pq_fixture.h"

static bt_test_pg *pg; /* started once by main; tests run in forked children */
static int sleeping_backends(void);
static bt_loop *loop;

static void setup(void)
{
    loop = bt_test_pq_loop(pg);
    /* A test that failed while the server was frozen must not wedge the
     * ones after it. */
    bt_test_pg_thaw(pg);
}

static void teardown(void)
{
    bt_test_loop_free_clean(loop);
}

static bt_pq_pool *new_pool(unsigned min, unsigned max, unsigned depth)
{
    bt_pq_options o;
    bt_test_pq_options(&o, bt_test_pg_conninfo(pg), min, max);
    o.pipeline_depth = depth;
    return bt_test_pq_pool(loop, &o);
}

static bt_pq_pool *new_pool_opts(bt_pq_options *o)
{
    return bt_test_pq_pool(loop, o);
}

/* Wait for f; returns it (still owned by the caller). */
static bt_future *await(bt_future *f)
{
    return bt_test_run_until(loop, f, 25000);
}

/* Run a query to completion and return its result (owned by the caller),
 * failing the test on error. */
static bt_pq_result *must(bt_pq_pool *p, const char *sql, int n, const char *const *vals)
{
    return bt_test_take(await(bt_pq_query(p, sql, n, vals)), sql);
}

static void exec_ok(bt_pq_pool *p, const char *sql, int n, const char *const *vals)
{
    bt_pq_result_free(must(p, sql, n, vals));
}

static void sleep_ms(unsigned ms)
{
    bt_test_sleep(loop, ms);
}

START_TEST(crud_with_parameters_and_nulls)
{
    bt_pq_pool *p = new_pool(1, 4, 16);
    exec_ok(p,
            "CREATE TABLE crud (id int PRIMARY KEY, name text, score float8, "
            "active bool, born date, tags text[])",
            0, NULL);
    const char *a[] = { "1", "Ada", "97.5", "true", "1815-12-10", "{x,y}" };
    bt_pq_result *r = must(p, "INSERT INTO crud VALUES ($1, $2, $3, $4, $5, $6)", 6, a);
    ck_assert_int_eq(bt_pq_result_affected(r), 1);
    ck_assert_str_eq(bt_pq_result_command(r), "INSERT 0 1");
    bt_pq_result_free(r);
    const char *b[] = { "2", NULL, NULL, "false", NULL, NULL };
    exec_ok(p, "INSERT INTO crud VALUES ($1, $2, $3, $4, $5, $6)", 6, b);

    const char *id[] = { "1" };
    r = must(p, "SELECT id, name, score, active, born, tags FROM crud WHERE id = $1", 1, id);
    ck_assert_int_eq(bt_pq_result_rows(r), 1);
    ck_assert_int_eq(bt_pq_result_columns(r), 6);
    ck_assert_str_eq(bt_pq_result_column_name(r, 1), "name");
    ck_assert_int_eq(bt_pq_result_column_index(r, "score"), 2);
    ck_assert_int_eq(bt_pq_result_column_index(r, "nope"), -1);
    ck_assert_uint_eq(bt_pq_result_column_type(r, 0), 23); /* int4 */
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "1");
    ck_assert_str_eq(bt_pq_result_get_named(r, 0, "name"), "Ada");
    ck_assert_str_eq(bt_pq_result_get(r, 0, 2), "97.5");
    ck_assert_str_eq(bt_pq_result_get(r, 0, 3), "t");
    ck_assert_str_eq(bt_pq_result_get(r, 0, 4), "1815-12-10");
    ck_assert_str_eq(bt_pq_result_get(r, 0, 5), "{x,y}");
    ck_assert_int_eq(bt_pq_result_length(r, 0, 1), 3);
    ck_assert(!bt_pq_result_is_null(r, 0, 1));
    /* Out of range is NULL / -1, never a crash. */
    ck_assert_ptr_null(bt_pq_result_get(r, 1, 0));
    ck_assert_ptr_null(bt_pq_result_get(r, 0, 6));
    ck_assert_int_eq(bt_pq_result_length(r, 5, 5), -1);
    bt_pq_result_free(r);

    id[0] = "2";
    r = must(p, "SELECT name, score, active, born FROM crud WHERE id = $1", 1, id);
    ck_assert(bt_pq_result_is_null(r, 0, 0));
    ck_assert_ptr_null(bt_pq_result_get(r, 0, 0));
    ck_assert(bt_pq_result_is_null(r, 0, 1));
    ck_assert_str_eq(bt_pq_result_get(r, 0, 2), "f");
    ck_assert(bt_pq_result_is_null(r, 0, 3));
    bt_pq_result_free(r);

    const char *u[] = { "Grace", "2" };
    r = must(p, "UPDATE crud SET name = $1 WHERE id = $2", 2, u);
    ck_assert_int_eq(bt_pq_result_affected(r), 1);
    bt_pq_result_free(r);
    const char *none[] = { "99" };
    r = must(p, "DELETE FROM crud WHERE id = $1", 1, none);
    ck_assert_int_eq(bt_pq_result_affected(r), 0);
    bt_pq_result_free(r);
    r = must(p, "DELETE FROM crud WHERE id IN (1, 2)", 0, NULL);
    ck_assert_int_eq(bt_pq_result_affected(r), 2);
    bt_pq_result_free(r);
    r = must(p, "SELECT count(*) FROM crud", 0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "0");
    bt_pq_result_free(r);
    /* Typed and binary parameters. */
    unsigned types[] = { 20 }; /* int8 */
    const char *big[] = { "9000000000" };
    bt_pq_query_opts qo = { .size = sizeof(bt_pq_query_opts), .types = types };
    bt_future *f = await(bt_pq_query_ex(p, "SELECT $1 + 1", 1, big, &qo));
    ck_assert_int_eq(bt_future_error(f), 0);
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(f), 0, 0), "9000000001");
    bt_future_unref(f);

    /* Binary in, binary out: a bytea with NUL bytes survives untouched. */
    static const char blob[] = { 'a', '\0', 'b', '\xff' };
    unsigned btypes[] = { 17 }; /* bytea */
    int lens[] = { (int)sizeof blob };
    int fmts[] = { 1 };
    const char *bv[] = { blob };
    bt_pq_query_opts bo = { .size = sizeof(bt_pq_query_opts),
                            .types = btypes,
                            .lengths = lens,
                            .formats = fmts,
                            .result_format = 1 };
    f = await(bt_pq_query_ex(p, "SELECT $1::bytea, length($1)", 1, bv, &bo));
    ck_assert_msg(bt_future_error(f) == 0, "%s", bt_future_error_message(f));
    const bt_pq_result *br = bt_future_value(f);
    ck_assert_int_eq(bt_pq_result_length(br, 0, 0), (int)sizeof blob);
    ck_assert_int_eq(memcmp(bt_pq_result_get(br, 0, 0), blob, sizeof blob), 0);
    bt_future_unref(f);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(injection_is_stored_as_text)
{
    bt_pq_pool *p = new_pool(1, 2, 16);
    exec_ok(p, "CREATE TABLE victims (name text)", 0, NULL);
    const char *evil = "x'); DROP TABLE victims; --";
    const char *v[] = { evil };
    exec_ok(p, "INSERT INTO victims (name) VALUES ($1)", 1, v);
    bt_pq_result *r = must(p, "SELECT name FROM victims WHERE name = $1", 1, v);
    ck_assert_int_eq(bt_pq_result_rows(r), 1);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), evil);
    bt_pq_result_free(r);
    /* Two statements in one query text are refused by the extended
     * protocol: nothing can be smuggled in. */
    bt_future *f = await(bt_pq_query(p, "SELECT 1; DROP TABLE victims", 0, NULL));
    bt_pq_error e = BT_SIZED(bt_pq_error);
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "42601");
    bt_future_unref(f);
    r = must(p, "SELECT count(*) FROM victims", 0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "1");
    bt_pq_result_free(r);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(sql_errors_carry_sqlstate)
{
    bt_pq_pool *p = new_pool(1, 2, 16);
    bt_future *f = await(bt_pq_query(p, "SELEC 1", 0, NULL));
    bt_pq_error e = BT_SIZED(bt_pq_error);
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "42601");
    ck_assert_ptr_nonnull(strstr(e.message, "syntax error"));
    bt_future_unref(f);

    exec_ok(p, "CREATE TABLE uniq (id int PRIMARY KEY, n int CHECK (n > 0))", 0, NULL);
    const char *v[] = { "1", "5" };
    exec_ok(p, "INSERT INTO uniq VALUES ($1, $2)", 2, v);
    f = await(bt_pq_query(p, "INSERT INTO uniq VALUES ($1, $2)", 2, v));
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "23505");
    ck_assert_ptr_nonnull(strstr(e.message, "duplicate key"));
    ck_assert_ptr_nonnull(strstr(e.detail, "(id)=(1)"));
    bt_future_unref(f);

    const char *neg[] = { "2", "-1" };
    f = await(bt_pq_query(p, "INSERT INTO uniq VALUES ($1, $2)", 2, neg));
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "23514");
    bt_future_unref(f);

    f = await(bt_pq_query(p, "SELECT * FROM no_such_table", 0, NULL));
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "42P01");
    bt_future_unref(f);

    /* A bad parameter value: the message names the type. */
    const char *bad[] = { "not a number" };
    f = await(bt_pq_query(p, "SELECT $1::int", 1, bad));
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "22P02");
    bt_future_unref(f);

    /* A hint travels too. */
    f = await(bt_pq_query(p, "SELECT nosuchfunc(1)", 0, NULL));
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "42883");
    ck_assert(e.hint[0] != '\0');
    bt_future_unref(f);

    /* The pool is fine afterwards. */
    bt_pq_result *r = must(p, "SELECT count(*) FROM uniq", 0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "1");
    bt_pq_result_free(r);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(pool_exhaustion_times_out)
{
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    o.min_size = 1;
    o.max_size = 1;
    o.acquire_timeout_ms = 300;
    o.max_waiters = 2;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(p);
    bt_future *a = await(bt_pq_acquire(p));
    ck_assert_int_eq(bt_future_error(a), 0);
    bt_pq_conn *c = bt_future_take_value(a);
    bt_future_unref(a);

    bt_future *q1 = bt_pq_query(p, "SELECT 1", 0, NULL);
    bt_future *q2 = bt_pq_acquire(p);
    bt_future *q3 = bt_pq_query(p, "SELECT 3", 0, NULL); /* over max_waiters */
    ck_assert_int_eq(bt_future_error(await(q3)), BT_EAGAIN);
    ck_assert_int_eq(bt_future_error(await(q1)), BT_ETIMEDOUT);
    ck_assert_ptr_nonnull(strstr(bt_future_error_message(q1), "waiting for a connection"));
    ck_assert_int_eq(bt_future_error(await(q2)), BT_ETIMEDOUT);
    bt_future_unref(q1);
    bt_future_unref(q2);
    bt_future_unref(q3);

    /* A waiting acquire can be cancelled; the connection comes back once
     * released. */
    bt_future *q4 = bt_pq_acquire(p);
    ck_assert_int_eq(bt_future_cancel(q4), 0);
    ck_assert_int_eq(bt_future_error(await(q4)), BT_ECANCELED);
    bt_future_unref(q4);
    bt_future *q5 = bt_pq_query(p, "SELECT 5", 0, NULL);
    bt_pq_conn_release(c);
    ck_assert_int_eq(bt_future_error(await(q5)), 0);
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(q5), 0, 0), "5");
    bt_future_unref(q5);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    ck_assert_int_eq(bt_pq_pool_get_stats(p, &st), 0);
    ck_assert_uint_eq(st.conns, 1);
    ck_assert_uint_eq(st.waiting, 0);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(transactions_commit_rollback_and_dirty_release)
{
    bt_pq_pool *p = new_pool(1, 1, 16);
    exec_ok(p, "CREATE TABLE acct (id int PRIMARY KEY, n int)", 0, NULL);

    bt_future *a = await(bt_pq_acquire(p));
    bt_pq_conn *c = bt_future_take_value(a);
    bt_future_unref(a);
    ck_assert_ptr_nonnull(c);
    bt_future *f = await(bt_pq_conn_begin(c));
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f);
    ck_assert(bt_pq_conn_in_transaction(c));
    const char *v[] = { "1", "10" };
    f = await(bt_pq_conn_query(c, "INSERT INTO acct VALUES ($1, $2)", 2, v));
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f);
    f = await(bt_pq_conn_rollback(c));
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f);
    ck_assert(!bt_pq_conn_in_transaction(c));

    /* Pipelined on the acquired connection: BEGIN, INSERT, COMMIT. */
    bt_future *b = bt_pq_conn_begin(c);
    bt_future *i = bt_pq_conn_query(c, "INSERT INTO acct VALUES ($1, $2)", 2, v);
    bt_future *m = bt_pq_conn_commit(c);
    ck_assert_int_eq(bt_future_error(await(m)), 0);
    ck_assert_int_eq(bt_future_error(b), 0);
    ck_assert_int_eq(bt_future_error(i), 0);
    bt_future_unref(b);
    bt_future_unref(i);
    bt_future_unref(m);

    /* An error inside a transaction aborts it; the next statement says
     * so (25P02) until ROLLBACK. */
    f = await(bt_pq_conn_begin(c));
    bt_future_unref(f);
    f = await(bt_pq_conn_query(c, "INSERT INTO acct VALUES ($1, $2)", 2, v));
    bt_pq_error e = BT_SIZED(bt_pq_error);
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "23505");
    bt_future_unref(f);
    f = await(bt_pq_conn_query(c, "SELECT 1", 0, NULL));
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "25P02");
    bt_future_unref(f);

    /* Released dirty: the pool rolls back before anyone else gets it. */
    const char *v2[] = { "2", "20" };
    f = await(bt_pq_conn_query(c, "SELECT 1", 0, NULL)); /* still aborted */
    bt_future_error(f);
    bt_future_unref(f);
    bt_pq_conn_release(c);
    a = await(bt_pq_acquire(p));
    c = bt_future_take_value(a);
    bt_future_unref(a);
    ck_assert(!bt_pq_conn_in_transaction(c));
    f = await(bt_pq_conn_begin(c));
    bt_future_unref(f);
    f = await(bt_pq_conn_query(c, "INSERT INTO acct VALUES ($1, $2)", 2, v2));
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f);
    bt_pq_conn_release(c); /* idle in transaction, with an uncommitted row */

    bt_pq_result *r = must(p, "SELECT id FROM acct ORDER BY id", 0, NULL);
    ck_assert_int_eq(bt_pq_result_rows(r), 1); /* row 2 was rolled back */
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "1");
    bt_pq_result_free(r);
    char *idle_in_txn = bt_test_pg_scalar(pg, "SELECT count(*) FROM pg_stat_activity "
                                              "WHERE state LIKE 'idle in transaction%'");
    ck_assert_str_eq(idle_in_txn, "0");
    free(idle_in_txn);

    /* An acquire future nobody takes gives its connection back. */
    a = await(bt_pq_acquire(p));
    bt_future_unref(a);
    r = must(p, "SELECT 1", 0, NULL);
    bt_pq_result_free(r);
    /* A released handle refuses queries... (not used after release). */
    bt_pq_pool_free(p);
}
END_TEST

/* Transaction bodies for bt_pq_transaction. */
typedef struct {
    const char *id;
    int mode; /* 0 commit, 1 fail on purpose, 2 constraint error, 3 sleep */
} tx_body;

static bt_future *tx_value(bt_future *ins, void *arg)
{
    (void)arg;
    return bt_future_new_value(bt_future_loop(ins), bt_strdup("done"), bt_free);
}

static bt_future *tx_fail(bt_future *ins, void *arg)
{
    (void)arg;
    return bt_future_new_error(bt_future_loop(ins), BT_EPERM, "changed my mind");
}

static bt_future *run_tx(bt_pq_conn *c, void *arg)
{
    tx_body *b = arg;
    const char *v[] = { b->id };
    bt_future *ins = bt_pq_conn_query(c, "INSERT INTO txs VALUES ($1)", 1, v);
    bt_future *out;
    switch (b->mode) {
    case 0:
        out = bt_future_then(ins, tx_value, NULL); /* takes over ins */
        break;
    case 1:
        out = bt_future_then(ins, tx_fail, NULL);
        break;
    case 2: { /* the same id again: 23505 */
        bt_future *again = bt_pq_conn_query(c, "INSERT INTO txs VALUES ($1)", 1, v);
        bt_future_unref(ins);
        return again;
    }
    default: {
        bt_future_unref(ins);
        return bt_pq_conn_query(c, "SELECT pg_sleep(10)", 0, NULL);
    }
    }
    return out;
}

static const char *count_txs(bt_pq_pool *p)
{
    static char buf[16];
    bt_pq_result *r = must(p, "SELECT count(*) FROM txs", 0, NULL);
    snprintf(buf, sizeof buf, "%s", bt_pq_result_get(r, 0, 0));
    bt_pq_result_free(r);
    return buf;
}

START_TEST(transaction_helper_commits_or_rolls_back)
{
    bt_pq_pool *p = new_pool(1, 1, 16);
    exec_ok(p, "CREATE TABLE txs (id int PRIMARY KEY)", 0, NULL);

    tx_body ok = { "1", 0 };
    bt_future *f = await(bt_pq_transaction(p, run_tx, &ok));
    ck_assert_msg(bt_future_error(f) == 0, "%s", bt_future_error_message(f));
    ck_assert_str_eq(bt_future_value(f), "done");
    bt_future_unref(f);
    ck_assert_str_eq(count_txs(p), "1");

    tx_body nope = { "2", 1 };
    f = await(bt_pq_transaction(p, run_tx, &nope));
    ck_assert_int_eq(bt_future_error(f), BT_EPERM);
    ck_assert_str_eq(bt_future_error_message(f), "changed my mind");
    bt_future_unref(f);
    ck_assert_str_eq(count_txs(p), "1"); /* row 2 rolled back */

    tx_body dup = { "3", 2 };
    f = await(bt_pq_transaction(p, run_tx, &dup));
    bt_pq_error e = BT_SIZED(bt_pq_error);
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "23505");
    bt_future_unref(f);
    ck_assert_str_eq(count_txs(p), "1"); /* row 3 rolled back too */

    tx_body slow = { "4", 3 };
    f = bt_pq_transaction(p, run_tx, &slow);
    sleep_ms(200);
    ck_assert_int_eq(bt_future_cancel(f), 0);
    ck_assert_int_eq(bt_future_error(await(f)), BT_ECANCELED);
    bt_future_unref(f);
    ck_assert_str_eq(count_txs(p), "1"); /* row 4 rolled back, sleep cancelled */
    ck_assert_int_eq(sleeping_backends(), 0);

    ck_assert_ptr_null(bt_pq_transaction(NULL, run_tx, &ok));
    ck_assert_ptr_null(bt_pq_transaction(p, NULL, &ok));
    bt_pq_pool_free(p);
}
END_TEST

typedef struct {
    int count;
    char payload[64];
    char channel[64];
} note_log;

static void on_note(const char *channel, const char *payload, int pid, void *arg)
{
    note_log *l = arg;
    (void)pid;
    l->count++;
    snprintf(l->payload, sizeof l->payload, "%s", payload);
    snprintf(l->channel, sizeof l->channel, "%s", channel);
}

static void notify(bt_pq_pool *p, const char *chan, const char *payload)
{
    const char *v[] = { chan, payload };
    exec_ok(p, "SELECT pg_notify($1, $2)", 2, v);
}

/* Send notifications until one arrives (a new listener may need a moment
 * to reconnect and LISTEN again). */
static void notify_until_seen(bt_pq_pool *p, note_log *l, const char *chan, const char *payload)
{
    int before = l->count;
    for (int i = 0; i < 200 && l->count == before; i++) {
        notify(p, chan, payload);
        sleep_ms(50);
    }
    ck_assert_int_gt(l->count, before);
}

START_TEST(listen_notify_survives_reconnect)
{
    bt_pq_pool *p = new_pool(1, 2, 16);
    note_log l = { 0 };
    bt_future *f = await(bt_pq_listen(p, "Jobs Channel", on_note, &l));
    ck_assert_msg(bt_future_error(f) == 0, "%s", bt_future_error_message(f));
    bt_future_unref(f);
    notify(p, "Jobs Channel", "hello");
    for (int i = 0; i < 100 && l.count == 0; i++)
        sleep_ms(20);
    ck_assert_int_eq(l.count, 1);
    ck_assert_str_eq(l.payload, "hello");
    ck_assert_str_eq(l.channel, "Jobs Channel");

    /* Kill the listener's backend: the pool reconnects and listens again. */
    bt_pq_result *r = must(p,
                           "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
                           0, NULL);
    ck_assert_int_ge(bt_pq_result_rows(r), 1);
    bt_pq_result_free(r);
    notify_until_seen(p, &l, "Jobs Channel", "again");
    ck_assert_str_eq(l.payload, "again");

    ck_assert_int_eq(bt_pq_unlisten(p, "Jobs Channel"), 0);
    ck_assert_int_eq(bt_pq_unlisten(p, "Jobs Channel"), BT_ENOENT);
    int seen = l.count;
    notify(p, "Jobs Channel", "ignored");
    sleep_ms(200);
    ck_assert_int_eq(l.count, seen);
    f = await(bt_pq_listen(p, "", on_note, &l));
    ck_assert_int_eq(bt_future_error(f), BT_EINVAL);
    bt_future_unref(f);
    bt_pq_pool_free(p);
}
END_TEST

/* Backends running a query that starts with prefix (other tests' pools
 * may leave their own pg_sleep behind when they are freed mid-query: the
 * cancel request that closing sends is best effort). */
static int sleeping_like(const char *prefix)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%s%%' "
             "AND state = 'active'",
             prefix);
    char *s = bt_test_pg_scalar(pg, sql);
    int n = s ? atoi(s) : -1;
    free(s);
    return n;
}

static int sleeping_backends(void)
{
    return sleeping_like("SELECT pg_sleep(10)");
}

START_TEST(cancel_pg_sleep)
{
    bt_pq_pool *p = new_pool(1, 1, 16);
    exec_ok(p, "SELECT 1", 0, NULL);
    bt_future *f = bt_pq_query(p, "SELECT pg_sleep(10)", 0, NULL);
    sleep_ms(300); /* let it reach the server */
    ck_assert_int_eq(sleeping_backends(), 1);
    uint64_t t0 = bt_hrtime();
    ck_assert_int_eq(bt_future_cancel(f), 0);
    ck_assert_int_eq(bt_future_error(await(f)), BT_ECANCELED);
    bt_future_unref(f);
    /* The one connection is drained of the cancelled query before it runs
     * this one: it answers long before pg_sleep(10) could end. */
    bt_pq_result *r = must(p, "SELECT 42", 0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "42");
    bt_pq_result_free(r);
    uint64_t ms = (bt_hrtime() - t0) / 1000000;
    ck_assert_msg(ms < 9000, "the cancel did not stop the server (%llu ms)",
                  (unsigned long long)ms);
    fprintf(stderr, "cancel_pg_sleep: cancelled and drained in %llu ms\n", (unsigned long long)ms);
    ck_assert_int_eq(sleeping_backends(), 0);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_ge(st.cancels_sent, 1);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(cancel_spares_the_queries_behind)
{
    /* Three queries pipelined on one connection; cancelling the first (the
     * one running) must not cost the other two: they are either untouched
     * or, if the cancel or the batch's abort reached them, sent again. */
    bt_pq_pool *p = new_pool(1, 1, 16);
    exec_ok(p, "SELECT 1", 0, NULL);
    bt_future *a = bt_pq_query(p, "SELECT pg_sleep(10)", 0, NULL);
    bt_future *b = bt_pq_query(p, "SELECT 'b', pg_sleep(0.05)", 0, NULL);
    bt_future *c = bt_pq_query(p, "SELECT 'c'", 0, NULL);
    sleep_ms(200);
    ck_assert_int_eq(bt_future_cancel(a), 0);
    ck_assert_int_eq(bt_future_error(await(a)), BT_ECANCELED);
    ck_assert_msg(bt_future_error(await(b)) == 0, "%s", bt_future_error_message(b));
    ck_assert_msg(bt_future_error(await(c)) == 0, "%s", bt_future_error_message(c));
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(b), 0, 0), "b");
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(c), 0, 0), "c");
    bt_future_unref(a);
    bt_future_unref(b);
    bt_future_unref(c);
    ck_assert_int_eq(sleeping_backends(), 0);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(two_abandoned_queries_are_both_cancelled)
{
    /* Two solo queries pipelined on an acquired connection time out
     * together. The first one's cancel stops it; the second reaches the
     * front while that request may still be in flight (its 57014 and the
     * cancel thread's answer arrive together), and must be cancelled too,
     * not left to run to its end. Whether the loop sees the 57014 before
     * the thread's answer is a race, so the test repeats; it always checks
     * that the connection answers a new query promptly and that neither
     * sleep is left on the server. */
    bt_pq_pool *p = new_pool(1, 1, 16);
    bt_future *a = await(bt_pq_acquire(p));
    ck_assert_int_eq(bt_future_error(a), 0);
    bt_pq_conn *c = bt_future_take_value(a);
    bt_future_unref(a);
    bt_pq_query_opts qo = { .size = sizeof(bt_pq_query_opts), .timeout_ms = 200 };
    for (int i = 0; i < 8; i++) {
        bt_future *q1 = bt_pq_conn_query_ex(c, "SELECT pg_sleep(64.1)", 0, NULL, &qo);
        bt_future *q2 = bt_pq_conn_query_ex(c, "SELECT pg_sleep(64.2)", 0, NULL, &qo);
        ck_assert_int_eq(bt_future_error(await(q1)), BT_ETIMEDOUT);
        ck_assert_int_eq(bt_future_error(await(q2)), BT_ETIMEDOUT);
        bt_future_unref(q1);
        bt_future_unref(q2);
        uint64_t t0 = bt_hrtime();
        bt_future *f = await(bt_pq_conn_query(c, "SELECT 5", 0, NULL));
        uint64_t ms = (bt_hrtime() - t0) / 1000000;
        ck_assert_msg(bt_future_error(f) == 0, "%s", bt_future_error_message(f));
        ck_assert_str_eq(bt_pq_result_get(bt_future_value(f), 0, 0), "5");
        bt_future_unref(f);
        ck_assert_msg(ms < 5000, "the second abandoned query was not cancelled (%llu ms)",
                      (unsigned long long)ms);
        ck_assert_int_eq(sleeping_like("SELECT pg_sleep(64."), 0);
    }
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_ge(st.cancels_sent, 8); /* the first can stop both */
    ck_assert_uint_eq(st.cancels_timed_out, 0);
    bt_pq_conn_release(c);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(query_timeout_cancels)
{
    bt_pq_pool *p = new_pool(1, 1, 16);
    bt_pq_query_opts qo = { .size = sizeof(bt_pq_query_opts), .timeout_ms = 300 };
    bt_future *f = await(bt_pq_query_ex(p, "SELECT pg_sleep(10)", 0, NULL, &qo));
    ck_assert_int_eq(bt_future_error(f), BT_ETIMEDOUT);
    ck_assert_ptr_nonnull(strstr(bt_future_error_message(f), "timed out"));
    bt_future_unref(f);
    bt_pq_result *r = must(p, "SELECT 7", 0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "7");
    bt_pq_result_free(r);
    ck_assert_int_eq(sleeping_backends(), 0);
    /* Cancelling a query that waits for a connection just removes it. */
    bt_future *busy = bt_pq_query(p, "SELECT pg_sleep(0.3)", 0, NULL);
    bt_future *waiting = bt_pq_query(p, "SELECT pg_sleep(0.3)", 0, NULL); /* pipelined */
    bt_future_cancel(waiting);
    ck_assert_int_eq(bt_future_error(await(waiting)), BT_ECANCELED);
    ck_assert_int_eq(bt_future_error(await(busy)), 0);
    bt_future_unref(busy);
    bt_future_unref(waiting);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(pipelining_matches_results_in_order)
{
    bt_pq_pool *p = new_pool(1, 1, 64);
    exec_ok(p, "SELECT 1", 0, NULL);
    enum { N = 200 };
    bt_future *fs[N];
    char bufs[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(bufs[i], sizeof bufs[i], "%d", i);
        const char *v[] = { bufs[i] };
        if (i == 77)
            fs[i] = bt_pq_query(p, "SELECT 1 / ($1::int - 77)", 1, v); /* division by zero */
        else if (i == 133)
            fs[i] = bt_pq_query(p, "SELEKT $1", 1, v); /* a PREPARE that fails */
        else
            fs[i] = bt_pq_query(p, "SELECT $1::int * 2", 1, v);
        ck_assert_ptr_nonnull(fs[i]);
    }
    await(fs[N - 1]);
    for (int i = 0; i < N; i++) {
        await(fs[i]);
        if (i == 77 || i == 133) {
            bt_pq_error e = BT_SIZED(bt_pq_error);
            ck_assert_int_eq(bt_pq_error_parse(fs[i], &e), BT_ESQL);
            ck_assert_str_eq(e.sqlstate, i == 77 ? "22012" : "42601");
        } else {
            ck_assert_msg(bt_future_error(fs[i]) == 0, "%d: %s", i, bt_future_error_message(fs[i]));
            char want[16];
            snprintf(want, sizeof want, "%d", i * 2);
            ck_assert_str_eq(bt_pq_result_get(bt_future_value(fs[i]), 0, 0), want);
        }
        bt_future_unref(fs[i]);
    }
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.conns, 1);
    ck_assert_uint_gt(st.pipelined, 100);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(a_failed_batch_fails_one_query_and_reruns_the_rest)
{
    /* Twenty INSERTs sent in one pass share a Sync (one implicit
     * transaction). One of them hits a duplicate key: it alone fails; the
     * other nineteen were rolled back by the server and are sent again, so
     * each row ends up stored exactly once. */
    bt_pq_pool *p = new_pool(1, 1, 64);
    exec_ok(p, "CREATE TABLE batchy (id int PRIMARY KEY)", 0, NULL);
    const char *one[] = { "7" };
    exec_ok(p, "INSERT INTO batchy VALUES ($1)", 1, one);
    enum { N = 20 };
    bt_future *fs[N];
    char bufs[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(bufs[i], sizeof bufs[i], "%d", i == 10 ? 7 : 100 + i);
        const char *v[] = { bufs[i] };
        fs[i] = bt_pq_query(p, "INSERT INTO batchy VALUES ($1)", 1, v);
    }
    for (int i = 0; i < N; i++) {
        await(fs[i]);
        if (i == 10) {
            bt_pq_error e = BT_SIZED(bt_pq_error);
            ck_assert_int_eq(bt_pq_error_parse(fs[i], &e), BT_ESQL);
            ck_assert_str_eq(e.sqlstate, "23505");
        } else {
            ck_assert_msg(bt_future_error(fs[i]) == 0, "%d: %s", i, bt_future_error_message(fs[i]));
            ck_assert_int_eq(bt_pq_result_affected(bt_future_value(fs[i])), 1);
        }
        bt_future_unref(fs[i]);
    }
    bt_pq_result *r = must(p, "SELECT count(*), count(DISTINCT id) FROM batchy", 0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "20");
    ck_assert_str_eq(bt_pq_result_get(r, 0, 1), "20");
    bt_pq_result_free(r);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_ge(st.retried, 1);
    bt_pq_pool_free(p);

    /* With sync_each_query, nothing is shared and nothing is retried. */
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    o.max_size = 1;
    o.sync_each_query = true;
    p = bt_pq_pool_new(loop, &o);
    for (int i = 0; i < N; i++) {
        snprintf(bufs[i], sizeof bufs[i], "%d", i == 10 ? 7 : 200 + i);
        const char *v[] = { bufs[i] };
        fs[i] = bt_pq_query(p, "INSERT INTO batchy VALUES ($1)", 1, v);
    }
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(bt_future_error(await(fs[i])), i == 10 ? BT_ESQL : 0);
        bt_future_unref(fs[i]);
    }
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.retried, 0);
    ck_assert_uint_gt(st.pipelined, 0);
    bt_pq_pool_free(p);
}
END_TEST

typedef struct {
    long rows;
    long long sum;
    int max_rows_seen;
} rowacc;

static int on_row(const bt_pq_result *row, void *arg)
{
    rowacc *a = arg;
    int n = bt_pq_result_rows(row);
    if (n > a->max_rows_seen)
        a->max_rows_seen = n;
    for (int i = 0; i < n; i++) {
        a->rows++;
        a->sum += atoll(bt_pq_result_get(row, i, 0));
    }
    return 0;
}

START_TEST(single_row_mode_streams)
{
    bt_pq_pool *p = new_pool(1, 1, 16);
    rowacc acc = { 0 };
    bt_pq_query_opts qo = { .size = sizeof(bt_pq_query_opts), .row_cb = on_row, .row_arg = &acc };
    const char *v[] = { "200000" };
    bt_future *f =
        await(bt_pq_query_ex(p, "SELECT g FROM generate_series(1, $1::int) g", 1, v, &qo));
    ck_assert_msg(bt_future_error(f) == 0, "%s", bt_future_error_message(f));
    ck_assert_int_eq(acc.rows, 200000);
    ck_assert_int_eq(acc.sum, 200000LL * 200001 / 2);
    ck_assert_int_eq(acc.max_rows_seen, 1); /* one row at a time */
    ck_assert_int_eq(bt_pq_result_rows(bt_future_value(f)), 0);
    bt_future_unref(f);
    /* Behind another query in the pipeline, too. */
    rowacc acc2 = { 0 };
    qo.row_arg = &acc2;
    const char *v2[] = { "1000" };
    bt_future *g1 = bt_pq_query(p, "SELECT pg_sleep(0.1)", 0, NULL);
    bt_future *g2 = bt_pq_query_ex(p, "SELECT g FROM generate_series(1, $1::int) g", 1, v2, &qo);
    ck_assert_int_eq(bt_future_error(await(g2)), 0);
    ck_assert_int_eq(bt_future_error(await(g1)), 0);
    ck_assert_int_eq(acc2.rows, 1000);
    ck_assert_int_eq(acc2.max_rows_seen, 1);
    bt_future_unref(g1);
    bt_future_unref(g2);
    bt_pq_pool_free(p);
}
END_TEST

/* ---- Chaos: cancels and timeouts in a pipelined stream -------------------- */

enum { CHAOS = 1500 };

typedef struct {
    int settled, ok, cancelled, timedout, other, twice, mismatched;
    unsigned char seen[CHAOS];
    bt_future *done;
} chaos;

typedef struct {
    chaos *c;
    int i;
} chaos_ticket;

static void on_chaos(bt_future *f, void *arg)
{
    chaos_ticket *t = arg;
    chaos *c = t->c;
    if (c->seen[t->i]++)
        c->twice++;
    c->settled++;
    int e = bt_future_error(f);
    if (e == 0) {
        c->ok++;
        /* The value must be this query's own: results matched in order. */
        if (atoi(bt_pq_result_get(bt_future_value(f), 0, 1)) != t->i)
            c->mismatched++;
    } else if (e == BT_ECANCELED) {
        c->cancelled++;
    } else if (e == BT_ETIMEDOUT) {
        c->timedout++;
    } else {
        fprintf(stderr, "chaos %d: %s\n", t->i, bt_future_error_message(f));
        c->other++;
    }
    free(t);
    if (c->settled == CHAOS)
        bt_future_set_value(c->done, NULL, NULL);
}

START_TEST(cancels_and_timeouts_in_a_pipelined_stream)
{
    /* Every future settles exactly once, every answer reaches its own
     * query, and nothing else fails, while cancels and timeouts land on
     * queries that wait, run or sit in the pipeline. */
    static chaos c;
    memset(&c, 0, sizeof c);
    bt_pq_pool *p = new_pool(1, 3, 8);
    c.done = bt_future_new(loop);
    bt_future *pending[CHAOS];
    for (int i = 0; i < CHAOS; i++) {
        char sl[16], idx[16];
        snprintf(sl, sizeof sl, "0.00%d", i % 4);
        snprintf(idx, sizeof idx, "%d", i);
        const char *v[] = { sl, idx };
        bt_pq_query_opts qo = { .size = sizeof(bt_pq_query_opts),
                                .timeout_ms = i % 11 == 0 ? 1 : 0 };
        bt_future *f = bt_pq_query_ex(p, "SELECT pg_sleep($1::float8), $2::int", 2, v, &qo);
        ck_assert_ptr_nonnull(f);
        chaos_ticket *t = malloc(sizeof *t);
        t->c = &c;
        t->i = i;
        bt_future_add_callback(f, on_chaos, t);
        pending[i] = f;
        if (i % 7 == 3)
            bt_future_cancel(f); /* still waiting, or just sent */
        if (i % 50 == 49) {
            sleep_ms(2); /* let some get going, then cancel older ones */
            for (int j = i - 40; j < i; j += 9)
                bt_future_cancel(pending[j]);
        }
    }
    bt_test_run_until(loop, c.done, 60000);
    for (int i = 0; i < CHAOS; i++)
        bt_future_unref(pending[i]);
    bt_future_unref(c.done);
    ck_assert_int_eq(c.settled, CHAOS);
    ck_assert_int_eq(c.twice, 0);
    ck_assert_int_eq(c.mismatched, 0);
    ck_assert_int_eq(c.other, 0);
    ck_assert_int_gt(c.ok, 0);
    ck_assert_int_gt(c.cancelled, 0);
    fprintf(stderr, "chaos: ok %d, cancelled %d, timed out %d\n", c.ok, c.cancelled, c.timedout);
    /* Afterwards the pool is whole and quiet. */
    for (int i = 0; i < 20; i++)
        exec_ok(p, "SELECT 1", 0, NULL);
    ck_assert_int_eq(sleeping_like("SELECT pg_sleep($1::float8), $2"), 0);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.waiting, 0);
    ck_assert_uint_eq(st.broken, 0);
    bt_pq_pool_free(p);
}
END_TEST

/* ---- A server restart in the middle of 10,000 queries -------------------- */

enum { TOTAL = 10000, INFLIGHT = 48, RESTART_AT = 2000 };

typedef struct {
    bt_pq_pool *p;
    int issued, settled, ok, failed_inflight, failed_other;
    unsigned char seen[TOTAL];
    int twice;
    bool restarting;
    bt_future *restart;
    bt_future *done;
} stream;

typedef struct {
    stream *s;
    int i;
} ticket;

static void issue(stream *s);

static int restart_job(bt_job *job, void *arg)
{
    (void)arg;
    if (bt_test_pg_restart(pg, "fast") != 0)
        return bt_job_fail(job, BT_EIO, "pg_ctl restart failed");
    return 0;
}

static void on_stream_settle(bt_future *f, void *arg)
{
    ticket *t = arg;
    stream *s = t->s;
    if (s->seen[t->i]++)
        s->twice++;
    s->settled++;
    int e = bt_future_error(f);
    if (e == 0)
        s->ok++;
    else if (e == BT_ECONNRESET || e == BT_ESQL)
        s->failed_inflight++; /* lost with its connection, or 57P01 */
    else
        s->failed_other++;
    free(t);
    if (s->settled == RESTART_AT && !s->restart)
        s->restart = bt_to_thread(loop, restart_job, NULL);
    issue(s);
    if (s->settled == TOTAL)
        bt_future_set_value(s->done, NULL, NULL);
}

static void issue(stream *s)
{
    while (s->issued < TOTAL && s->issued - s->settled < INFLIGHT) {
        ticket *t = malloc(sizeof *t);
        t->s = s;
        t->i = s->issued++;
        char buf[16];
        snprintf(buf, sizeof buf, "%d", t->i);
        const char *v[] = { buf };
        bt_future *f = bt_pq_query(s->p, "SELECT $1::int", 1, v);
        ck_assert_ptr_nonnull(f);
        bt_future_add_callback(f, on_stream_settle, t);
        bt_future_unref(f);
    }
}

START_TEST(restart_mid_stream)
{
    static stream s; /* big */
    memset(&s, 0, sizeof s);
    s.p = new_pool(4, 8, 4);
    s.done = bt_future_new(loop);
    bt_future *r = await(bt_pq_pool_ready(s.p));
    ck_assert_int_eq(bt_future_error(r), 0);
    bt_future_unref(r);
    issue(&s);
    bt_test_run_until(loop, s.done, 90000);
    ck_assert_ptr_nonnull(s.restart);
    await(s.restart);
    ck_assert_msg(bt_future_error(s.restart) == 0, "%s", bt_future_error_message(s.restart));
    bt_future_unref(s.restart);
    bt_future_unref(s.done);
    ck_assert_int_eq(s.settled, TOTAL);
    ck_assert_int_eq(s.twice, 0);
    for (int i = 0; i < TOTAL; i++)
        ck_assert_int_eq(s.seen[i], 1);
    ck_assert_int_eq(s.failed_other, 0);
    ck_assert_int_eq(s.ok + s.failed_inflight, TOTAL);
    /* Only what was in flight can fail: at most the in-flight window. */
    ck_assert_int_le(s.failed_inflight, INFLIGHT);
    fprintf(stderr, "restart_mid_stream: ok %d, failed in flight %d\n", s.ok, s.failed_inflight);
    /* The pool is whole again and works. */
    bt_pq_result *res = must(s.p, "SELECT 1", 0, NULL);
    bt_pq_result_free(res);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(s.p, &st);
    ck_assert_uint_ge(st.conns, 4);
    ck_assert_uint_le(st.conns, 8);
    ck_assert_uint_eq(st.waiting, 0);
    ck_assert_uint_ge(st.broken, 1);
    bt_pq_pool_free(s.p);
}
END_TEST

START_TEST(closed_port_fails_cleanly)
{
    int port = bt_test_pg_closed_port();
    ck_assert_int_gt(port, 0);
    char ci[128];
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d dbname=postgres user=postgres", port);
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = ci;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(p);
    bt_future *r = await(bt_pq_pool_ready(p));
    ck_assert_int_eq(bt_future_error(r), BT_ECONNREFUSED);
    ck_assert_ptr_nonnull(strstr(bt_future_error_message(r), "refused"));
    bt_future_unref(r);
    bt_future *f = await(bt_pq_query(p, "SELECT 1", 0, NULL));
    ck_assert_int_eq(bt_future_error(f), BT_ECONNREFUSED);
    bt_future_unref(f);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_ge(st.connect_failures, 1);
    ck_assert_uint_eq(st.connects, 0);
    bt_pq_pool_free(p);

    /* A name that does not resolve fails with BT_EDNS (resolved off the
     * loop). */
    o.conninfo = "host=no-such-host.invalid dbname=postgres";
    p = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(p);
    r = await(bt_pq_pool_ready(p));
    ck_assert_int_eq(bt_future_error(r), BT_EDNS);
    bt_future_unref(r);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(connect_timeout_is_ours)
{
    /* A socket that listens but never answers: the TCP handshake completes
     * (the kernel's backlog), libpq waits for the server's reply forever,
     * and only the pool's own connect timeout ends the wait. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(fd, 8), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    char ci[128];
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d dbname=postgres user=postgres sslmode=disable",
             ntohs(a.sin_port));
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = ci;
    o.connect_timeout_ms = 300;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    bt_future *r = await(bt_pq_pool_ready(p));
    ck_assert_int_eq(bt_future_error(r), BT_ETIMEDOUT);
    ck_assert_ptr_nonnull(strstr(bt_future_error_message(r), "timed out connecting"));
    bt_future_unref(r);
    bt_pq_pool_free(p);
    close(fd);
}
END_TEST

START_TEST(a_stray_begin_is_rolled_back)
{
    bt_pq_pool *p = new_pool(1, 1, 16);
    exec_ok(p, "CREATE TABLE stray (id int)", 0, NULL);
    exec_ok(p, "BEGIN", 0, NULL);
    exec_ok(p, "INSERT INTO stray VALUES (1)", 0, NULL); /* inside the stray txn? no: */
    bt_pq_result *r = must(p, "SELECT count(*) FROM stray", 0, NULL);
    /* The BEGIN was rolled back before the next query got the connection,
     * so the INSERT autocommitted on its own and is visible everywhere. */
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "1");
    bt_pq_result_free(r);
    char *n = bt_test_pg_scalar(pg, "SELECT count(*) FROM stray");
    ck_assert_str_eq(n, "1");
    free(n);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(a_killed_backend_is_replaced)
{
    bt_pq_pool *p = new_pool(2, 2, 1);
    bt_future *r = await(bt_pq_pool_ready(p));
    bt_future_unref(r);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    for (int i = 0; i < 200; i++) { /* both open */
        bt_pq_pool_get_stats(p, &st);
        if (st.idle == 2)
            break;
        sleep_ms(10);
    }
    ck_assert_uint_eq(st.idle, 2);
    /* Kill every backend of this pool but the one asking. */
    bt_pq_result *res = must(p,
                             "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE application_name = 'baton' AND pid <> pg_backend_pid()",
                             0, NULL);
    ck_assert_int_ge(atoi(bt_pq_result_get(res, 0, 0)), 1);
    bt_pq_result_free(res);
    /* The dead idle connection is noticed, discarded and replaced; queries
     * keep working. */
    for (int i = 0; i < 200; i++) {
        bt_pq_pool_get_stats(p, &st);
        if (st.broken >= 1 && st.idle == 2)
            break;
        sleep_ms(10);
    }
    ck_assert_uint_ge(st.broken, 1);
    ck_assert_uint_eq(st.conns, 2);
    ck_assert_uint_ge(st.connects, 3);
    for (int i = 0; i < 10; i++)
        exec_ok(p, "SELECT 1", 0, NULL);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(reconnects_back_off)
{
    /* A pool whose server is gone keeps trying (to keep min_size), but
     * with backoff: a handful of attempts in a second, not thousands. */
    int port = bt_test_pg_closed_port();
    char ci[128];
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d dbname=postgres user=postgres", port);
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = ci;
    o.min_size = 1;
    o.reconnect_min_ms = 20;
    o.reconnect_max_ms = 200;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    sleep_ms(1000);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_ge(st.connect_failures, 3);
    ck_assert_uint_le(st.connect_failures, 60);
    bt_pq_pool_free(p);
}
END_TEST

static uint64_t blocking_jobs(void)
{
    bt_pool_stats ps = BT_SIZED(bt_pool_stats);
    ck_assert_int_eq(bt_pool_get_stats(bt_pool_default(), &ps), 0);
    return ps.lane[BT_LANE_BLOCKING].submitted;
}

START_TEST(connect_by_name_and_socket)
{
    /* A numeric address is used as is: no lookup job. */
    uint64_t jobs = blocking_jobs();
    bt_pq_pool *n = new_pool(1, 1, 1);
    bt_pq_result *nr = must(n, "SELECT 'by address'", 0, NULL);
    bt_pq_result_free(nr);
    bt_pq_pool_free(n);
    ck_assert_uint_eq(blocking_jobs(), jobs);

    /* "localhost" is resolved on the blocking lane, then used as hostaddr. */
    char ci[256];
    snprintf(ci, sizeof ci, "postgresql://postgres@localhost:%d/postgres", bt_test_pg_port(pg));
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = ci;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(p);
    bt_pq_result *r = must(p, "SELECT 'by name'", 0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "by name");
    ck_assert_uint_gt(blocking_jobs(), jobs); /* the name was resolved off the loop */
    bt_pq_result_free(r);
    bt_pq_pool_free(p);

    o.conninfo = bt_test_pg_socket_conninfo(pg);
    p = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(p);
    r = must(p, "SELECT 'by socket'", 0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "by socket");
    bt_pq_result_free(r);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(a_slow_lookup_has_a_deadline_of_its_own)
{
    /* The name lookup runs on the blocking lane; with that lane held by a
     * job that does not end, the lookup cannot run. The connect must fail
     * at resolve_timeout_ms, long before connect_timeout_ms, and while the
     * job that holds the lane still runs. */
    ck_assert_int_eq(bt_pool_set_threads(bt_pool_default(), BT_LANE_BLOCKING, 1), 0);
    bt_test_long_job lj = { 0 };
    bt_future *blocker = bt_to_thread(loop, bt_test_long_job_run, &lj);
    ck_assert_ptr_nonnull(blocker);
    for (int i = 0; i < 1000 && !atomic_load(&lj.started); i++)
        sleep_ms(5);
    char ci[256];
    snprintf(ci, sizeof ci, "postgresql://postgres@localhost:%d/postgres", bt_test_pg_port(pg));
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = ci;
    o.resolve_timeout_ms = 200;
    o.connect_timeout_ms = 60000;
    bt_pq_pool *p = new_pool_opts(&o);
    bt_future *ready = await(bt_pq_pool_ready(p));
    ck_assert_int_eq(bt_future_get_state(blocker), BT_FUTURE_PENDING);
    ck_assert_int_eq(bt_future_error(ready), BT_ETIMEDOUT);
    ck_assert_msg(strstr(bt_future_error_message(ready), "resolve_timeout_ms") != NULL, "%s",
                  bt_future_error_message(ready));
    bt_future_unref(ready);
    bt_pq_pool_free(p);
    bt_future_cancel(blocker);
    await(blocker);
    bt_future_unref(blocker);
}
END_TEST

START_TEST(statements_are_prepared_once_per_connection)
{
    bt_pq_pool *p = new_pool(1, 1, 16);
    for (int i = 0; i < 5; i++)
        exec_ok(p, "SELECT 1 + 1", 0, NULL);
    bt_pq_result *r = must(p,
                           "SELECT count(*) FROM pg_prepared_statements "
                           "WHERE statement = 'SELECT 1 + 1'",
                           0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "1");
    bt_pq_result_free(r);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(statement_cache_evicts_least_recently_used)
{
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    o.max_size = 1;
    o.stmt_cache_size = 3;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    char sql[64];
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 8; i++) {
            snprintf(sql, sizeof sql, "SELECT %d + $1::int", i);
            const char *v[] = { "1" };
            bt_pq_result *r = must(p, sql, 1, v);
            char want[16];
            snprintf(want, sizeof want, "%d", i + 1);
            ck_assert_str_eq(bt_pq_result_get(r, 0, 0), want);
            bt_pq_result_free(r);
            exec_ok(p, "SELECT 'hot'", 0, NULL); /* used all the time: stays */
        }
    bt_pq_query_opts un = { .size = sizeof(bt_pq_query_opts), .no_prepare = true };
    bt_future *f = await(bt_pq_query_ex(p,
                                        "SELECT count(*), count(*) FILTER (WHERE statement = "
                                        "'SELECT ''hot''') FROM pg_prepared_statements",
                                        0, NULL, &un));
    ck_assert_int_eq(bt_future_error(f), 0);
    ck_assert_int_le(atoi(bt_pq_result_get(bt_future_value(f), 0, 0)), 3);
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(f), 0, 1), "1");
    bt_future_unref(f);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(stale_prepared_statements_are_replaced)
{
    /* The pool prepared "SELECT * FROM morph"; a new column changes its
     * result type ("cached plan must not change result type"), and DISCARD
     * ALL drops every statement. Both are noticed, the cache entry
     * forgotten and the query run again. */
    bt_pq_pool *p = new_pool(1, 1, 16);
    exec_ok(p, "CREATE TABLE morph (a int)", 0, NULL);
    exec_ok(p, "INSERT INTO morph VALUES (1)", 0, NULL);
    bt_pq_result *r = must(p, "SELECT * FROM morph", 0, NULL);
    ck_assert_int_eq(bt_pq_result_columns(r), 1);
    bt_pq_result_free(r);
    r = must(p, "SELECT * FROM morph", 0, NULL); /* now from the cache */
    bt_pq_result_free(r);
    exec_ok(p, "ALTER TABLE morph ADD COLUMN b text DEFAULT 'x'", 0, NULL);
    r = must(p, "SELECT * FROM morph", 0, NULL);
    ck_assert_int_eq(bt_pq_result_columns(r), 2);
    ck_assert_str_eq(bt_pq_result_get_named(r, 0, "b"), "x");
    bt_pq_result_free(r);
    exec_ok(p, "DISCARD ALL", 0, NULL);
    r = must(p, "SELECT * FROM morph", 0, NULL);
    ck_assert_int_eq(bt_pq_result_rows(r), 1);
    bt_pq_result_free(r);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_ge(st.retried, 2);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(idle_connections_are_closed_and_lifetime_renews)
{
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    o.min_size = 1;
    o.max_size = 4;
    o.pipeline_depth = 1;
    o.max_idle_ms = 200;
    o.max_lifetime_ms = 600;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    bt_future *fs[4];
    for (int i = 0; i < 4; i++)
        fs[i] = bt_pq_query(p, "SELECT pg_sleep(0.2)", 0, NULL);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(bt_future_error(await(fs[i])), 0);
        bt_future_unref(fs[i]);
    }
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.conns, 4);
    for (int i = 0; i < 100; i++) {
        sleep_ms(50);
        bt_pq_pool_get_stats(p, &st);
        if (st.conns == 1 && st.connects >= 6)
            break;
    }
    ck_assert_uint_eq(st.conns, 1);    /* idle ones closed down to min */
    ck_assert_uint_ge(st.connects, 6); /* the last one renewed (lifetime) */
    ck_assert_uint_eq(st.broken, 0);
    bt_pq_result *r = must(p, "SELECT 1", 0, NULL);
    bt_pq_result_free(r);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(bad_arguments)
{
    bt_pq_options o;
    bt_pq_options_init(&o);
    ck_assert_ptr_null(bt_pq_pool_new(NULL, &o));
    ck_assert_ptr_null(bt_pq_pool_new(loop, NULL));
    ck_assert_ptr_null(bt_pq_pool_new(loop, &o)); /* no conninfo */
    o.conninfo = "this is = not 'a conninfo";
    ck_assert_ptr_null(bt_pq_pool_new(loop, &o));
    o.conninfo = bt_test_pg_conninfo(pg);
    o.min_size = 5;
    o.max_size = 2;
    ck_assert_ptr_null(bt_pq_pool_new(loop, &o));
    o.min_size = 0;
    o.max_size = 0;
    ck_assert_ptr_null(bt_pq_pool_new(loop, &o));
    o.max_size = 2;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_null(bt_pq_query(NULL, "SELECT 1", 0, NULL));
    ck_assert_ptr_null(bt_pq_query(p, NULL, 0, NULL));
    bt_future *f = await(bt_pq_query(p, "SELECT $1", 1, NULL));
    ck_assert_int_eq(bt_future_error(f), BT_EINVAL);
    bt_future_unref(f);
    f = await(bt_pq_query(p, "SELECT 1", -1, NULL));
    ck_assert_int_eq(bt_future_error(f), BT_EINVAL);
    bt_future_unref(f);
    /* Wrong parameter count: the server says so. */
    const char *v[] = { "1", "2" };
    f = await(bt_pq_query(p, "SELECT $1::int", 2, v));
    ck_assert_int_eq(bt_future_error(f), BT_ESQL);
    bt_future_unref(f);
    ck_assert_int_eq(bt_pq_pool_get_stats(NULL, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_pq_unlisten(NULL, "x"), BT_EINVAL);
    ck_assert_ptr_null(bt_pq_acquire(NULL));
    ck_assert_ptr_null(bt_pq_conn_query(NULL, "SELECT 1", 0, NULL));
    bt_pq_conn_release(NULL);
    bt_pq_result_free(NULL);
    ck_assert_int_eq(bt_pq_result_rows(NULL), 0);
    ck_assert_ptr_null(bt_pq_result_get(NULL, 0, 0));
    bt_pq_error e = BT_SIZED(bt_pq_error);
    ck_assert_int_eq(bt_pq_error_parse(NULL, &e), BT_EINVAL);
    bt_pq_pool_free(NULL);
    bt_pq_pool_free(p);
    /* After free, nothing. */
}
END_TEST

static void rejected(bt_pq_options *o, const char *conninfo, const char *says)
{
    bt_test_log_clear();
    o->conninfo = conninfo;
    bt_pq_pool *p = bt_pq_pool_new(loop, o);
    if (p != NULL)
        bt_pq_pool_free(p);
    ck_assert_msg(p == NULL, "\"%s\" was accepted", conninfo);
    ck_assert_msg(bt_test_log_contains(says), "\"%s\": no log line saying \"%s\"", conninfo, says);
}

START_TEST(bad_options_are_refused_at_once_and_say_why)
{
    bt_test_log_capture();
    bt_test_log_clear();
    ck_assert_ptr_null(bt_pq_pool_new(loop, NULL));
    ck_assert(bt_test_log_contains("bt_pq_pool_new: the options are"));
    bt_pq_options o;
    bt_pq_options_init(&o);
    bt_test_log_clear();
    ck_assert_ptr_null(bt_pq_pool_new(NULL, &o));
    ck_assert(bt_test_log_contains("the loop is NULL"));
    bt_test_log_clear();
    ck_assert_ptr_null(bt_pq_pool_new(loop, &o));
    ck_assert(bt_test_log_contains("no conninfo"));
    /* libpq checks these only when it connects: the pool checks them now,
     * as it does unknown keys. */
    rejected(&o, "host=127.0.0.1 port=abc dbname=postgres", "port=\"abc\"");
    rejected(&o, "host=127.0.0.1,127.0.0.2 port=5432,99999", "is not a port number");
    rejected(&o, "postgresql://postgres@127.0.0.1:abc/postgres", "port=\"abc\"");
    rejected(&o, "host=127.0.0.1 connect_timeout=ten", "connect_timeout=\"ten\"");
    rejected(&o, "host=127.0.0.1 keepalives_idle=1x", "keepalives_idle=\"1x\"");
    rejected(&o, "host=127.0.0.1 sslmode=maybe", "sslmode=\"maybe\"");
    rejected(&o, "host=127.0.0.1 target_session_attrs=any-old", "target_session_attrs");
    rejected(&o, "host=127.0.0.1 bogus_key=1", "bogus_key");
    o.conninfo = bt_test_pg_conninfo(pg);
    o.min_size = 3;
    o.max_size = 2;
    bt_test_log_clear();
    ck_assert_ptr_null(bt_pq_pool_new(loop, &o));
    ck_assert(bt_test_log_contains("max_size must"));
    /* Good values still pass, lists and blanks included. */
    char ci[256];
    snprintf(ci, sizeof ci,
             "host=127.0.0.1 port=' %d ' dbname=postgres user=postgres connect_timeout=5 "
             "sslmode=disable keepalives=1",
             bt_test_pg_port(pg));
    o.conninfo = ci;
    o.min_size = 1;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(p);
    exec_ok(p, "SELECT 1", 0, NULL);
    bt_pq_pool_free(p);
}
END_TEST

/* Connect with conninfo and expect the pool's first connect, and a query
 * waiting for it, to fail with code and SQLSTATE state. */
static void connect_fails(const char *conninfo, int code, const char *state, const char *text)
{
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = conninfo;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(p);
    bt_future *q = bt_pq_query(p, "SELECT 1", 0, NULL);
    bt_future *r = await(bt_pq_pool_ready(p));
    await(q);
    bt_future *both[] = { r, q };
    for (int i = 0; i < 2; i++) {
        bt_pq_error e = BT_SIZED(bt_pq_error);
        int err = bt_pq_error_parse(both[i], &e);
        ck_assert_msg(err == code, "%s: %s (%s), wanted %s", conninfo, bt_err_name(err),
                      bt_future_error_message(both[i]), bt_err_name(code));
        ck_assert_msg(strcmp(e.sqlstate, state) == 0, "%s: SQLSTATE \"%s\", wanted %s (%s)",
                      conninfo, e.sqlstate, state, bt_future_error_message(both[i]));
        ck_assert_msg(strstr(e.message, text) != NULL, "%s: \"%s\"", conninfo, e.message);
        ck_assert_msg(strstr(e.message, "LOCATION") == NULL, "%s", e.message);
    }
    bt_future_unref(r);
    bt_future_unref(q);
    bt_pq_pool_free(p);
}

START_TEST(connect_errors_carry_their_sqlstate)
{
    char ci[512];
    int port = bt_test_pg_port(pg);
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d dbname=no_such_db user=postgres", port);
    connect_fails(ci, BT_ENOENT, "3D000", "database \"no_such_db\" does not exist");
    snprintf(ci, sizeof ci, "host=127.0.0.1 port=%d dbname=postgres user=no_such_role", port);
    connect_fails(ci, BT_EACCES, "28000", "role \"no_such_role\" does not exist");
    snprintf(ci, sizeof ci, "%s", bt_test_pg_password_conninfo(pg));
    char *pw = strstr(ci, "password=");
    ck_assert_ptr_nonnull(pw);
    snprintf(pw, sizeof ci - (size_t)(pw - ci), "password=wrong");
    connect_fails(ci, BT_EACCES, "28P01", "password authentication failed");
    /* The right password works: the harness's role is real. */
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_password_conninfo(pg);
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(p);
    bt_pq_result *r = must(p, "SELECT current_user", 0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "baton_pw");
    bt_pq_result_free(r);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(graceful_close_drains_first)
{
    bt_pq_pool *p = new_pool(2, 2, 16);
    bt_future *a = await(bt_pq_acquire(p));
    bt_pq_conn *c = bt_future_take_value(a);
    bt_future_unref(a);
    bt_future *running = bt_pq_query(p, "SELECT 'ran', pg_sleep(0.2)", 0, NULL);
    bt_future *closed = bt_pq_pool_close(p);
    ck_assert_ptr_nonnull(closed);
    /* New work is refused at once... */
    bt_future *late = await(bt_pq_query(p, "SELECT 1", 0, NULL));
    ck_assert_int_eq(bt_future_error(late), BT_ESHUTDOWN);
    bt_future_unref(late);
    late = await(bt_pq_acquire(p));
    ck_assert_int_eq(bt_future_error(late), BT_ESHUTDOWN);
    bt_future_unref(late);
    /* ...what runs finishes, and the lent connection still works. */
    ck_assert_int_eq(bt_future_error(await(running)), 0);
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(running), 0, 0), "ran");
    bt_future_unref(running);
    bt_future *mine = await(bt_pq_conn_query(c, "SELECT 'mine'", 0, NULL));
    ck_assert_int_eq(bt_future_error(mine), 0);
    bt_future_unref(mine);
    sleep_ms(100);
    ck_assert_int_eq(bt_future_get_state(closed), BT_FUTURE_PENDING); /* c is out */
    bt_pq_conn_release(c);
    ck_assert_int_eq(bt_future_error(await(closed)), 0);
    bt_future_unref(closed);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.conns, 0);
    closed = await(bt_pq_pool_close(p)); /* again: same outcome */
    ck_assert_int_eq(bt_future_error(closed), 0);
    bt_future_unref(closed);
    bt_pq_pool_free(p);

    /* Freed before it drained: terminate; the close future says so. */
    p = new_pool(1, 1, 16);
    running = bt_pq_query(p, "SELECT pg_sleep(5)", 0, NULL);
    sleep_ms(50);
    closed = bt_pq_pool_close(p);
    bt_pq_pool_free(p);
    ck_assert_int_eq(bt_future_error(await(closed)), BT_ESHUTDOWN);
    ck_assert_int_eq(bt_future_error(await(running)), BT_ESHUTDOWN);
    bt_future_unref(closed);
    bt_future_unref(running);
}
END_TEST

START_TEST(shutdown_settles_everything)
{
    /* Freeing the pool fails waiting and in-flight work with
     * BT_ESHUTDOWN; an acquired handle stays valid until released. */
    bt_pq_pool *p = new_pool(1, 1, 1);
    bt_future *a = await(bt_pq_acquire(p));
    bt_pq_conn *c = bt_future_take_value(a);
    bt_future_unref(a);
    bt_future *running = bt_pq_conn_query(c, "SELECT pg_sleep(5)", 0, NULL);
    bt_future *waiting = bt_pq_query(p, "SELECT 1", 0, NULL);
    sleep_ms(50);
    bt_pq_pool_free(p);
    ck_assert_int_eq(bt_future_error(await(running)), BT_ESHUTDOWN);
    ck_assert_int_eq(bt_future_error(await(waiting)), BT_ESHUTDOWN);
    bt_future *late = await(bt_pq_conn_query(c, "SELECT 1", 0, NULL));
    ck_assert_int_ne(bt_future_error(late), 0);
    bt_future_unref(late);
    bt_pq_conn_release(c);
    bt_future_unref(running);
    bt_future_unref(waiting);

    /* Freeing the loop first: the pool's closer settles everything before
     * the loop cancels what is left (bt_test_loop_free_clean checks). */
    p = new_pool(1, 1, 4);
    bt_future *r = await(bt_pq_pool_ready(p));
    bt_future_unref(r);
    bt_future *q1 = bt_pq_query(p, "SELECT pg_sleep(5)", 0, NULL);
    bt_future *q2 = bt_pq_query(p, "SELECT 2", 0, NULL);
    bt_future *q3 = bt_pq_acquire(p);
    sleep_ms(50);
    bt_test_loop_free_clean(loop);
    loop = bt_loop_new(); /* for teardown */
    ck_assert_int_eq(bt_future_get_state(q1), BT_FUTURE_ERROR);
    ck_assert_int_eq(bt_future_error(q1), BT_ESHUTDOWN);
    ck_assert_int_eq(bt_future_error(q2), BT_ESHUTDOWN);
    ck_assert_int_eq(bt_future_error(q3), BT_ESHUTDOWN);
    bt_future_unref(q1);
    bt_future_unref(q2);
    bt_future_unref(q3);
    bt_pq_pool_free(p); /* memory only now */
}
END_TEST

/* ---- A wedged postmaster (issue 13) ------------------------------------- */

/* Wait (running the loop) until the pool has n idle connections. */
static void wait_idle(bt_pq_pool *p, unsigned n)
{
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    for (int i = 0; i < 2500; i++) {
        bt_pq_pool_get_stats(p, &st);
        if (st.idle >= n)
            return;
        sleep_ms(10);
    }
    ck_abort_msg("the pool never had %u idle connections (%u)", n, st.idle);
}

START_TEST(an_unanswered_cancel_closes_and_replaces_its_connection)
{
    /* Two connections; one runs a long query. The postmaster alone is
     * stopped (its backends run on), and the long query is cancelled: the
     * cancel request can never be answered. The pool must keep serving from
     * the other connection, close the one whose cancel hangs once
     * cancel_timeout_ms has passed (while the postmaster is still stopped:
     * nothing else could free it), and open a new one once the postmaster
     * is back. */
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    o.min_size = 2;
    o.max_size = 2;
    o.pipeline_depth = 1;
    o.cancel_timeout_ms = 300;
    bt_pq_pool *p = new_pool_opts(&o);
    wait_idle(p, 2);
    bt_future *slow = bt_pq_query(p, "SELECT pg_sleep(61)", 0, NULL);
    sleep_ms(300);
    ck_assert_int_eq(sleeping_like("SELECT pg_sleep(61)"), 1);
    ck_assert_int_eq(bt_test_pg_freeze(pg, false), 0);
    ck_assert_int_eq(bt_future_cancel(slow), 0);
    ck_assert_int_eq(bt_future_error(slow), BT_ECANCELED);
    bt_future_unref(slow);

    /* The healthy connection serves while the postmaster is stopped. */
    bt_pq_result *r = must(p, "SELECT 'still serving'", 0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "still serving");
    bt_pq_result_free(r);

    /* The cancelled query's connection is closed at the cancel deadline,
     * with the postmaster still stopped (a generous bound: 50x). */
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    for (int i = 0; i < 1500; i++) {
        bt_pq_pool_get_stats(p, &st);
        if (st.broken >= 1)
            break;
        sleep_ms(10);
    }
    ck_assert_msg(st.broken == 1, "the connection whose cancel hangs was never closed");
    ck_assert_uint_eq(st.cancels_timed_out, 1);
    ck_assert_uint_eq(st.cancels_sent, 1);
    r = must(p, "SELECT 'and still'", 0, NULL);
    bt_pq_result_free(r);

    /* Back: the pool replaces the closed connection and serves on both. */
    ck_assert_int_eq(bt_test_pg_thaw(pg), 0);
    wait_idle(p, 2);
    bt_future *fs[4];
    for (int i = 0; i < 4; i++)
        fs[i] = bt_pq_query(p, "SELECT pg_backend_pid()", 0, NULL);
    for (int i = 0; i < 4; i++) {
        ck_assert_msg(bt_future_error(await(fs[i])) == 0, "%s", bt_future_error_message(fs[i]));
        bt_future_unref(fs[i]);
    }
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_ge(st.connects, 3);
    ck_assert_uint_eq(st.conns, 2);
    bt_pq_pool_free(p);
}
END_TEST

struct rescue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;    /* the test got past the point it could hang at */
    bool rescued; /* the deadline passed first: the thread thawed the server */
};

/* If the test hangs while the server is frozen, thaw it after 40 s so
 * that the test can end (and fail), rather than wait for Check's timeout. */
static void *rescue_main(void *arg)
{
    struct rescue *r = arg;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 40;
    pthread_mutex_lock(&r->mu);
    while (!r->done)
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) != 0)
            break;
    if (!r->done) {
        r->rescued = true;
        bt_test_pg_thaw(pg);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

START_TEST(shutdown_ends_while_the_postmaster_is_stopped)
{
    /* Two queries run; the postmaster alone is stopped (the second run
     * stops the backends too); one query is cancelled, and the pool and
     * then the loop are freed. Neither cancel request (the one for the
     * cancelled query, and the one freeing the pool sends for the query
     * still running) can be answered while the postmaster is stopped:
     * neither bt_pq_pool_free nor bt_loop_free may wait for them. */
    bool whole = _i == 1;
    const char *sql1 = whole ? "SELECT pg_sleep(62.1)" : "SELECT pg_sleep(62.2)";
    const char *sql2 = whole ? "SELECT pg_sleep(63.1)" : "SELECT pg_sleep(63.2)";
    bt_pq_pool *p = new_pool(2, 2, 1);
    wait_idle(p, 2);
    bt_future *cancelled = bt_pq_query(p, sql1, 0, NULL);
    bt_future *running = bt_pq_query(p, sql2, 0, NULL);
    sleep_ms(300);
    ck_assert_int_eq(sleeping_like(sql1), 1);
    ck_assert_int_eq(sleeping_like(sql2), 1);
    ck_assert_int_eq(bt_test_pg_freeze(pg, whole), 0);
    ck_assert_int_eq(bt_future_cancel(cancelled), 0);
    /* A second pool with a connect in flight to the stopped server. */
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    bt_pq_pool *p2 = new_pool_opts(&o);
    bt_future *waits = bt_pq_query(p2, "SELECT 1", 0, NULL);
    sleep_ms(200); /* the cancel request is out, waiting for an answer */

    struct rescue rs = { .done = false, .rescued = false };
    pthread_mutex_init(&rs.mu, NULL);
    pthread_cond_init(&rs.cv, NULL);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, rescue_main, &rs), 0);
    uint64_t t0 = bt_hrtime();
    bt_pq_pool_free(p);
    bt_pq_pool_free(p2);
    ck_assert_int_eq(bt_future_error(running), BT_ESHUTDOWN);
    ck_assert_int_eq(bt_future_error(waits), BT_ESHUTDOWN);
    bt_future_unref(cancelled);
    bt_future_unref(running);
    bt_future_unref(waits);
    bt_test_loop_free_clean(loop);
    loop = bt_loop_new(); /* for teardown */
    uint64_t ms = (bt_hrtime() - t0) / 1000000;
    pthread_mutex_lock(&rs.mu);
    bool rescued = rs.rescued;
    rs.done = true;
    pthread_cond_signal(&rs.cv);
    pthread_mutex_unlock(&rs.mu);
    pthread_join(th, NULL);
    bt_test_pg_thaw(pg);
    ck_assert_msg(!rescued, "shutdown waited for the stopped server (%llu ms)",
                  (unsigned long long)ms);
    /* Both cancel requests reach the server once it runs again. */
    int left = 2;
    for (int i = 0; i < 200 && left != 0; i++) {
        left = sleeping_like(sql1) + sleeping_like(sql2);
        usleep(50000);
    }
    ck_assert_int_eq(left, 0);
    fprintf(stderr, "shutdown with the %s stopped: %llu ms\n", whole ? "server" : "postmaster",
            (unsigned long long)ms);
}
END_TEST

/* ---- Review fixes: statements dropped under a pipeline, freeing the
 * pool from callbacks, retries keeping their deadline ------------------- */

START_TEST(statements_dropped_under_a_pipeline_stay_alive)
{
    /* Each query with a Sync of its own: when the server says the cached
     * statement is gone (DEALLOCATE ALL ran before it, 26000), the PREPAREs
     * sent behind it are still in the pipeline, pointing at their cache
     * entries. Their answers must find them: the first succeeds (and its
     * statement, prepared after the DEALLOCATE, stays cached), the second
     * fails (and is forgotten), and the stale query is prepared again and
     * retried. */
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    o.max_size = 1;
    o.sync_each_query = true;
    bt_pq_pool *p = new_pool_opts(&o);
    exec_ok(p, "SELECT 'cached'", 0, NULL);
    bt_pq_query_opts un = { .size = sizeof(bt_pq_query_opts), .no_prepare = true };
    bt_future *dealloc = bt_pq_query_ex(p, "DEALLOCATE ALL", 0, NULL, &un);
    bt_future *stale = bt_pq_query(p, "SELECT 'cached'", 0, NULL);
    bt_future *fresh = bt_pq_query(p, "SELECT 'fresh'", 0, NULL);
    bt_future *bad = bt_pq_query(p, "SELECT no_such_column", 0, NULL);
    ck_assert_int_eq(bt_future_error(await(dealloc)), 0);
    ck_assert_msg(bt_future_error(await(stale)) == 0, "%s", bt_future_error_message(stale));
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(stale), 0, 0), "cached");
    ck_assert_msg(bt_future_error(await(fresh)) == 0, "%s", bt_future_error_message(fresh));
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(fresh), 0, 0), "fresh");
    ck_assert_int_eq(bt_future_error(await(bad)), BT_ESQL);
    bt_pq_error e = BT_SIZED(bt_pq_error);
    bt_pq_error_parse(bad, &e);
    ck_assert_str_eq(e.sqlstate, "42703");
    bt_future_unref(dealloc);
    bt_future_unref(stale);
    bt_future_unref(fresh);
    bt_future_unref(bad);
    /* 'fresh' runs from the cache: the server has one statement for it. */
    exec_ok(p, "SELECT 'fresh'", 0, NULL);
    bt_future *f = await(bt_pq_query_ex(p,
                                        "SELECT count(*) FROM pg_prepared_statements "
                                        "WHERE statement = 'SELECT ''fresh'''",
                                        0, NULL, &un));
    ck_assert_int_eq(bt_future_error(f), 0);
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(f), 0, 0), "1");
    bt_future_unref(f);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_ge(st.retried, 1);
    bt_pq_pool_free(p);
}
END_TEST

/* With the statement cache off (stmt_cache_size 0, as transaction_pooling
 * sets it) every query runs unnamed: the user's own PREPARE, DEALLOCATE
 * ALL, DISCARD ALL and a statement that does not exist (26000) reach the
 * server as text and come back as they are, pipelined too. */
START_TEST(the_statement_cache_off_leaves_statements_to_the_user)
{
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    o.max_size = 1;
    o.stmt_cache_size = 0;
    o.sync_each_query = true;
    bt_pq_pool *p = new_pool_opts(&o);
    exec_ok(p, "PREPARE mine AS SELECT 'mine'", 0, NULL);
    bt_future *run = bt_pq_query(p, "EXECUTE mine", 0, NULL);
    bt_future *drop = bt_pq_query(p, "DEALLOCATE ALL", 0, NULL);
    bt_future *gone = bt_pq_query(p, "EXECUTE mine", 0, NULL);
    bt_future *bad = bt_pq_query(p, "SELECT no_such_column", 0, NULL);
    bt_future *discard = bt_pq_query(p, "DISCARD ALL", 0, NULL);
    bt_future *after = bt_pq_query(p, "SELECT 'after'", 0, NULL);
    ck_assert_int_eq(bt_future_error(await(run)), 0);
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(run), 0, 0), "mine");
    ck_assert_int_eq(bt_future_error(await(drop)), 0);
    ck_assert_int_eq(bt_future_error(await(gone)), BT_ESQL);
    bt_pq_error e = BT_SIZED(bt_pq_error);
    bt_pq_error_parse(gone, &e);
    ck_assert_str_eq(e.sqlstate, "26000");
    ck_assert_int_eq(bt_future_error(await(bad)), BT_ESQL);
    ck_assert_int_eq(bt_future_error(await(discard)), 0);
    ck_assert_int_eq(bt_future_error(await(after)), 0);
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(after), 0, 0), "after");
    bt_future *fs[] = { run, drop, gone, bad, discard, after };
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++)
        bt_future_unref(fs[i]);
    bt_pq_result *r = must(p, "SELECT count(*) FROM pg_prepared_statements", 0, NULL);
    ck_assert_str_eq(bt_pq_result_get(r, 0, 0), "0");
    bt_pq_result_free(r);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.retried, 0);
    bt_pq_pool_free(p);
}
END_TEST

/* A callback that frees the pool the nth time it runs. */
typedef struct {
    bt_pq_pool *pool;
    int calls;
    int free_at;
} freer;

static void freer_hit(freer *fr)
{
    if (++fr->calls == fr->free_at) {
        bt_pq_pool_free(fr->pool);
        fr->pool = NULL;
    }
}

static int freeing_row(const bt_pq_result *row, void *arg)
{
    (void)row;
    freer *fr = arg;
    freer_hit(fr);
    return fr->pool == NULL; /* stop once freed: nothing may write that to the ended query */
}

static void freeing_note(const char *channel, const char *payload, int pid, void *arg)
{
    (void)channel;
    (void)payload;
    (void)pid;
    freer_hit(arg);
}

static void freeing_notice(const bt_pq_notice *n, void *arg)
{
    (void)n;
    freer_hit(arg);
}

static void freeing_done(bt_future *f, void *arg)
{
    (void)f;
    freer_hit(arg);
}

static bt_future *freeing_body(bt_pq_conn *c, void *arg)
{
    (void)c;
    freer_hit(arg);
    return NULL;
}

/* Run the loop until fr freed its pool (or 20 s pass). */
static void until_freed(freer *fr)
{
    for (int i = 0; i < 2000 && fr->pool != NULL; i++)
        sleep_ms(10);
    ck_assert_ptr_null(fr->pool);
}

START_TEST(a_callback_may_free_the_pool)
{
    /* A row callback: the query, the one pipelined behind it and the one
     * waiting fail with BT_ESHUTDOWN; nothing is read after the free. */
    freer fr = { .free_at = 3 };
    fr.pool = new_pool(1, 1, 2);
    bt_pq_query_opts qo = { .size = sizeof(bt_pq_query_opts),
                            .row_cb = freeing_row,
                            .row_arg = &fr };
    bt_future *rows =
        bt_pq_query_ex(fr.pool, "SELECT g FROM generate_series(1, 1000) g", 0, NULL, &qo);
    bt_future *behind = bt_pq_query(fr.pool, "SELECT 2", 0, NULL);
    bt_future *waiting = bt_pq_query(fr.pool, "SELECT 3", 0, NULL);
    ck_assert_int_eq(bt_future_error(await(rows)), BT_ESHUTDOWN);
    ck_assert_int_eq(bt_future_error(await(behind)), BT_ESHUTDOWN);
    ck_assert_int_eq(bt_future_error(await(waiting)), BT_ESHUTDOWN);
    ck_assert_int_eq(fr.calls, 3);
    bt_future_unref(rows);
    bt_future_unref(behind);
    bt_future_unref(waiting);

    /* A notification callback: two notifications come in one read; the
     * second finds no callback to run. */
    fr = (freer){ .free_at = 1 };
    fr.pool = new_pool(1, 1, 16);
    bt_future *f = await(bt_pq_listen(fr.pool, "freeing", freeing_note, &fr));
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f);
    bt_future *held = bt_pq_query(fr.pool, "SELECT pg_sleep(5)", 0, NULL);
    ck_assert_int_eq(bt_test_pg_exec(pg, "BEGIN; NOTIFY freeing, 'a'; NOTIFY freeing, 'b'; COMMIT"),
                     0);
    until_freed(&fr);
    ck_assert_int_eq(bt_future_error(await(held)), BT_ESHUTDOWN);
    bt_future_unref(held);
    sleep_ms(50);
    ck_assert_int_eq(fr.calls, 1);

    /* A notice handler, with another notice queued behind the one that
     * frees. */
    fr = (freer){ .free_at = 1 };
    fr.pool = new_pool(1, 1, 16);
    ck_assert_int_eq(bt_pq_pool_set_notice_handler(fr.pool, freeing_notice, &fr), 0);
    f = bt_pq_query(fr.pool, "DO $$ BEGIN RAISE NOTICE 'one'; RAISE NOTICE 'two'; END $$", 0, NULL);
    until_freed(&fr);
    int e = bt_future_error(await(f)); /* done, or ended by the free */
    ck_assert_msg(e == 0 || e == BT_ESHUTDOWN, "%d", e);
    bt_future_unref(f);
    ck_assert_int_eq(fr.calls, 1);

    /* A query's completion callback, with another query waiting. */
    fr = (freer){ .free_at = 1 };
    fr.pool = new_pool(1, 1, 1);
    f = bt_pq_query(fr.pool, "SELECT 1", 0, NULL);
    bt_future_add_callback(f, freeing_done, &fr);
    bt_future *slow = bt_pq_query(fr.pool, "SELECT pg_sleep(5)", 0, NULL);
    ck_assert_int_eq(bt_future_error(await(f)), 0);
    ck_assert_int_eq(bt_future_error(await(slow)), BT_ESHUTDOWN);
    ck_assert_ptr_null(fr.pool);
    bt_future_unref(f);
    bt_future_unref(slow);

    /* A transaction body that frees the pool (and returns no future). */
    fr = (freer){ .free_at = 1 };
    fr.pool = new_pool(1, 1, 16);
    f = await(bt_pq_transaction(fr.pool, freeing_body, &fr));
    ck_assert_int_ne(bt_future_error(f), 0);
    ck_assert_ptr_null(fr.pool);
    bt_future_unref(f);
}
END_TEST

START_TEST(a_retried_query_keeps_its_place_by_deadline)
{
    /* One connection, two queries in flight at most. A batch of a query
     * that fails after 3 s and one that is retried because of it; a third
     * query waits for room, and an acquire takes the connection as soon as
     * the batch is over, so the retried query and the waiting one both
     * wait then. The waiting query's deadline (4 s after it came) must be
     * kept: the retried one, ahead of it in the queue, must not carry a
     * later deadline that hides it from the timer. */
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    o.max_size = 1;
    o.pipeline_depth = 2;
    o.acquire_timeout_ms = 4000;
    bt_pq_pool *p = new_pool_opts(&o);
    bt_future *ready = await(bt_pq_pool_ready(p));
    bt_future_unref(ready);
    uint64_t t0 = bt_hrtime();
    bt_future *fails = bt_pq_query(p, "SELECT (pg_sleep(3)::text || 'x')::int", 0, NULL);
    bt_future *retried = bt_pq_query(p, "SELECT 'retried'", 0, NULL);
    bt_future *acq = bt_pq_acquire(p);
    bt_future *waits = bt_pq_query(p, "SELECT 'waits'", 0, NULL);
    ck_assert_int_eq(bt_future_error(await(fails)), BT_ESQL);
    ck_assert_int_eq(bt_future_error(await(acq)), 0);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.retried, 1);
    ck_assert_uint_eq(st.waiting, 2);
    await(waits);
    uint64_t ms = (bt_hrtime() - t0) / 1000000;
    ck_assert_int_eq(bt_future_error(waits), BT_ETIMEDOUT);
    /* Due at 4 s; with a fresh deadline for the retried query it waited
     * until about 7 s. */
    ck_assert_msg(ms < 5500, "the waiting query timed out after %llu ms", (unsigned long long)ms);
    /* The retried query's wait is bounded from when it came, too. */
    ck_assert_int_eq(bt_future_error(await(retried)), BT_ETIMEDOUT);
    bt_future_unref(fails);
    bt_future_unref(retried);
    bt_future_unref(waits);
    bt_future_unref(acq); /* releases the connection */
    exec_ok(p, "SELECT 'after'", 0, NULL);
    bt_pq_pool_free(p);
}
END_TEST

static char settle_order[8];
static void note_settled(bt_future *f, void *arg)
{
    (void)f;
    size_t n = strlen(settle_order);
    if (n + 1 < sizeof settle_order)
        settle_order[n] = *(const char *)arg;
}

START_TEST(a_retried_query_goes_first_when_waits_are_unbounded)
{
    /* As above, with no acquire_timeout_ms: every deadline is the same,
     * and the retried query, which came first, must still go ahead of the
     * one that waited for room (it used to go behind it). */
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    o.max_size = 1;
    o.pipeline_depth = 2;
    o.acquire_timeout_ms = 0;
    bt_pq_pool *p = new_pool_opts(&o);
    bt_future *ready = await(bt_pq_pool_ready(p));
    bt_future_unref(ready);
    settle_order[0] = '\0';
    bt_future *fails = bt_pq_query(p, "SELECT (pg_sleep(0.3)::text || 'x')::int", 0, NULL);
    bt_future *retried = bt_pq_query(p, "SELECT 'retried'", 0, NULL);
    bt_future *waits = bt_pq_query(p, "SELECT 'waits'", 0, NULL);
    ck_assert_int_eq(bt_future_add_callback(retried, note_settled, "r"), 0);
    ck_assert_int_eq(bt_future_add_callback(waits, note_settled, "w"), 0);
    ck_assert_int_eq(bt_future_error(await(fails)), BT_ESQL);
    ck_assert_int_eq(bt_future_error(await(waits)), 0);
    ck_assert_int_eq(bt_future_error(await(retried)), 0);
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.retried, 1);
    ck_assert_str_eq(settle_order, "rw");
    bt_future_unref(fails);
    bt_future_unref(retried);
    bt_future_unref(waits);
    bt_pq_pool_free(p);
}
END_TEST

/* Run the loop until the n futures have settled, or for at most ms (a
 * bound on a wait, not a measure); returns how many settled. */
static int settle_all(bt_future **fs, int n, unsigned ms)
{
    for (unsigned t = 0;; t += 10) {
        int done = 0;
        for (int i = 0; i < n; i++)
            done += bt_future_is_settled(fs[i]);
        if (done == n || t >= ms)
            return done;
        sleep_ms(10);
    }
}

/* The backend pid a "SELECT pg_backend_pid()" future answered. */
static int answered_pid(bt_future *f)
{
    ck_assert_msg(bt_future_error(f) == 0, "%s", bt_future_error_message(f));
    return atoi(bt_pq_result_get(bt_future_value(f), 0, 0));
}

START_TEST(a_stopped_backend_is_given_no_more_queries)
{
    /* Two pipelined connections. The backend of one is stopped (SIGSTOP,
     * as when the kernel keeps it off the CPU) while a query waits on its
     * connection; then eight queries come in one loop pass. Each must go
     * to the other connection and complete while the stopped one holds its
     * query, which completes once its backend runs again. Routed by the
     * fewest queries in flight alone, some of the eight joined the stopped
     * connection's pipeline and waited with it. */
    enum { N = 8 };
    bt_pq_pool *p = new_pool(2, 2, 16);
    wait_idle(p, 2);
    /* With both idle, a query goes to the same one each time (the first
     * idle one): its backend is the one to stop. */
    bt_future *f = await(bt_pq_query(p, "SELECT pg_backend_pid()", 0, NULL));
    int stopped = answered_pid(f);
    bt_future_unref(f);
    wait_idle(p, 2);
    ck_assert_int_eq(kill(stopped, SIGSTOP), 0);
    bt_future *held = bt_pq_query(p, "SELECT pg_backend_pid()", 0, NULL);
    sleep_ms(1000); /* far longer than the answers so far took */

    bt_future *fs[N];
    for (int i = 0; i < N; i++)
        fs[i] = bt_pq_query(p, "SELECT pg_backend_pid()", 0, NULL);
    int done = settle_all(fs, N, 20000);
    bool held_waited = !bt_future_is_settled(held);
    kill(stopped, SIGCONT);
    ck_assert_msg(held_waited, "the query on the stopped backend was answered");
    ck_assert_msg(done == N, "%d of %d queries completed while one backend was stopped", done, N);
    for (int i = 0; i < N; i++) {
        ck_assert_int_ne(answered_pid(fs[i]), stopped);
        bt_future_unref(fs[i]);
    }
    ck_assert_int_eq(answered_pid(await(held)), stopped);
    bt_future_unref(held);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(slow_queries_in_a_burst_get_backends_of_their_own)
{
    /* Pipelined, queries that come in one loop pass share the round trip
     * of one connection while answers come fast. Once answers take
     * milliseconds, a burst goes to the idle connections instead: four
     * 50 ms queries on four backends, not one after another on one. */
    enum { N = 4 };
    bt_pq_pool *p = new_pool(N, N, 16);
    wait_idle(p, N);
    bt_future *fs[N];
    for (int i = 0; i < N; i++)
        fs[i] = bt_pq_query(p, "SELECT pg_backend_pid()", 0, NULL);
    ck_assert_int_eq(settle_all(fs, N, 20000), N);
    int first = answered_pid(fs[0]);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(answered_pid(fs[i]), first); /* one batch */
        bt_future_unref(fs[i]);
    }
    wait_idle(p, N);
    for (int i = 0; i < 12; i++) { /* the pool learns that answers are slow */
        bt_future *f = await(bt_pq_query(p, "SELECT pg_sleep(0.02)", 0, NULL));
        ck_assert_msg(bt_future_error(f) == 0, "%s", bt_future_error_message(f));
        bt_future_unref(f);
    }
    for (int i = 0; i < N; i++)
        fs[i] = bt_pq_query(p, "SELECT pg_backend_pid() FROM pg_sleep(0.05)", 0, NULL);
    ck_assert_int_eq(settle_all(fs, N, 20000), N);
    int pids[N];
    for (int i = 0; i < N; i++) {
        pids[i] = answered_pid(fs[i]);
        bt_future_unref(fs[i]);
    }
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            ck_assert_msg(pids[i] != pids[j], "queries %d and %d shared backend %d", i, j, pids[i]);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(a_stalled_connection_is_passed_over_for_a_busier_one)
{
    /* The case the test above cannot tell from batching: the stopped
     * backend's connection has one query in flight, the healthy one two,
     * and no batch is being formed. By the count alone the next queries
     * would join the stopped one; the stall rule sends them to the busier
     * healthy one. Answers are first made slow (100 ms), so that batches
     * are not joined and the two 200 ms queries on the healthy connection
     * do not look stalled. */
    enum { N = 8 };
    bt_pq_pool *p = new_pool(2, 2, 16);
    wait_idle(p, 2);
    int stopped = 0;
    for (int i = 0; i < 14; i++) { /* all on the first idle connection */
        bt_future *f = await(bt_pq_query(p, "SELECT pg_backend_pid() FROM pg_sleep(0.1)", 0, NULL));
        stopped = answered_pid(f);
        bt_future_unref(f);
    }
    wait_idle(p, 2);
    ck_assert_int_eq(kill(stopped, SIGSTOP), 0);
    bt_future *held = bt_pq_query(p, "SELECT pg_backend_pid()", 0, NULL);
    sleep_ms(1500);
    bt_future *busy[2];
    for (int i = 0; i < 2; i++)
        busy[i] = bt_pq_query(p, "SELECT pg_backend_pid() FROM pg_sleep(0.2)", 0, NULL);
    sleep_ms(20); /* their batch is synced: nothing is being formed */
    bt_future *fs[N];
    for (int i = 0; i < N; i++)
        fs[i] = bt_pq_query(p, "SELECT pg_backend_pid()", 0, NULL);
    int done = settle_all(fs, N, 20000);
    bool held_waited = !bt_future_is_settled(held);
    kill(stopped, SIGCONT);
    ck_assert_msg(held_waited, "the query on the stopped backend was answered");
    ck_assert_msg(done == N, "%d of %d queries completed while one backend was stopped", done, N);
    for (int i = 0; i < N; i++) {
        ck_assert_int_ne(answered_pid(fs[i]), stopped);
        bt_future_unref(fs[i]);
    }
    for (int i = 0; i < 2; i++) {
        ck_assert_int_ne(answered_pid(await(busy[i])), stopped);
        bt_future_unref(busy[i]);
    }
    ck_assert_int_eq(answered_pid(await(held)), stopped);
    bt_future_unref(held);
    bt_pq_pool_free(p);
}
END_TEST

static Suite *pq_suite(void)
{
    Suite *s = suite_create("pq");
    TCase *tc = tcase_create("pool");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, crud_with_parameters_and_nulls);
    tcase_add_test(tc, injection_is_stored_as_text);
    tcase_add_test(tc, sql_errors_carry_sqlstate);
    tcase_add_test(tc, pool_exhaustion_times_out);
    tcase_add_test(tc, transactions_commit_rollback_and_dirty_release);
    tcase_add_test(tc, transaction_helper_commits_or_rolls_back);
    tcase_add_test(tc, listen_notify_survives_reconnect);
    tcase_add_test(tc, cancel_pg_sleep);
    tcase_add_test(tc, query_timeout_cancels);
    tcase_add_test(tc, cancel_spares_the_queries_behind);
    tcase_add_test(tc, two_abandoned_queries_are_both_cancelled);
    tcase_add_test(tc, pipelining_matches_results_in_order);
    tcase_add_test(tc, a_failed_batch_fails_one_query_and_reruns_the_rest);
    tcase_add_test(tc, single_row_mode_streams);
    tcase_add_test(tc, closed_port_fails_cleanly);
    tcase_add_test(tc, connect_by_name_and_socket);
    tcase_add_test(tc, connect_timeout_is_ours);
    tcase_add_test(tc, a_slow_lookup_has_a_deadline_of_its_own);
    tcase_add_test(tc, a_killed_backend_is_replaced);
    tcase_add_test(tc, reconnects_back_off);
    tcase_add_test(tc, a_stray_begin_is_rolled_back);
    tcase_add_test(tc, statements_are_prepared_once_per_connection);
    tcase_add_test(tc, stale_prepared_statements_are_replaced);
    tcase_add_test(tc, statement_cache_evicts_least_recently_used);
    tcase_add_test(tc, idle_connections_are_closed_and_lifetime_renews);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, bad_options_are_refused_at_once_and_say_why);
    tcase_add_test(tc, connect_errors_carry_their_sqlstate);
    tcase_add_test(tc, shutdown_settles_everything);
    tcase_add_test(tc, graceful_close_drains_first);
    tcase_add_test(tc, cancels_and_timeouts_in_a_pipelined_stream);
    tcase_add_test(tc, an_unanswered_cancel_closes_and_replaces_its_connection);
    tcase_add_loop_test(tc, shutdown_ends_while_the_postmaster_is_stopped, 0, 2);
    tcase_add_test(tc, a_stopped_backend_is_given_no_more_queries);
    /* Last: it restarts the shared server. */
    tcase_add_test(tc, restart_mid_stream);
    suite_add_tcase(s, tc);
    /* Fixes from a review (a case of its own: CK_RUN_CASE=review runs it
     * alone). */
    tc = tcase_create("review");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, statements_dropped_under_a_pipeline_stay_alive);
    tcase_add_test(tc, the_statement_cache_off_leaves_statements_to_the_user);
    tcase_add_test(tc, a_callback_may_free_the_pool);
    tcase_add_test(tc, a_retried_query_keeps_its_place_by_deadline);
    tcase_add_test(tc, a_retried_query_goes_first_when_waits_are_unbounded);
    tcase_add_test(tc, slow_queries_in_a_burst_get_backends_of_their_own);
    tcase_add_test(tc, a_stalled_connection_is_passed_over_for_a_busier_one);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return bt_test_pq_main(&pg, pq_suite(), "test_pq");
}
