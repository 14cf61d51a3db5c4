/* Shared by the PostgreSQL benchmarks (pg_select, pg_select_wide,
 * pg_copy_in, pg_select_p99): a throwaway server with its table, a pool
 * with every connection open, a closed loop of callers on the pool, the
 * raw libpq anchor's connections and loop, and rounds measured back to
 * back in a rotating order.
 *
 * A failure ends the program (after saying why on stderr, prefixed with
 * the bench's name): a benchmark has no one to report an error to. */
#ifndef BATON_PG_BENCH_H
#define BATON_PG_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include <baton/baton.h>
#include <baton/pq.h>

#include "pg_harness.h"

/* The bench's name, for error messages; set before anything else. */
extern const char *pgb_name;

void pgb_die(const char *what);

/* Start a server and run setup (several statements may go in one). */
bt_test_pg *pgb_start(const char *setup);

/* A pool of size connections (min = max) with pipeline_depth depth;
 * returns once all are open, so that no measure includes connecting. */
bt_pq_pool *pgb_pool(bt_loop *loop, const char *conninfo, unsigned size, unsigned depth);

/* A pseudo-random id in 1..rows, the same sequence in every run of the
 * program (one sequence for the whole program). */
int pgb_next_id(int rows);

/* ---- A closed loop of callers on a pool -------------------------------- */

/* conc callers, each sending its next query when the previous one settles
 * (as wrk's connections do), until total queries were sent or, with
 * run_ms, until run_ms have passed; then the ones in flight finish. */
typedef struct pgb_load pgb_load;
struct pgb_load {
    int conc;
    int total;       /* queries to send; with run_ms 0 */
    uint64_t run_ms; /* or: send for this long */
    /* Send one query: a new future reference (NULL ends the program). */
    bt_future *(*send)(pgb_load *l);
    /* Look at a settled query's result; l->errors++ if it is wrong. */
    void (*check)(pgb_load *l, bt_future *f);
    void *arg;
    /* Optional: each query's latency (send to settle), in ns. */
    uint64_t *lat;
    size_t lat_cap;
    /* Filled in by the run. */
    int sent, done, errors;
    size_t nlat;
    double secs;
};

/* Run l on loop (the load's fields from sent on are reset); returns queries
 * per second. Ends the program if a query failed. */
double pgb_load_run(bt_loop *loop, pgb_load *l);

/* ---- pg_select's table and query --------------------------------------- */

/* A server with a users(id, name, email) table of PGB_USERS rows. */
enum { PGB_USERS = 10000 };
bt_test_pg *pgb_start_users(void);
/* The point select by id, on it. */
extern const char *const pgb_user_sql;
/* A pgb_load's send (l->arg is the pool) and check: pgb_user_sql for
 * pgb_next_id(PGB_USERS), one row back. */
bt_future *pgb_send_user(pgb_load *l);
void pgb_check_one_row(pgb_load *l, bt_future *f);

/* ---- The raw libpq anchor --------------------------------------------- */

/* n raw nonblocking libpq connections, each with sql prepared as "s" (as
 * the pool prepares its statements), opened once like the pools' so that
 * no round pays for another's connection setup. */
typedef struct pgb_raw pgb_raw;
pgb_raw *pgb_raw_open(const char *conninfo, int n, const char *sql);
void pgb_raw_close(pgb_raw *r);

/* The closed loop of pgb_load on the raw connections, driven by poll(2):
 * l->conc callers, one query in flight on each connection, the others'
 * queries waiting in order for the next free one. Each query executes "s"
 * with one parameter, pgb_next_id(PGB_USERS), and must return one row. l's
 * send, check and arg are not used. Returns queries per second. */
double pgb_raw_run(pgb_raw *r, pgb_load *l);

/* ---- Rounds ------------------------------------------------------------ */

enum { PGB_MAX_ROUNDS = 16, PGB_MAX_MEASURES = 4 };

/* Runs measure 0..n-1 (measure(which, round, arg) returns its value) in
 * each of rounds rounds, back to back in a rotating order (round r starts
 * with measure r % n): the machine is shared, and its load drifts more
 * between rounds than within one. v[which][round] gets the values; each
 * round's are printed to stderr as "NAME: round R: LABEL V UNIT, ...". */
typedef double (*pgb_measure_fn)(int which, int round, void *arg);
void pgb_rounds(int rounds, int n, pgb_measure_fn measure, void *arg, const char *const labels[],
                const char *unit, double v[][PGB_MAX_ROUNDS]);

/* The median of v[which][0..rounds), and the median of the rounds' own
 * ratios v[which][r] / v[0][r] (neighbours compared). */
double pgb_median(double v[][PGB_MAX_ROUNDS], int which, int rounds);
double pgb_median_ratio(double v[][PGB_MAX_ROUNDS], int which, int rounds);

#endif
