/* Typed values from a result: the getters that turn a column's value into
 * a C type, in either result format. A text column (the default) is
 * parsed from what the server's output function printed; a binary one
 * (bt_pq_query_opts.result_format = 1) is decoded from the server's send
 * function's bytes, in network byte order. Neither trusts the value: a
 * length that does not fit its type, or text that does not parse, is
 * BT_EPROTO, never a read past the value's end. Below the connection,
 * like result.c: they read a PGresult and touch nothing else, so any
 * thread may call them on a result it holds.
 *
 * The binary formats are PostgreSQL's send functions (src/backend/utils/
 * adt): int2/int4/int8 two's complement big-endian; float4/float8 IEEE 754
 * big-endian; bool one byte, 0 or 1; bytea the bytes themselves; uuid the
 * 16 bytes; timestamptz an int64 of microseconds since 2000-01-01 00:00
 * UTC, with INT64_MAX and INT64_MIN for infinity and -infinity. */
#include "config.h"

#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "hex.h"
#include "pq-internal.h"

/* Type Oids (pg_type.dat); stable across server versions. */
enum {
    OID_BOOL = 16,
    OID_BYTEA = 17,
    OID_INT8 = 20,
    OID_INT2 = 21,
    OID_INT4 = 23,
    OID_FLOAT4 = 700,
    OID_FLOAT8 = 701,
    OID_TIMESTAMPTZ = 1184,
    OID_UUID = 2950,
};

/* Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC). */
#define PG_EPOCH_US INT64_C(946684800000000)

/* One value, located: its bytes, length and format. */
typedef struct {
    const unsigned char *p;
    size_t n;
    bool binary;
    Oid type;
} value;

/* The common checks of every getter, in this order: arguments, range, the
 * column's type (one of the n Oids given), SQL NULL. Returns 0 with *v
 * set, or the getter's answer. */
static int locate(const bt_pq_result *r, int row, int col, const void *out, const Oid *types,
                  size_t n, value *v)
{
    if (r == NULL || r->pg == NULL || out == NULL || row < 0 || col < 0 ||
        row >= PQntuples(r->pg) || col >= PQnfields(r->pg))
        return BT_EINVAL;
    Oid t = PQftype(r->pg, col);
    size_t i = 0;
    while (i < n && types[i] != t)
        i++;
    if (i == n)
        return BT_ETYPE;
    if (PQgetisnull(r->pg, row, col))
        return BT_PQ_NULL;
    int len = PQgetlength(r->pg, row, col);
    if (len < 0)
        return BT_EPROTO;
    v->p = (const unsigned char *)PQgetvalue(r->pg, row, col);
    v->n = (size_t)len;
    v->binary = PQfformat(r->pg, col) == 1;
    v->type = t;
    return 0;
}

#define NTYPES(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t be_u64(const unsigned char *p, size_t n)
{
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = x << 8 | p[i];
    return x;
}

/* A decimal integer that fills the whole value: [-]digits, no spaces, in
 * range. Returns 0 or BT_EPROTO. */
static int parse_int64(const unsigned char *p, size_t n, int64_t *out)
{
    size_t i = 0;
    bool neg = n > 0 && p[0] == '-';
    if (neg)
        i++;
    if (i == n)
        return BT_EPROTO;
    uint64_t x = 0;
    uint64_t limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return BT_EPROTO;
        unsigned d = (unsigned)(p[i] - '0');
        if (x > (limit - d) / 10)
            return BT_EPROTO; /* the server never prints an int8 that big */
        x = x * 10 + d;
    }
    *out = neg ? (x == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)x) : (int64_t)x;
    return 0;
}

BT_EXPORT int bt_pq_result_column_format(const bt_pq_result *r, int col)
{
    if (r == NULL || r->pg == NULL || col < 0 || col >= PQnfields(r->pg))
        return -1;
    return PQfformat(r->pg, col);
}

BT_EXPORT int bt_pq_result_int64(const bt_pq_result *r, int row, int col, int64_t *out)
{
    static const Oid types[] = { OID_INT8, OID_INT4, OID_INT2 };
    value v;
    int rc = locate(r, row, col, out, types, NTYPES(types), &v);
    if (rc != 0)
        return rc;
    if (!v.binary)
        return parse_int64(v.p, v.n, out);
    size_t want = v.type == OID_INT8 ? 8 : v.type == OID_INT4 ? 4 : 2;
    if (v.n != want)
        return BT_EPROTO;
    uint64_t x = be_u64(v.p, v.n);
    if (want == 2)
        *out = (int16_t)(uint16_t)x;
    else if (want == 4)
        *out = (int32_t)(uint32_t)x;
    else
        *out = (int64_t)x;
    return 0;
}

/* The "C" locale for strtod_l: the server prints floats with a '.',
 * whatever LC_NUMERIC the program chose. Made once, on first use, by
 * whichever thread gets there first. */
static _Atomic(locale_t) c_numeric;

static locale_t numeric_locale(void)
{
    locale_t l = atomic_load_explicit(&c_numeric, memory_order_acquire);
    if (l != (locale_t)0)
        return l;
    locale_t n = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (n == (locale_t)0)
        return (locale_t)0;
    locale_t expected = (locale_t)0;
    if (!atomic_compare_exchange_strong_explicit(&c_numeric, &expected, n, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        freelocale(n);
        return expected;
    }
    return n;
}

/* float4out/float8out's text: a decimal or exponent form, "NaN",
 * "Infinity" or "-Infinity". A float4 is parsed as a float, then widened,
 * so that both formats give the same double: float4out prints the
 * shortest text that reads back as the same float ("1.1"), which read as a
 * double would be another number than the float's. */
static int parse_double(const unsigned char *p, size_t n, bool single, double *out)
{
    char buf[64];
    if (n == 0 || n >= sizeof buf)
        return BT_EPROTO;
    memcpy(buf, p, n);
    buf[n] = '\0';
    if (strchr(buf, ' ') != NULL || strchr(buf, '\t') != NULL)
        return BT_EPROTO;
    char *end;
    locale_t l = numeric_locale();
    double d;
    if (single)
        d = (double)(l != (locale_t)0 ? strtof_l(buf, &end, l) : strtof(buf, &end));
    else
        d = l != (locale_t)0 ? strtod_l(buf, &end, l) : strtod(buf, &end);
    if (end != buf + n)
        return BT_EPROTO;
    *out = d;
    return 0;
}

BT_EXPORT int bt_pq_result_double(const bt_pq_result *r, int row, int col, double *out)
{
    static const Oid types[] = { OID_FLOAT8, OID_FLOAT4 };
    value v;
    int rc = locate(r, row, col, out, types, NTYPES(types), &v);
    if (rc != 0)
        return rc;
    if (!v.binary)
        return parse_double(v.p, v.n, v.type == OID_FLOAT4, out);
    if (v.type == OID_FLOAT8) {
        if (v.n != 8)
            return BT_EPROTO;
        uint64_t bits = be_u64(v.p, 8);
        double d;
        memcpy(&d, &bits, sizeof d);
        *out = d;
    } else {
        if (v.n != 4)
            return BT_EPROTO;
        uint32_t bits = (uint32_t)be_u64(v.p, 4);
        float f;
        memcpy(&f, &bits, sizeof f);
        *out = (double)f;
    }
    return 0;
}

BT_EXPORT int bt_pq_result_bool(const bt_pq_result *r, int row, int col, bool *out)
{
    static const Oid types[] = { OID_BOOL };
    value v;
    int rc = locate(r, row, col, out, types, NTYPES(types), &v);
    if (rc != 0)
        return rc;
    if (v.n != 1)
        return BT_EPROTO;
    unsigned char c = v.p[0];
    if (v.binary ? c > 1 : c != 't' && c != 'f')
        return BT_EPROTO;
    *out = v.binary ? c == 1 : c == 't';
    return 0;
}

static bool is_octal(unsigned char c)
{
    return c >= '0' && c <= '7';
}

/* byteaout's text in either bytea_output: "\x" and two hex digits a byte
 * ("hex", the default), or the bytes with "\\" for a backslash and "\ooo"
 * for others ("escape"). With dst NULL only counts. Returns the decoded
 * length, or -1 if the text is not byteaout's. */
static long unescape_bytea(const unsigned char *p, size_t n, unsigned char *dst)
{
    size_t k = 0;
    if (n >= 2 && p[0] == '\\' && p[1] == 'x') {
        if ((n - 2) % 2 != 0)
            return -1;
        for (size_t i = 2; i < n; i += 2) {
            int hi = bt__hexval(p[i]), lo = bt__hexval(p[i + 1]);
            if (hi < 0 || lo < 0)
                return -1;
            if (dst != NULL)
                dst[k] = (unsigned char)(hi << 4 | lo);
            k++;
        }
        return (long)k;
    }
    for (size_t i = 0; i < n; k++) {
        unsigned char c = p[i];
        if (c != '\\') {
            i++;
        } else if (i + 1 < n && p[i + 1] == '\\') {
            i += 2;
        } else if (i + 3 < n && is_octal(p[i + 1]) && is_octal(p[i + 2]) && is_octal(p[i + 3]) &&
                   p[i + 1] <= '3') {
            c = (unsigned char)((p[i + 1] - '0') << 6 | (p[i + 2] - '0') << 3 | (p[i + 3] - '0'));
            i += 4;
        } else {
            return -1;
        }
        if (dst != NULL)
            dst[k] = c;
    }
    return (long)k;
}

BT_EXPORT int bt_pq_result_bytes(const bt_pq_result *r, int row, int col, void *buf, size_t cap,
                                 size_t *len)
{
    if (len == NULL || (buf == NULL && cap > 0))
        return BT_EINVAL;
    static const Oid types[] = { OID_BYTEA };
    value v;
    int rc = locate(r, row, col, len, types, NTYPES(types), &v);
    if (rc != 0)
        return rc;
    size_t need = v.n;
    if (!v.binary) {
        long k = unescape_bytea(v.p, v.n, NULL);
        if (k < 0)
            return BT_EPROTO;
        need = (size_t)k;
    }
    *len = need;
    if (need > cap)
        return BT_EMSGSIZE;
    if (need == 0)
        return 0;
    if (v.binary)
        memcpy(buf, v.p, need);
    else
        unescape_bytea(v.p, v.n, buf);
    return 0;
}

BT_EXPORT int bt_pq_result_uuid(const bt_pq_result *r, int row, int col, uint8_t out[16])
{
    static const Oid types[] = { OID_UUID };
    value v;
    int rc = locate(r, row, col, out, types, NTYPES(types), &v);
    if (rc != 0)
        return rc;
    if (v.binary) {
        if (v.n != 16)
            return BT_EPROTO;
        memcpy(out, v.p, 16);
        return 0;
    }
    /* uuid_out: 8-4-4-4-12 lower-case hex digits. */
    static const size_t dash[] = { 8, 13, 18, 23 };
    if (v.n != 36)
        return BT_EPROTO;
    uint8_t u[16];
    size_t k = 0, d = 0;
    for (size_t i = 0; i < 36;) {
        if (d < 4 && i == dash[d]) {
            if (v.p[i] != '-')
                return BT_EPROTO;
            d++;
            i++;
            continue;
        }
        int hi = bt__hexval(v.p[i]), lo = bt__hexval(v.p[i + 1]);
        if (hi < 0 || lo < 0)
            return BT_EPROTO;
        u[k++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    memcpy(out, u, 16);
    return 0;
}

/* ---- timestamptz -------------------------------------------------------- */

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar, with
 * astronomical years (1 BC is year 0). Howard Hinnant's days_from_civil. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* n digits (n > 0) at *p, within end, as a number; advances *p. */
static bool digits(const unsigned char **p, const unsigned char *end, size_t n, int64_t *out)
{
    int64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (*p >= end || **p < '0' || **p > '9')
            return false;
        x = x * 10 + (**p - '0');
        (*p)++;
    }
    *out = x;
    return true;
}

static bool lit(const unsigned char **p, const unsigned char *end, char c)
{
    if (*p >= end || **p != (unsigned char)c)
        return false;
    (*p)++;
    return true;
}

static bool word(const unsigned char *p, size_t n, const char *w)
{
    return n == strlen(w) && memcmp(p, w, n) == 0;
}

/* timestamptz_out in DateStyle ISO (the default):
 *   YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM[:SS]][ BC]
 * with four or more year digits, or "infinity" / "-infinity". Other
 * DateStyles (SQL, German, Postgres) are BT_ENOTSUP: their text is
 * ambiguous without the session's settings; ask for binary results. */
static int parse_timestamptz(const unsigned char *s, size_t n, int64_t *out)
{
    if (word(s, n, "infinity")) {
        *out = BT_PQ_TIMESTAMP_INFINITY;
        return 0;
    }
    if (word(s, n, "-infinity")) {
        *out = BT_PQ_TIMESTAMP_NEG_INFINITY;
        return 0;
    }
    const unsigned char *p = s, *end = s + n;
    size_t ylen = 0;
    while (p + ylen < end && p[ylen] >= '0' && p[ylen] <= '9')
        ylen++;
    if (ylen < 4 || p + ylen >= end || p[ylen] != '-')
        return BT_ENOTSUP; /* not DateStyle ISO */
    if (ylen > 9)
        return BT_EPROTO;
    int64_t y, mo, d, h, mi, sec, frac = 0;
    if (!digits(&p, end, ylen, &y) || !lit(&p, end, '-') || !digits(&p, end, 2, &mo) ||
        !lit(&p, end, '-') || !digits(&p, end, 2, &d) || !lit(&p, end, ' ') ||
        !digits(&p, end, 2, &h) || !lit(&p, end, ':') || !digits(&p, end, 2, &mi) ||
        !lit(&p, end, ':') || !digits(&p, end, 2, &sec))
        return BT_EPROTO;
    if (p < end && *p == '.') {
        p++;
        size_t k = 0;
        while (p < end && *p >= '0' && *p <= '9' && k < 6) {
            frac = frac * 10 + (*p - '0');
            p++;
            k++;
        }
        if (k == 0 || (p < end && *p >= '0' && *p <= '9'))
            return BT_EPROTO; /* the server prints at most 6 digits */
        for (; k < 6; k++)
            frac *= 10;
    }
    if (p >= end || (*p != '+' && *p != '-'))
        return BT_EPROTO;
    int sign = *p == '-' ? -1 : 1;
    p++;
    int64_t oh, om = 0, os = 0;
    if (!digits(&p, end, 2, &oh))
        return BT_EPROTO;
    if (p < end && *p == ':') {
        p++;
        if (!digits(&p, end, 2, &om))
            return BT_EPROTO;
        if (p < end && *p == ':') {
            p++;
            if (!digits(&p, end, 2, &os))
                return BT_EPROTO;
        }
    }
    if (end - p == 3 && memcmp(p, " BC", 3) == 0) {
        y = 1 - y; /* 1 BC is year 0 */
        p = end;
    }
    if (p != end || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 24 || mi > 59 || sec > 60)
        return BT_EPROTO;
    int64_t secs = days_from_civil(y, (int)mo, (int)d) * 86400 + h * 3600 + mi * 60 + sec -
                   sign * (oh * 3600 + om * 60 + os);
    int64_t us;
    if (__builtin_mul_overflow(secs, INT64_C(1000000), &us) ||
        __builtin_add_overflow(us, frac, &us) || us == INT64_MAX || us == INT64_MIN)
        return BT_ERANGE;
    *out = us;
    return 0;
}

BT_EXPORT int bt_pq_result_timestamptz(const bt_pq_result *r, int row, int col, int64_t *out)
{
    static const Oid types[] = { OID_TIMESTAMPTZ };
    value v;
    int rc = locate(r, row, col, out, types, NTYPES(types), &v);
    if (rc != 0)
        return rc;
    if (!v.binary)
        return parse_timestamptz(v.p, v.n, out);
    if (v.n != 8)
        return BT_EPROTO;
    int64_t pg = (int64_t)be_u64(v.p, 8);
    if (pg == INT64_MAX || pg == INT64_MIN) {
        *out = pg == INT64_MAX ? BT_PQ_TIMESTAMP_INFINITY : BT_PQ_TIMESTAMP_NEG_INFINITY;
        return 0;
    }
    int64_t us;
    /* Finite times map below INT64_MAX and above INT64_MIN, which mean
     * the infinities: the last 29 years of PostgreSQL's range (past
     * 294247 AD) do not fit. */
    if (__builtin_add_overflow(pg, PG_EPOCH_US, &us) || us == INT64_MAX || us == INT64_MIN)
        return BT_ERANGE;
    *out = us;
    return 0;
}
