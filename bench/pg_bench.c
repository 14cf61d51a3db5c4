/* Shared by the PostgreSQL benchmarks: see pg_bench.h. */
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <libpq-fe.h>

#include "bench.h"
#include "pg_bench.h"

const char *pgb_name = "pg_bench";

void pgb_die(const char *what)
{
    fprintf(stderr, "%s: %s\n", pgb_name, what);
    exit(1);
}

bt_test_pg *pgb_start(const char *setup)
{
    bt_test_pg *pg = bt_test_pg_start();
    if (pg == NULL)
        pgb_die("could not start PostgreSQL");
    if (bt_test_pg_exec(pg, setup) != 0)
        pgb_die("setup failed");
    return pg;
}

bt_pq_pool *pgb_pool(bt_loop *loop, const char *conninfo, unsigned size, unsigned depth)
{
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = conninfo;
    o.min_size = size;
    o.max_size = size;
    o.pipeline_depth = depth;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    if (p == NULL)
        pgb_die("bt_pq_pool_new");
    for (;;) {
        bt_pq_stats st = BT_SIZED(bt_pq_stats);
        bt_pq_pool_get_stats(p, &st);
        if (st.idle == size)
            break;
        bt_future *s = bt_sleep(loop, 10);
        bt_loop_run_until(loop, s);
        bt_future_unref(s);
    }
    return p;
}

static unsigned rnd_state = 12345;

int pgb_next_id(int rows)
{
    rnd_state = rnd_state * 1103515245u + 12345u;
    return (int)((rnd_state >> 8) % (unsigned)rows) + 1;
}

/* ---- A closed loop of callers on a pool -------------------------------- */

typedef struct caller caller;
typedef struct {
    pgb_load *l;
    bt_future *finished;
    uint64_t until; /* run_ms: stop sending at this time; else 0 */
} run_ctx;

struct caller {
    run_ctx *run;
    uint64_t t0; /* when its query in flight was sent */
};

static bool may_send(const run_ctx *run)
{
    const pgb_load *l = run->l;
    return run->until != 0 ? now_ns() < run->until : l->sent < l->total;
}

static void record(pgb_load *l, uint64_t t0)
{
    if (l->lat != NULL && l->nlat < l->lat_cap)
        l->lat[l->nlat++] = now_ns() - t0;
}

static void issue(caller *c);

static void on_done(bt_future *f, void *arg)
{
    caller *c = arg;
    pgb_load *l = c->run->l;
    if (bt_future_error(f) != 0) {
        fprintf(stderr, "%s: %s\n", pgb_name, bt_future_error_message(f));
        l->errors++;
    } else {
        l->check(l, f);
    }
    l->done++;
    if (l->lat != NULL)
        record(l, c->t0);
    if (may_send(c->run))
        issue(c);
    else if (l->done == l->sent)
        bt_future_set_value(c->run->finished, NULL, NULL);
}

static void issue(caller *c)
{
    pgb_load *l = c->run->l;
    l->sent++;
    if (l->lat != NULL)
        c->t0 = now_ns();
    bt_future *f = l->send(l);
    if (f == NULL)
        pgb_die("could not send a query");
    bt_future_add_callback(f, on_done, c);
    bt_future_unref(f);
}

double pgb_load_run(bt_loop *loop, pgb_load *l)
{
    l->sent = l->done = l->errors = 0;
    l->nlat = 0;
    caller *callers = calloc((size_t)l->conc, sizeof *callers);
    if (callers == NULL)
        pgb_die("out of memory");
    run_ctx run = { .l = l, .finished = bt_future_new(loop) };
    uint64_t t0 = now_ns();
    if (l->run_ms != 0)
        run.until = t0 + l->run_ms * 1000000;
    for (int i = 0; i < l->conc && may_send(&run); i++) {
        callers[i].run = &run;
        issue(&callers[i]);
    }
    bt_loop_run_until(loop, run.finished);
    l->secs = (double)(now_ns() - t0) / 1e9;
    bt_future_unref(run.finished);
    free(callers);
    if (l->errors)
        pgb_die("queries failed");
    return l->done / l->secs;
}

/* ---- pg_select's table and query --------------------------------------- */

const char *const pgb_user_sql = "SELECT id, name, email FROM users WHERE id = $1";

bt_test_pg *pgb_start_users(void)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL);"
             "INSERT INTO users SELECT g, 'user ' || g, 'user' || g || '@example.com' "
             "FROM generate_series(1, %d) g; ANALYZE users;",
             PGB_USERS);
    return pgb_start(sql);
}

bt_future *pgb_send_user(pgb_load *l)
{
    char buf[16];
    snprintf(buf, sizeof buf, "%d", pgb_next_id(PGB_USERS));
    const char *v[] = { buf };
    return bt_pq_query(l->arg, pgb_user_sql, 1, v);
}

void pgb_check_one_row(pgb_load *l, bt_future *f)
{
    if (bt_pq_result_rows(bt_future_value(f)) != 1)
        l->errors++;
}

/* ---- The raw libpq anchor --------------------------------------------- */

struct pgb_raw {
    int n;
    PGconn **c;
    bool *busy;
    uint64_t *t0; /* when its query's caller wanted it */
};

pgb_raw *pgb_raw_open(const char *conninfo, int n, const char *sql)
{
    pgb_raw *r = calloc(1, sizeof *r);
    if (r == NULL || (r->c = calloc((size_t)n, sizeof *r->c)) == NULL ||
        (r->busy = calloc((size_t)n, sizeof *r->busy)) == NULL ||
        (r->t0 = calloc((size_t)n, sizeof *r->t0)) == NULL)
        pgb_die("out of memory");
    r->n = n;
    for (int i = 0; i < n; i++) {
        r->c[i] = PQconnectdb(conninfo);
        if (PQstatus(r->c[i]) != CONNECTION_OK)
            pgb_die(PQerrorMessage(r->c[i]));
        PGresult *res = PQprepare(r->c[i], "s", sql, 1, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            pgb_die(PQerrorMessage(r->c[i]));
        PQclear(res);
        PQsetnonblocking(r->c[i], 1);
    }
    return r;
}

void pgb_raw_close(pgb_raw *r)
{
    for (int i = 0; i < r->n; i++)
        PQfinish(r->c[i]);
    free(r->c);
    free(r->busy);
    free(r->t0);
    free(r);
}

static void raw_send(pgb_raw *r, int i, uint64_t t0)
{
    char buf[16];
    snprintf(buf, sizeof buf, "%d", pgb_next_id(PGB_USERS));
    const char *v[] = { buf };
    if (!PQsendQueryPrepared(r->c[i], "s", 1, v, NULL, NULL, 0))
        pgb_die("send");
    while (PQflush(r->c[i]) == 1) {
    }
    r->busy[i] = true;
    r->t0[i] = t0;
}

/* The callers' queries that wait for a free connection, oldest first: the
 * times they were wanted. All connections are busy while one waits. */
typedef struct {
    uint64_t *t;
    int cap, head, len;
} fifo;

static void fifo_push(fifo *q, uint64_t t)
{
    q->t[(q->head + q->len++) % q->cap] = t;
}

static uint64_t fifo_pop(fifo *q)
{
    uint64_t t = q->t[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return t;
}

/* Read what connection i has; when its query is complete, count it and
 * give the connection the next waiting query. */
static void raw_read(pgb_raw *r, int i, pgb_load *l, fifo *waiting, uint64_t until)
{
    if (!PQconsumeInput(r->c[i]))
        pgb_die(PQerrorMessage(r->c[i]));
    while (r->busy[i] && !PQisBusy(r->c[i])) {
        PGresult *res = PQgetResult(r->c[i]);
        if (res != NULL) {
            if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
                pgb_die("bad result");
            PQclear(res);
            continue;
        }
        r->busy[i] = false;
        l->done++;
        record(l, r->t0[i]);
        bool more = until != 0 ? now_ns() < until : l->sent < l->total;
        if (more) {
            l->sent++;
            fifo_push(waiting, l->lat != NULL ? now_ns() : 0);
        }
        if (waiting->len > 0)
            raw_send(r, i, fifo_pop(waiting));
    }
}

double pgb_raw_run(pgb_raw *r, pgb_load *l)
{
    l->sent = l->done = l->errors = 0;
    l->nlat = 0;
    struct pollfd *pfd = calloc((size_t)r->n, sizeof *pfd);
    fifo waiting = { .t = calloc((size_t)l->conc, sizeof(uint64_t)), .cap = l->conc };
    if (pfd == NULL || waiting.t == NULL)
        pgb_die("out of memory");
    for (int i = 0; i < r->n; i++) {
        pfd[i].fd = PQsocket(r->c[i]);
        pfd[i].events = POLLIN;
        r->busy[i] = false;
    }
    uint64_t t0 = now_ns(), until = l->run_ms ? t0 + l->run_ms * 1000000 : 0;
    for (int i = 0; i < l->conc && (until != 0 || l->sent < l->total); i++) {
        l->sent++;
        fifo_push(&waiting, t0);
    }
    for (int i = 0; i < r->n && waiting.len > 0; i++)
        raw_send(r, i, fifo_pop(&waiting));
    while (l->done < l->sent) {
        if (poll(pfd, (nfds_t)r->n, 5000) <= 0)
            pgb_die("poll timed out");
        for (int i = 0; i < r->n; i++)
            if (pfd[i].revents & POLLIN)
                raw_read(r, i, l, &waiting, until);
    }
    l->secs = (double)(now_ns() - t0) / 1e9;
    free(pfd);
    free(waiting.t);
    return l->done / l->secs;
}

/* ---- Rounds ------------------------------------------------------------ */

void pgb_rounds(int rounds, int n, pgb_measure_fn measure, void *arg, const char *const labels[],
                const char *unit, double v[][PGB_MAX_ROUNDS])
{
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < n; k++) {
            int which = (r + k) % n;
            v[which][r] = measure(which, r, arg);
        }
        fprintf(stderr, "%s: round %d:", pgb_name, r);
        for (int k = 0; k < n; k++)
            fprintf(stderr, v[k][r] >= 1000 ? "%s %s %.0f %s" : "%s %s %.3g %s", k ? "," : "",
                    labels[k], v[k][r], unit);
        fprintf(stderr, "\n");
    }
}

double pgb_median(double v[][PGB_MAX_ROUNDS], int which, int rounds)
{
    double t[PGB_MAX_ROUNDS];
    for (int r = 0; r < rounds; r++)
        t[r] = v[which][r];
    return median_d(t, rounds);
}

double pgb_median_ratio(double v[][PGB_MAX_ROUNDS], int which, int rounds)
{
    double t[PGB_MAX_ROUNDS];
    for (int r = 0; r < rounds; r++)
        t[r] = v[which][r] / v[0][r];
    return median_d(t, rounds);
}
