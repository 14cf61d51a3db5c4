/* Baton: an async PostgreSQL pool on nonblocking libpq (libbaton-pq).
 *
 * A bt_pq_pool keeps between min_size and max_size connections to one
 * server, each connected with PQconnectStartParams/PQconnectPoll on the
 * loop and driven by libevent. Every query is a future whose value is a
 * bt_pq_result. Parameters always travel out of band (the extended
 * protocol): there is no call that builds SQL from strings.
 *
 *   bt_pq_options o;
 *   bt_pq_options_init(&o);
 *   o.conninfo = "postgresql://app@db/app";
 *   bt_pq_pool *pool = bt_pq_pool_new(loop, &o);
 *   const char *args[] = {"42"};
 *   bt_future *f = bt_pq_query(pool, "SELECT name FROM users WHERE id = $1", 1, args);
 *   ... when f settles: bt_pq_result *r = bt_future_value(f);
 *       bt_pq_result_get(r, 0, 0) is the name, or NULL for SQL NULL.
 *
 * What the pool does for you
 * - Prepared statements: each connection prepares a query's SQL the first
 *   time it runs it and reuses the statement afterwards (a per-connection
 *   cache of stmt_cache_size entries; the least recently used is
 *   DEALLOCATEd to make room). A statement the server dropped (DISCARD
 *   ALL, DEALLOCATE ALL) or whose result type changed (ALTER TABLE) is
 *   forgotten and a pool query retried once (those prepared after the drop,
 *   still in the pipeline, are kept).
 * - Pipelining: every connection runs in libpq's pipeline mode. A query
 *   goes to an idle connection if there is one, else the pool opens a new
 *   connection (up to max_size). Once the pool is at max_size, a query
 *   joins the batch that a connection with nothing older in flight is
 *   forming in this loop pass (answered in the same round trip; only while
 *   answers lately came within 2 ms: slower queries are spread), else
 *   takes an idle connection, else is pipelined behind the queries already
 *   on the least busy connection (up to pipeline_depth in flight) that
 *   does not look stalled (its oldest query waiting far longer than
 *   answers lately took).
 *   Pool queries sent to one connection in the same loop pass share one
 *   Sync (a batch): the server then answers them with one write, which is
 *   where pipelining gets its speed. A batch runs as one implicit
 *   transaction, so the pool settles its queries only once the server has
 *   committed it, and when one query of a batch fails, that query alone
 *   fails: the others were rolled back or skipped, and are sent again, each
 *   with a Sync of its own (bt_pq_stats.retried counts them). Errors that
 *   only batching can cause (deadlock, serialization failure, a command
 *   that refuses a transaction block) are retried alone too. Side effects
 *   outside transactions (nextval, session advisory locks) can thus happen
 *   twice; set sync_each_query to give every query its own Sync. Queries
 *   on an acquired connection, and row-callback queries, always get their
 *   own Sync.
 * - Waiting is bounded: at most max_waiters queries and acquires wait for a
 *   connection (more fail at once with BT_EAGAIN), each for at most
 *   acquire_timeout_ms (then BT_ETIMEDOUT, with the last connect error),
 *   counted from when it came: a retried query does not wait anew.
 * - Connections older than max_lifetime_ms or idle for max_idle_ms are
 *   closed (never below min_size for idleness); broken ones are discarded
 *   and replaced; failed connects are retried with exponential backoff and
 *   jitter.
 * - Host names are resolved with getaddrinfo on the offload pool's blocking
 *   lane (bt_to_thread), never on the loop; numeric addresses, unix sockets
 *   and an explicit hostaddr skip that step. With a host list (host=a,b
 *   port=5432,5433) every host and every address of a name is tried in
 *   order, as libpq does, and target_session_attrs picks among them;
 *   connect_timeout_ms bounds the whole walk. libpq's connect_timeout is
 *   ignored in nonblocking mode, so the pool enforces connect_timeout_ms.
 *   Unless the conninfo (or PGGSSENCMODE) says otherwise, gssencmode is
 *   "disable": the GSSAPI probe costs a round trip and its credential
 *   lookup can block.
 *
 * Errors a query future can fail with
 * - BT_ESQL: the server reported an error. The message reads
 *   "[SQLSTATE] message" plus "\nDETAIL: ..." and "\nHINT: ..." lines when
 *   the server sent them; bt_pq_error_parse splits it.
 * - BT_ECONNRESET: the connection broke while the query was in flight. We
 *   cannot know whether it ran, so it is never retried. Queries that were
 *   only waiting are not affected: they go out on a new connection.
 * - BT_ETIMEDOUT: the per-query timeout (a cancel request was sent) or the
 *   acquire timeout. BT_EAGAIN: too many waiters. BT_ESHUTDOWN: the pool
 *   or its loop was freed.
 * - Connect errors: a pool that never connected fails bt_pq_pool_ready and
 *   waiting queries at the first connect failure instead of making them
 *   wait. BT_ECONNREFUSED, BT_ETIMEDOUT, BT_EDNS, BT_ETLS and friends: the
 *   server could not be reached. When the server itself refused, the
 *   message starts with its SQLSTATE, as a query's error does, and
 *   bt_pq_error_parse gives it: BT_EACCES for authentication and
 *   authorization (28000: no such role, or no pg_hba.conf entry; 28P01:
 *   wrong password; 42501: no CONNECT privilege), BT_ENOENT for a database
 *   that does not exist (3D000), BT_ESQL for any other (53300 too many
 *   connections, 57P03 the server is starting or stopping).
 *
 * Cancellation: bt_future_cancel on a query that has not been sent removes
 * it; on one that has, the future is cancelled at once, a cancel request
 * (PQcancel, which blocks) is sent from a thread of its own when the query
 * is the one the server is running, and the connection takes no new work
 * until the server has acted on the request and the query's results have
 * been drained. A pool query that our late cancel request hit instead
 * (SQLSTATE 57014) is sent again. A cancel request unanswered after
 * cancel_timeout_ms (a stopped or wedged postmaster) closes its connection
 * and the pool opens another: a late request could hit any later query.
 * Nothing waits for the request's thread, neither the pool nor
 * bt_pq_pool_free nor bt_loop_free.
 *
 * Threads: everything here is loop-thread only (but the result readers
 * and typed getters, which any thread may call on a result it holds);
 * notification, notice, row and COPY data callbacks run on the loop
 * thread. They may issue queries, and they may free the pool
 * (bt_pq_pool_free, see there), as may a future's callback or a
 * transaction's body. COPY FROM STDIN and TO STDOUT run through their own
 * calls (see "COPY" below): a plain query refuses them with BT_ENOTSUP.
 */
#ifndef BATON_PQ_H
#define BATON_PQ_H

#include <stdbool.h>
#include <stdint.h>

#include <baton/common.h>
#include <baton/future.h>
#include <baton/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bt_pq_pool bt_pq_pool;
typedef struct bt_pq_conn bt_pq_conn;
typedef struct bt_pq_result bt_pq_result;

typedef struct {
    size_t size;                 /* sizeof this struct, set by the caller (common.h) */
    const char *conninfo;        /* libpq conninfo or URI (copied); required */
    unsigned min_size;           /* connections kept open; default 1 */
    unsigned max_size;           /* default 10 */
    unsigned pipeline_depth;     /* queries in flight per connection; 1 turns
                                    pipelining of pool queries off; default 16 */
    unsigned max_waiters;        /* queries + acquires waiting; default 10000 */
    uint64_t connect_timeout_ms; /* default 10000 */
    uint64_t acquire_timeout_ms; /* wait for a connection; default 30000, 0 none */
    uint64_t query_timeout_ms;   /* default per-query timeout; default 0 (none);
                                    for a COPY, the longest it waits for the
                                    server (see COPY below) */
    uint64_t max_lifetime_ms;    /* default 3600000 (1 h), 0 none */
    uint64_t max_idle_ms;        /* default 600000 (10 min), 0 none */
    uint64_t reconnect_min_ms;   /* first retry delay; default 50 */
    uint64_t reconnect_max_ms;   /* backoff cap; default 5000 */
    unsigned stmt_cache_size;    /* prepared statements per connection;
                                    default 256; 0 never prepares */
    bool sync_each_query;        /* give every pool query its own Sync, even
                                    when pipelined: no shared batches (see
                                    "Pipelining" above); default false */
    uint64_t resolve_timeout_ms; /* host name lookup before a connect (the
                                    connect then has connect_timeout_ms of
                                    its own); default 5000 */
    uint64_t cancel_timeout_ms;  /* a cancel request's answer; past it the
                                    connection is closed and replaced (see
                                    "Cancellation" above); default 5000 */
    bool transaction_pooling;    /* the conninfo points at a transaction
                                    pooler (PgBouncer's pool_mode=transaction),
                                    which gives each transaction whichever
                                    server connection is free: no prepared
                                    statements (stmt_cache_size is taken as
                                    0, every query runs unnamed), and what
                                    would leave state on a server session
                                    is refused with BT_ENOTSUP and a message
                                    naming this option: bt_pq_listen, and
                                    queries that start with LISTEN, SET
                                    (but SET LOCAL, SET TRANSACTION and SET
                                    CONSTRAINTS are fine), RESET or PREPARE;
                                    default false */
} bt_pq_options;

/* Fill o with the defaults above (conninfo NULL) and its size (see
 * common.h: a struct not filled by this is refused). NULL is a no-op.
 * Thread: any. A macro, so that the size is the caller's sizeof: a program
 * built against an older header is never written past its struct's end. */
#define bt_pq_options_init(o) bt_pq_options_init_size((o), sizeof *(o))
BT_EXPORT void bt_pq_options_init_size(bt_pq_options *o, size_t size);

/* A new pool on loop. Starts min_size connections in the background and
 * returns at once (use bt_pq_pool_ready to wait for the first).
 * Returns: a pool to free with bt_pq_pool_free, or NULL, after a log line
 * (bt_log, BT_LOG_WARN) saying why, for NULL arguments, a conninfo libpq
 * cannot parse (an unknown key) or whose values it would refuse when
 * connecting (port=abc, connect_timeout=ten, sslmode=maybe: checked here,
 * not at the first query), min_size > max_size or max_size == 0, an o not
 * filled by bt_pq_options_init (o->size unset), or out of
 * memory. Thread: the loop's. */
BT_EXPORT bt_pq_pool *bt_pq_pool_new(bt_loop *loop, const bt_pq_options *o);

/* Free the pool: every waiting and in-flight query and acquire fails with
 * BT_ESHUTDOWN, connections are closed. A connection still acquired is
 * closed too; its handle stays valid until bt_pq_conn_release (queries on
 * it fail with BT_ESHUTDOWN). If the loop is freed first, the pool's
 * closer does all this, and bt_pq_pool_free then only frees memory.
 * It may be called from inside any of the pool's callbacks (a row, a
 * notification, a notice, COPY data): the pool is shut down at once and
 * no callback of it runs again, but its memory is freed once the pool's
 * code that ran the callback has returned (as libuv's uv_close defers a
 * handle's memory). Either way the pool is invalid after the call.
 * Thread: the loop's. NULL is a no-op. */
BT_EXPORT void bt_pq_pool_free(bt_pq_pool *pool);

/* Close gracefully (asyncpg's pool.close()): from now on new pool
 * queries, acquires and listens fail at once with BT_ESHUTDOWN; what
 * already waits or runs finishes; connections lent out are waited for
 * (queries on them still work) until released; then every connection is
 * closed and the future settles with a NULL value. bt_pq_pool_free is
 * still needed afterwards; called before the future settles it is
 * asyncpg's terminate() (the future then fails with BT_ESHUTDOWN). Wrap
 * the future in bt_timeout for a bounded wait. Calling it again returns
 * the same outcome. Returns: new reference, or NULL (NULL pool, out of
 * memory). Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_pool_close(bt_pq_pool *pool);

/* A future that settles (NULL value) once the pool has one open
 * connection, or fails with the connect error if the first attempt fails,
 * or with BT_ESHUTDOWN once bt_pq_pool_close was called. Returns: new
 * reference, or NULL (a NULL pool, out of memory). Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_pool_ready(bt_pq_pool *pool);

typedef struct {
    size_t size;    /* sizeof this struct, set by the caller (common.h) */
    unsigned conns; /* open or opening connections */
    unsigned idle;  /* open, not acquired, nothing in flight */
    unsigned connecting;
    unsigned acquired;
    unsigned waiting;  /* queries + acquires waiting for a connection */
    uint64_t connects; /* successful connects, over the pool's life */
    uint64_t connect_failures;
    uint64_t broken;            /* connections lost while open */
    uint64_t queries;           /* queries settled */
    uint64_t pipelined;         /* queries sent while others were in flight */
    uint64_t cancels_sent;      /* cancel requests sent to the server */
    uint64_t cancels_timed_out; /* of those, unanswered within
                                   cancel_timeout_ms: their connection was
                                   closed and replaced */
    uint64_t retried;           /* queries sent again: their batch failed, their
                                statement went stale, or our late cancel
                                hit them (none of them had taken effect) */
} bt_pq_stats;

/* Fill *out (set out->size first with BT_SIZED, see common.h). Returns 0
 * or BT_EINVAL (NULL, an unset size). Thread: the loop's. */
BT_EXPORT int bt_pq_pool_get_stats(const bt_pq_pool *pool, bt_pq_stats *out);

/* ---- Queries ------------------------------------------------------------ */

/* Called for each row of a query run with a row callback (single-row mode),
 * with a one-row result (borrowed, valid during the call). Return 0 to go
 * on, non-zero to drop the rest of the rows (they are still read from the
 * server and discarded). It may issue queries and free the pool (see
 * bt_pq_pool_free). Thread: the loop's. */
typedef int (*bt_pq_row_cb)(const bt_pq_result *row, void *arg);

typedef struct {
    size_t size;           /* sizeof this struct, set by the caller (common.h) */
    const unsigned *types; /* parameter type Oids, NULL: server infers */
    const int *lengths;    /* byte lengths of binary parameters */
    const int *formats;    /* 0 text / 1 binary per parameter; binary
                                  needs lengths too; NULL: all text */
    int result_format;     /* 0 text (default), 1 binary */
    uint64_t timeout_ms;   /* 0: the pool's query_timeout_ms */
    bool no_prepare;       /* run unnamed even if the cache has room */
    bt_pq_row_cb row_cb;   /* single-row mode: rows go here, the final
                                  result has none (only the command status) */
    void *row_arg;
} bt_pq_query_opts;

/* Run sql with nparams parameters on a pool connection. values[i] is the
 * i-th parameter in text form, or NULL for SQL NULL; the strings are copied
 * before the call returns. Returns: new reference to a future whose value
 * is a bt_pq_result (owned by the future; bt_future_take_value to keep it,
 * then bt_pq_result_free). Errors are on the future (see the top). Returns
 * NULL only if no future can be made (NULL pool or sql, out of memory);
 * bad arguments (nparams < 0 or > 65535, values NULL with nparams > 0) give
 * a failed future (BT_EINVAL). Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_query(bt_pq_pool *pool, const char *sql, int nparams,
                                 const char *const *values);
/* The same with options (opts may be NULL; it is copied; set opts->size,
 * see common.h, or the future fails with BT_EINVAL). */
BT_EXPORT bt_future *bt_pq_query_ex(bt_pq_pool *pool, const char *sql, int nparams,
                                    const char *const *values, const bt_pq_query_opts *opts);

/* ---- Results ------------------------------------------------------------
 * These only read a result and touch no loop or connection, so, unlike the
 * rest of this file, any thread may call them on a result it holds (one
 * taken from its future, or one borrowed while its future lives). A NULL
 * result reads as empty: 0 rows and columns, -1, NULL or false. */

/* Rows and columns (0 for a command without rows). */
BT_EXPORT int bt_pq_result_rows(const bt_pq_result *r);
BT_EXPORT int bt_pq_result_columns(const bt_pq_result *r);
/* A column's name (borrowed, valid while r lives) or NULL if out of range. */
BT_EXPORT const char *bt_pq_result_column_name(const bt_pq_result *r, int col);
/* A column's index by name (an exact match first, then libpq's
 * case-folding PQfnumber), or -1 (no such column, a NULL name). */
BT_EXPORT int bt_pq_result_column_index(const bt_pq_result *r, const char *name);
/* A column's type Oid (23 int4, 25 text, ...), or 0 if out of range. */
BT_EXPORT unsigned bt_pq_result_column_type(const bt_pq_result *r, int col);
/* The value in text (or binary) form: borrowed, NUL-terminated, valid while
 * r lives. NULL for SQL NULL or out of range. */
BT_EXPORT const char *bt_pq_result_get(const bt_pq_result *r, int row, int col);
/* By column name; NULL for SQL NULL, out of range or no such column. */
BT_EXPORT const char *bt_pq_result_get_named(const bt_pq_result *r, int row, const char *name);
/* True if the value is SQL NULL (false when out of range). */
BT_EXPORT bool bt_pq_result_is_null(const bt_pq_result *r, int row, int col);
/* The value's length in bytes, or -1 if out of range. */
BT_EXPORT int bt_pq_result_length(const bt_pq_result *r, int row, int col);
/* Rows affected by INSERT/UPDATE/DELETE/SELECT/..., or -1 if the command
 * does not report a count. */
BT_EXPORT int64_t bt_pq_result_affected(const bt_pq_result *r);
/* The command tag, such as "INSERT 0 1". Returns: borrowed, valid while
 * r lives. */
BT_EXPORT const char *bt_pq_result_command(const bt_pq_result *r);
/* Free a result taken from its future (never one still owned by it).
 * NULL is a no-op. */
BT_EXPORT void bt_pq_result_free(bt_pq_result *r);
/* A column's format: 0 text, 1 binary (bt_pq_query_opts.result_format),
 * or -1 if out of range. */
BT_EXPORT int bt_pq_result_column_format(const bt_pq_result *r, int col);

/* ---- Typed values --------------------------------------------------------
 * A value as a C type, from a text column (parsed, as the server printed
 * it) or a binary one (decoded from network byte order): the same call
 * reads both, so a query can switch to binary results
 * (bt_pq_query_opts.result_format = 1, which asks the server for binary
 * columns; faster for wide rows, see docs/postgres.md) without changing
 * how its rows are read. Each getter takes the column types listed with
 * it. numeric, text and every other type stay text: read them with
 * bt_pq_result_get in a text-format query (in a binary one, cast them in
 * the SQL: `amount::text`).
 *
 * Every getter returns
 *   0            the value is in *out;
 *   BT_PQ_NULL   the value is SQL NULL (a positive 1, not an error; *out
 *                is left alone);
 *   BT_EINVAL    a NULL result or out, or a row or column out of range;
 *   BT_ETYPE     the column's type is not one the getter takes (checked
 *                before NULL: it is the column's, whatever the row);
 *   BT_EPROTO    the value is not what its type promises (a binary int4
 *                that is not 4 bytes, text that does not parse): nothing
 *                is read past the value's end;
 * and the few codes named with a getter. On an error *out is left alone.
 * Thread: any, as the readers above (they touch no loop or connection). */
#define BT_PQ_NULL 1

/* int2, int4 and int8 columns. */
BT_EXPORT int bt_pq_result_int64(const bt_pq_result *r, int row, int col, int64_t *out);
/* float4 and float8 columns; NaN and the infinities are kept. */
BT_EXPORT int bt_pq_result_double(const bt_pq_result *r, int row, int col, double *out);
/* bool columns. */
BT_EXPORT int bt_pq_result_bool(const bt_pq_result *r, int row, int col, bool *out);
/* bytea columns: the value's bytes are copied into buf (cap bytes; buf may
 * be NULL when cap is 0) and *len is set to their count, also when they do
 * not fit: then nothing is copied and the call returns BT_EMSGSIZE, so a
 * first call with cap 0 gives the size. A text column is unescaped (either
 * bytea_output); a binary one is copied as it is (bt_pq_result_get and
 * bt_pq_result_length read it in place). BT_EINVAL also for a NULL len. */
BT_EXPORT int bt_pq_result_bytes(const bt_pq_result *r, int row, int col, void *buf, size_t cap,
                                 size_t *len);
/* uuid columns: the 16 bytes, in the order the text form prints them. */
BT_EXPORT int bt_pq_result_uuid(const bt_pq_result *r, int row, int col, uint8_t out[16]);

/* timestamptz columns: microseconds since 1970-01-01 00:00 UTC (negative
 * before), whatever the session's TimeZone. 'infinity' and '-infinity' give
 * these two values, which no finite time gives. A text column must be in
 * DateStyle ISO (the server's default): other styles give BT_ENOTSUP (use
 * binary results). BT_ERANGE: a time after about 294247 AD, which the
 * server can store but an int64 of Unix microseconds cannot hold. */
#define BT_PQ_TIMESTAMP_INFINITY INT64_MAX
#define BT_PQ_TIMESTAMP_NEG_INFINITY INT64_MIN
BT_EXPORT int bt_pq_result_timestamptz(const bt_pq_result *r, int row, int col, int64_t *out);

/* ---- Errors ------------------------------------------------------------- */

typedef struct {
    size_t size;       /* sizeof this struct, set by the caller (common.h) */
    char sqlstate[6];  /* "23505"; "" if the error did not come from SQL */
    char message[512]; /* the primary message */
    char detail[512];  /* "" if none */
    char hint[512];    /* "" if none */
} bt_pq_error;

/* Split a failed query future's error into its fields (truncating long
 * fields). Marks the error read. Returns the future's error code (BT_ESQL
 * for a server error, and BT_EACCES or BT_ENOENT for a connect error the
 * server reported: then sqlstate is set; BT_ECANCELED for a cancelled
 * future, whose message is "cancelled"), 0 if f settled with a value or
 * BT_EINPROGRESS if it is pending (out is then zeroed), BT_EINVAL for a
 * NULL f or out or an unset out->size (BT_SIZED, see common.h). Thread: the loop's. */
BT_EXPORT int bt_pq_error_parse(bt_future *f, bt_pq_error *out);

/* ---- Acquired connections and transactions ------------------------------ */

/* Take a connection out of the pool for a series of queries (a
 * transaction). Returns: new reference to a future whose value is a
 * bt_pq_conn; take it with bt_future_take_value and give it back with
 * bt_pq_conn_release (if nobody takes it, the future releases it when
 * freed). Fails like a query waiting for a connection (BT_ETIMEDOUT,
 * BT_EAGAIN, BT_ESHUTDOWN, a connect error). Returns NULL only when no
 * future can be made. Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_acquire(bt_pq_pool *pool);

/* Queries on an acquired connection run in the order issued (several may
 * be pipelined). As bt_pq_query. A broken connection fails them with
 * BT_ECONNRESET. Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_conn_query(bt_pq_conn *c, const char *sql, int nparams,
                                      const char *const *values);
BT_EXPORT bt_future *bt_pq_conn_query_ex(bt_pq_conn *c, const char *sql, int nparams,
                                         const char *const *values, const bt_pq_query_opts *opts);

/* BEGIN, COMMIT and ROLLBACK as queries. Returns as bt_pq_conn_query. */
BT_EXPORT bt_future *bt_pq_conn_begin(bt_pq_conn *c);
BT_EXPORT bt_future *bt_pq_conn_commit(bt_pq_conn *c);
BT_EXPORT bt_future *bt_pq_conn_rollback(bt_pq_conn *c);

/* The body of a transaction: called with the acquired connection c, inside
 * BEGIN, on the loop thread. It runs its queries on c and returns a future
 * (new reference): a value commits, an error or a cancellation rolls back.
 * Returning NULL rolls back (BT_ENOMEM). */
typedef bt_future *(*bt_pq_tx_fn)(bt_pq_conn *c, void *arg);

/* asyncpg's `async with pool.acquire() as c: async with c.transaction():`
 * as one future: acquire a connection, BEGIN, call fn, then COMMIT if its
 * future has a value or ROLLBACK if not, release the connection, and
 * settle with fn's outcome (its value is moved over), or with COMMIT's
 * error (a serialization failure, a deferred constraint) if COMMIT fails.
 * Cancelling the result cancels the step under way (a waiting acquire, the
 * body); the transaction is then rolled back. Fails like bt_pq_acquire if
 * no connection can be had. Returns: new reference, or NULL for a NULL
 * pool or fn. Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_transaction(bt_pq_pool *pool, bt_pq_tx_fn fn, void *arg);

/* True if the server says the connection is inside a transaction block
 * (idle in transaction or in a failed transaction); false for NULL or a
 * closed connection. Thread: the loop's. */
BT_EXPORT bool bt_pq_conn_in_transaction(const bt_pq_conn *c);

/* Give the connection back. Queries still in flight on it finish (their
 * futures settle normally) first; then, if it is inside a transaction, the
 * pool rolls it back before anyone else gets it; a broken connection is
 * discarded and replaced. c is invalid after the call. NULL is a no-op.
 * Thread: the loop's. */
BT_EXPORT void bt_pq_conn_release(bt_pq_conn *c);

/* A parameter the server reports about this connection's session
 * (PQparameterStatus): "server_version" ("15.4 (Debian 15.4-1)"),
 * "TimeZone", "DateStyle", "client_encoding", "server_encoding",
 * "integer_datetimes", "standard_conforming_strings", "application_name",
 * "is_superuser", "session_authorization", "IntervalStyle" (and
 * "in_hot_standby" from PostgreSQL 14). A SET of one of them is reported
 * back once its query has run. Known without a round trip: libpq keeps
 * what the server sent. Returns: borrowed, valid until control returns to
 * the loop (a query's results may bring a new value) and never after
 * bt_pq_conn_release (copy it to keep it); NULL for a NULL c or name, a
 * name the server does not report, a connection not acquired, or one that
 * was lost. Thread: the loop's. */
BT_EXPORT const char *bt_pq_conn_parameter(const bt_pq_conn *c, const char *name);

/* ---- Notices ------------------------------------------------------------ */

/* A message from the server that is not an error: RAISE NOTICE and RAISE
 * WARNING in PL/pgSQL, "there is no transaction in progress", DROP ... IF
 * EXISTS of nothing, or the FATAL an idle connection gets when the server
 * ends it. Every string is borrowed for the callback's duration and never
 * NULL ("" when the server sent none). The library fills this struct and
 * the caller only reads it, so fields may be appended to it in a later
 * version without a size (see docs/design.md). */
typedef struct {
    const char *severity; /* "WARNING", "NOTICE", "INFO", "LOG", "DEBUG"
                             (never translated) or "FATAL" */
    const char *sqlstate; /* "01000"; "" for a notice libpq made itself */
    const char *message;  /* the primary message */
    const char *detail;
    const char *hint;
    int backend_pid; /* the server process of the connection it came on */
} bt_pq_notice;

/* Called on the loop thread for each notice. It may issue queries, and
 * free the pool (see bt_pq_pool_free). */
typedef void (*bt_pq_notice_cb)(const bt_pq_notice *n, void *arg);

/* Send the notices of every connection of the pool (the LISTEN connection
 * included) to cb, or, with cb NULL, back to the default: Baton's log
 * (bt_log: WARNING at BT_LOG_WARN, NOTICE, INFO and FATAL at BT_LOG_INFO,
 * DEBUG and LOG at BT_LOG_DEBUG, as "pq: server WARNING 01000: ..."). A
 * notice reaches cb in the order the server sent it, after the read that
 * brought it and before the callbacks of the query it came with run, so a
 * query's notices are all in when its future's callbacks see its result.
 * Set it right after bt_pq_pool_new to see every notice: nothing is read
 * before the loop runs. Returns 0, BT_EINVAL (NULL pool), BT_ESHUTDOWN
 * (the pool was freed or its loop closed) or BT_ENOMEM. Thread: the
 * loop's. */
BT_EXPORT int bt_pq_pool_set_notice_handler(bt_pq_pool *pool, bt_pq_notice_cb cb, void *arg);

/* ---- LISTEN / NOTIFY ---------------------------------------------------- */

/* Called on the loop thread for each notification on a channel; the
 * strings are borrowed for the call. It may issue queries, unlisten, and
 * free the pool (see bt_pq_pool_free). */
typedef void (*bt_pq_notify_cb)(const char *channel, const char *payload, int sender_pid,
                                void *arg);

/* Listen on channel (a plain name, quoted as an identifier for you) with
 * cb. The pool keeps a dedicated connection for notifications, outside
 * max_size, and LISTENs again on every channel after it reconnects
 * (notifications sent while it was down are lost: PostgreSQL keeps none).
 * One callback per channel: listening again replaces it. Returns: new
 * reference to a future that settles once the server has confirmed the
 * LISTEN (its value is that command's bt_pq_result), or fails (BT_EINVAL
 * for an empty channel or no callback, BT_ESHUTDOWN, or the listener's
 * connect error; the channel stays registered and is listened on once the
 * listener connects); NULL only if no future can be made.
 * Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_listen(bt_pq_pool *pool, const char *channel, bt_pq_notify_cb cb,
                                  void *arg);

/* Stop listening on channel; its callback is not called after this
 * returns. Returns 0, BT_ENOENT if not listening, BT_EINVAL. */
BT_EXPORT int bt_pq_unlisten(bt_pq_pool *pool, const char *channel);

/* ---- COPY ---------------------------------------------------------------
 * COPY ... FROM STDIN and COPY ... TO STDOUT, streamed: Baton moves the
 * bytes of whichever format the statement names (text, csv, binary) and
 * never holds the table. A COPY takes a connection of its own for its
 * duration (libpq runs COPY outside pipeline mode): from the pool, like
 * bt_pq_acquire (and waiting like it, within acquire_timeout_ms), or an
 * acquired connection with nothing in flight (inside a transaction, say).
 * The connection goes back usable when the COPY is over, or is discarded
 * when that cannot be assured. Everything here is loop-thread only.
 *
 * Timeout: a COPY streams a table of any size, so nothing bounds its whole
 * length; the pool's query_timeout_ms (when set) bounds each wait for the
 * server instead: for the statement's answer, for room in the socket while
 * a write waits, for the next rows of COPY OUT, for the answer to the end
 * or the abort. Whatever the server sends starts the wait again; time the
 * COPY waits for its user is not counted. Past it the connection is closed
 * (never reused: we cannot know where the server is) and every pending
 * future of the COPY fails with BT_ETIMEDOUT, like a lost connection's;
 * whether an end that timed out took effect is the server's to say (run
 * the COPY in a transaction when that matters).
 *
 * In:   f = bt_pq_copy_in(pool, "COPY t (a, b) FROM STDIN");
 *       bt_pq_copy *cp = bt_future_take_value(f);    (once f settles)
 *       bt_pq_copy_write(cp, "1\tone\n", 6) ...      (wait for each future)
 *       bt_pq_copy_end(cp)                           (a bt_pq_result: "COPY n")
 * Out:  bt_pq_copy_out(pool, "COPY t TO STDOUT", cb, arg)   (cb per row) */

typedef struct bt_pq_copy bt_pq_copy;

/* Start COPY ... FROM STDIN (sql) on a pool connection, or on c, an
 * acquired connection with no query in flight (else BT_EBUSY). Returns:
 * new reference to a future whose value is the COPY's handle, once the
 * server is ready for data; take it with bt_future_take_value (a future
 * freed with the handle still in it aborts the COPY), then finish it with
 * bt_pq_copy_end or bt_pq_copy_abort, which invalidate it. Fails with
 * BT_EINVAL (sql NULL, not a COPY FROM STDIN: the statement is run, so a
 * COPY TO STDOUT is drained and cancelled), BT_ESQL (the server refused
 * it), BT_ETIMEDOUT (no answer within query_timeout_ms, see "Timeout"
 * above), or as bt_pq_acquire. Cancelling it before the handle comes gives
 * the connection back. NULL only for a NULL pool or c, or out of memory.
 * Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_copy_in(bt_pq_pool *pool, const char *sql);
BT_EXPORT bt_future *bt_pq_conn_copy_in(bt_pq_conn *c, const char *sql);

/* Send len bytes of COPY data (any split: rows need not be whole; data is
 * copied before the call returns). Returns: new reference to a future
 * that settles (NULL value) once libpq has taken the data and holds less
 * than 16 KiB unsent: it stays pending while the socket is full, which is
 * the backpressure. Wait for it before the next write to keep memory
 * bounded; writes made meanwhile are queued (copied) and go out in order.
 * Most writes find room and get an already settled future. Fails with
 * BT_EINVAL (data NULL with len > 0; the COPY was ended), BT_ECANCELED
 * (aborted), BT_ECONNRESET / BT_ESHUTDOWN (the connection was lost),
 * BT_ETIMEDOUT (the socket stayed full for query_timeout_ms).
 * Cancelling a pending write aborts the COPY. A bad row is reported by the
 * server only at the end (bt_pq_copy_end fails). NULL only for a NULL cp.
 * Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_copy_write(bt_pq_copy *cp, const void *data, size_t len);

/* The same without a future per write, for tight loops: hand len bytes
 * to libpq at once and return 0 (taken: put more), or BT_EAGAIN (not
 * taken: libpq holds 16 KiB unsent; wait for bt_pq_copy_ready's future,
 * then put it again), or the error bt_pq_copy_write would fail with (data
 * not taken). Like write(2) on a nonblocking socket. Thread: the loop's. */
BT_EXPORT int bt_pq_copy_put(bt_pq_copy *cp, const void *data, size_t len);
/* A future (new reference; NULL for a NULL cp) that settles once the COPY
 * takes data again, at once if it does now; fails as a write would.
 * Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_copy_ready(bt_pq_copy *cp);

/* Finish the COPY (CopyDone, once the queued writes are out); cp is
 * invalid after the call. Returns: new reference to a future whose value
 * is the COPY's bt_pq_result (bt_pq_result_affected: the rows copied), or
 * that fails with BT_ESQL (a bad row: nothing was copied, and the
 * connection stays usable), BT_ECANCELED (aborted before), BT_ETIMEDOUT
 * (no answer within query_timeout_ms; the rows may or may not be in), or
 * a lost connection's code. Cancelling it sends a cancel request (too late, the
 * rows may be in; use a transaction to be sure). NULL only for a NULL cp.
 * Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_copy_end(bt_pq_copy *cp);

/* Abort the COPY (CopyFail with reason, or a default; psql's \copy
 * cancel): nothing is copied and the connection stays usable. cp is
 * invalid after the call. Returns: new reference to a future that settles
 * (NULL value) once the server has confirmed, or fails if the connection
 * was lost or the server did not confirm within query_timeout_ms
 * (BT_ETIMEDOUT; nothing was copied either way). NULL only for a NULL cp.
 * Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_copy_abort(bt_pq_copy *cp, const char *reason);

/* Bytes libpq may hold unsent for this COPY now (an upper bound: each
 * write counts its length plus a 5-byte message header), the most it ever
 * held, and how many writes had to wait for the socket. 0 for NULL.
 * Thread: the loop's. */
BT_EXPORT size_t bt_pq_copy_buffered(const bt_pq_copy *cp);
BT_EXPORT size_t bt_pq_copy_max_buffered(const bt_pq_copy *cp);
BT_EXPORT uint64_t bt_pq_copy_waits(const bt_pq_copy *cp);

/* One row of COPY OUT data (a text line with its newline, or a binary
 * tuple; the first call of a binary COPY also carries its header), borrowed
 * for the call. Return 0 to go on; non-zero stops the COPY (a cancel
 * request is sent, the rest is drained, and the future fails with
 * BT_ECANCELED). Runs on the loop thread; it may free the pool. */
typedef int (*bt_pq_copy_data_cb)(const void *data, size_t len, void *arg);

/* Run COPY ... TO STDOUT (sql) on a pool connection, or on c as
 * bt_pq_conn_copy_in, and hand every row to cb as it arrives: rows are
 * read only as fast as cb takes them (the socket, then TCP, hold the rest
 * back), so a table of any size streams in bounded memory. Returns: new
 * reference to a future whose value is the COPY's bt_pq_result
 * (bt_pq_result_affected: rows sent) or that fails with BT_ESQL, BT_EINVAL
 * (sql or cb NULL, not a COPY TO STDOUT), BT_ECANCELED (cb stopped it),
 * BT_ETIMEDOUT (the server sent nothing for query_timeout_ms: a query that
 * takes that long before its first 8 KiB of rows times out too), a
 * lost connection's code, or as bt_pq_acquire. Cancelling it sends a
 * cancel request and drains the rest before the connection goes back. NULL
 * only for a NULL pool or c, or out of memory. Thread: the loop's. */
BT_EXPORT bt_future *bt_pq_copy_out(bt_pq_pool *pool, const char *sql, bt_pq_copy_data_cb cb,
                                    void *arg);
BT_EXPORT bt_future *bt_pq_conn_copy_out(bt_pq_conn *c, const char *sql, bt_pq_copy_data_cb cb,
                                         void *arg);

/* Format one row of COPY text format into buf (at most cap bytes): the n
 * fields separated by tabs, each escaped (backslash, tab, newline,
 * carriage return, backspace, form feed, vertical tab), NULL as \N, and a
 * newline. Returns the row's full length, as snprintf does (not NUL
 * terminated): when it exceeds cap, nothing useful was written; call
 * again with a buffer that large. Thread: any. */
BT_EXPORT size_t bt_pq_copy_text_row(char *buf, size_t cap, int n, const char *const *fields);

#ifdef __cplusplus
}
#endif
#endif
