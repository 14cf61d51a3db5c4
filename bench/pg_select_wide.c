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
#include "pg_harness.h"

enum { ROWS = 10000, SPAN = 100, QUERIES = 3000, CONC = 16, CONNS = 4, ROUNDS = 5 };
static const char *SQL = "SELECT * FROM wide WHERE id BETWEEN $1 AND $1 + 99";

static void die(const char *what)
{
    fprintf(stderr, "pg_select_wide: %s\n", what);
    exit(1);
}

typedef struct {
    bt_pq_pool *pool;
    int format;
    int total, sent, done, errors;
    uint64_t rows;
    uint64_t sum; /* a checksum of every value read, whatever the order the
                     queries' results came in */
    unsigned rnd;
    bt_future *finished;
} bench;

static void issue(bench *b);

/* Read every value of r through the getters, as a program would. */
static void read_rows(bench *b, const bt_pq_result *r)
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

static void on_done(bt_future *f, void *arg)
{
    bench *b = arg;
    if (bt_future_error(f) != 0) {
        fprintf(stderr, "pg_select_wide: %s\n", bt_future_error_message(f));
        b->errors++;
    } else {
        read_rows(b, bt_future_value(f));
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
    b->rnd = b->rnd * 1103515245u + 12345u;
    char buf[16];
    snprintf(buf, sizeof buf, "%d", (int)((b->rnd >> 8) % (ROWS - SPAN + 1)) + 1);
    const char *v[] = { buf };
    bt_pq_query_opts o = BT_SIZED(bt_pq_query_opts);
    o.result_format = b->format;
    bt_future *f = bt_pq_query_ex(b->pool, SQL, 1, v, &o);
    if (f == NULL)
        die("bt_pq_query_ex");
    bt_future_add_callback(f, on_done, b);
    bt_future_unref(f);
}

/* One measure: total queries in format; rows per second. The checksum of
 * what was read goes to *sum (the same random ids each time). */
static double run(bt_loop *loop, bt_pq_pool *pool, int format, int total, uint64_t *sum)
{
    bench b = { .pool = pool, .format = format, .total = total, .rnd = 12345 };
    b.finished = bt_future_new(loop);
    uint64_t t0 = bt_hrtime();
    for (int i = 0; i < CONC; i++)
        issue(&b);
    bt_loop_run_until(loop, b.finished);
    double secs = (double)(bt_hrtime() - t0) / 1e9;
    bt_future_unref(b.finished);
    if (b.errors)
        die("queries or getters failed");
    if (sum != NULL)
        *sum = b.sum;
    return (double)b.rows / secs;
}

int main(void)
{
    bt_test_pg *pg = bt_test_pg_start();
    if (pg == NULL)
        die("could not start PostgreSQL");
    char setup[2048];
    snprintf(setup, sizeof setup,
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
    if (bt_test_pg_exec(pg, setup) != 0)
        die("setup failed");

    bt_loop *loop = bt_loop_new();
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = bt_test_pg_conninfo(pg);
    o.min_size = CONNS;
    o.max_size = CONNS;
    bt_pq_pool *pool = bt_pq_pool_new(loop, &o);
    if (pool == NULL)
        die("bt_pq_pool_new");
    /* Warm up (connections open, statement prepared on each, caches hot)
     * and check that both formats read the same values. */
    uint64_t sum_text = 0, sum_bin = 1;
    run(loop, pool, 0, 500, &sum_text);
    run(loop, pool, 1, 500, &sum_bin);
    if (sum_text != sum_bin)
        die("text and binary results read different values");

    double text[ROUNDS], bin[ROUNDS], ratio[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        if (r % 2 == 0) {
            text[r] = run(loop, pool, 0, QUERIES, NULL);
            bin[r] = run(loop, pool, 1, QUERIES, NULL);
        } else {
            bin[r] = run(loop, pool, 1, QUERIES, NULL);
            text[r] = run(loop, pool, 0, QUERIES, NULL);
        }
        ratio[r] = bin[r] / text[r];
        fprintf(stderr, "pg_select_wide: round %d: text %.0f rows/s, binary %.0f rows/s\n", r,
                text[r], bin[r]);
    }
    double t = median_d(text, ROUNDS), b = median_d(bin, ROUNDS);
    fprintf(stderr, "pg_select_wide: median per-round ratio %.2f\n", median_d(ratio, ROUNDS));
    fflush(stderr);
    bench_line("pg_select_wide", b, "text_format", t, "rows/s", "higher");
    bt_pq_pool_free(pool);
    bt_loop_free(loop);
    bt_test_pg_free(pg);
    return 0;
}
