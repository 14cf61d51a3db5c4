/* examples/server.c: the flagship. The guide's FastAPI service, in C.
 *
 * The guide ends with:
 *
 *     @app.get("/user/{user_id}")
 *     async def get_user(user_id: int):
 *         async with httpx.AsyncClient() as client:
 *             response = await client.get(f"https://api.example.com/users/{user_id}")
 *         return response.json()
 *
 * Here GET /user/{id} does what a real service does around that: it reads
 * the user from PostgreSQL and, at the same time (bt_gather, the guide's
 * asyncio.gather), fetches a profile from an upstream HTTP service through
 * the async client; then it hashes something on the offload pool's CPU lane
 * (asyncio.to_thread for computation) and answers JSON. The handler is a
 * fiber handler (bt_http_app_route_async): it awaits each step and reads
 * top to bottom, like the guide's Python. 400 for an id that
 * is not a positive integer, 404 for a user that does not exist, 502 when
 * the upstream fails. A client that goes away cancels the handler's
 * future, and the cancellation reaches the query and the upstream call.
 *
 * It runs one loop per core (LOOPS=N to choose), each with its own
 * PostgreSQL pool and HTTP client, over one shared offload pool, until
 * SIGINT or SIGTERM; then it drains in-flight requests and exits 0.
 *
 * Environment:
 *   DATABASE_URL  a PostgreSQL conninfo or URI. Without it, the demo starts
 *                 a throwaway cluster in a temporary directory (as the
 *                 postgres user when run as root), says where, and removes
 *                 it on exit. The server reads and writes only a table of
 *                 its own, baton_demo_users: it creates and fills it when
 *                 it is missing, uses it as it is otherwise, and says which
 *                 it did. It never touches any other table.
 *   UPSTREAM_URL  the profile service's base URL; without it, the server
 *                 serves /upstream/profile/{id} itself, as a route of this
 *                 same process (no network needed), so every /user request
 *                 is two requests in the metrics: its own and the upstream
 *                 call it makes to itself.
 *   HOST, PORT    where to listen (127.0.0.1, 8000; PORT=0 picks one).
 *   LOOPS         loops (0: one per core).
 *   PROCESSES     worker processes, each with LOOPS loops (default 1) and
 *                 its own pools, supervised (0: one per core; unset: one
 *                 process). With PORT=0 and no UPSTREAM_URL the workers
 *                 do not know the port for their upstream calls: set one.
 *   HEAD_TIMEOUT_MS  how long a client may take to send a request head
 *                 (the server's default, 15 s, without it); `make check`'s
 *                 quick fault run sets 2000 to see slowloris end quickly.
 *
 * Limits that fit what it talks to: a profile is a few hundred bytes, so
 * the HTTP client buffers at most 64 KiB of one upstream response (an
 * upstream that sends an endless body costs 64 KiB per call, not the
 * client's 16 MiB default) and 4 MiB for all of a loop's calls at once
 * (64 such calls; beyond that a call fails, and its request gets 502).
 *
 * Routes: GET /user/{id}, GET /upstream/profile/{id}, GET /healthz,
 * GET /metrics (Prometheus).
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <baton/baton.h>
#include <baton/compose.h>
#include <baton/curl.h>
#include <baton/fiber.h>
#include <baton/http.h>
#include <baton/pool.h>
#include <baton/pq.h>

#include "pg_harness.h" /* the throwaway PostgreSQL, when DATABASE_URL is unset */

/* The server's own table. Its name is one no application would use, so
 * pointing the server at a real database never touches the user's data. */
#define TABLE "baton_demo_users"
#define USERS 10000
/* The longest upstream response body the handler accepts (a profile is a
 * few hundred bytes). */
#define UPSTREAM_MAX_BODY (64 * 1024)
#define UPSTREAM_MAX_BUFFERED (4 * 1024 * 1024)

static const char *database_url;
static _Atomic(char *) upstream_base; /* set once, before or at on_ready */

/* Each loop's own connections: a PostgreSQL pool and an HTTP client. */
typedef struct {
    bt_pq_pool *db;
    bt_http_client *http;
} loop_state;

/* ---- GET /user/{id} ---------------------------------------------------- */

/* A positive 32-bit integer in plain decimal, or 0. */
static long parse_id(const char *s)
{
    if (!s || !*s || strlen(s) > 10)
        return 0;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        v = v * 10 + (*p - '0');
    }
    return v <= 2147483647 ? v : 0;
}

/* The CPU step, on a worker of the CPU lane: a fingerprint of the user's
 * email, 4096 rounds of FNV-1a. It stands for real computation (a password
 * hash, a thumbnail, a signature) that must not run on the loop. arg is
 * the job's own copy of the email (given to the pool, which frees it): a
 * cancelled request's handler returns at once, while a job already
 * running goes on, so the job must not read the handler's stack. */
static int fingerprint_job(bt_job *job, void *arg)
{
    const char *email = arg;
    uint64_t h = 1469598103934665603ull;
    for (int round = 0; round < 4096 && !bt_job_cancelled(job); round++) {
        for (const char *p = email; *p; p++) {
            h ^= (unsigned char)*p;
            h *= 1099511628211ull;
        }
        h ^= (uint64_t)round;
    }
    char *hex = bt_asprintf("%016" PRIx64, h);
    if (hex == NULL)
        return bt_job_fail(job, BT_ENOMEM, "out of memory");
    return bt_job_set_value(job, hex, bt_free);
}

static bt_future *cancelled(bt_loop *loop)
{
    bt_future *f = bt_future_new(loop);
    if (f)
        bt_future_set_cancelled(f);
    return f;
}

/* The profile the upstream sent, or a reply future saying why not. */
static json_t *read_profile(bt_loop *loop, bt_results *r, bt_future **out)
{
    bt_http_response *resp = bt_results_value(r, 1);
    int rc = bt_results_error(r, 1);
    if (rc != 0) {
        bt_log(BT_LOG_WARN, "server: upstream: %s", bt_results_error_message(r, 1));
    } else if (bt_http_response_status(resp) != 200) {
        bt_log(BT_LOG_WARN, "server: upstream answered %d", bt_http_response_status(resp));
    } else {
        size_t len;
        const char *text = bt_http_response_body(resp, &len);
        json_t *profile = json_loadb(text, len, 0, NULL);
        if (profile == NULL)
            *out = bt_http_respond_error(loop, 502, "profile service sent bad JSON");
        return profile;
    }
    *out = bt_http_respond_error(loop, 502, "profile service unavailable");
    return NULL;
}

/* GET /user/{id}, a fiber handler (bt_http_app_route_async): it reads top
 * to bottom, and each bt_await lets the loop serve other requests. A
 * client that leaves (or the handler timeout) cancels the fiber: the
 * pending await returns BT_ECANCELED, having cancelled the query, the
 * upstream call or the job, and the handler returns. */
static bt_future *get_user(bt_http_req *req, void *arg)
{
    (void)arg;
    bt_loop *loop = bt_http_req_loop(req);
    loop_state *st = bt_http_req_loop_data(req);

    /* 1. Parse the id. */
    const char *id = bt_http_req_param(req, "id");
    long id_num = parse_id(id);
    if (id_num == 0)
        return bt_http_respond_error(loop, 400, "id must be a positive integer");

    /* 2. The row and the profile, together (bt_gather, asyncio.gather). */
    const char *params[] = {id};
    char url[512];
    snprintf(url, sizeof url, "%s/profile/%s", atomic_load(&upstream_base), id);
    bt_future *parts[2] = {
        bt_pq_query(st->db, "SELECT name, email FROM " TABLE " WHERE id = $1", 1, params),
        bt_http_get(st->http, url),
    };
    bt_results *r;
    int rc = bt_await(bt_gather(loop, parts, 2, BT_GATHER_COLLECT), (void **)&r);
    if (rc == BT_ECANCELED)
        return cancelled(loop);
    if (rc != 0)
        return bt_future_new_error(loop, rc, "%s", bt_await_error());

    /* 3. Read them: a database failure is ours (a 500, details in the
     * log), an upstream failure a 502. */
    bt_future *out = NULL;
    char *email = NULL;
    json_t *body = NULL, *profile = NULL;
    if ((rc = bt_results_error(r, 0)) != 0) {
        out = bt_future_new_error(loop, rc, "users query: %s", bt_results_error_message(r, 0));
    } else if (bt_pq_result_rows(bt_results_value(r, 0)) == 0) {
        out = bt_http_respond_error(loop, 404, "user not found");
    } else if ((profile = read_profile(loop, r, &out)) != NULL) {
        bt_pq_result *row = bt_results_value(r, 0);
        email = bt_strdup(bt_pq_result_get(row, 0, 1));
        body = json_pack("{s:I, s:s, s:s, s:o}", "id", (json_int_t)id_num, "name",
                         bt_pq_result_get(row, 0, 0), "email", bt_pq_result_get(row, 0, 1),
                         "profile", profile); /* takes over profile */
        if (email == NULL || body == NULL)
            out = bt_future_new_error(loop, BT_ENOMEM, "out of memory");
    }
    bt_results_free(r);
    if (out != NULL) {
        bt_free(email);
        json_decref(body);
        return out;
    }

    /* 4. The fingerprint, on the pool's CPU lane (the job owns its copy
     * of the email). */
    char *fingerprint;
    rc = bt_await(bt_pool_submit_owned(bt_pool_default(), loop, BT_LANE_CPU, fingerprint_job,
                                       email, bt_free),
                  (void **)&fingerprint);
    if (rc != 0) {
        json_decref(body);
        return rc == BT_ECANCELED ? cancelled(loop)
                                  : bt_future_new_error(loop, rc, "fingerprint: %s",
                                                        bt_await_error());
    }

    /* 5. Respond. */
    json_object_set_new(body, "fingerprint", json_string(fingerprint));
    bt_free(fingerprint);
    return bt_http_respond_json(loop, 200, body);
}

/* ---- The upstream the demo serves itself ---------------------------------- */

static bt_future *get_profile(bt_http_req *req, void *arg)
{
    (void)arg;
    long id = parse_id(bt_http_req_param(req, "id"));
    if (id == 0)
        return bt_http_respond_error(bt_http_req_loop(req), 400, "bad id");
    static const char *const langs[] = {"C", "Python", "Rust", "Go", "SQL"};
    return bt_http_respond_json(bt_http_req_loop(req), 200,
                                json_pack("{s:I, s:s, s:I}", "user_id", (json_int_t)id,
                                          "favourite_language", langs[id % 5], "followers",
                                          (json_int_t)((id * 7919) % 1000)));
}

static bt_future *healthz(bt_http_req *req, void *arg)
{
    (void)arg;
    return bt_http_respond(bt_http_req_loop(req), 200, "text/plain", "ok\n", 3);
}

/* ---- Per-loop setup --------------------------------------------------------- */

/* Few connections, each pipelining many queries: a handful of busy
 * PostgreSQL backends do more than many that take turns on the CPU (see
 * bench/server_user and docs/http-server.md). */
static unsigned db_conns_per_loop = 2;

static int loop_init(bt_loop *loop, void *arg, void **data)
{
    (void)arg;
    loop_state *st = bt_calloc(1, sizeof *st);
    if (!st)
        return BT_ENOMEM;
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = database_url;
    o.min_size = 1;
    o.max_size = db_conns_per_loop;
    o.acquire_timeout_ms = 5000;
    st->db = bt_pq_pool_new(loop, &o);
    st->http = bt_http_client_new(loop);
    if (!st->db || !st->http) {
        bt_pq_pool_free(st->db);
        bt_http_client_free(st->http);
        bt_free(st);
        return BT_EINVAL;
    }
    bt_http_client_set_timeouts(st->http, 2000, 5000, 5000);
    bt_http_client_set_max_body(st->http, UPSTREAM_MAX_BODY);
    bt_http_client_set_max_buffered(st->http, UPSTREAM_MAX_BUFFERED);
    *data = st;
    return 0;
}

static void loop_fini(bt_loop *loop, void *data, void *arg)
{
    (void)loop;
    (void)arg;
    loop_state *st = data;
    bt_http_client_free(st->http);
    bt_pq_pool_free(st->db);
    bt_free(st);
}

/* ---- The table, made with Baton before serving ------------------------------- */

/* The server's own table: CREATE TABLE (not IF NOT EXISTS) tells it whether
 * the table was there, race-free: 42P07 (duplicate_table) means another run
 * made it, and then it is used as it is, never written to. */
typedef struct {
    bt_pq_pool *db;
    bool created;
} setup_state;

static bt_future *setup_filled(bt_future *prev, void *arg)
{
    setup_state *ss = arg;
    bt_loop *loop = bt_future_loop(prev);
    if (bt_future_error(prev) != 0)
        return bt_future_new_error(loop, bt_future_error(prev), "filling " TABLE ": %s",
                                   bt_future_error_message(prev));
    ss->created = true;
    return bt_future_new_value(loop, NULL, NULL);
}

static bt_future *setup_created(bt_future *prev, void *arg)
{
    setup_state *ss = arg;
    bt_loop *loop = bt_future_loop(prev);
    bt_pq_error e = BT_SIZED(bt_pq_error);
    int rc = bt_pq_error_parse(prev, &e);
    if (rc == BT_ESQL && strcmp(e.sqlstate, "42P07") == 0)
        return bt_future_new_value(loop, NULL, NULL); /* there already: use it */
    if (rc != 0)
        return bt_future_new_error(loop, rc, "creating " TABLE ": %s",
                                   rc == BT_ESQL ? e.message : bt_future_error_message(prev));
    bt_future *fill = bt_pq_query(ss->db,
                                  "INSERT INTO " TABLE " (id, name, email) "
                                  "SELECT i, 'user ' || i, 'user' || i || '@example.com' "
                                  "FROM generate_series(1, " /* USERS */ "10000) AS i",
                                  0, NULL);
    return bt_future_after(fill, setup_filled, ss); /* takes over fill */
}

static bt_future *setup_main(bt_loop *loop, void *arg)
{
    setup_state *ss = arg;
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = database_url;
    ss->db = bt_pq_pool_new(loop, &o);
    if (ss->db == NULL)
        return bt_future_new_error(loop, BT_EINVAL, "bad DATABASE_URL");
    bt_future *create = bt_pq_query(ss->db,
                                    "CREATE TABLE " TABLE " ("
                                    " id integer PRIMARY KEY,"
                                    " name text NOT NULL,"
                                    " email text NOT NULL)",
                                    0, NULL);
    return bt_future_after(create, setup_created, ss); /* takes over create */
}

static int make_table(void)
{
    setup_state ss = {0};
    int rc = bt_run(setup_main, &ss);
    /* bt_run freed the loop, whose closer closed the pool: free the rest. */
    bt_pq_pool_free(ss.db);
    if (rc == 0 && ss.created)
        printf("created table " TABLE " with %d rows\n", USERS);
    else if (rc == 0)
        printf("using the existing table " TABLE " (left as it is)\n");
    fflush(stdout);
    return rc;
}

/* ---- main ----------------------------------------------------------------------- */

static bool upstream_is_self; /* no UPSTREAM_URL: the profile route of this process */

static void on_ready(int port, void *arg)
{
    const char *host = arg;
    if (atomic_load(&upstream_base) == NULL) {
        char *u = bt_asprintf("http://127.0.0.1:%d/upstream", port);
        atomic_store(&upstream_base, u);
    }
    if (upstream_is_self)
        printf("listening on http://%s:%d (upstream %s: a route of this same process, so each"
               " /user request counts twice in the metrics)\n",
               host, port, atomic_load(&upstream_base));
    else
        printf("listening on http://%s:%d (upstream %s)\n", host, port,
               atomic_load(&upstream_base));
    fflush(stdout);
}

/* Stop the throwaway PostgreSQL, remove its directory, and say so. */
static void stop_throwaway_pg(bt_test_pg *pg)
{
    if (pg == NULL)
        return;
    char *dir = bt_strdup(bt_test_pg_dir(pg));
    bt_test_pg_free(pg);
    printf("stopped the throwaway PostgreSQL and removed %s\n", dir != NULL ? dir : "its directory");
    bt_free(dir);
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

int main(void)
{
    const char *host = env_or("HOST", "127.0.0.1");
    int port = atoi(env_or("PORT", "8000"));
    unsigned loops = (unsigned)atoi(env_or("LOOPS", "0"));
    const char *processes = getenv("PROCESSES"); /* unset: loops in this process */
    bt_test_pg *pg = NULL;

    database_url = getenv("DATABASE_URL");
    if (!database_url || !*database_url) {
        printf("no DATABASE_URL: starting a throwaway PostgreSQL...\n");
        fflush(stdout);
        pg = bt_test_pg_start();
        if (!pg) {
            fprintf(stderr, "server: could not start PostgreSQL (see above)\n");
            return 1;
        }
        printf("throwaway PostgreSQL in %s\n", bt_test_pg_dir(pg));
        fflush(stdout);
        database_url = bt_test_pg_conninfo(pg);
    }
    if (make_table() != 0) {
        fprintf(stderr, "server: could not prepare the table " TABLE "\n");
        stop_throwaway_pg(pg);
        return 1;
    }
    const char *up = getenv("UPSTREAM_URL");
    upstream_is_self = up == NULL || *up == '\0';
    if (!upstream_is_self)
        atomic_store(&upstream_base, bt_strdup(up));
    else if (port != 0)
        atomic_store(&upstream_base, bt_asprintf("http://127.0.0.1:%d/upstream", port));

    bt_http_app *app = bt_http_app_new();
    if (!app)
        return 1;
    bt_http_app_route_async(app, "GET", "/user/{id}", get_user, NULL);
    bt_http_app_route(app, "GET", "/upstream/profile/{id}", get_profile, NULL);
    bt_http_app_route(app, "GET", "/healthz", healthz, NULL);
    bt_http_app_enable_metrics(app, "/metrics");
    if (processes != NULL && *processes != '\0') {
        /* Worker processes: each makes its own offload pool on first use,
         * after the fork (a pool made here would reach the workers without
         * its threads), so the pool's metrics are left out. */
        bt_http_app_set_processes(app, (unsigned)atoi(processes));
    } else {
        bt_pool *pool = bt_pool_default(); /* the one offload pool every loop shares */
        if (pool)
            bt_http_app_add_pool_metrics(app, pool, "default");
    }
    bt_http_app_set_loops(app, loops);
    bt_http_app_set_shutdown_deadline(app, 5000);
    bt_http_app_set_handler_timeout(app, 10000); /* 504 past 10 s, work cancelled */
    long head_ms = atol(env_or("HEAD_TIMEOUT_MS", "0"));
    if (head_ms > 0)
        bt_http_app_set_head_timeout(app, (uint64_t)head_ms);
    bt_http_app_on_loop(app, loop_init, loop_fini, NULL);

    int rc = bt_http_app_run(app, host, port, on_ready, (void *)host);
    if (rc != 0)
        fprintf(stderr, "server: %s\n", bt_strerror(rc));
    else
        printf("shut down cleanly\n");
    bt_http_app_free(app);
    bt_free(atomic_load(&upstream_base));
    stop_throwaway_pg(pg);
    return rc == 0 ? 0 : 1;
}
