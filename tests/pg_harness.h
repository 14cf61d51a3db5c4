/* A throwaway PostgreSQL server for tests, benchmarks and examples.
 *
 * bt_test_pg_start runs initdb and pg_ctl in a new temporary directory and
 * starts a server that listens on a unix socket in that directory and on a
 * free loopback TCP port. When the process runs as root (CI, containers),
 * initdb refuses to run, so every server command runs as the `postgres`
 * user (or PG_HARNESS_USER): the child drops its privileges before exec,
 * like `runuser -u postgres --`, and the directory is chown'ed to it.
 *
 * The directory is made under $PG_HARNESS_DIR if set, else $TMPDIR (when
 * not root and short enough for a socket path), else /tmp.
 *
 * The binaries are found in $PG_BINDIR, else next to `initdb` on PATH,
 * else at `pg_config --bindir`, else in the newest
 * /usr/lib/postgresql/<N>/bin, else /usr/local/pgsql/bin.
 *
 * The server is stopped and its directory removed by bt_test_pg_free, and
 * also at exit of the process that started it (never in a forked child,
 * so Check's forked tests may use and even restart a server their parent
 * started). Nothing here uses Baton: the calls block, which is fine in a
 * test's setup. Not thread-safe: call from one thread.
 *
 * When something fails, the functions print what failed and the server's
 * log to stderr and return NULL or -1: a test must then FAIL, never skip.
 */
#ifndef BATON_TESTS_PG_HARNESS_H
#define BATON_TESTS_PG_HARNESS_H

#include <stdbool.h>

typedef struct bt_test_pg bt_test_pg;

/* Create a cluster and start its server. Returns NULL on failure (after
 * printing why to stderr). */
bt_test_pg *bt_test_pg_start(void);

/* A hot standby of primary, in a directory and on a port of its own:
 * pg_basebackup -R from the primary's socket (as the server's user), then
 * started; it streams from the primary and answers read-only queries
 * (pg_is_in_recovery() is true). Free it with bt_test_pg_free before its
 * primary. Returns NULL on failure (after printing why). */
bt_test_pg *bt_test_pg_start_standby(const bt_test_pg *primary);

/* Stop the server (immediate mode) and remove the directory. NULL: no-op. */
void bt_test_pg_free(bt_test_pg *pg);

/* Connection strings (borrowed, valid until bt_test_pg_free):
 * TCP on 127.0.0.1: "host=127.0.0.1 port=N dbname=postgres user=postgres" */
const char *bt_test_pg_conninfo(const bt_test_pg *pg);
/* The unix socket: "host=/tmp/.../ port=N dbname=postgres user=postgres" */
const char *bt_test_pg_socket_conninfo(const bt_test_pg *pg);
/* A URI form of the TCP one: "postgresql://postgres@127.0.0.1:N/postgres" */
const char *bt_test_pg_url(const bt_test_pg *pg);
int bt_test_pg_port(const bt_test_pg *pg);
/* The directory that holds data/, the socket and server.log. */
const char *bt_test_pg_dir(const bt_test_pg *pg);

/* `pg_ctl restart -m MODE` (MODE "fast", "immediate" or "smart"), waiting
 * until the server accepts connections again. Returns 0 or -1. */
int bt_test_pg_restart(bt_test_pg *pg, const char *mode);
/* `pg_ctl stop -m MODE` and `pg_ctl start`, for tests that need the server
 * down for a while. Return 0 or -1. */
int bt_test_pg_stop(bt_test_pg *pg, const char *mode);
int bt_test_pg_resume(bt_test_pg *pg);
bool bt_test_pg_running(const bt_test_pg *pg);

/* Faults for tests: stop the server with SIGSTOP, as a wedged host or a
 * debugger would. whole_server false stops the postmaster alone: running
 * backends go on answering their clients, but no new connection and no
 * cancel request is served (the kernel still accepts the TCP connection
 * into the listen backlog, so clients wait rather than fail). true stops
 * the backends too. bt_test_pg_thaw resumes everything; bt_test_pg_free,
 * _stop, _restart and the at-exit cleanup thaw first, so a test that fails
 * while the server is frozen leaves nothing hanging. Return 0 or -1. */
int bt_test_pg_freeze(bt_test_pg *pg, bool whole_server);
int bt_test_pg_thaw(bt_test_pg *pg);
/* The postmaster's pid, or -1 if the server is not running. */
int bt_test_pg_postmaster_pid(const bt_test_pg *pg);

/* A role that must give its password (scram-sha-256 in pg_hba.conf, over
 * TCP and the unix socket); every other role is trusted. The conninfo
 * (borrowed) connects as that role with the right password: replace the
 * password to see authentication fail (SQLSTATE 28P01). */
const char *bt_test_pg_password_conninfo(const bt_test_pg *pg);

/* Run SQL synchronously with a blocking libpq connection (setup and
 * checks; there may be several statements). Returns 0, or -1 after
 * printing the server's error. */
int bt_test_pg_exec(const bt_test_pg *pg, const char *sql);
/* Run a query and return the first column of its first row as a new
 * string (free with free()), or NULL on error or no rows. */
char *bt_test_pg_scalar(const bt_test_pg *pg, const char *sql);

/* A loopback TCP port that nothing listens on now (for refused-connection
 * tests). Returns the port, or -1. */
int bt_test_pg_closed_port(void);

/* PgBouncer in front of pg: a pgbouncer process (from $PGBOUNCER, PATH or
 * /usr/sbin) run as the server's user, in a temporary directory of its own
 * (pgbouncer.ini, a userlist.txt with "postgres", pidfile and logfile),
 * listening on 127.0.0.1 and a free port, with pool_mode (NULL:
 * "transaction") and default_pool_size pool_size (<= 0: 2) server
 * connections for database "postgres", auth_type trust. Returns once it
 * answers a connection, or NULL after printing why (no pgbouncer
 * installed: the test must fail). Stopped (SIGTERM) and its directory
 * removed by bt_test_pgbouncer_free, at exit of the process that started
 * it, or when that process dies. */
typedef struct bt_test_pgbouncer bt_test_pgbouncer;
bt_test_pgbouncer *bt_test_pgbouncer_start(const bt_test_pg *pg, const char *pool_mode,
                                           int pool_size);
void bt_test_pgbouncer_free(bt_test_pgbouncer *b);
/* "host=127.0.0.1 port=N dbname=postgres user=postgres" (borrowed). */
const char *bt_test_pgbouncer_conninfo(const bt_test_pgbouncer *b);
int bt_test_pgbouncer_port(const bt_test_pgbouncer *b);

#endif
