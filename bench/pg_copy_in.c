/* bench pg_copy_in: COPY 1,000,000 narrow rows (an int and a short text,
 * text format) into a table on a throwaway PostgreSQL server
 * (tests/pg_harness), over loopback TCP.
 *
 * Anchor: raw libpq, blocking, one connection: PQexec("COPY ... FROM
 * STDIN"), PQputCopyData per row, PQputCopyEnd, PQgetResult.
 * Baton: a pool of one connection, bt_pq_copy_in, bt_pq_copy_put per row
 * (on BT_EAGAIN, libpq holding 16 KiB unsent, it waits for
 * bt_pq_copy_ready's future), bt_pq_copy_end.
 * Both send the same bytes, made before the clock starts; the table is
 * truncated before each run. Goal: ratio >= 0.9.
 *
 * ROUNDS rounds, the two back to back in alternating order; values are
 * medians, the ratio that of the medians (the median of the rounds' own
 * ratios goes to stderr). Output:
 *   bench pg_copy_in baton=V anchor=raw_libpq anchor_value=V unit=rows/s ratio=R better=higher
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include <baton/baton.h>
#include <baton/pq.h>

#include "bench.h"
#include "pg_harness.h"

enum { ROWS = 1000000, ROUNDS = 3 };
static const char *COPY_SQL = "COPY narrow (id, name) FROM STDIN";

static char *data;    /* every row, back to back */
static size_t *start; /* row i is data[start[i] .. start[i + 1]) */

static void die(const char *what)
{
    fprintf(stderr, "pg_copy_in: %s\n", what);
    exit(1);
}

static void make_rows(void)
{
    start = malloc((ROWS + 1) * sizeof *start);
    data = malloc((size_t)ROWS * 24);
    if (start == NULL || data == NULL)
        die("out of memory");
    size_t at = 0;
    for (int i = 0; i < ROWS; i++) {
        start[i] = at;
        at += (size_t)sprintf(data + at, "%d\tn%d\n", i, i % 1000);
    }
    start[ROWS] = at;
}

/* ---- Anchor: raw blocking libpq ----------------------------------------- */

static double run_raw(PGconn *c)
{
    uint64_t t0 = now_ns();
    PGresult *r = PQexec(c, COPY_SQL);
    if (PQresultStatus(r) != PGRES_COPY_IN)
        die(PQerrorMessage(c));
    PQclear(r);
    for (int i = 0; i < ROWS; i++)
        if (PQputCopyData(c, data + start[i], (int)(start[i + 1] - start[i])) != 1)
            die(PQerrorMessage(c));
    if (PQputCopyEnd(c, NULL) != 1)
        die(PQerrorMessage(c));
    r = PQgetResult(c);
    if (PQresultStatus(r) != PGRES_COMMAND_OK || strcmp(PQcmdTuples(r), "1000000") != 0)
        die(PQerrorMessage(c));
    PQclear(r);
    while ((r = PQgetResult(c)) != NULL)
        PQclear(r);
    return ROWS / ((double)(now_ns() - t0) / 1e9);
}

/* ---- Baton ------------------------------------------------------------------ */

typedef struct {
    bt_pq_copy *cp;
    int next;
    bt_future *done;
} feeder;

static void feed(feeder *fd);
static void on_end(bt_future *e, void *arg);

static void on_ready(bt_future *f, void *arg)
{
    if (bt_future_error(f) != 0)
        die(bt_future_error_message(f));
    feed(arg);
}

/* bt_pq_copy_put, as a loop writing rows would: on BT_EAGAIN wait for
 * bt_pq_copy_ready and put the same row again. */
static void feed(feeder *fd)
{
    while (fd->next < ROWS) {
        int i = fd->next;
        int e = bt_pq_copy_put(fd->cp, data + start[i], start[i + 1] - start[i]);
        if (e == BT_EAGAIN) {
            bt_future *f = bt_pq_copy_ready(fd->cp);
            bt_future_add_callback(f, on_ready, fd);
            bt_future_unref(f);
            return;
        }
        if (e != 0)
            die(bt_strerror(e));
        fd->next++;
    }
    bt_future *e = bt_pq_copy_end(fd->cp);
    if (e == NULL)
        die("bt_pq_copy_end");
    bt_future_add_callback(e, on_end, fd->done);
    bt_future_unref(e);
}

static void on_end(bt_future *e, void *arg)
{
    bt_future_set_from(arg, e);
}

static double run_baton(bt_loop *loop, bt_pq_pool *pool)
{
    uint64_t t0 = now_ns();
    bt_future *o = bt_pq_copy_in(pool, COPY_SQL);
    bt_loop_run_until(loop, o);
    if (bt_future_error(o) != 0)
        die(bt_future_error_message(o));
    feeder fd = { .cp = bt_future_take_value(o), .done = bt_future_new(loop) };
    bt_future_unref(o);
    feed(&fd);
    bt_loop_run_until(loop, fd.done);
    if (bt_future_error(fd.done) != 0)
        die(bt_future_error_message(fd.done));
    if (bt_pq_result_affected(bt_future_value(fd.done)) != ROWS)
        die("wrong row count");
    double v = ROWS / ((double)(now_ns() - t0) / 1e9);
    bt_future_unref(fd.done);
    return v;
}

int main(void)
{
    bt_test_pg *pg = bt_test_pg_start();
    if (!pg)
        die("could not start PostgreSQL");
    if (bt_test_pg_exec(pg, "CREATE TABLE narrow (id int, name text)") != 0)
        die("setup failed");
    make_rows();
    const char *ci = bt_test_pg_conninfo(pg);
    PGconn *raw = PQconnectdb(ci);
    if (PQstatus(raw) != CONNECTION_OK)
        die(PQerrorMessage(raw));
    bt_loop *loop = bt_loop_new();
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = ci;
    o.min_size = 1;
    o.max_size = 1;
    bt_pq_pool *pool = bt_pq_pool_new(loop, &o);
    if (pool == NULL)
        die("bt_pq_pool_new");
    bt_future *ready = bt_pq_pool_ready(pool);
    bt_loop_run_until(loop, ready);
    bt_future_unref(ready);

    double a[ROUNDS], b[ROUNDS], r[ROUNDS], cpu[2] = { 0, 0 };
    for (int k = 0; k < ROUNDS; k++) {
        for (int j = 0; j < 2; j++) {
            if (bt_test_pg_exec(pg, "TRUNCATE narrow; CHECKPOINT") != 0)
                die("truncate failed");
            uint64_t c0 = cpu_ns();
            bool is_raw = (k + j) % 2 == 0;
            if (is_raw)
                a[k] = run_raw(raw);
            else
                b[k] = run_baton(loop, pool);
            cpu[is_raw ? 0 : 1] += (double)(cpu_ns() - c0);
        }
        r[k] = b[k] / a[k];
        fprintf(stderr, "pg_copy_in: round %d: raw %.0f, baton %.0f rows/s\n", k, a[k], b[k]);
    }
    /* The client's own CPU per row: the server is the bottleneck, this is
     * what each client adds to it. */
    fprintf(stderr, "pg_copy_in: client CPU per row: raw %.0f ns, baton %.0f ns\n",
            cpu[0] / ROUNDS / ROWS, cpu[1] / ROUNDS / ROWS);
    double ma = median_d(a, ROUNDS), mb = median_d(b, ROUNDS);
    fprintf(stderr, "pg_copy_in: median per-round ratio %.2f\n", median_d(r, ROUNDS));
    fflush(stderr);
    bench_line("pg_copy_in", mb, "raw_libpq", ma, "rows/s", "higher");
    bt_pq_pool_free(pool);
    bt_loop_free(loop);
    PQfinish(raw);
    bt_test_pg_free(pg);
    free(data);
    free(start);
    return 0;
}
