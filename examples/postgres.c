/* postgres: the guide's get_user, on a Baton connection pool.
 *
 * Mirrors the guide's asyncpg example:
 *
 *     async def get_user(pool, user_id):
 *         async with pool.acquire() as conn:
 *             row = await conn.fetchrow(
 *                 "SELECT id, name, email FROM users WHERE id = $1", user_id)
 *             return dict(row)
 *
 * get_user acquires a connection, runs the query with its parameter sent
 * out of band (never pasted into the SQL), gives the connection back on
 * every path, and turns the row into a struct. main creates a demo users
 * table if it is missing, fetches user 1 and prints it.
 *
 * Usage: postgres [DSN]   (default: $DATABASE_URL), for example
 *        postgres postgresql://postgres@127.0.0.1:5432/postgres
 * `make check` runs it through tests/pg_run, which starts a throwaway
 * server and sets DATABASE_URL.
 */
#include <stdio.h>
#include <stdlib.h>

#include <baton/baton.h>
#include <baton/pq.h>

typedef struct {
    long id;
    char *name;
    char *email;
} user;

static void user_free(void *v)
{
    user *u = v;
    bt_free(u->name);
    bt_free(u->email);
    bt_free(u);
}

/* ---- get_user ------------------------------------------------------------ */

typedef struct {
    bt_loop *loop;
    bt_pq_conn *conn; /* held between acquire and release */
    long user_id;
} get_user_call;

/* `async with pool.acquire() as conn: row = await conn.fetchrow(...)` */
static bt_future *fetchrow(bt_future *acquired, void *arg)
{
    get_user_call *call = arg;
    call->conn = bt_future_take_value(acquired);
    char id[24];
    snprintf(id, sizeof id, "%ld", call->user_id);
    const char *params[] = {id};
    return bt_pq_conn_query(call->conn, "SELECT id, name, email FROM users WHERE id = $1", 1,
                            params);
}

/* Leaving the `async with`: release the connection whatever happened, then
 * `return dict(row)`. */
static bt_future *to_user(bt_future *queried, void *arg)
{
    get_user_call *call = arg;
    bt_loop *loop = call->loop;
    long id = call->user_id;
    bt_pq_conn_release(call->conn); /* NULL-safe: the acquire may have failed */
    bt_free(call);

    int err = bt_future_error(queried);
    if (err)
        return bt_future_new_error(loop, err, "get_user(%ld): %s", id,
                                   bt_future_error_message(queried));
    const bt_pq_result *row = bt_future_value(queried);
    if (bt_pq_result_rows(row) == 0)
        return bt_future_new_error(loop, BT_ENOENT, "get_user(%ld): no such user", id);
    user *u = bt_calloc(1, sizeof *u);
    if (!u)
        return bt_future_new_error(loop, BT_ENOMEM, NULL);
    u->id = atol(bt_pq_result_get_named(row, 0, "id"));
    u->name = bt_strdup(bt_pq_result_get_named(row, 0, "name"));
    u->email = bt_strdup(bt_pq_result_get_named(row, 0, "email"));
    return bt_future_new_value(loop, u, user_free);
}

/* Returns: a future of a user (new reference). */
static bt_future *get_user(bt_loop *loop, bt_pq_pool *pool, long user_id)
{
    get_user_call *call = bt_calloc(1, sizeof *call);
    if (!call)
        return bt_future_new_error(loop, BT_ENOMEM, NULL);
    call->loop = loop;
    call->user_id = user_id;
    bt_future *acquired = bt_pq_acquire(pool);
    bt_future *queried = bt_future_then(acquired, fetchrow, call);
    return bt_future_after(queried, to_user, call); /* runs on every outcome */
}

/* ---- main ---------------------------------------------------------------- */

typedef struct {
    const char *dsn;
    bt_pq_pool *pool;
} app;

static bt_future *seed(bt_future *created, void *arg)
{
    (void)created;
    app *a = arg;
    return bt_pq_query(a->pool,
                       "INSERT INTO users (id, name, email) VALUES ($1, $2, $3) "
                       "ON CONFLICT (id) DO NOTHING",
                       3, (const char *const[]){"1", "Ada Lovelace", "ada@example.com"});
}

static bt_future *fetch(bt_future *seeded, void *arg)
{
    app *a = arg;
    return get_user(bt_future_loop(seeded), a->pool, 1);
}

static bt_future *show(bt_future *got, void *arg)
{
    app *a = arg;
    bt_loop *loop = bt_future_loop(got);
    int err = bt_future_error(got);
    bt_future *out;
    if (err == 0) {
        const user *u = bt_future_value(got);
        printf("{'id': %ld, 'name': '%s', 'email': '%s'}\n", u->id, u->name, u->email);
        out = bt_future_new_value(loop, NULL, NULL);
    } else {
        out = bt_future_new_error(loop, err, "%s", bt_future_error_message(got));
    }
    bt_pq_pool_free(a->pool); /* `await pool.close()` */
    a->pool = NULL;
    return out;
}

static bt_future *main_async(bt_loop *loop, void *arg)
{
    app *a = arg;
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = a->dsn;
    o.max_size = 4;
    a->pool = bt_pq_pool_new(loop, &o); /* asyncpg.create_pool(dsn=...) */
    if (!a->pool)
        return bt_future_new_error(loop, BT_EINVAL, "bad DSN: %s", a->dsn);
    bt_future *created = bt_pq_query(a->pool,
                                     "CREATE TABLE IF NOT EXISTS users ("
                                     "id bigint PRIMARY KEY, name text NOT NULL, email text)",
                                     0, NULL);
    bt_future *seeded = bt_future_then(created, seed, a);
    bt_future *got = bt_future_then(seeded, fetch, a);
    return bt_future_after(got, show, a);
}

int main(int argc, char **argv)
{
    app a = {.dsn = argc > 1 ? argv[1] : getenv("DATABASE_URL")};
    if (a.dsn == NULL || a.dsn[0] == '\0') {
        /* Its own name, not argv[0]: run from the build tree, argv[0] is
         * libtool's wrapper target (.libs/lt-postgres), not what was typed. */
        fprintf(stderr, "usage: examples/postgres [DSN]   (or set DATABASE_URL)\n");
        return 2;
    }
    int rc = bt_run(main_async, &a);
    bt_pq_pool_free(a.pool); /* only if main_async stopped early */
    if (rc != 0)
        fprintf(stderr, "postgres: %s\n", bt_strerror(rc));
    return rc == 0 ? 0 : 1;
}
