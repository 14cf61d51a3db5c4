/* bench pg_select_p99 and pg_select_p99_qps: the tail latency and the
 * throughput of point selects by id (a users(id, name, email) table of
 * 10,000 rows) at a fixed concurrency of 64, against a throwaway
 * PostgreSQL server (tests/pg_harness) on loopback TCP.
 *
 * 64 callers, each sending its next query when the previous one settles
 * (as wrk's connections do), for RUN_MS; every query's latency, from the
 * caller's send to its settling, is recorded.
 *
 * Baton: a pool of 16 connections with pipelining on (pipeline_depth 16,
 * the default), so the 64 callers' queries share connections and Syncs.
 * Anchor: raw nonblocking libpq on one poll(2) loop, 16 connections, one
 * query in flight on each (as plain libpq code runs), the other callers'
 * queries waiting in order for the next free connection; the statement is
 * prepared on each, as the pool does. The same 16 server backends serve
 * both.
 *
 * Goal: p99 at most the anchor's (ratio <= 1) at 3x its throughput or
 * more. ROUNDS rounds after a warm-up, the two back to back in alternating
 * order; values are medians (of the rounds' p99s, and of their rates), the
 * ratios those of the medians (the medians of the per-round ratios, and
 * each round's p50, p99, p99.9 and max, go to stderr). Output:
 *   bench pg_select_p99 baton=V anchor=raw_libpq_nonblocking_16conn anchor_value=V unit=ms ratio=R better=lower
 *   bench pg_select_p99_qps baton=V anchor=raw_libpq_nonblocking_16conn anchor_value=V unit=queries/s ratio=R better=higher
 *
 * `pg_select_p99 CONNS DEPTH [CONCURRENCY]` runs the pool with CONNS
 * connections and that pipeline_depth instead, and at another concurrency
 * (for experiments).
 */
#include <stdio.h>
#include <stdlib.h>

#include <baton/baton.h>
#include <baton/pq.h>

#include "bench.h"
#include "pg_bench.h"

enum { CONNS = 16, ROUNDS = 5, RUN_MS = 3000, WARM_MS = 1000 };
static int conc = 64;

typedef struct {
    bt_loop *loop;
    pgb_raw *raw;
    bt_pq_pool *pool;
    uint64_t *lat;
    double qps[2][PGB_MAX_ROUNDS];
} setup;

/* Measure which (0 raw, 1 the pool) for ms; its p99 in ms (its rate goes
 * to s->qps). */
static double run(setup *s, int which, int round, uint64_t ms)
{
    pgb_load l = { .conc = conc,
                   .run_ms = ms,
                   .send = pgb_send_user,
                   .check = pgb_check_one_row,
                   .arg = s->pool,
                   .lat = s->lat,
                   .lat_cap = (size_t)RUN_MS * 1000 };
    double qps = which == 0 ? pgb_raw_run(s->raw, &l) : pgb_load_run(s->loop, &l);
    s->qps[which][round] = qps;
    double p50 = (double)percentile(s->lat, l.nlat, 50) / 1e6;
    double p99 = (double)percentile(s->lat, l.nlat, 99) / 1e6;
    double p999 = (double)percentile(s->lat, l.nlat, 99.9) / 1e6;
    double max = (double)percentile(s->lat, l.nlat, 100) / 1e6;
    fprintf(stderr,
            "pg_select_p99: %s: %.0f queries/s, p50 %.2f ms, p99 %.2f ms, "
            "p99.9 %.2f ms, max %.2f ms\n",
            which == 0 ? "raw" : "pool", qps, p50, p99, p999, max);
    return p99;
}

static double measure(int which, int round, void *arg)
{
    return run(arg, which, round, RUN_MS);
}

int main(int argc, char **argv)
{
    pgb_name = "pg_select_p99";
    unsigned conns = argc > 1 ? (unsigned)atoi(argv[1]) : CONNS;
    unsigned depth = argc > 2 ? (unsigned)atoi(argv[2]) : 16;
    if (argc > 3)
        conc = atoi(argv[3]);
    bt_test_pg *pg = pgb_start_users();
    const char *ci = bt_test_pg_conninfo(pg);

    /* Room for every latency of a run at up to 1,000 queries per ms. */
    setup s = { .loop = bt_loop_new(), .lat = malloc((size_t)RUN_MS * 1000 * sizeof(uint64_t)) };
    if (s.lat == NULL)
        pgb_die("out of memory");
    s.pool = pgb_pool(s.loop, ci, conns, depth);
    s.raw = pgb_raw_open(ci, CONNS, pgb_user_sql);
    /* Warm up: statements prepared, caches hot. */
    run(&s, 0, 0, WARM_MS);
    run(&s, 1, 0, WARM_MS);

    double v[2][PGB_MAX_ROUNDS];
    const char *labels[] = { "raw p99", "pool p99" };
    pgb_rounds(ROUNDS, 2, measure, &s, labels, "ms", v);
    double a = pgb_median(v, 0, ROUNDS), b = pgb_median(v, 1, ROUNDS);
    double qa = pgb_median(s.qps, 0, ROUNDS), qb = pgb_median(s.qps, 1, ROUNDS);
    fprintf(stderr, "pg_select_p99: pool: %u connections, depth %u; concurrency %d\n", conns, depth,
            conc);
    fprintf(stderr, "pg_select_p99: median per-round ratio: p99 %.2f, queries/s %.2f\n",
            pgb_median_ratio(v, 1, ROUNDS), pgb_median_ratio(s.qps, 1, ROUNDS));
    fflush(stderr);
    bench_line("pg_select_p99", b, "raw_libpq_nonblocking_16conn", a, "ms", "lower");
    bench_line("pg_select_p99_qps", qb, "raw_libpq_nonblocking_16conn", qa, "queries/s", "higher");
    pgb_raw_close(s.raw);
    bt_pq_pool_free(s.pool);
    bt_loop_free(s.loop);
    bt_test_pg_free(pg);
    free(s.lat);
    return 0;
}
