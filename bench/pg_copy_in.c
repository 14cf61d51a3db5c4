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
#include "pg_bench.h"

enum { ROWS = 1000000, ROUNDS = 3 };
static const char *COPY_SQL = "COPY narrow (id, name) FROM STDIN";

static char *data;    /* every row, back to back */
static size_t *start; /* row i is data[start[i] .. start[i + 1]) */

static void make_rows(void)
{
    start = malloc((ROWS + 1) * sizeof *start);
    data = malloc((size_t)ROWS * 24);
    if (start == NULL || data == NULL)
        pgb_die("out of memory");
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
        pgb_die(PQerrorMessage(c));
    PQclear(r);
    for (int i = 0; i < ROWS; i++)
        if (PQputCopyData(c, data + start[i], (int)(start[i + 1] - start[i])) != 1)
            pgb_die(PQerrorMessage(c));
    if (PQputCopyEnd(c, NULL) != 1)
        pgb_die(PQerrorMessage(c));
    r = PQgetResult(c);
    if (PQresultStatus(r) != PGRES_COMMAND_OK || strcmp(PQcmdTuples(r), "1000000") != 0)
        pgb_die(PQerrorMessage(c));
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
        pgb_die(bt_future_error_message(f));
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
            pgb_die(bt_strerror(e));
        fd->next++;
    }
    bt_future *e = bt_pq_copy_end(fd->cp);
    if (e == NULL)
        pgb_die("bt_pq_copy_end");
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
        pgb_die(bt_future_error_message(o));
    feeder fd = { .cp = bt_future_take_value(o), .done = bt_future_new(loop) };
    bt_future_unref(o);
    feed(&fd);
    bt_loop_run_until(loop, fd.done);
    if (bt_future_error(fd.done) != 0)
        pgb_die(bt_future_error_message(fd.done));
    if (bt_pq_result_affected(bt_future_value(fd.done)) != ROWS)
        pgb_die("wrong row count");
    double v = ROWS / ((double)(now_ns() - t0) / 1e9);
    bt_future_unref(fd.done);
    return v;
}

typedef struct {
    bt_test_pg *pg;
    PGconn *raw;
    bt_loop *loop;
    bt_pq_pool *pool;
    double cpu[2]; /* the client's CPU time of each measure, in ns */
} setup;

/* Measure 0 is raw libpq (the anchor), 1 Baton; on an empty table. */
static double measure(int which, int round, void *arg)
{
    (void)round;
    setup *s = arg;
    if (bt_test_pg_exec(s->pg, "TRUNCATE narrow; CHECKPOINT") != 0)
        pgb_die("truncate failed");
    uint64_t c0 = cpu_ns();
    double v = which == 0 ? run_raw(s->raw) : run_baton(s->loop, s->pool);
    s->cpu[which] += (double)(cpu_ns() - c0);
    return v;
}

int main(void)
{
    pgb_name = "pg_copy_in";
    setup s = { .pg = pgb_start("CREATE TABLE narrow (id int, name text)") };
    make_rows();
    const char *ci = bt_test_pg_conninfo(s.pg);
    s.raw = PQconnectdb(ci);
    if (PQstatus(s.raw) != CONNECTION_OK)
        pgb_die(PQerrorMessage(s.raw));
    s.loop = bt_loop_new();
    s.pool = pgb_pool(s.loop, ci, 1, 16);

    double v[2][PGB_MAX_ROUNDS];
    const char *labels[] = { "raw", "baton" };
    pgb_rounds(ROUNDS, 2, measure, &s, labels, "rows/s", v);
    /* The client's own CPU per row: the server is the bottleneck, this is
     * what each client adds to it. */
    fprintf(stderr, "pg_copy_in: client CPU per row: raw %.0f ns, baton %.0f ns\n",
            s.cpu[0] / ROUNDS / ROWS, s.cpu[1] / ROUNDS / ROWS);
    double ma = pgb_median(v, 0, ROUNDS), mb = pgb_median(v, 1, ROUNDS);
    fprintf(stderr, "pg_copy_in: median per-round ratio %.2f\n", pgb_median_ratio(v, 1, ROUNDS));
    fflush(stderr);
    bench_line("pg_copy_in", mb, "raw_libpq", ma, "rows/s", "higher");
    bt_pq_pool_free(s.pool);
    bt_loop_free(s.loop);
    PQfinish(s.raw);
    bt_test_pg_free(s.pg);
    free(data);
    free(start);
    return 0;
}
