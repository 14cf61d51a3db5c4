/* bench pg_select and pg_select_pipelined: 50,000 point selects by id on a
 * users(id, name, email) table of 10,000 rows, at concurrency 16, against a
 * throwaway PostgreSQL server (tests/pg_harness) on loopback TCP.
 *
 * Anchor (both lines): raw nonblocking libpq, 16 connections, one query in
 * flight on each, driven by poll(2), with the statement prepared on every
 * connection (the same as the pool does, so the comparison is fair).
 *
 * pg_select: Baton's pool, 16 connections, pipeline_depth 1 (one query in
 * flight each), 16 callers each issuing its next query from the previous
 * one's callback. Goal: ratio >= 0.9.
 * pg_select_pipelined: the same 16 callers on a pool of fewer connections
 * with pipelining on (the pool sends the queued queries together). Goal:
 * ratio >= 3.
 *
 * Each measure runs ROUNDS times, after a warm-up, the three measured back
 * to back in each round in a rotating order; values are medians and ratios
 * those of the medians (the median of the rounds' own ratios goes to
 * stderr). Output, one line per measure:
 *   bench NAME baton=V anchor=raw_libpq_nonblocking_16conn anchor_value=V unit=queries/s ratio=R better=higher
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <libpq-fe.h>

#include <baton/baton.h>
#include <baton/pq.h>

#include "bench.h"
#include "pg_harness.h"

enum { ROWS = 10000, QUERIES = 50000, CONC = 16, ROUNDS = 5 };
static const char *SQL = "SELECT id, name, email FROM users WHERE id = $1";

static void die(const char *what)
{
    fprintf(stderr, "pg_select: %s\n", what);
    exit(1);
}

/* ---- Anchor: raw nonblocking libpq ---------------------------------------- */

typedef struct {
    PGconn *c;
    bool busy;
} raw_conn;

static unsigned rnd_state = 12345;
static int next_id(void)
{
    rnd_state = rnd_state * 1103515245u + 12345u;
    return (int)((rnd_state >> 8) % ROWS) + 1;
}

static bool raw_send(raw_conn *rc)
{
    char buf[16];
    snprintf(buf, sizeof buf, "%d", next_id());
    const char *v[] = { buf };
    if (!PQsendQueryPrepared(rc->c, "s", 1, v, NULL, NULL, 0))
        return false;
    while (PQflush(rc->c) == 1) {
    }
    rc->busy = true;
    return true;
}

/* The anchor's connections, opened once like the pools' (so that no round
 * pays for another's connection setup or backend exits). */
static raw_conn rc[CONC];

static void raw_open(const char *conninfo)
{
    for (int i = 0; i < CONC; i++) {
        rc[i].c = PQconnectdb(conninfo);
        if (PQstatus(rc[i].c) != CONNECTION_OK)
            die(PQerrorMessage(rc[i].c));
        PGresult *r = PQprepare(rc[i].c, "s", SQL, 1, NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            die(PQerrorMessage(rc[i].c));
        PQclear(r);
        PQsetnonblocking(rc[i].c, 1);
    }
}

static void raw_close(void)
{
    for (int i = 0; i < CONC; i++)
        PQfinish(rc[i].c);
}

static double run_raw(int total)
{
    struct pollfd pfd[CONC];
    for (int i = 0; i < CONC; i++) {
        pfd[i].fd = PQsocket(rc[i].c);
        pfd[i].events = POLLIN;
        rc[i].busy = false;
    }
    int sent = 0, done = 0;
    uint64_t t0 = bt_hrtime();
    for (int i = 0; i < CONC && sent < total; i++, sent++)
        if (!raw_send(&rc[i]))
            die("send");
    while (done < total) {
        if (poll(pfd, CONC, 5000) <= 0)
            die("poll timed out");
        for (int i = 0; i < CONC; i++) {
            if (!(pfd[i].revents & POLLIN))
                continue;
            if (!PQconsumeInput(rc[i].c))
                die(PQerrorMessage(rc[i].c));
            while (rc[i].busy && !PQisBusy(rc[i].c)) {
                PGresult *r = PQgetResult(rc[i].c);
                if (!r) {
                    rc[i].busy = false;
                    done++;
                    if (sent < total) {
                        sent++;
                        if (!raw_send(&rc[i]))
                            die("send");
                    }
                    break;
                }
                if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
                    die("bad result");
                PQclear(r);
            }
        }
    }
    double secs = (double)(bt_hrtime() - t0) / 1e9;
    return total / secs;
}

/* ---- Baton ----------------------------------------------------------------- */

typedef struct {
    bt_pq_pool *pool;
    int total, sent, done, errors;
    bt_future *finished;
} bench;

static void issue(bench *b);

static void on_done(bt_future *f, void *arg)
{
    bench *b = arg;
    if (bt_future_error(f) != 0) {
        fprintf(stderr, "pg_select: %s\n", bt_future_error_message(f));
        b->errors++;
    } else if (bt_pq_result_rows(bt_future_value(f)) != 1) {
        b->errors++;
    }
    b->done++;
    if (b->done == b->total)
        bt_future_set_value(b->finished, NULL, NULL);
    else
        issue(b);
}

static void issue(bench *b)
{
    if (b->sent >= b->total)
        return;
    b->sent++;
    char buf[16];
    snprintf(buf, sizeof buf, "%d", next_id());
    const char *v[] = { buf };
    bt_future *f = bt_pq_query(b->pool, SQL, 1, v);
    if (!f)
        die("bt_pq_query");
    bt_future_add_callback(f, on_done, b);
    bt_future_unref(f);
}

static double run_baton(bt_loop *loop, bt_pq_pool *pool, int total)
{
    bench b = { .pool = pool, .total = total };
    b.finished = bt_future_new(loop);
    uint64_t t0 = bt_hrtime();
    for (int i = 0; i < CONC; i++)
        issue(&b);
    bt_loop_run_until(loop, b.finished);
    double secs = (double)(bt_hrtime() - t0) / 1e9;
    bt_future_unref(b.finished);
    if (b.errors)
        die("queries failed");
    return total / secs;
}

static bt_pq_pool *make_pool(bt_loop *loop, const char *conninfo, unsigned size, unsigned depth)
{
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = conninfo;
    o.min_size = size;
    o.max_size = size;
    o.pipeline_depth = depth;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    if (!p)
        die("bt_pq_pool_new");
    /* Wait until all are open, so no measure includes connecting. */
    for (;;) {
        bt_pq_stats st = BT_SIZED(bt_pq_stats);
        bt_pq_pool_get_stats(p, &st);
        if (st.idle == size)
            break;
        bt_future *s = bt_sleep(loop, 10);
        bt_loop_run_until(loop, s);
        bt_future_unref(s);
    }
    return p;
}

int main(int argc, char **argv)
{
    unsigned pipe_conns = argc > 1 ? (unsigned)atoi(argv[1]) : 2;
    unsigned pipe_depth = argc > 2 ? (unsigned)atoi(argv[2]) : 64;
    bt_test_pg *pg = bt_test_pg_start();
    if (!pg)
        die("could not start PostgreSQL");
    char setup[512];
    snprintf(setup, sizeof setup,
             "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL);"
             "INSERT INTO users SELECT g, 'user ' || g, 'user' || g || '@example.com' "
             "FROM generate_series(1, %d) g; ANALYZE users;",
             ROWS);
    if (bt_test_pg_exec(pg, setup) != 0)
        die("setup failed");
    const char *ci = bt_test_pg_conninfo(pg);

    bt_loop *loop = bt_loop_new();
    bt_pq_pool *plain = make_pool(loop, ci, CONC, 1);
    bt_pq_pool *piped = make_pool(loop, ci, pipe_conns, pipe_depth);
    /* Warm up: statements prepared, caches hot. */
    raw_open(ci);
    run_raw(2000);
    run_baton(loop, plain, 2000);
    run_baton(loop, piped, 2000);

    /* Diagnostics: `pg_select CONNS DEPTH raw|baton|piped` runs one measure
     * once (for strace -c or perf) and prints its rate. */
    if (argc > 3) {
        struct rusage u0, u1;
        getrusage(RUSAGE_SELF, &u0);
        double v = strcmp(argv[3], "raw") == 0     ? run_raw(QUERIES)
                   : strcmp(argv[3], "baton") == 0 ? run_baton(loop, plain, QUERIES)
                                                   : run_baton(loop, piped, QUERIES);
        getrusage(RUSAGE_SELF, &u1);
        double us = (double)(u1.ru_utime.tv_sec - u0.ru_utime.tv_sec) * 1e6 +
                    (double)(u1.ru_utime.tv_usec - u0.ru_utime.tv_usec);
        double sy = (double)(u1.ru_stime.tv_sec - u0.ru_stime.tv_sec) * 1e6 +
                    (double)(u1.ru_stime.tv_usec - u0.ru_stime.tv_usec);
        printf("%s %.0f queries/s, client CPU per query: user %.2f us, sys %.2f us, "
               "context switches %ld voluntary %ld involuntary\n",
               argv[3], v, us / QUERIES, sy / QUERIES, u1.ru_nvcsw - u0.ru_nvcsw,
               u1.ru_nivcsw - u0.ru_nivcsw);
        raw_close();
        bt_pq_pool_free(plain);
        bt_pq_pool_free(piped);
        bt_loop_free(loop);
        bt_test_pg_free(pg);
        return 0;
    }
    double raw[ROUNDS], bat[ROUNDS], pip[ROUNDS];
    double r1[ROUNDS], r2[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        /* Each round measures the three back to back, in a rotating order,
         * and its ratios compare neighbours: the machine is shared, and
         * its load drifts more between rounds than within one. */
        for (int k = 0; k < 3; k++) {
            switch ((r + k) % 3) {
            case 0:
                raw[r] = run_raw(QUERIES);
                break;
            case 1:
                bat[r] = run_baton(loop, plain, QUERIES);
                break;
            default:
                pip[r] = run_baton(loop, piped, QUERIES);
                break;
            }
        }
        r1[r] = bat[r] / raw[r];
        r2[r] = pip[r] / raw[r];
        fprintf(stderr, "pg_select: round %d: raw %.0f, baton %.0f, pipelined %.0f\n", r, raw[r],
                bat[r], pip[r]);
    }
    double a = median_d(raw, ROUNDS), b = median_d(bat, ROUNDS), c = median_d(pip, ROUNDS);
    double ratio1 = median_d(r1, ROUNDS), ratio2 = median_d(r2, ROUNDS);
    fprintf(stderr, "pg_select: pipelined pool: %u connections, depth %u\n", pipe_conns,
            pipe_depth);
    fflush(stderr);
    /* The lines' ratios are of the medians, as `make bench` promises; the
     * medians of the per-round ratios (neighbours compared) go to stderr. */
    fprintf(stderr, "pg_select: median per-round ratio: baton %.2f, pipelined %.2f\n", ratio1,
            ratio2);
    bench_line("pg_select", b, "raw_libpq_nonblocking_16conn", a, "queries/s", "higher");
    bench_line("pg_select_pipelined", c, "raw_libpq_nonblocking_16conn", a, "queries/s", "higher");
    raw_close();
    bt_pq_pool_free(plain);
    bt_pq_pool_free(piped);
    bt_loop_free(loop);
    bt_test_pg_free(pg);
    return 0;
}
