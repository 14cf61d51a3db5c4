/* The typed getters on values no server sends: short and long binary
 * values, text that does not parse, random bytes of every length. The
 * results are real PGresults that libpq itself builds
 * (PQmakeEmptyPGresult, PQsetResultAttrs, PQsetvalue), read through the
 * getters compiled from integrations/pq/values.c and result.c; the
 * server-backed tests (tests/test_pq_results.c) cover what a server does
 * send. Every getter must answer with a code and never read past a value:
 * run it under ASan. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pq-internal.h"

enum { BOOL = 16, BYTEA = 17, INT8 = 20, INT2 = 21, INT4 = 23, TEXT = 25, FLOAT4 = 700 };
enum { FLOAT8 = 701, TIMESTAMPTZ = 1184, UUID = 2950 };

/* A one-row, one-column result of type oid and format fmt holding the n
 * bytes at v (NULL: SQL NULL). Free with bt_pq_result_free. */
static bt_pq_result *one(unsigned oid, int fmt, const void *v, int n)
{
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    ck_assert_ptr_nonnull(res);
    PGresAttDesc a = { .name = "v", .format = fmt, .typid = oid, .typlen = -1, .atttypmod = -1 };
    ck_assert_int_eq(PQsetResultAttrs(res, 1, &a), 1);
    ck_assert_int_eq(PQsetvalue(res, 0, 0, (char *)v, v == NULL ? -1 : n), 1);
    bt_pq_result *r = bt__pq_result_wrap(res);
    ck_assert_ptr_nonnull(r);
    return r;
}

static bt_pq_result *text(unsigned oid, const char *s)
{
    return one(oid, 0, s, (int)strlen(s));
}

/* Every getter on r: each either reads the value or says why not. */
static void read_all(const bt_pq_result *r)
{
    int64_t i;
    double d;
    bool b;
    uint8_t u[16], buf[64];
    size_t len;
    int rc[] = {
        bt_pq_result_int64(r, 0, 0, &i), bt_pq_result_double(r, 0, 0, &d),
        bt_pq_result_bool(r, 0, 0, &b),  bt_pq_result_bytes(r, 0, 0, buf, sizeof buf, &len),
        bt_pq_result_uuid(r, 0, 0, u),   bt_pq_result_timestamptz(r, 0, 0, &i),
    };
    for (size_t k = 0; k < sizeof rc / sizeof rc[0]; k++)
        ck_assert_msg(rc[k] == 0 || rc[k] == BT_PQ_NULL || rc[k] == BT_ETYPE ||
                          rc[k] == BT_EPROTO || rc[k] == BT_ENOTSUP || rc[k] == BT_ERANGE ||
                          rc[k] == BT_EMSGSIZE,
                      "getter %zu: %s", k, bt_err_name(rc[k]));
}

START_TEST(binary_values_of_the_wrong_length)
{
    static const struct {
        unsigned oid;
        int len;
    } types[] = { { INT2, 2 },   { INT4, 4 }, { INT8, 8 },  { FLOAT4, 4 },
                  { FLOAT8, 8 }, { BOOL, 1 }, { UUID, 16 }, { TIMESTAMPTZ, 8 } };
    unsigned char bytes[40];
    for (size_t i = 0; i < sizeof bytes; i++)
        bytes[i] = (unsigned char)(0x80 + i);
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
        for (int n = 0; n < (int)sizeof bytes; n++) {
            bt_pq_result *r = one(types[t].oid, 1, bytes, n);
            int64_t i;
            double d;
            bool b;
            uint8_t u[16];
            int rc = types[t].oid == UUID          ? bt_pq_result_uuid(r, 0, 0, u)
                     : types[t].oid == BOOL        ? bt_pq_result_bool(r, 0, 0, &b)
                     : types[t].oid == TIMESTAMPTZ ? bt_pq_result_timestamptz(r, 0, 0, &i)
                     : types[t].oid == FLOAT4 || types[t].oid == FLOAT8
                         ? bt_pq_result_double(r, 0, 0, &d)
                         : bt_pq_result_int64(r, 0, 0, &i);
            if (n != types[t].len)
                ck_assert_msg(rc == BT_EPROTO, "type %u, %d bytes: %s", types[t].oid, n,
                              bt_err_name(rc));
            read_all(r);
            bt_pq_result_free(r);
        }
}
END_TEST

START_TEST(binary_bool_is_0_or_1)
{
    bool b = false;
    bt_pq_result *r = one(BOOL, 1, "\x01", 1);
    ck_assert_int_eq(bt_pq_result_bool(r, 0, 0, &b), 0);
    ck_assert(b);
    bt_pq_result_free(r);
    r = one(BOOL, 1, "\x02", 1);
    ck_assert_int_eq(bt_pq_result_bool(r, 0, 0, &b), BT_EPROTO);
    bt_pq_result_free(r);
}
END_TEST

START_TEST(text_that_does_not_parse)
{
    static const struct {
        unsigned oid;
        const char *s;
        int rc;
    } cases[] = {
        { INT8, "", BT_EPROTO },
        { INT8, "-", BT_EPROTO },
        { INT8, "12a", BT_EPROTO },
        { INT8, " 12", BT_EPROTO },
        { INT8, "9223372036854775808", BT_EPROTO },
        { INT8, "-9223372036854775809", BT_EPROTO },
        { INT8, "-9223372036854775808", 0 },
        { INT4, "+1", BT_EPROTO },
        { FLOAT8, "", BT_EPROTO },
        { FLOAT8, "1.5x", BT_EPROTO },
        { FLOAT8, " 1.5", BT_EPROTO },
        { FLOAT8, "1e999", 0 }, /* strtod's HUGE_VAL: the server never prints it */
        { FLOAT8, "0x1p3", 0 },
        { FLOAT8, "1234567890123456789012345678901234567890123456789012345678901234567890",
          BT_EPROTO },
        { BOOL, "", BT_EPROTO },
        { BOOL, "true", BT_EPROTO },
        { BOOL, "x", BT_EPROTO },
        { BYTEA, "\\x0", BT_EPROTO },
        { BYTEA, "\\xzz", BT_EPROTO },
        { BYTEA, "\\x", 0 },
        { BYTEA, "ab\\", BT_EPROTO },
        { BYTEA, "\\9", BT_EPROTO },
        { BYTEA, "\\40", BT_EPROTO },
        { BYTEA, "\\400", BT_EPROTO },
        { BYTEA, "a\\\\b\\001", 0 },
        { UUID, "", BT_EPROTO },
        { UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", BT_EPROTO },
        { UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111", BT_EPROTO },
        { UUID, "a0eebc99+9c0b-4ef8-bb6d-6bb9bd380a11", BT_EPROTO },
        { UUID, "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", BT_EPROTO },
        { TIMESTAMPTZ, "", BT_ENOTSUP },
        { TIMESTAMPTZ, "12/17/1997 07:37:16.00 PST", BT_ENOTSUP },
        { TIMESTAMPTZ, "Wed Dec 17 07:37:16 1997 PST", BT_ENOTSUP },
        { TIMESTAMPTZ, "2000-01-01", BT_EPROTO },
        { TIMESTAMPTZ, "2000-01-01 00:00:00", BT_EPROTO },
        { TIMESTAMPTZ, "2000-01-01 00:00:00+", BT_EPROTO },
        { TIMESTAMPTZ, "2000-01-01 00:00:00.+00", BT_EPROTO },
        { TIMESTAMPTZ, "2000-01-01 00:00:00.1234567+00", BT_EPROTO },
        { TIMESTAMPTZ, "2000-13-01 00:00:00+00", BT_EPROTO },
        { TIMESTAMPTZ, "2000-01-01 00:00:00+00 AD", BT_EPROTO },
        { TIMESTAMPTZ, "2000-01-01 00:00:00+00:3", BT_EPROTO },
        { TIMESTAMPTZ, "9999999999-01-01 00:00:00+00", BT_EPROTO },
        { TIMESTAMPTZ, "999999999-01-01 00:00:00+00", BT_ERANGE },
        { TIMESTAMPTZ, "infinityx", BT_ENOTSUP },
        { TIMESTAMPTZ, "2000-01-01 00:00:00.5+00", 0 },
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        bt_pq_result *r = text(cases[k].oid, cases[k].s);
        int64_t i;
        double d;
        bool b;
        uint8_t u[16], buf[8];
        size_t len;
        int rc;
        switch (cases[k].oid) {
        case BOOL:
            rc = bt_pq_result_bool(r, 0, 0, &b);
            break;
        case BYTEA:
            rc = bt_pq_result_bytes(r, 0, 0, buf, sizeof buf, &len);
            break;
        case UUID:
            rc = bt_pq_result_uuid(r, 0, 0, u);
            break;
        case TIMESTAMPTZ:
            rc = bt_pq_result_timestamptz(r, 0, 0, &i);
            break;
        case FLOAT8:
            rc = bt_pq_result_double(r, 0, 0, &d);
            break;
        default:
            rc = bt_pq_result_int64(r, 0, 0, &i);
            break;
        }
        ck_assert_msg(rc == cases[k].rc, "type %u \"%s\": %s, expected %s", cases[k].oid,
                      cases[k].s, bt_err_name(rc), bt_err_name(cases[k].rc));
        read_all(r);
        bt_pq_result_free(r);
    }
}
END_TEST

START_TEST(random_values_of_every_length)
{
    static const unsigned oids[] = { BOOL, BYTEA,  INT8,   INT2,        INT4,
                                     TEXT, FLOAT4, FLOAT8, TIMESTAMPTZ, UUID };
    static const char alphabet[] = "0123456789abcdefx-+:. \\BCinfty";
    unsigned seed = 12345;
    unsigned char v[48];
    for (int round = 0; round < 200; round++)
        for (size_t t = 0; t < sizeof oids / sizeof oids[0]; t++)
            for (int fmt = 0; fmt < 2; fmt++) {
                int n = round % (int)sizeof v;
                for (int i = 0; i < n; i++) {
                    seed = seed * 1103515245u + 12345u;
                    unsigned x = seed >> 16;
                    v[i] = fmt == 1 ? (unsigned char)x
                                    : (unsigned char)alphabet[x % (sizeof alphabet - 1)];
                }
                bt_pq_result *r = one(oids[t], fmt, v, n);
                read_all(r);
                bt_pq_result_free(r);
            }
    /* And SQL NULL, for every type and format. */
    for (size_t t = 0; t < sizeof oids / sizeof oids[0]; t++) {
        bt_pq_result *r = one(oids[t], t % 2 == 0, NULL, 0);
        read_all(r);
        bt_pq_result_free(r);
    }
}
END_TEST

static Suite *values_suite(void)
{
    Suite *s = suite_create("pq_values");
    TCase *tc = tcase_create("odd data");
    tcase_add_test(tc, binary_values_of_the_wrong_length);
    tcase_add_test(tc, binary_bool_is_0_or_1);
    tcase_add_test(tc, text_that_does_not_parse);
    tcase_add_test(tc, random_values_of_every_length);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(values_suite)
