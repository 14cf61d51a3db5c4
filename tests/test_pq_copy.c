/* COPY FROM STDIN and TO STDOUT through the pool, against a real server
 * started by the harness: text and binary both ways, 100,000 rows streamed
 * in with the bytes libpq holds bounded (and the backpressure seen to
 * act), a bad row, abort, cancelling COPY OUT midway, COPY on an acquired
 * connection inside a transaction, the wrong direction, NULL arguments,
 * and COPY through the plain query API refused with a pointer here. After
 * each failure the (single) connection is shown usable. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <baton/pq.h>

#include "pq_fixture.h"

static bt_test_pg *pg;
static bt_loop *loop;

static void setup(void)
{
    loop = bt_test_pq_loop(pg);
}

static void teardown(void)
{
    bt_test_loop_free_clean(loop);
}

/* One connection: what a COPY leaves behind is what the next query gets. */
static bt_pq_pool *new_pool_at(const char *conninfo)
{
    bt_pq_options o;
    bt_test_pq_options(&o, conninfo, 1, 1);
    return bt_test_pq_pool(loop, &o);
}

static bt_pq_pool *new_pool(void)
{
    return new_pool_at(bt_test_pg_conninfo(pg));
}

static bt_future *await(bt_future *f)
{
    return bt_test_run_until(loop, f, 60000);
}

static void expect_ok(bt_future *f, const char *what)
{
    bt_test_ok(await(f), what);
}

static char *scalar(bt_pq_pool *p, const char *sql)
{
    bt_future *f = bt_pq_query(p, sql, 0, NULL);
    expect_ok(f, sql);
    const char *v = bt_pq_result_get(bt_future_value(f), 0, 0);
    char *s = strdup(v != NULL ? v : "(null)");
    bt_future_unref(f);
    return s;
}

static void exec_ok(bt_pq_pool *p, const char *sql)
{
    bt_future_unref(bt_test_ok(await(bt_pq_query(p, sql, 0, NULL)), sql));
}

static void assert_scalar(bt_pq_pool *p, const char *sql, const char *want)
{
    char *got = scalar(p, sql);
    ck_assert_msg(strcmp(got, want) == 0, "%s: got %s, want %s", sql, got, want);
    free(got);
}

static bt_pq_copy *open_in(bt_future *f)
{
    return bt_test_take(await(f), "copy_in");
}

static void write_ok(bt_pq_copy *cp, const void *data, size_t len)
{
    bt_future *f = bt_pq_copy_write(cp, data, len);
    expect_ok(f, "copy_write");
    bt_future_unref(f);
}

static int64_t end_ok(bt_pq_copy *cp)
{
    bt_future *f = bt_pq_copy_end(cp);
    expect_ok(f, "copy_end");
    int64_t n = bt_pq_result_affected(bt_future_value(f));
    ck_assert_msg(strncmp(bt_pq_result_command(bt_future_value(f)), "COPY ", 5) == 0, "%s",
                  bt_pq_result_command(bt_future_value(f)));
    bt_future_unref(f);
    return n;
}

/* COPY OUT into a growing buffer. */
typedef struct {
    char *buf;
    size_t len, cap;
    int rows;
    int stop_after;    /* 0: never */
    bt_future *cancel; /* cancel this future after stop_after rows */
} sink;

static int on_data(const void *data, size_t len, void *arg)
{
    sink *s = arg;
    if (s->len + len > s->cap) {
        s->cap = (s->len + len) * 2;
        s->buf = realloc(s->buf, s->cap);
        ck_assert_ptr_nonnull(s->buf);
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    s->rows++;
    if (s->stop_after && s->rows == s->stop_after) {
        if (s->cancel != NULL) {
            bt_future_cancel(s->cancel);
            return 0;
        }
        return 1;
    }
    return 0;
}

START_TEST(text_in_and_out)
{
    bt_pq_pool *p = new_pool();
    exec_ok(p, "CREATE TABLE ct (id int, name text, note text)");
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY ct (id, name, note) FROM STDIN"));
    char row[256];
    const char *a[] = { "1", "tab\there", NULL };
    size_t n = bt_pq_copy_text_row(row, sizeof row, 3, a);
    ck_assert_uint_eq(n, strlen("1\ttab\\there\t\\N\n"));
    ck_assert(memcmp(row, "1\ttab\\there\t\\N\n", n) == 0);
    write_ok(cp, row, n);
    const char *b[] = { "2", "back\\slash\nnewline", "x" };
    n = bt_pq_copy_text_row(row, sizeof row, 3, b);
    /* Any split of the bytes is fine: rows need not be whole per write. */
    write_ok(cp, row, 5);
    write_ok(cp, row + 5, n - 5);
    write_ok(cp, "3\tthree\tz\n", 10);
    ck_assert_int_eq(end_ok(cp), 3);
    assert_scalar(p, "SELECT name FROM ct WHERE id = 1", "tab\there");
    assert_scalar(p, "SELECT name FROM ct WHERE id = 2", "back\\slash\nnewline");
    assert_scalar(p, "SELECT count(*) FROM ct WHERE note IS NULL", "1");

    sink s = { 0 };
    bt_future *f = bt_pq_copy_out(p, "COPY (SELECT * FROM ct ORDER BY id) TO STDOUT", on_data, &s);
    expect_ok(f, "copy_out");
    ck_assert_int_eq(bt_pq_result_affected(bt_future_value(f)), 3);
    bt_future_unref(f);
    ck_assert_int_eq(s.rows, 3);
    const char *want = "1\ttab\\there\t\\N\n2\tback\\\\slash\\nnewline\tx\n3\tthree\tz\n";
    ck_assert_uint_eq(s.len, strlen(want));
    ck_assert(memcmp(s.buf, want, s.len) == 0);
    free(s.buf);
    /* A too-small buffer: the full length comes back. */
    ck_assert_uint_eq(bt_pq_copy_text_row(row, 2, 3, a), strlen("1\ttab\\there\t\\N\n"));
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(binary_out_then_in)
{
    bt_pq_pool *p = new_pool();
    exec_ok(p, "CREATE TABLE bsrc (id int8, v float8, b bytea)");
    exec_ok(p, "INSERT INTO bsrc SELECT g, g / 3.0, decode(md5(g::text), 'hex') "
               "FROM generate_series(1, 5000) g");
    exec_ok(p, "CREATE TABLE bdst (LIKE bsrc)");
    sink s = { 0 };
    bt_future *f = bt_pq_copy_out(p, "COPY bsrc TO STDOUT (FORMAT binary)", on_data, &s);
    expect_ok(f, "copy_out binary");
    ck_assert_int_eq(bt_pq_result_affected(bt_future_value(f)), 5000);
    bt_future_unref(f);
    ck_assert(s.len > 19 && memcmp(s.buf, "PGCOPY\n\377\r\n\0", 11) == 0);
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY bdst FROM STDIN (FORMAT binary)"));
    /* In 1000-byte pieces, ignoring row boundaries. */
    for (size_t at = 0; at < s.len; at += 1000)
        write_ok(cp, s.buf + at, s.len - at < 1000 ? s.len - at : 1000);
    ck_assert_int_eq(end_ok(cp), 5000);
    free(s.buf);
    assert_scalar(p,
                  "SELECT count(*) FROM bsrc FULL JOIN bdst USING (id) "
                  "WHERE bsrc.v IS DISTINCT FROM bdst.v OR bsrc.b IS DISTINCT FROM bdst.b",
                  "0");
    assert_scalar(p, "SELECT count(*) FROM bdst", "5000");
    bt_pq_pool_free(p);
}
END_TEST

/* A server that stops for `secs` at every `every`-th row (a trigger), so
 * that a writer outruns it for sure, however loaded the machine. */
static void slow_down(bt_pq_pool *p, const char *table, int every, const char *secs)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "CREATE FUNCTION %s_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
             "IF NEW.id %% %d = 0 THEN PERFORM pg_sleep(%s); END IF; RETURN NEW; END $$",
             table, every, secs);
    exec_ok(p, sql);
    snprintf(sql, sizeof sql,
             "CREATE TRIGGER %s_slow BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION %s_slow()",
             table, table, table);
    exec_ok(p, sql);
}

/* Writes rows until `rows`, each next one when the previous write's
 * future settles (at once, mostly), as a program would. */
typedef struct {
    bt_pq_copy *cp;
    int next, rows;
    size_t max_buffered; /* as read after each write */
    unsigned pending;    /* writes that had to wait */
    bt_future *done;
    int err;
} feeder;

static void feed(feeder *fd);

static void on_written(bt_future *f, void *arg)
{
    feeder *fd = arg;
    if (bt_future_error(f) != 0) {
        fd->err = bt_future_error(f);
        bt_future_set_value(fd->done, NULL, NULL);
        return;
    }
    feed(fd);
}

static void feed(feeder *fd)
{
    char row[160];
    while (fd->next < fd->rows) {
        int n = snprintf(row, sizeof row, "%d\t%0100d\n", fd->next, fd->next);
        fd->next++;
        bt_future *f = bt_pq_copy_write(fd->cp, row, (size_t)n);
        ck_assert_ptr_nonnull(f);
        size_t b = bt_pq_copy_buffered(fd->cp);
        if (b > fd->max_buffered)
            fd->max_buffered = b;
        if (!bt_future_is_settled(f)) {
            fd->pending++;
            bt_future_add_callback(f, on_written, fd);
            bt_future_unref(f);
            return;
        }
        int e = bt_future_error(f);
        bt_future_unref(f);
        if (e != 0) {
            fd->err = e;
            break;
        }
    }
    bt_future_set_value(fd->done, NULL, NULL);
}

static int count_rows(const void *data, size_t len, void *arg)
{
    (void)data;
    (void)len;
    (*(int *)arg)++;
    return 0;
}

START_TEST(hundred_thousand_rows_in_bounded_memory)
{
    enum { ROWS = 100000 };
    /* The unix socket: its buffers are small (loopback TCP can take
     * megabytes), so the server's pace shows through at once. */
    bt_pq_pool *p = new_pool_at(bt_test_pg_socket_conninfo(pg));
    exec_ok(p, "CREATE TABLE big (id int PRIMARY KEY, pad text)");
    slow_down(p, "big", 20000, "0.2");
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY big FROM STDIN"));
    feeder fd = { .cp = cp, .rows = ROWS, .done = bt_future_new(loop) };
    feed(&fd);
    await(fd.done);
    bt_future_unref(fd.done);
    ck_assert_int_eq(fd.err, 0);
    /* About 10 MB went through libpq; it never held more than the mark
     * (16 KiB) plus one row. */
    size_t cap = 16 * 1024 + 160;
    ck_assert_msg(bt_pq_copy_max_buffered(cp) <= cap, "libpq held %zu bytes",
                  bt_pq_copy_max_buffered(cp));
    ck_assert(fd.max_buffered <= cap);
    /* The server stalled (the trigger), the socket filled up and writes
     * had to wait: the bound was backpressure, not luck. */
    ck_assert_msg(fd.pending > 0 && bt_pq_copy_waits(cp) == fd.pending, "pending %u waits %llu",
                  fd.pending, (unsigned long long)bt_pq_copy_waits(cp));
    ck_assert_int_eq(end_ok(cp), ROWS);
    assert_scalar(p, "SELECT count(*), sum(id) FROM big", "100000");
    assert_scalar(p, "SELECT sum(id) FROM big", "4999950000");

    int rows = 0;
    bt_future *f = bt_pq_copy_out(p, "COPY big TO STDOUT", count_rows, &rows);
    expect_ok(f, "copy_out");
    ck_assert_int_eq(bt_pq_result_affected(bt_future_value(f)), ROWS);
    bt_future_unref(f);
    ck_assert_int_eq(rows, ROWS);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(put_and_ready_without_a_future_per_row)
{
    enum { ROWS = 20000 };
    bt_pq_pool *p = new_pool_at(bt_test_pg_socket_conninfo(pg));
    exec_ok(p, "CREATE TABLE pr (id int, pad text)");
    slow_down(p, "pr", 1000000, "1"); /* row 0 only */
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY pr FROM STDIN"));
    char row[200];
    int again = 0;
    for (int i = 0; i < ROWS;) {
        int n = snprintf(row, sizeof row, "%d\t%0150d\n", i, i);
        int e = bt_pq_copy_put(cp, row, (size_t)n);
        if (e == BT_EAGAIN) {
            again++;
            ck_assert_uint_le(bt_pq_copy_buffered(cp), 16 * 1024 + 200);
            bt_future *f = bt_pq_copy_ready(cp);
            expect_ok(f, "ready");
            bt_future_unref(f);
            continue; /* the same row again */
        }
        ck_assert_int_eq(e, 0);
        i++;
    }
    ck_assert_int_gt(again, 0);
    ck_assert_uint_le(bt_pq_copy_max_buffered(cp), 16 * 1024 + 200);
    ck_assert_int_eq(bt_pq_copy_put(NULL, "x", 1), BT_EINVAL);
    ck_assert_int_eq(bt_pq_copy_put(cp, NULL, 1), BT_EINVAL);
    ck_assert_int_eq(end_ok(cp), ROWS);
    assert_scalar(p, "SELECT count(DISTINCT id) FROM pr", "20000");
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(a_bad_row_fails_the_end_and_the_connection_stays_usable)
{
    bt_pq_pool *p = new_pool();
    exec_ok(p, "CREATE TABLE bad (id int)");
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY bad FROM STDIN"));
    write_ok(cp, "1\n2\n", 4);
    write_ok(cp, "three\n", 6);
    write_ok(cp, "4\n", 2); /* the server drops what follows a bad row */
    bt_future *f = await(bt_pq_copy_end(cp));
    bt_pq_error e = BT_SIZED(bt_pq_error);
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "22P02");
    ck_assert_msg(strstr(e.message, "three") != NULL, "%s", e.message);
    bt_future_unref(f);
    assert_scalar(p, "SELECT count(*) FROM bad", "0");
    assert_scalar(p, "SELECT 40 + 2", "42");
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(abort_copies_nothing_and_keeps_the_connection)
{
    bt_pq_pool *p = new_pool();
    exec_ok(p, "CREATE TABLE ab (id int)");
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY ab FROM STDIN"));
    write_ok(cp, "1\n2\n", 4);
    bt_future *f = bt_pq_copy_abort(cp, "changed my mind");
    expect_ok(f, "abort");
    bt_future_unref(f);
    assert_scalar(p, "SELECT count(*) FROM ab", "0");

    /* A handle dropped without end or abort is aborted too. */
    f = bt_pq_copy_in(p, "COPY ab FROM STDIN");
    await(f);
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f); /* the handle is still in it */
    assert_scalar(p, "SELECT count(*) FROM ab", "0");

    /* Cancelling the handle's future before it comes. */
    f = bt_pq_copy_in(p, "COPY ab FROM STDIN");
    ck_assert_int_eq(bt_future_cancel(f), 0);
    await(f);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    bt_future_unref(f);
    assert_scalar(p, "SELECT 1", "1");
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.broken, 0);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(cancelling_a_pending_write_aborts_the_copy)
{
    bt_pq_pool *p = new_pool_at(bt_test_pg_socket_conninfo(pg));
    exec_ok(p, "CREATE TABLE cw (id int, pad text)");
    slow_down(p, "cw", 1000000, "1"); /* row 0 only */
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY cw FROM STDIN"));
    /* Write without waiting until a write has to wait for the socket. */
    char row[1100];
    bt_future *f = NULL;
    for (int i = 0; i < 1000000; i++) {
        int n = snprintf(row, sizeof row, "%d\t%01000d\n", i, i);
        f = bt_pq_copy_write(cp, row, (size_t)n);
        if (!bt_future_is_settled(f))
            break;
        ck_assert_int_eq(bt_future_error(f), 0);
        bt_future_unref(f);
        f = NULL;
    }
    ck_assert_ptr_nonnull(f);
    /* One more, queued behind it. */
    bt_future *queued = bt_pq_copy_write(cp, "x\ty\n", 4);
    ck_assert(!bt_future_is_settled(queued));
    ck_assert_int_eq(bt_future_cancel(f), 0);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    ck_assert_int_eq(bt_future_error(queued), BT_ECANCELED);
    bt_future_unref(f);
    bt_future_unref(queued);
    f = bt_pq_copy_write(cp, "1\tz\n", 4);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    bt_future_unref(f);
    f = bt_pq_copy_abort(cp, NULL);
    expect_ok(f, "abort after a cancelled write");
    bt_future_unref(f);
    assert_scalar(p, "SELECT count(*) FROM cw", "0");
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.broken, 0);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(cancel_mid_copy_out)
{
    bt_pq_pool *p = new_pool();
    /* Ten million rows that the server makes as we read: cancelled after
     * 1,000, the rest never arrives. */
    sink s = { .stop_after = 1000 };
    bt_future *f = bt_pq_copy_out(
        p, "COPY (SELECT g FROM generate_series(1, 10000000) g) TO STDOUT", on_data, &s);
    s.cancel = f;
    await(f);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    bt_future_unref(f);
    ck_assert_int_eq(s.rows, 1000);
    free(s.buf);
    assert_scalar(p, "SELECT 'usable'", "usable");

    /* The callback stopping it does the same. */
    sink s2 = { .stop_after = 10 };
    f = bt_pq_copy_out(p, "COPY (SELECT g FROM generate_series(1, 10000000) g) TO STDOUT", on_data,
                       &s2);
    await(f);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    bt_future_unref(f);
    ck_assert_int_eq(s2.rows, 10);
    free(s2.buf);
    assert_scalar(p, "SELECT 'usable'", "usable");
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.cancels_sent, 2);
    ck_assert_uint_eq(st.broken, 0);
    bt_pq_pool_free(p);
}
END_TEST

static bt_future *tx_copy(bt_pq_conn *c, void *arg)
{
    (void)arg;
    bt_future *f = bt_pq_conn_copy_in(c, "COPY txc FROM STDIN");
    return f;
}

START_TEST(copy_on_an_acquired_connection_in_a_transaction)
{
    bt_pq_pool *p = new_pool();
    exec_ok(p, "CREATE TABLE txc (id int)");
    bt_future *af = bt_pq_acquire(p);
    expect_ok(af, "acquire");
    bt_pq_conn *c = bt_future_take_value(af);
    bt_future_unref(af);
    bt_future *f = bt_pq_conn_begin(c);
    /* Busy: BEGIN is in flight. */
    bt_future *busy = bt_pq_conn_copy_in(c, "COPY txc FROM STDIN");
    ck_assert_int_eq(bt_future_error(busy), BT_EBUSY);
    bt_future_unref(busy);
    expect_ok(f, "begin");
    bt_future_unref(f);
    bt_pq_copy *cp = open_in(tx_copy(c, NULL));
    write_ok(cp, "1\n2\n3\n", 6);
    ck_assert_int_eq(end_ok(cp), 3);
    f = bt_pq_conn_query(c, "SELECT count(*) FROM txc", 0, NULL);
    expect_ok(f, "count");
    ck_assert_str_eq(bt_pq_result_get(bt_future_value(f), 0, 0), "3");
    bt_future_unref(f);
    sink s = { 0 };
    f = bt_pq_conn_copy_out(c, "COPY txc TO STDOUT", on_data, &s);
    expect_ok(f, "copy out on conn");
    bt_future_unref(f);
    ck_assert_int_eq(s.rows, 3);
    free(s.buf);
    f = bt_pq_conn_rollback(c);
    expect_ok(f, "rollback");
    bt_future_unref(f);
    bt_pq_conn_release(c);
    assert_scalar(p, "SELECT count(*) FROM txc", "0");
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(wrong_statements_are_refused_and_the_connection_stays_usable)
{
    bt_pq_pool *p = new_pool();
    exec_ok(p, "CREATE TABLE wd (id int)");
    exec_ok(p, "INSERT INTO wd SELECT generate_series(1, 100000)");
    /* A COPY TO STDOUT given to copy_in: drained and cancelled. */
    bt_future *f = await(bt_pq_copy_in(p, "COPY wd TO STDOUT"));
    ck_assert_int_eq(bt_future_error(f), BT_EINVAL);
    ck_assert_ptr_nonnull(strstr(bt_future_error_message(f), "bt_pq_copy_out"));
    bt_future_unref(f);
    assert_scalar(p, "SELECT 2", "2");
    /* A COPY FROM STDIN given to copy_out. */
    f = await(bt_pq_copy_out(p, "COPY wd FROM STDIN", count_rows, &(int){ 0 }));
    ck_assert_int_eq(bt_future_error(f), BT_EINVAL);
    ck_assert_ptr_nonnull(strstr(bt_future_error_message(f), "bt_pq_copy_in"));
    bt_future_unref(f);
    assert_scalar(p, "SELECT 3", "3");
    /* Not a COPY at all, and one the server refuses. */
    f = await(bt_pq_copy_in(p, "SELECT 1"));
    ck_assert_int_eq(bt_future_error(f), BT_EINVAL);
    bt_future_unref(f);
    f = await(bt_pq_copy_in(p, "COPY nosuch FROM STDIN"));
    bt_pq_error e = BT_SIZED(bt_pq_error);
    ck_assert_int_eq(bt_pq_error_parse(f, &e), BT_ESQL);
    ck_assert_str_eq(e.sqlstate, "42P01");
    bt_future_unref(f);
    /* COPY through the plain query API points at the COPY calls. */
    const char *plain[] = { "COPY wd FROM STDIN", "  copy wd TO stdout",
                            "COPY (SELECT 1) TO STDOUT" };
    for (size_t i = 0; i < sizeof plain / sizeof *plain; i++) {
        f = await(bt_pq_query(p, plain[i], 0, NULL));
        ck_assert_int_eq(bt_future_error(f), BT_ENOTSUP);
        ck_assert_msg(strstr(bt_future_error_message(f), "bt_pq_copy_") != NULL, "%s",
                      bt_future_error_message(f));
        bt_future_unref(f);
        assert_scalar(p, "SELECT 4", "4");
    }
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.broken, 0);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(comments_are_read_as_the_server_reads_them)
{
    bt_pq_pool *p = new_pool();
    exec_ok(p, "CREATE TABLE wc (id int)");
    /* A COPY behind a comment, or behind a comment inside a comment
     * (they nest in PostgreSQL), is refused before it is sent: one that
     * reached the pipeline would fail too, but cost its connection. */
    const char *copies[] = { "-- load\nCOPY wc FROM STDIN",
                             "/* outer /* inner */ still a comment */ COPY wc TO STDOUT",
                             "/* a */ --b\n/**/ copy /* to a file? */ wc to stdout" };
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    for (size_t i = 0; i < sizeof copies / sizeof *copies; i++) {
        bt_future *f = await(bt_pq_query(p, copies[i], 0, NULL));
        ck_assert_msg(bt_future_error(f) == BT_ENOTSUP, "%s: %s", copies[i],
                      bt_future_error_message(f));
        bt_future_unref(f);
        assert_scalar(p, "SELECT 5", "5");
        bt_pq_pool_get_stats(p, &st);
        ck_assert_msg(st.broken == 0, "%s reached the server", copies[i]);
    }
    /* ...and STDIN or STDOUT inside a comment is not the COPY's: these run. */
    exec_ok(p, "/* COPY wc FROM STDIN */ SELECT 1");
    exec_ok(p, "/* x /* COPY wc FROM STDIN */ */ SELECT 1");
    exec_ok(p, "COPY wc TO '/dev/null' /* not to stdout */");
    exec_ok(p, "COPY wc TO '/dev/null' -- not /* to */ stdout");
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.broken, 0);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(null_arguments)
{
    bt_pq_pool *p = new_pool();
    ck_assert_ptr_null(bt_pq_copy_in(NULL, "COPY t FROM STDIN"));
    ck_assert_ptr_null(bt_pq_conn_copy_in(NULL, "COPY t FROM STDIN"));
    ck_assert_ptr_null(bt_pq_copy_out(NULL, "COPY t TO STDOUT", count_rows, NULL));
    ck_assert_ptr_null(bt_pq_conn_copy_out(NULL, "COPY t TO STDOUT", count_rows, NULL));
    ck_assert_ptr_null(bt_pq_copy_write(NULL, "x", 1));
    ck_assert_ptr_null(bt_pq_copy_end(NULL));
    ck_assert_ptr_null(bt_pq_copy_abort(NULL, "x"));
    ck_assert_ptr_null(bt_pq_copy_ready(NULL));
    ck_assert_uint_eq(bt_pq_copy_buffered(NULL), 0);
    bt_future *f = bt_pq_copy_in(p, NULL);
    ck_assert_int_eq(bt_future_error(f), BT_EINVAL);
    bt_future_unref(f);
    f = bt_pq_copy_out(p, "COPY t TO STDOUT", NULL, NULL);
    ck_assert_int_eq(bt_future_error(f), BT_EINVAL);
    bt_future_unref(f);
    exec_ok(p, "CREATE TABLE na (id int)");
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY na FROM STDIN"));
    f = bt_pq_copy_write(cp, NULL, 3);
    ck_assert_int_eq(bt_future_error(f), BT_EINVAL);
    bt_future_unref(f);
    write_ok(cp, NULL, 0);
    write_ok(cp, "7\n", 2);
    ck_assert_int_eq(end_ok(cp), 1);
    ck_assert_uint_eq(bt_pq_copy_text_row(NULL, 0, 0, NULL), 1); /* "\n" */
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(pool_free_mid_copy_settles_everything)
{
    bt_pq_pool *p = new_pool();
    exec_ok(p, "CREATE TABLE pf (id int)");
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY pf FROM STDIN"));
    write_ok(cp, "1\n", 2);
    sink s = { 0 };
    bt_future *out = bt_pq_copy_out(p, "COPY pf TO STDOUT", on_data, &s); /* waits: max 1 */
    bt_pq_pool_free(p);
    await(out);
    ck_assert_int_eq(bt_future_error(out), BT_ESHUTDOWN);
    bt_future_unref(out);
    bt_future *f = bt_pq_copy_write(cp, "2\n", 2);
    ck_assert_int_eq(bt_future_error(f), BT_ESHUTDOWN);
    bt_future_unref(f);
    f = await(bt_pq_copy_end(cp));
    ck_assert_int_eq(bt_future_error(f), BT_ESHUTDOWN);
    bt_future_unref(f);
}
END_TEST

START_TEST(a_backend_killed_mid_copy_fails_and_is_replaced)
{
    bt_pq_pool *p = new_pool();
    exec_ok(p, "CREATE TABLE kill_in (id int)");
    const char *kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE query LIKE 'COPY%' AND pid <> pg_backend_pid()";
    /* In: the end (or a write) fails, never hangs. */
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY kill_in FROM STDIN"));
    write_ok(cp, "1\n", 2);
    ck_assert_int_eq(bt_test_pg_exec(pg, kill), 0);
    bt_future *f = NULL;
    for (int i = 0; i < 200; i++) {
        bt_future_unref(f);
        f = await(bt_pq_copy_write(cp, "2\n", 2));
        if (bt_future_error(f) != 0)
            break;
        bt_test_sleep(loop, 10);
    }
    bt_future_unref(f);
    f = await(bt_pq_copy_end(cp));
    int e = bt_future_error(f);
    ck_assert_msg(e == BT_ECONNRESET || e == BT_ESQL, "%d %s", e, bt_future_error_message(f));
    bt_future_unref(f);
    assert_scalar(p, "SELECT count(*) FROM kill_in", "0");

    /* Out: the future fails with the connection. */
    int rows = 0;
    f = bt_pq_copy_out(p,
                       "COPY (SELECT g, pg_sleep(0.001) FROM generate_series(1, 100000) g) "
                       "TO STDOUT",
                       count_rows, &rows);
    while (rows == 0) {
        bt_test_sleep(loop, 5);
    }
    ck_assert_int_eq(bt_test_pg_exec(pg, kill), 0);
    await(f);
    e = bt_future_error(f);
    ck_assert_msg(e == BT_ECONNRESET || e == BT_ESQL, "%d %s", e, bt_future_error_message(f));
    bt_future_unref(f);
    assert_scalar(p, "SELECT 'replaced'", "replaced");
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_ge(st.broken, 1);
    bt_pq_pool_free(p);
}
END_TEST

/* ---- A server that stops answering (query_timeout_ms) -------------------- */

/* The backend pid running a statement that starts with prefix, found from
 * another connection, or 0; the newest, should a stopped one that ran it
 * before still be finishing. */
static int backend_running(const char *prefix)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT pid FROM pg_stat_activity WHERE query LIKE '%s%%' "
             "AND pid <> pg_backend_pid() ORDER BY backend_start DESC LIMIT 1",
             prefix);
    char *v = bt_test_pg_scalar(pg, sql);
    int pid = v != NULL ? atoi(v) : 0;
    free(v);
    return pid;
}

/* SIGSTOP the backend running prefix, as a wedged server would be; the
 * teardown of these tests resumes every backend (bt_test_pg_thaw). */
static int stop_backend(const char *prefix)
{
    int pid = backend_running(prefix);
    ck_assert_int_gt(pid, 0);
    ck_assert_int_eq(kill(pid, SIGSTOP), 0);
    return pid;
}

static void stall_teardown(void)
{
    bt_test_pg_thaw(pg);
    teardown();
}

/* Count how often each of a COPY's futures settles. */
static void count_settle(bt_future *f, void *arg)
{
    (void)f;
    (*(int *)arg)++;
}

static bt_pq_pool *new_pool_timeout(uint64_t ms)
{
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    o.min_size = 1;
    o.max_size = 1;
    o.query_timeout_ms = ms;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(p);
    return p;
}

START_TEST(a_stalled_copy_times_out_and_its_connection_is_discarded)
{
    bt_pq_pool *p = new_pool_timeout(1000);
    exec_ok(p, "CREATE TABLE stall_in (id int, pad text)");

    /* In: the backend stops reading; the write that waits for room fails
     * with BT_ETIMEDOUT, then the end; nothing was copied. */
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY stall_in FROM STDIN"));
    write_ok(cp, "1\tx\n", 4);
    int pid = stop_backend("COPY stall_in");
    static char chunk[9 * 7000];
    for (size_t i = 0; i < sizeof chunk; i += 9)
        memcpy(chunk + i, "2\tabcdef\n", 9);
    size_t len = sizeof chunk;
    int settles = 0;
    bt_future *w = NULL;
    for (int i = 0; i < 100000; i++) { /* until the socket is full */
        w = bt_pq_copy_write(cp, chunk, len);
        ck_assert_ptr_nonnull(w);
        if (!bt_future_is_settled(w))
            break;
        ck_assert_int_eq(bt_future_error(w), 0);
        bt_future_unref(w);
        w = NULL;
    }
    ck_assert_ptr_nonnull(w);
    bt_future_add_callback(w, count_settle, &settles);
    await(w);
    ck_assert_msg(bt_future_error(w) == BT_ETIMEDOUT, "%d %s", bt_future_error(w),
                  bt_future_error_message(w));
    ck_assert_ptr_nonnull(strstr(bt_future_error_message(w), "query_timeout_ms"));
    bt_future_unref(w);
    bt_future *end = await(bt_pq_copy_end(cp));
    bt_future_add_callback(end, count_settle, &settles);
    ck_assert_int_eq(bt_future_error(end), BT_ETIMEDOUT);
    bt_future_unref(end);
    ck_assert_int_eq(kill(pid, SIGCONT), 0);
    assert_scalar(p, "SELECT count(*) FROM stall_in", "0"); /* on a new connection */
    ck_assert_int_eq(settles, 2);

    /* The end: the backend stops before it answers CopyDone (whether the
     * rows went in is the server's to say, as for a query that timed out). */
    cp = open_in(bt_pq_copy_in(p, "COPY stall_in FROM STDIN"));
    write_ok(cp, "3\ty\n", 4);
    pid = stop_backend("COPY stall_in");
    end = await(bt_pq_copy_end(cp));
    ck_assert_int_eq(bt_future_error(end), BT_ETIMEDOUT);
    bt_future_unref(end);
    ck_assert_int_eq(kill(pid, SIGCONT), 0);
    assert_scalar(p, "SELECT 'usable'", "usable");

    /* Out: the backend stops sending rows; the future fails once. */
    int rows = 0;
    settles = 0;
    bt_future *out = bt_pq_copy_out(
        p,
        "COPY (SELECT g, repeat('x', 100), pg_sleep(0.001) FROM generate_series(1, 100000) g) "
        "TO STDOUT",
        count_rows, &rows);
    bt_future_add_callback(out, count_settle, &settles);
    while (rows == 0 && !bt_future_is_settled(out)) {
        bt_future *s = bt_sleep(loop, 5);
        await(s);
        bt_future_unref(s);
    }
    ck_assert_msg(!bt_future_is_settled(out), "%s", bt_future_error_message(out));
    pid = stop_backend("COPY (SELECT g, repeat");
    await(out);
    ck_assert_int_eq(bt_future_error(out), BT_ETIMEDOUT);
    ck_assert_int_lt(rows, 100000);
    bt_future_unref(out);
    ck_assert_int_eq(kill(pid, SIGCONT), 0);
    assert_scalar(p, "SELECT 'usable'", "usable");
    ck_assert_int_eq(settles, 1);

    /* Every stalled connection was discarded, none handed out again. */
    bt_pq_stats st = BT_SIZED(bt_pq_stats);
    bt_pq_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.broken, 3);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(a_slow_copy_that_keeps_moving_does_not_time_out)
{
    /* The timeout bounds each wait for the server, not the whole COPY:
     * rows that take 2 s in all, each well within 300 ms, go through, and
     * so does a writer that pauses longer than the timeout itself. (Each
     * row is larger than the server's 8 KiB output buffer, so that it is
     * sent as soon as it is made.) */
    bt_pq_pool *p = new_pool_timeout(300);
    exec_ok(p, "CREATE TABLE slow_in (id int)");
    int rows = 0;
    bt_future *out = bt_pq_copy_out(p,
                                    "COPY (SELECT g, repeat('x', 9000), pg_sleep(0.05) "
                                    "FROM generate_series(1, 40) g) TO STDOUT",
                                    count_rows, &rows);
    expect_ok(out, "slow copy out");
    ck_assert_int_eq(rows, 40);
    bt_future_unref(out);
    bt_pq_copy *cp = open_in(bt_pq_copy_in(p, "COPY slow_in FROM STDIN"));
    write_ok(cp, "1\n", 2);
    bt_future *s = bt_sleep(loop, 600);
    await(s);
    bt_future_unref(s);
    write_ok(cp, "2\n", 2);
    ck_assert_int_eq(end_ok(cp), 2);
    bt_pq_pool_free(p);
}
END_TEST

static Suite *copy_suite(void)
{
    Suite *s = suite_create("pq_copy");
    TCase *tc = tcase_create("copy");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, text_in_and_out);
    tcase_add_test(tc, binary_out_then_in);
    tcase_add_test(tc, hundred_thousand_rows_in_bounded_memory);
    tcase_add_test(tc, put_and_ready_without_a_future_per_row);
    tcase_add_test(tc, a_bad_row_fails_the_end_and_the_connection_stays_usable);
    tcase_add_test(tc, abort_copies_nothing_and_keeps_the_connection);
    tcase_add_test(tc, cancelling_a_pending_write_aborts_the_copy);
    tcase_add_test(tc, cancel_mid_copy_out);
    tcase_add_test(tc, copy_on_an_acquired_connection_in_a_transaction);
    tcase_add_test(tc, wrong_statements_are_refused_and_the_connection_stays_usable);
    tcase_add_test(tc, comments_are_read_as_the_server_reads_them);
    tcase_add_test(tc, null_arguments);
    tcase_add_test(tc, pool_free_mid_copy_settles_everything);
    tcase_add_test(tc, a_backend_killed_mid_copy_fails_and_is_replaced);
    suite_add_tcase(s, tc);
    /* Backends stopped with SIGSTOP: a teardown that resumes them (and a
     * case of its own, CK_RUN_CASE=stall). */
    tc = tcase_create("stall");
    tcase_add_checked_fixture(tc, setup, stall_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, a_stalled_copy_times_out_and_its_connection_is_discarded);
    tcase_add_test(tc, a_slow_copy_that_keeps_moving_does_not_time_out);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return bt_test_pq_main(&pg, copy_suite(), "test_pq_copy");
}
