/* Query results and server errors: a thin, const view over a PGresult. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "pq-internal.h"
#include "sized.h"

bt_pq_result *bt__pq_result_wrap(PGresult *res)
{
    bt_pq_result *r = bt_malloc(sizeof *r);
    if (r == NULL)
        return NULL;
    r->pg = res;
    return r;
}

BT_EXPORT void bt_pq_result_free(bt_pq_result *r)
{
    if (r == NULL)
        return;
    PQclear(r->pg);
    bt_free(r);
}

BT_EXPORT int bt_pq_result_rows(const bt_pq_result *r)
{
    return r != NULL && r->pg != NULL ? PQntuples(r->pg) : 0;
}

BT_EXPORT int bt_pq_result_columns(const bt_pq_result *r)
{
    return r != NULL && r->pg != NULL ? PQnfields(r->pg) : 0;
}

BT_EXPORT const char *bt_pq_result_column_name(const bt_pq_result *r, int col)
{
    return r != NULL && r->pg != NULL ? PQfname(r->pg, col) : NULL;
}

BT_EXPORT int bt_pq_result_column_index(const bt_pq_result *r, const char *name)
{
    if (r == NULL || r->pg == NULL || name == NULL)
        return -1;
    /* Exact (case-sensitive) match first: PQfnumber folds unquoted names
     * to lower case, which surprises callers who pass a result's own
     * column name back. */
    int n = PQnfields(r->pg);
    for (int i = 0; i < n; i++)
        if (strcmp(PQfname(r->pg, i), name) == 0)
            return i;
    return PQfnumber(r->pg, name);
}

BT_EXPORT unsigned bt_pq_result_column_type(const bt_pq_result *r, int col)
{
    if (r == NULL || r->pg == NULL || col < 0 || col >= PQnfields(r->pg))
        return 0;
    return PQftype(r->pg, col);
}

static bool in_range(const bt_pq_result *r, int row, int col)
{
    return r != NULL && r->pg != NULL && row >= 0 && col >= 0 && row < PQntuples(r->pg) &&
           col < PQnfields(r->pg);
}

BT_EXPORT const char *bt_pq_result_get(const bt_pq_result *r, int row, int col)
{
    if (!in_range(r, row, col) || PQgetisnull(r->pg, row, col))
        return NULL;
    return PQgetvalue(r->pg, row, col);
}

BT_EXPORT const char *bt_pq_result_get_named(const bt_pq_result *r, int row, const char *name)
{
    return bt_pq_result_get(r, row, bt_pq_result_column_index(r, name));
}

BT_EXPORT bool bt_pq_result_is_null(const bt_pq_result *r, int row, int col)
{
    return in_range(r, row, col) && PQgetisnull(r->pg, row, col);
}

BT_EXPORT int bt_pq_result_length(const bt_pq_result *r, int row, int col)
{
    if (!in_range(r, row, col))
        return -1;
    return PQgetlength(r->pg, row, col);
}

BT_EXPORT int64_t bt_pq_result_affected(const bt_pq_result *r)
{
    if (r == NULL || r->pg == NULL)
        return -1;
    const char *s = PQcmdTuples(r->pg);
    if (s == NULL || !*s)
        return -1;
    return strtoll(s, NULL, 10);
}

BT_EXPORT const char *bt_pq_result_command(const bt_pq_result *r)
{
    return r != NULL && r->pg != NULL ? PQcmdStatus(r->pg) : NULL;
}

/* ---- Errors ------------------------------------------------------------- */

int bt__pq_error_code(const PGresult *res)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    /* Class 08 is a connection exception; 57P01-57P03 are the server
     * shutting down or not accepting connections. Both mean the connection
     * is going, but the query did reach the server: still BT_ESQL, so the
     * caller can read the SQLSTATE. */
    return state ? BT_ESQL : BT_EIO;
}

/* "[SQLSTATE] primary\nDETAIL: ...\nHINT: ..." (see pq.h). */
char *bt__pq_format_error(const PGresult *res, const char *fallback)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *prim = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *detail = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
    const char *hint = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL;
    if (prim == NULL) {
        /* A client-side error (connection lost...): libpq's own text, with
         * its trailing newline cut. */
        const char *m = res != NULL ? PQresultErrorMessage(res) : NULL;
        if (m == NULL || !*m)
            m = fallback ? fallback : "unknown error";
        char *s = bt_strdup(m);
        if (s != NULL) {
            size_t n = strlen(s);
            while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
                s[--n] = '\0';
        }
        return s;
    }
    return bt_asprintf("[%s] %s%s%s%s%s", state ? state : "", prim, detail ? "\nDETAIL: " : "",
                       detail ? detail : "", hint ? "\nHINT: " : "", hint ? hint : "");
}

static void copy_field(char *dst, size_t cap, const char *src, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

BT_EXPORT int bt_pq_error_parse(bt_future *f, bt_pq_error *out)
{
    if (f == NULL || out == NULL)
        return BT_EINVAL;
    /* Past this check every field written below is one of the first
     * layout's, all within out->size. */
    if (bt__sized_check(out->size, BT__SIZE_V1(bt_pq_error, hint), "pq: bt_pq_error_parse",
                        "bt_pq_error", "BT_SIZED(bt_pq_error)") != 0)
        return BT_EINVAL;
    bt__sized_zero(out, out->size, sizeof *out);
    int code = bt_future_error(f);
    if (code == 0 || code == BT_EINPROGRESS)
        return code == 0 ? 0 : code;
    const char *m = bt_future_error_message(f);
    if (m == NULL)
        return code;
    /* A query's server error (BT_ESQL), or a connect error the server
     * reported (BT_EACCES, BT_ENOENT, BT_ESQL): "[SQLSTATE] ...". */
    if (m[0] == '[' && (code == BT_ESQL || code == BT_EACCES || code == BT_ENOENT)) {
        const char *end = strchr(m, ']');
        if (end && end - m - 1 < (long)sizeof out->sqlstate) {
            copy_field(out->sqlstate, sizeof out->sqlstate, m + 1, (size_t)(end - m - 1));
            m = end + 1;
            if (*m == ' ')
                m++;
        }
    }
    const char *d = strstr(m, "\nDETAIL: ");
    const char *h = strstr(m, "\nHINT: ");
    const char *pend = d ? d : h ? h : m + strlen(m);
    copy_field(out->message, sizeof out->message, m, (size_t)(pend - m));
    if (d) {
        d += strlen("\nDETAIL: ");
        const char *dend = h && h > d ? h : d + strlen(d);
        copy_field(out->detail, sizeof out->detail, d, (size_t)(dend - d));
    }
    if (h) {
        h += strlen("\nHINT: ");
        copy_field(out->hint, sizeof out->hint, h, strlen(h));
    }
    return code;
}
