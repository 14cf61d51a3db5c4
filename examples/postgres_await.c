/* postgres_await: the guide's get_user on a Baton pool, in await style
 * (examples/postgres.c is the callback version).
 *
 *     async def get_user(pool, user_id):
 *         async with pool.acquire() as conn:
 *             row = await conn.fetchrow(
 *                 "SELECT id, name, email FROM users WHERE id = $1", user_id)
 *             return dict(row)
 *
 * get_user runs on a fiber: it awaits the connection, awaits the query
 * (its parameter sent out of band, never pasted into the SQL), gives the
 * connection back on every path, and turns the row into a struct.
 *
 * Usage: postgres_await [DSN]   (default: $DATABASE_URL). `make check`
 * runs it through tests/pg_run, which starts a throwaway server. */
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

typedef struct {
    bt_pq_pool *pool;
    long user_id;
} get_user_args;

/* async def get_user(pool, user_id) */
static bt_future *get_user(bt_loop *loop, void *arg)
{
    const get_user_args *a = arg; /* on the caller's fiber stack: valid across awaits */
    bt_pq_conn *conn;
    int rc = bt_await(bt_pq_acquire(a->pool), (void **)&conn);
    if (rc != 0)
        return bt_future_new_error(loop, rc, "get_user: %s", bt_await_error());
    char id[24];
    snprintf(id, sizeof id, "%ld", a->user_id);
    const char *params[] = {id};
    bt_pq_result *row;
    rc = bt_await(bt_pq_conn_query(conn, "SELECT id, name, email FROM users WHERE id = $1", 1,
                                   params),
                  (void **)&row);
    bt_pq_conn_release(conn); /* leaving the `async with`, whatever happened */
    if (rc != 0)
        return bt_future_new_error(loop, rc, "get_user(%ld): %s", a->user_id, bt_await_error());
    bt_future *out;
    if (bt_pq_result_rows(row) == 0) {
        out = bt_future_new_error(loop, BT_ENOENT, "get_user(%ld): no such user", a->user_id);
    } else {
        user *u = bt_calloc(1, sizeof *u);
        if (u != NULL) {
            u->id = atol(bt_pq_result_get_named(row, 0, "id"));
            u->name = bt_strdup(bt_pq_result_get_named(row, 0, "name"));
            u->email = bt_strdup(bt_pq_result_get_named(row, 0, "email"));
        }
        out = u ? bt_future_new_value(loop, u, user_free) : bt_future_new_error(loop, BT_ENOMEM, NULL);
    }
    bt_pq_result_free(row);
    return out;
}

static bt_future *main_async(bt_loop *loop, void *arg)
{
    const char *dsn = arg;
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = dsn;
    o.max_size = 4;
    bt_pq_pool *pool = bt_pq_pool_new(loop, &o); /* asyncpg.create_pool(dsn=...) */
    if (pool == NULL)
        return bt_future_new_error(loop, BT_EINVAL, "bad DSN: %s", dsn);
    int rc = bt_await(bt_pq_query(pool,
                                  "CREATE TABLE IF NOT EXISTS users ("
                                  "id bigint PRIMARY KEY, name text NOT NULL, email text)",
                                  0, NULL),
                      NULL);
    if (rc == 0)
        rc = bt_await(bt_pq_query(pool,
                                  "INSERT INTO users (id, name, email) VALUES ($1, $2, $3) "
                                  "ON CONFLICT (id) DO NOTHING",
                                  3, (const char *const[]){"1", "Ada Lovelace", "ada@example.com"}),
                      NULL);
    user *u = NULL;
    if (rc == 0) {
        get_user_args args = {pool, 1};
        rc = bt_await(bt_async(loop, get_user, &args), (void **)&u); /* user = await get_user(pool, 1) */
    }
    bt_future *out;
    if (rc == 0) {
        printf("{'id': %ld, 'name': '%s', 'email': '%s'}\n", u->id, u->name, u->email);
        user_free(u);
        out = bt_future_new_value(loop, NULL, NULL);
    } else {
        out = bt_future_new_error(loop, rc, "%s", bt_await_error());
    }
    bt_pq_pool_free(pool); /* `await pool.close()` */
    return out;
}

static bt_future *start(bt_loop *loop, void *arg) { return bt_async(loop, main_async, arg); }

int main(int argc, char **argv)
{
    const char *dsn = argc > 1 ? argv[1] : getenv("DATABASE_URL");
    if (dsn == NULL || *dsn == '\0') {
        fprintf(stderr, "usage: %s DSN   (or set DATABASE_URL)\n", argv[0]);
        return 2;
    }
    int rc = bt_run(start, (void *)dsn);
    if (rc != 0)
        fprintf(stderr, "postgres_await: %s\n", bt_strerror(rc));
    return rc == 0 ? 0 : 1;
}
