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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <baton/baton.h>
#include <baton/pq.h>

#include "bench.h"
#include "pg_bench.h"

enum { QUERIES = 50000, CONC = 16, ROUNDS = 5 };

typedef struct {
    bt_loop *loop;
    pgb_raw *raw;
    bt_pq_pool *plain, *piped;
} setup;

/* Measure which (0 raw, 1 the plain pool, 2 the pipelined one) over total
 * queries; queries per second. */
static double run(setup *s, int which, int total)
{
    pgb_load l = {
        .conc = CONC, .total = total, .send = pgb_send_user, .check = pgb_check_one_row
    };
    if (which == 0)
        return pgb_raw_run(s->raw, &l);
    l.arg = which == 1 ? s->plain : s->piped;
    return pgb_load_run(s->loop, &l);
}

static double measure(int which, int round, void *arg)
{
    (void)round;
    return run(arg, which, QUERIES);
}

/* `pg_select CONNS DEPTH raw|baton|piped` runs one measure once (for
 * strace -c or perf) and prints its rate and the client's CPU. */
static void diagnose(setup *s, const char *what)
{
    struct rusage u0, u1;
    getrusage(RUSAGE_SELF, &u0);
    int which = strcmp(what, "raw") == 0 ? 0 : strcmp(what, "baton") == 0 ? 1 : 2;
    double v = run(s, which, QUERIES);
    getrusage(RUSAGE_SELF, &u1);
    double us = (double)(u1.ru_utime.tv_sec - u0.ru_utime.tv_sec) * 1e6 +
                (double)(u1.ru_utime.tv_usec - u0.ru_utime.tv_usec);
    double sy = (double)(u1.ru_stime.tv_sec - u0.ru_stime.tv_sec) * 1e6 +
                (double)(u1.ru_stime.tv_usec - u0.ru_stime.tv_usec);
    printf("%s %.0f queries/s, client CPU per query: user %.2f us, sys %.2f us, "
           "context switches %ld voluntary %ld involuntary\n",
           what, v, us / QUERIES, sy / QUERIES, u1.ru_nvcsw - u0.ru_nvcsw,
           u1.ru_nivcsw - u0.ru_nivcsw);
}

int main(int argc, char **argv)
{
    pgb_name = "pg_select";
    unsigned pipe_conns = argc > 1 ? (unsigned)atoi(argv[1]) : 2;
    unsigned pipe_depth = argc > 2 ? (unsigned)atoi(argv[2]) : 64;
    bt_test_pg *pg = pgb_start_users();
    const char *ci = bt_test_pg_conninfo(pg);

    setup s = { .loop = bt_loop_new() };
    s.plain = pgb_pool(s.loop, ci, CONC, 1);
    s.piped = pgb_pool(s.loop, ci, pipe_conns, pipe_depth);
    s.raw = pgb_raw_open(ci, CONC, pgb_user_sql);
    /* Warm up: statements prepared, caches hot. */
    for (int which = 0; which < 3; which++)
        run(&s, which, 2000);

    if (argc > 3) {
        diagnose(&s, argv[3]);
    } else {
        double v[3][PGB_MAX_ROUNDS];
        const char *labels[] = { "raw", "baton", "pipelined" };
        pgb_rounds(ROUNDS, 3, measure, &s, labels, "queries/s", v);
        double a = pgb_median(v, 0, ROUNDS), b = pgb_median(v, 1, ROUNDS);
        double c = pgb_median(v, 2, ROUNDS);
        fprintf(stderr, "pg_select: pipelined pool: %u connections, depth %u\n", pipe_conns,
                pipe_depth);
        /* The lines' ratios are of the medians, as `make bench` promises;
         * the medians of the per-round ratios (neighbours compared) go to
         * stderr. */
        fprintf(stderr, "pg_select: median per-round ratio: baton %.2f, pipelined %.2f\n",
                pgb_median_ratio(v, 1, ROUNDS), pgb_median_ratio(v, 2, ROUNDS));
        fflush(stderr);
        bench_line("pg_select", b, "raw_libpq_nonblocking_16conn", a, "queries/s", "higher");
        bench_line("pg_select_pipelined", c, "raw_libpq_nonblocking_16conn", a, "queries/s",
                   "higher");
    }
    pgb_raw_close(s.raw);
    bt_pq_pool_free(s.plain);
    bt_pq_pool_free(s.piped);
    bt_loop_free(s.loop);
    bt_test_pg_free(pg);
    return 0;
}
