/* What comes back from the server besides a query's success, against a
 * real server started by the harness: typed values in text and binary
 * results (every type the getters take, their boundaries, NULLs, type
 * mismatches, bad arguments), the server's NOTICE and WARNING messages,
 * and the parameters it reports (server_version, TimeZone). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <baton/pq.h>

#include "pq_fixture.h"

static bt_test_pg *pg; /* started once by main; tests run in forked children */
static bt_loop *loop;

static void setup(void)
{
    loop = bt_test_pq_loop(pg);
}

static void teardown(void)
{
    bt_test_loop_free_clean(loop);
}

static bt_pq_pool *new_pool(unsigned max)
{
    bt_pq_options o;
    bt_test_pq_options(&o, bt_test_pg_conninfo(pg), 1, max);
    return bt_test_pq_pool(loop, &o);
}

static bt_future *await(bt_future *f)
{
    return bt_test_run_until(loop, f, 25000);
}

/* The result of sql (owned by the caller), in format fmt (0 text, 1
 * binary), on the pool or, if c is not NULL, on that acquired connection;
 * fails the test on error. */
static bt_pq_result *fetch(bt_pq_pool *p, bt_pq_conn *c, int fmt, const char *sql)
{
    bt_pq_query_opts o = BT_SIZED(bt_pq_query_opts);
    o.result_format = fmt;
    bt_pq_result *r = bt_test_take(await(c != NULL ? bt_pq_conn_query_ex(c, sql, 0, NULL, &o)
                                                   : bt_pq_query_ex(p, sql, 0, NULL, &o)),
                                   sql);
    for (int i = 0; i < bt_pq_result_columns(r); i++)
        ck_assert_int_eq(bt_pq_result_column_format(r, i), fmt);
    return r;
}

static void exec_on(bt_pq_conn *c, const char *sql)
{
    bt_future_unref(bt_test_ok(await(bt_pq_conn_query(c, sql, 0, NULL)), sql));
}

static bt_pq_conn *acquire(bt_pq_pool *p)
{
    return bt_test_take(await(bt_pq_acquire(p)), "acquire");
}

static int64_t i64(const bt_pq_result *r, int col)
{
    int64_t v = 0;
    int rc = bt_pq_result_int64(r, 0, col, &v);
    ck_assert_msg(rc == 0, "column %d: %s", col, bt_err_name(rc));
    return v;
}

static double dbl(const bt_pq_result *r, int col)
{
    double v = 0;
    int rc = bt_pq_result_double(r, 0, col, &v);
    ck_assert_msg(rc == 0, "column %d: %s", col, bt_err_name(rc));
    return v;
}

/* ---- Typed values ---------------------------------------------------------- */

START_TEST(integers_in_both_formats)
{
    int fmt = _i;
    bt_pq_pool *p = new_pool(1);
    bt_pq_result *r = fetch(p, NULL, fmt,
                            "SELECT 32767::int2, (-32768)::int2, 2147483647::int4, "
                            "(-2147483648)::int4, 9223372036854775807::int8, "
                            "(-9223372036854775807 - 1)::int8, 0::int8, (-1)::int2, 42::int4");
    ck_assert_int_eq(i64(r, 0), 32767);
    ck_assert_int_eq(i64(r, 1), -32768);
    ck_assert_int_eq(i64(r, 2), 2147483647);
    ck_assert_int_eq(i64(r, 3), -2147483647 - 1);
    ck_assert(i64(r, 4) == INT64_MAX);
    ck_assert(i64(r, 5) == INT64_MIN);
    ck_assert_int_eq(i64(r, 6), 0);
    ck_assert_int_eq(i64(r, 7), -1);
    ck_assert_int_eq(i64(r, 8), 42);
    bt_pq_result_free(r);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(floats_in_both_formats)
{
    int fmt = _i;
    bt_pq_pool *p = new_pool(1);
    bt_pq_result *r = fetch(p, NULL, fmt,
                            "SELECT 1.5::float8, '-0'::float8, 'NaN'::float8, 'Infinity'::float8, "
                            "'-Infinity'::float8, 1.7976931348623157e308::float8, "
                            "4.9406564584124654e-324::float8, 0.1::float8, 1.1::float4, "
                            "'NaN'::float4, '-Infinity'::float4, 3.4028235e38::float4, "
                            "1e-45::float4");
    ck_assert(dbl(r, 0) == 1.5);
    ck_assert(dbl(r, 1) == 0.0 && signbit(dbl(r, 1)));
    ck_assert(isnan(dbl(r, 2)));
    ck_assert(isinf(dbl(r, 3)) && dbl(r, 3) > 0);
    ck_assert(isinf(dbl(r, 4)) && dbl(r, 4) < 0);
    ck_assert(dbl(r, 5) == 1.7976931348623157e308);
    ck_assert(dbl(r, 6) == 4.9406564584124654e-324);
    ck_assert(dbl(r, 7) == 0.1);
    /* A float4 is the float, widened, in both formats: not 1.1 (a double
     * the float cannot hold). */
    ck_assert(dbl(r, 8) == (double)1.1f);
    ck_assert(isnan(dbl(r, 9)));
    ck_assert(isinf(dbl(r, 10)) && dbl(r, 10) < 0);
    ck_assert(dbl(r, 11) == (double)3.4028235e38f);
    ck_assert(dbl(r, 12) == (double)1e-45f);
    bt_pq_result_free(r);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(bools_and_uuids_in_both_formats)
{
    int fmt = _i;
    bt_pq_pool *p = new_pool(1);
    bt_pq_result *r = fetch(p, NULL, fmt,
                            "SELECT true, false, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, "
                            "'00000000-0000-0000-0000-000000000000'::uuid, "
                            "'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF'::uuid");
    bool b = false;
    ck_assert_int_eq(bt_pq_result_bool(r, 0, 0, &b), 0);
    ck_assert(b);
    ck_assert_int_eq(bt_pq_result_bool(r, 0, 1, &b), 0);
    ck_assert(!b);
    static const uint8_t want[16] = { 0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8,
                                      0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11 };
    uint8_t u[16];
    ck_assert_int_eq(bt_pq_result_uuid(r, 0, 2, u), 0);
    ck_assert_int_eq(memcmp(u, want, 16), 0);
    ck_assert_int_eq(bt_pq_result_uuid(r, 0, 3, u), 0);
    for (int i = 0; i < 16; i++)
        ck_assert_uint_eq(u[i], 0);
    ck_assert_int_eq(bt_pq_result_uuid(r, 0, 4, u), 0);
    for (int i = 0; i < 16; i++)
        ck_assert_uint_eq(u[i], 0xff);
    bt_pq_result_free(r);
    bt_pq_pool_free(p);
}
END_TEST

/* Every byte value 0..255, in order, as a bytea expression. */
#define ALL_BYTES                                                                     \
    "(SELECT decode(string_agg(lpad(to_hex(g), 2, '0'), '' ORDER BY g), 'hex') FROM " \
    "generate_series(0, 255) g)"

static void check_all_bytes(const bt_pq_result *r, int col)
{
    uint8_t buf[256];
    size_t len = 0;
    ck_assert_int_eq(bt_pq_result_bytes(r, 0, col, buf, sizeof buf, &len), 0);
    ck_assert_uint_eq(len, 256);
    for (int i = 0; i < 256; i++)
        ck_assert_uint_eq(buf[i], (unsigned)i);
}

START_TEST(bytea_in_both_formats)
{
    int fmt = _i;
    bt_pq_pool *p = new_pool(1);
    bt_pq_result *r = fetch(p, NULL, fmt,
                            "SELECT '\\x00ff41'::bytea, ''::bytea, " ALL_BYTES
                            ", decode(repeat('5a', 1048576), 'hex')");
    uint8_t buf[8];
    size_t len = 99;
    ck_assert_int_eq(bt_pq_result_bytes(r, 0, 0, buf, sizeof buf, &len), 0);
    ck_assert_uint_eq(len, 3);
    ck_assert_int_eq(memcmp(buf, "\x00\xff\x41", 3), 0);
    /* Empty: no bytes, 0 is the answer, with or without a buffer. */
    len = 99;
    ck_assert_int_eq(bt_pq_result_bytes(r, 0, 1, NULL, 0, &len), 0);
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(bt_pq_result_bytes(r, 0, 1, buf, sizeof buf, &len), 0);
    ck_assert_uint_eq(len, 0);
    check_all_bytes(r, 2);
    /* Too small: the size, and nothing written; then the whole MiB. */
    memset(buf, 0, sizeof buf);
    ck_assert_int_eq(bt_pq_result_bytes(r, 0, 3, buf, sizeof buf, &len), BT_EMSGSIZE);
    ck_assert_uint_eq(len, 1048576);
    ck_assert_uint_eq(buf[0], 0);
    ck_assert_int_eq(bt_pq_result_bytes(r, 0, 3, NULL, 0, &len), BT_EMSGSIZE);
    ck_assert_uint_eq(len, 1048576);
    uint8_t *big = malloc(len);
    ck_assert_ptr_nonnull(big);
    ck_assert_int_eq(bt_pq_result_bytes(r, 0, 3, big, len, &len), 0);
    for (size_t i = 0; i < len; i++)
        if (big[i] != 0x5a)
            ck_abort_msg("byte %zu is %u", i, big[i]);
    free(big);
    bt_pq_result_free(r);

    /* The older text form, bytea_output = escape: "\\" and "\ooo". */
    if (fmt == 0) {
        bt_pq_conn *c = acquire(p);
        exec_on(c, "SET bytea_output = escape");
        r = fetch(p, c, 0, "SELECT " ALL_BYTES ", '\\x5c00'::bytea, ''::bytea");
        ck_assert_str_eq(bt_pq_result_get(r, 0, 1), "\\\\\\000");
        check_all_bytes(r, 0);
        ck_assert_int_eq(bt_pq_result_bytes(r, 0, 1, buf, sizeof buf, &len), 0);
        ck_assert_uint_eq(len, 2);
        ck_assert_int_eq(memcmp(buf, "\\\0", 2), 0);
        ck_assert_int_eq(bt_pq_result_bytes(r, 0, 2, buf, sizeof buf, &len), 0);
        ck_assert_uint_eq(len, 0);
        bt_pq_result_free(r);
        bt_pq_conn_release(c);
    }
    bt_pq_pool_free(p);
}
END_TEST

/* Times checked against the server's own arithmetic: each row is a
 * timestamptz and its microseconds since the Unix epoch as the server
 * computes them (extract(epoch) is an exact numeric). */
static const char
    *const times[] = {
        "1970-01-01 00:00:00+00",
        "1969-12-31 23:59:59.999999+00",
        "2000-01-01 00:00:00+00",
        "2024-02-29 12:34:56.789012+05:30",
        "1900-01-01 00:00:00+00", /* Amsterdam's offset then: +00:19:32 */
        "0044-03-15 12:00:00+00 BC",
        "4714-11-24 00:00:00+00 BC", /* the first day the server has */
        "294246-12-31 23:59:59.999999+00",
        "1999-12-31 23:59:59.5-08",
    };

static void check_times(bt_pq_pool *p, bt_pq_conn *c, int fmt)
{
    char sql[1024] = "SELECT t, (extract(epoch FROM t) * 1000000)::int8 FROM (VALUES ";
    for (size_t i = 0; i < sizeof times / sizeof times[0]; i++) {
        strcat(sql, i ? ", ('" : "('");
        strcat(sql, times[i]);
        strcat(sql, "'::timestamptz)");
    }
    strcat(sql, ") v(t)");
    bt_pq_result *r = fetch(p, c, fmt, sql);
    ck_assert_int_eq(bt_pq_result_rows(r), (int)(sizeof times / sizeof times[0]));
    for (int i = 0; i < bt_pq_result_rows(r); i++) {
        int64_t got = 0, want = 0;
        int rc = bt_pq_result_timestamptz(r, i, 0, &got);
        ck_assert_msg(rc == 0, "%s: %s (text %s)", times[i], bt_err_name(rc),
                      fmt == 0 ? bt_pq_result_get(r, i, 0) : "binary");
        ck_assert_int_eq(bt_pq_result_int64(r, i, 1, &want), 0);
        ck_assert_msg(got == want, "%s: %lld, the server says %lld", times[i], (long long)got,
                      (long long)want);
    }
    int64_t v;
    ck_assert_int_eq(bt_pq_result_timestamptz(r, 0, 0, &v), 0);
    ck_assert_int_eq(v, 0);
    ck_assert_int_eq(bt_pq_result_timestamptz(r, 1, 0, &v), 0);
    ck_assert_int_eq(v, -1);
    bt_pq_result_free(r);
}

START_TEST(timestamptz_in_both_formats)
{
    int fmt = _i;
    bt_pq_pool *p = new_pool(1);
    bt_pq_conn *c = acquire(p);
    /* The text form prints the session's offset: the answer must not
     * depend on it, nor on offsets with minutes and seconds. */
    static const char *const zones[] = { "UTC", "Asia/Kathmandu", "Europe/Amsterdam",
                                         "America/St_Johns" };
    for (size_t z = 0; z < sizeof zones / sizeof zones[0]; z++) {
        char set[64];
        snprintf(set, sizeof set, "SET TimeZone = '%s'", zones[z]);
        exec_on(c, set);
        check_times(p, c, fmt);
    }
    bt_pq_result *r = fetch(p, c, fmt,
                            "SELECT 'infinity'::timestamptz, '-infinity'::timestamptz, "
                            "'294270-01-01 00:00:00+00'::timestamptz");
    int64_t v = 0;
    ck_assert_int_eq(bt_pq_result_timestamptz(r, 0, 0, &v), 0);
    ck_assert(v == BT_PQ_TIMESTAMP_INFINITY);
    ck_assert_int_eq(bt_pq_result_timestamptz(r, 0, 1, &v), 0);
    ck_assert(v == BT_PQ_TIMESTAMP_NEG_INFINITY);
    /* Past what Unix microseconds in an int64 hold: said, not wrapped. */
    v = 7;
    ck_assert_int_eq(bt_pq_result_timestamptz(r, 0, 2, &v), BT_ERANGE);
    ck_assert_int_eq(v, 7);
    bt_pq_result_free(r);

    /* Another DateStyle: its text is not read (BT_ENOTSUP), binary is. */
    exec_on(c, "SET DateStyle = 'SQL, DMY'");
    r = fetch(p, c, fmt, "SELECT '2000-01-01 00:00:00+00'::timestamptz");
    int rc = bt_pq_result_timestamptz(r, 0, 0, &v);
    if (fmt == 0) {
        ck_assert_int_eq(rc, BT_ENOTSUP);
    } else {
        ck_assert_int_eq(rc, 0);
        ck_assert(v == INT64_C(946684800000000));
    }
    bt_pq_result_free(r);
    bt_pq_conn_release(c);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(nulls_are_their_own_answer)
{
    int fmt = _i;
    bt_pq_pool *p = new_pool(1);
    bt_pq_result *r = fetch(p, NULL, fmt,
                            "SELECT NULL::int2, NULL::int4, NULL::int8, NULL::float4, "
                            "NULL::float8, NULL::bool, NULL::bytea, NULL::uuid, "
                            "NULL::timestamptz");
    int64_t i = 7;
    for (int col = 0; col < 3; col++)
        ck_assert_int_eq(bt_pq_result_int64(r, 0, col, &i), BT_PQ_NULL);
    ck_assert_int_eq(i, 7);
    double d = 7;
    ck_assert_int_eq(bt_pq_result_double(r, 0, 3, &d), BT_PQ_NULL);
    ck_assert_int_eq(bt_pq_result_double(r, 0, 4, &d), BT_PQ_NULL);
    ck_assert(d == 7);
    bool b = true;
    ck_assert_int_eq(bt_pq_result_bool(r, 0, 5, &b), BT_PQ_NULL);
    ck_assert(b);
    size_t len = 7;
    ck_assert_int_eq(bt_pq_result_bytes(r, 0, 6, NULL, 0, &len), BT_PQ_NULL);
    ck_assert_uint_eq(len, 7);
    uint8_t u[16] = { 7 };
    ck_assert_int_eq(bt_pq_result_uuid(r, 0, 7, u), BT_PQ_NULL);
    ck_assert_uint_eq(u[0], 7);
    ck_assert_int_eq(bt_pq_result_timestamptz(r, 0, 8, &i), BT_PQ_NULL);
    ck_assert_int_eq(i, 7);
    bt_pq_result_free(r);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(type_mismatches_and_bad_arguments)
{
    int fmt = _i;
    bt_pq_pool *p = new_pool(1);
    bt_pq_result *r = fetch(p, NULL, fmt,
                            "SELECT 1::int4, 1.5::float8, 'x'::text, 12.5::numeric, true, "
                            "'\\x01'::bytea, gen_random_uuid(), now(), "
                            "'2000-01-01'::timestamp, NULL::text, 1::oid");
    int64_t i = 7;
    double d = 7;
    bool b = false;
    uint8_t u[16], buf[4];
    size_t len = 7;
    /* Each getter refuses every column but its own, NULL or not. */
    for (int col = 0; col < bt_pq_result_columns(r); col++) {
        ck_assert_int_eq(bt_pq_result_int64(r, 0, col, &i), col == 0 ? 0 : BT_ETYPE);
        ck_assert_int_eq(bt_pq_result_double(r, 0, col, &d), col == 1 ? 0 : BT_ETYPE);
        ck_assert_int_eq(bt_pq_result_bool(r, 0, col, &b), col == 4 ? 0 : BT_ETYPE);
        ck_assert_int_eq(bt_pq_result_bytes(r, 0, col, buf, sizeof buf, &len),
                         col == 5 ? 0 : BT_ETYPE);
        ck_assert_int_eq(bt_pq_result_uuid(r, 0, col, u), col == 6 ? 0 : BT_ETYPE);
        ck_assert_int_eq(bt_pq_result_timestamptz(r, 0, col, &i), col == 7 ? 0 : BT_ETYPE);
    }
    ck_assert_str_eq(bt_err_name(BT_ETYPE), "BT_ETYPE");
    ck_assert_str_eq(bt_strerror(BT_ETYPE), "type mismatch");
    /* numeric stays text: readable as text in a text result. */
    if (fmt == 0)
        ck_assert_str_eq(bt_pq_result_get(r, 0, 3), "12.5");

    /* Bad arguments: NULL result or out, rows and columns out of range. */
    ck_assert_int_eq(bt_pq_result_int64(NULL, 0, 0, &i), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_int64(r, 0, 0, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_int64(r, 1, 0, &i), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_int64(r, -1, 0, &i), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_int64(r, 0, -1, &i), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_int64(r, 0, 99, &i), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_double(NULL, 0, 1, &d), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_double(r, 0, 1, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_bool(r, 0, 4, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_bool(r, 5, 4, &b), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_bytes(r, 0, 5, buf, sizeof buf, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_bytes(r, 0, 5, NULL, 4, &len), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_bytes(NULL, 0, 5, buf, sizeof buf, &len), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_uuid(r, 0, 6, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_uuid(r, 0, 60, u), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_timestamptz(r, 0, 7, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_timestamptz(NULL, 0, 7, &i), BT_EINVAL);
    ck_assert_int_eq(bt_pq_result_column_format(r, 11), -1);
    ck_assert_int_eq(bt_pq_result_column_format(NULL, 0), -1);
    bt_pq_result_free(r);

    /* A command without rows: every row is out of range. */
    r = fetch(p, NULL, fmt, "SET application_name = 'values'");
    ck_assert_int_eq(bt_pq_result_int64(r, 0, 0, &i), BT_EINVAL);
    bt_pq_result_free(r);
    bt_pq_pool_free(p);
}
END_TEST

typedef struct {
    int rows;
    int64_t sum;
    int errors;
} row_sum;

static int on_row(const bt_pq_result *row, void *arg)
{
    row_sum *s = arg;
    int64_t v = 0;
    if (bt_pq_result_column_format(row, 0) != 1 || bt_pq_result_int64(row, 0, 0, &v) != 0)
        s->errors++;
    s->rows++;
    s->sum += v;
    return 0;
}

START_TEST(binary_rows_in_single_row_mode)
{
    bt_pq_pool *p = new_pool(1);
    row_sum s = { 0 };
    bt_pq_query_opts o = BT_SIZED(bt_pq_query_opts);
    o.result_format = 1;
    o.row_cb = on_row;
    o.row_arg = &s;
    bt_future *f = await(bt_pq_query_ex(
        p, "SELECT g::int8 * 1000000000 FROM generate_series(1, 1000) g", 0, NULL, &o));
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f);
    ck_assert_int_eq(s.errors, 0);
    ck_assert_int_eq(s.rows, 1000);
    ck_assert(s.sum == INT64_C(500500) * 1000000000);
    bt_pq_pool_free(p);
}
END_TEST

/* ---- Notices ---------------------------------------------------------------- */

typedef struct {
    int n;
    char severity[8][16], sqlstate[8][8], message[8][64], detail[8][64], hint[8][64];
    int pid[8];
    int off_thread; /* calls on a thread other than the loop's */
    bt_pq_pool *pool;
    bt_future *issued; /* a query the callback issued */
} notes;

static pthread_t loop_thread;

static void on_notice(const bt_pq_notice *n, void *arg)
{
    notes *l = arg;
    if (!pthread_equal(pthread_self(), loop_thread))
        l->off_thread++;
    if (l->n < 8) {
        snprintf(l->severity[l->n], sizeof l->severity[0], "%s", n->severity);
        snprintf(l->sqlstate[l->n], sizeof l->sqlstate[0], "%s", n->sqlstate);
        snprintf(l->message[l->n], sizeof l->message[0], "%s", n->message);
        snprintf(l->detail[l->n], sizeof l->detail[0], "%s", n->detail);
        snprintf(l->hint[l->n], sizeof l->hint[0], "%s", n->hint);
        l->pid[l->n] = n->backend_pid;
    }
    l->n++;
    /* A handler may issue queries (even on the connection being read). */
    if (l->pool != NULL && l->issued == NULL)
        l->issued = bt_pq_query(l->pool, "SELECT 1", 0, NULL);
}

typedef struct {
    notes *l;
    int seen; /* how many notices the handler had when the callback ran */
} at_settle;

static void count_at_settle(bt_future *f, void *arg)
{
    (void)f;
    at_settle *a = arg;
    a->seen = a->l->n;
}

START_TEST(notices_reach_the_handler_on_the_loop_thread)
{
    loop_thread = pthread_self();
    bt_pq_pool *p = new_pool(1);
    notes l = { .n = 0 };
    ck_assert_int_eq(bt_pq_pool_set_notice_handler(p, on_notice, &l), 0);
    at_settle a = { .l = &l, .seen = -1 };
    bt_future *f = bt_pq_query(p,
                               "DO $$ BEGIN "
                               "RAISE NOTICE 'hello %', 42 USING DETAIL = 'the detail', "
                               "HINT = 'the hint'; "
                               "RAISE WARNING 'careful'; "
                               "RAISE WARNING 'own code' USING ERRCODE = '01007'; "
                               "END $$",
                               0, NULL);
    ck_assert_ptr_nonnull(f);
    bt_future_add_callback(f, count_at_settle, &a);
    await(f);
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f);
    bt_test_sleep(loop, 10); /* let the callback run */
    ck_assert_int_eq(a.seen, 3);
    ck_assert_int_eq(l.n, 3);
    ck_assert_int_eq(l.off_thread, 0);
    ck_assert_str_eq(l.severity[0], "NOTICE");
    ck_assert_str_eq(l.sqlstate[0], "00000");
    ck_assert_str_eq(l.message[0], "hello 42");
    ck_assert_str_eq(l.detail[0], "the detail");
    ck_assert_str_eq(l.hint[0], "the hint");
    ck_assert_str_eq(l.severity[1], "WARNING");
    ck_assert_str_eq(l.sqlstate[1], "01000");
    ck_assert_str_eq(l.message[1], "careful");
    ck_assert_str_eq(l.detail[1], "");
    ck_assert_str_eq(l.hint[1], "");
    ck_assert_str_eq(l.sqlstate[2], "01007");
    bt_pq_result *r = fetch(p, NULL, 0, "SELECT pg_backend_pid()");
    int64_t pid = 0;
    ck_assert_int_eq(bt_pq_result_int64(r, 0, 0, &pid), 0);
    bt_pq_result_free(r);
    ck_assert_int_eq(l.pid[0], (int)pid);
    ck_assert_int_eq(l.pid[1], (int)pid);

    /* The same when an earlier query's answer comes in the same read (so
     * that its callbacks were scheduled before the notice arrived): both
     * answers are on the socket before the loop runs again. */
    l.n = 0;
    bt_pq_conn *c = acquire(p);
    bt_future *first = bt_pq_conn_query(c, "SELECT 1", 0, NULL);
    bt_future_add_callback(first, count_at_settle, &(at_settle){ .l = &l });
    a.seen = -1;
    f = bt_pq_conn_query(c, "DO $$ BEGIN RAISE NOTICE 'second'; END $$", 0, NULL);
    bt_future_add_callback(f, count_at_settle, &a);
    usleep(300000);
    await(f);
    bt_test_sleep(loop, 10);
    ck_assert_int_eq(bt_future_error(first), 0);
    ck_assert_int_eq(bt_future_error(f), 0);
    ck_assert_int_eq(a.seen, 1);
    bt_future_unref(first);
    bt_future_unref(f);
    bt_pq_conn_release(c);

    /* A server notice outside PL/pgSQL, and a handler that issues a
     * query: it runs. */
    l.n = 0;
    l.pool = p;
    r = fetch(p, NULL, 0, "DROP TABLE IF EXISTS no_such_table");
    bt_pq_result_free(r);
    ck_assert_int_eq(l.n, 1);
    ck_assert_str_eq(l.severity[0], "NOTICE");
    ck_assert_str_eq(l.sqlstate[0], "00000");
    ck_assert_str_eq(l.message[0], "table \"no_such_table\" does not exist, skipping");
    ck_assert_ptr_nonnull(l.issued);
    await(l.issued);
    ck_assert_int_eq(bt_future_error(l.issued), 0);
    bt_future_unref(l.issued);
    l.issued = NULL;
    l.pool = NULL;

    /* Many at once, in a pipelined batch: each arrives, in order. */
    l.n = 0;
    bt_future *fs[5];
    for (int i = 0; i < 5; i++)
        fs[i] = bt_pq_query(p, "DO $$ BEGIN RAISE NOTICE 'n'; END $$", 0, NULL);
    for (int i = 0; i < 5; i++) {
        await(fs[i]);
        ck_assert_int_eq(bt_future_error(fs[i]), 0);
        bt_future_unref(fs[i]);
    }
    ck_assert_int_eq(l.n, 5);
    ck_assert_int_eq(l.off_thread, 0);

    /* Back to the log: WARNING as a warning, NOTICE as information. */
    ck_assert_int_eq(bt_pq_pool_set_notice_handler(p, NULL, NULL), 0);
    bt_test_log_capture();
    l.n = 0;
    r = fetch(p, NULL, 0,
              "DO $$ BEGIN RAISE NOTICE 'to the log'; RAISE WARNING 'loud' USING HINT = 'h'; "
              "END $$");
    bt_pq_result_free(r);
    ck_assert_int_eq(l.n, 0);
    ck_assert(bt_test_log_contains("pq: server NOTICE 00000: to the log"));
    ck_assert(bt_test_log_contains("pq: server WARNING 01000: loud; HINT: h"));

    ck_assert_int_eq(bt_pq_pool_set_notice_handler(NULL, on_notice, &l), BT_EINVAL);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(server_parameters_read_back)
{
    bt_pq_pool *p = new_pool(2);
    bt_pq_conn *c = acquire(p);
    const char *v = bt_pq_conn_parameter(c, "server_version");
    ck_assert_ptr_nonnull(v);
    bt_pq_result *r = fetch(p, c, 0, "SHOW server_version");
    ck_assert_str_eq(v = bt_pq_conn_parameter(c, "server_version"), bt_pq_result_get(r, 0, 0));
    bt_pq_result_free(r);
    ck_assert_ptr_nonnull(bt_pq_conn_parameter(c, "TimeZone"));
    ck_assert_str_eq(bt_pq_conn_parameter(c, "integer_datetimes"), "on");
    ck_assert_str_eq(bt_pq_conn_parameter(c, "DateStyle"), "ISO, MDY");
    /* A SET is reported back once it has run. */
    exec_on(c, "SET TimeZone = 'Asia/Tokyo'");
    ck_assert_str_eq(bt_pq_conn_parameter(c, "TimeZone"), "Asia/Tokyo");
    exec_on(c, "SET application_name = 'baton test'");
    ck_assert_str_eq(bt_pq_conn_parameter(c, "application_name"), "baton test");
    /* Not reported, or bad arguments: NULL. */
    ck_assert_ptr_null(bt_pq_conn_parameter(c, "work_mem"));
    ck_assert_ptr_null(bt_pq_conn_parameter(c, "no such thing"));
    ck_assert_ptr_null(bt_pq_conn_parameter(c, ""));
    ck_assert_ptr_null(bt_pq_conn_parameter(c, NULL));
    ck_assert_ptr_null(bt_pq_conn_parameter(NULL, "server_version"));

    /* A lost connection reports nothing. */
    r = fetch(p, c, 0, "SELECT pg_backend_pid()");
    char kill[96];
    snprintf(kill, sizeof kill, "SELECT pg_terminate_backend(%s)", bt_pq_result_get(r, 0, 0));
    bt_pq_result_free(r);
    bt_pq_result_free(fetch(p, NULL, 0, kill));
    bt_future *f = await(bt_pq_conn_query(c, "SELECT 1", 0, NULL));
    ck_assert_int_ne(bt_future_error(f), 0);
    bt_future_unref(f);
    ck_assert_ptr_null(bt_pq_conn_parameter(c, "server_version"));
    bt_pq_conn_release(c);
    bt_pq_pool_free(p);
}
END_TEST

static Suite *results_suite(void)
{
    Suite *s = suite_create("pq_results");
    TCase *tc = tcase_create("values");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    /* Each loop test runs with text (0) and binary (1) results. */
    tcase_add_loop_test(tc, integers_in_both_formats, 0, 2);
    tcase_add_loop_test(tc, floats_in_both_formats, 0, 2);
    tcase_add_loop_test(tc, bools_and_uuids_in_both_formats, 0, 2);
    tcase_add_loop_test(tc, bytea_in_both_formats, 0, 2);
    tcase_add_loop_test(tc, timestamptz_in_both_formats, 0, 2);
    tcase_add_loop_test(tc, nulls_are_their_own_answer, 0, 2);
    tcase_add_loop_test(tc, type_mismatches_and_bad_arguments, 0, 2);
    tcase_add_test(tc, binary_rows_in_single_row_mode);
    suite_add_tcase(s, tc);
    tc = tcase_create("server");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, notices_reach_the_handler_on_the_loop_thread);
    tcase_add_test(tc, server_parameters_read_back);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return bt_test_pq_main(&pg, results_suite(), "test_pq_results");
}
