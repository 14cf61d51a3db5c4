/* bench pg_select_wide: range selects of 100 rows of 20 columns (int8,
 * int4, int2, float8, float4, bool, uuid, timestamptz, bytea) on a table
 * of 10,000 rows, every value read through the typed getters, against a
 * throwaway PostgreSQL server (tests/pg_harness) on loopback TCP.
 *
 * baton: the pool asks for binary results (bt_pq_query_opts.result_format
 * = 1), so the server sends each value's bytes and the getters decode
 * them. Anchor (text_format): the same pool, the same queries and the same
 * getters with text results, the default, where the server prints every
 * value and the getters parse it. Both read the same numbers (a checksum
 * of every value must match, or the bench fails).
 *
 * 16 callers, each issuing its next query when the previous one settles,
 * on a pool of 4 connections. ROUNDS rounds after a warm-up, the two
 * measured back to back in each round, in alternating order; values are
 * medians, the ratio that of the medians (the median of the per-round
 * ratios goes to stderr). Output:
 *   bench pg_select_wide baton=V anchor=text_format anchor_value=V unit=rows/s ratio=R better=higher
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <baton/baton.h>
#include <baton/pq.h>

#include "bench.h"
#include "pg_bench.h"

enum { ROWS = 10000, SPAN = 100, QUERIES = 3000, CONC = 16, CONNS = 4, ROUNDS = 5 };
static const char *SQL = "SELECT * FROM wide WHERE id BETWEEN $1 AND $1 + 99";

typedef struct {
    bt_pq_pool *pool;
    int format;
    int errors;
    uint64_t rows;
    uint64_t sum; /* a checksum of every value read, whatever the order the
                     queries' results came in */
    unsigned rnd;
} wide;

/* Read every value of r through the getters, as a program would. */
static void read_rows(wide *b, const bt_pq_result *r)
{
    int rows = bt_pq_result_rows(r), cols = bt_pq_result_columns(r);
    uint64_t h = 0;
    for (int i = 0; i < rows; i++) {
        for (int c = 0; c < cols; c++) {
            unsigned type = bt_pq_result_column_type(r, c);
            int rc;
            uint64_t x = 0;
            if (type == 20 || type == 23 || type == 21) {
                int64_t v;
                rc = bt_pq_result_int64(r, i, c, &v);
                x = (uint64_t)v;
            } else if (type == 701 || type == 700) {
                double v;
                rc = bt_pq_result_double(r, i, c, &v);
                x = (uint64_t)(int64_t)llround(v * 1000.0);
            } else if (type == 16) {
                bool v;
                rc = bt_pq_result_bool(r, i, c, &v);
                x = v;
            } else if (type == 2950) {
                uint8_t v[16];
                rc = bt_pq_result_uuid(r, i, c, v);
                x = v[0] | (uint64_t)v[15] << 8;
            } else if (type == 1184) {
                int64_t v;
                rc = bt_pq_result_timestamptz(r, i, c, &v);
                x = (uint64_t)v;
            } else {
                uint8_t v[32];
                size_t n;
                rc = bt_pq_result_bytes(r, i, c, v, sizeof v, &n);
                x = n > 0 ? v[0] + n : 0;
            }
            if (rc != 0)
                b->errors++;
            h = h * 31 + x;
        }
    }
    b->sum += h;
    b->rows += (uint64_t)rows;
}

static bt_future *send_range(pgb_load *l)
{
    wide *b = l->arg;
    b->rnd = b->rnd * 1103515245u + 12345u;
    char buf[16];
    snprintf(buf, sizeof buf, "%d", (int)((b->rnd >> 8) % (ROWS - SPAN + 1)) + 1);
    const char *v[] = { buf };
    bt_pq_query_opts o = BT_SIZED(bt_pq_query_opts);
    o.result_format = b->format;
    return bt_pq_query_ex(b->pool, SQL, 1, v, &o);
}

static void check_rows(pgb_load *l, bt_future *f)
{
    wide *b = l->arg;
    read_rows(b, bt_future_value(f));
    l->errors += b->errors;
    b->errors = 0;
}

/* One measure: total queries in format; rows per second. The checksum of
 * what was read goes to *sum (the same random ids each time). */
static double run(bt_loop *loop, bt_pq_pool *pool, int format, int total, uint64_t *sum)
{
    wide b = { .pool = pool, .format = format, .rnd = 12345 };
    pgb_load l = {
        .conc = CONC, .total = total, .send = send_range, .check = check_rows, .arg = &b
    };
    pgb_load_run(loop, &l);
    if (sum != NULL)
        *sum = b.sum;
    return (double)b.rows / l.secs;
}

typedef struct {
    bt_loop *loop;
    bt_pq_pool *pool;
} setup;

/* Measure 0 is text results (the anchor), 1 binary. */
static double measure(int which, int round, void *arg)
{
    (void)round;
    setup *s = arg;
    return run(s->loop, s->pool, which, QUERIES, NULL);
}

int main(void)
{
    pgb_name = "pg_select_wide";
    char ddl[2048];
    snprintf(ddl, sizeof ddl,
             "CREATE TABLE wide (id int8 PRIMARY KEY, a1 int8, a2 int8, a3 int8, a4 int8, "
             "a5 int8, b1 int4, b2 int4, b3 int4, c1 int2, c2 int2, f1 float8, f2 float8, "
             "f3 float8, r1 float4, flag bool, u uuid, t1 timestamptz, t2 timestamptz, "
             "blob bytea);"
             "INSERT INTO wide SELECT g, g * 1000003, g * g * 97, -g * 7919, "
             "g * 1099511627791, 4611686018427387904 - g, g * 31, -g * 131071, g %% 1000, "
             "g %% 32000, -(g %% 977), sqrt(g) * 100000, g / 7.0, ln(g + 1), g / 3.0, "
             "g %% 3 = 0, md5(g::text)::uuid, '2020-01-01 00:00:00+00'::timestamptz + g * "
             "interval '1 second 123457 microseconds', '1999-12-31 23:00:00+00'::timestamptz "
             "- g * interval '1 day 7 microseconds', decode(md5(g::text), 'hex') "
             "FROM generate_series(1::int8, %d) g; ANALYZE wide;",
             ROWS);

    bt_test_pg *pg = pgb_start(ddl);

    bt_loop *loop = bt_loop_new();
    bt_pq_pool *pool = pgb_pool(loop, bt_test_pg_conninfo(pg), CONNS, 16);
    /* Warm up (connections open, statement prepared on each, caches hot)
     * and check that both formats read the same values. */
    uint64_t sum_text = 0, sum_bin = 1;
    run(loop, pool, 0, 500, &sum_text);
    run(loop, pool, 1, 500, &sum_bin);
    if (sum_text != sum_bin)
        pgb_die("text and binary results read different values");

    double v[2][PGB_MAX_ROUNDS];
    const char *labels[] = { "text", "binary" };
    setup s = { .loop = loop, .pool = pool };
    pgb_rounds(ROUNDS, 2, measure, &s, labels, "rows/s", v);
    double t = pgb_median(v, 0, ROUNDS), b = pgb_median(v, 1, ROUNDS);
    fprintf(stderr, "pg_select_wide: median per-round ratio %.2f\n",
            pgb_median_ratio(v, 1, ROUNDS));
    fflush(stderr);
    bench_line("pg_select_wide", b, "text_format", t, "rows/s", "higher");
    bt_pq_pool_free(pool);
    bt_loop_free(loop);
    bt_test_pg_free(pg);
    return 0;
}
