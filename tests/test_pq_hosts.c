/* The PostgreSQL pool with several servers, against real ones started by
 * the harness: a host list that skips a closed port and a stopped server,
 * host names with every address tried, target_session_attrs choosing
 * between a primary and its hot standby, the connect timeout bounding the
 * whole walk, and transaction pooling through a real PgBouncer in
 * pool_mode=transaction. */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <baton/pq.h>

#include "pq_fixture.h"

/* Started once by main; the tests run in forked children. */
static bt_test_pg *primary;        /* the cluster the lists end on */
static bt_test_pg *other;          /* a second cluster, stopped by tests */
static bt_test_pg *standby;        /* a hot standby of primary */
static bt_test_pgbouncer *bouncer; /* pool_mode=transaction before primary */
static bt_loop *loop;

static void setup(void)
{
    ck_assert_msg(other != NULL, "PostgreSQL did not start");
    bt_test_pg_thaw(other);
    loop = bt_test_pq_loop(primary);
}

static void teardown(void)
{
    bt_test_loop_free_clean(loop);
}

static bt_future *await(bt_future *f)
{
    return bt_test_run_until(loop, f, 60000);
}

static void sleep_ms(unsigned ms)
{
    bt_test_sleep(loop, ms);
}

static bt_pq_pool *pool_for(const char *conninfo, bool transaction_pooling)
{
    bt_pq_options o;
    bt_test_pq_options(&o, conninfo, 0, 8);
    o.transaction_pooling = transaction_pooling;
    return bt_test_pq_pool(loop, &o);
}

/* The first value of sql's first row (a new string), or NULL with the
 * error in err. */
static char *scalar(bt_pq_pool *p, const char *sql, int *err)
{
    bt_future *f = await(bt_pq_query(p, sql, 0, NULL));
    *err = bt_future_error(f);
    char *out = NULL;
    if (*err == 0)
        out = strdup(bt_pq_result_get(bt_future_value(f), 0, 0));
    else
        fprintf(stderr, "%s: %s\n", sql, bt_future_error_message(f));
    bt_future_unref(f);
    return out;
}

/* The server a pool with this conninfo reaches: its port, and whether it
 * is a standby ("t"/"f"). Fails the test if it cannot connect. */
static int reached(const char *conninfo, bool *in_recovery)
{
    bt_pq_pool *p = pool_for(conninfo, false);
    int err;
    char *v = scalar(p, "SELECT current_setting('port') || ' ' || pg_is_in_recovery()", &err);
    ck_assert_msg(err == 0 && v != NULL, "%s: no connection (%d)", conninfo, err);
    int port = atoi(v);
    if (in_recovery != NULL)
        *in_recovery = strchr(v, 't') != NULL;
    free(v);
    bt_pq_pool_free(p);
    return port;
}

START_TEST(a_host_list_skips_a_closed_port)
{
    int dead = bt_test_pg_closed_port();
    ck_assert_int_gt(dead, 0);
    char ci[256];
    snprintf(ci, sizeof ci, "host=127.0.0.1,127.0.0.1 port=%d,%d dbname=postgres user=postgres",
             dead, bt_test_pg_port(primary));
    ck_assert_int_eq(reached(ci, NULL), bt_test_pg_port(primary));
    /* The same with names: resolved on the blocking lane, the port list
     * kept beside the addresses. */
    snprintf(ci, sizeof ci, "host=localhost,localhost port=%d,%d dbname=postgres user=postgres",
             dead, bt_test_pg_port(primary));
    ck_assert_int_eq(reached(ci, NULL), bt_test_pg_port(primary));
    /* A port list must match the host list, as libpq requires. */
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = "host=localhost,localhost,localhost port=5432,5433 dbname=postgres";
    bt_test_log_capture();
    ck_assert_ptr_null(bt_pq_pool_new(loop, &o));
    ck_assert(bt_test_log_contains("2 ports for 3 hosts"));
    /* A name that does not resolve is skipped, as libpq skips it. */
    snprintf(ci, sizeof ci,
             "host=no-such-host.invalid,localhost port=%d dbname=postgres "
             "user=postgres",
             bt_test_pg_port(primary));
    ck_assert_int_eq(reached(ci, NULL), bt_test_pg_port(primary));
}
END_TEST

START_TEST(a_stopped_first_server_is_skipped)
{
    char ci[256];
    snprintf(ci, sizeof ci, "host=127.0.0.1,localhost port=%d,%d dbname=postgres user=postgres",
             bt_test_pg_port(other), bt_test_pg_port(primary));
    /* Both up: the first one. */
    ck_assert_int_eq(reached(ci, NULL), bt_test_pg_port(other));
    bt_pq_pool *p = pool_for(ci, false);
    int err;
    char *v = scalar(p, "SHOW port", &err);
    ck_assert_int_eq(err, 0);
    ck_assert_int_eq(atoi(v), bt_test_pg_port(other));
    free(v);
    ck_assert_int_eq(bt_test_pg_stop(other, "fast"), 0);
    /* A new pool goes to the second host, and so does the old pool once
     * it has noticed that its connection is gone. */
    ck_assert_int_eq(reached(ci, NULL), bt_test_pg_port(primary));
    int port = 0;
    for (int i = 0; i < 100 && port != bt_test_pg_port(primary); i++) {
        v = scalar(p, "SHOW port", &err);
        if (v != NULL)
            port = atoi(v);
        free(v);
        if (port != bt_test_pg_port(primary))
            sleep_ms(100);
    }
    ck_assert_int_eq(port, bt_test_pg_port(primary));
    bt_pq_pool_free(p);
    ck_assert_int_eq(bt_test_pg_resume(other), 0);
}
END_TEST

/* nss_wrapper (Debian's libnss-wrapper) makes getaddrinfo read a hosts
 * file of our own when preloaded: a name with several addresses without
 * touching /etc/hosts. */
static const char *nss_wrapper_lib(void)
{
    const char *env = getenv("NSS_WRAPPER_LIB");
    if (env != NULL && *env)
        return env;
    static const char *const paths[] = { "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so",
                                         "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
                                         "/usr/lib64/libnss_wrapper.so",
                                         "/usr/lib/libnss_wrapper.so",
                                         "/usr/local/lib/libnss_wrapper.so",
                                         NULL };
    for (int i = 0; paths[i] != NULL; i++)
        if (access(paths[i], R_OK) == 0)
            return paths[i];
    return NULL;
}

/* Run this program again as "--reach CONNINFO" with hosts (a hosts file's
 * text) in force through nss_wrapper; returns its exit status (0: it
 * reached the server). */
static int reach_with_hosts(const char *hosts, const char *conninfo)
{
    const char *lib = nss_wrapper_lib();
    ck_assert_msg(lib != NULL, "libnss_wrapper.so not found: install libnss-wrapper "
                               "(or set NSS_WRAPPER_LIB)");
    char dir[] = "/tmp/baton-hosts-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/hosts", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(hosts, f);
    fclose(f);
    char supp[64];
    snprintf(supp, sizeof supp, "%s/tsan.supp", dir);
    f = fopen(supp, "w");
    ck_assert_ptr_nonnull(f);
    fputs("mutex:libnss_wrapper.so\nrace:libnss_wrapper.so\n", f);
    fclose(f);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        setenv("LD_PRELOAD", lib, 1);
        setenv("NSS_WRAPPER_HOSTS", path, 1);
        /* An ASan build wants its runtime first in the list; the preload
         * is harmless to it. */
        const char *asan = getenv("ASAN_OPTIONS");
        char opts[512];
        snprintf(opts, sizeof opts, "%s%sverify_asan_link_order=0", asan ? asan : "",
                 asan && *asan ? ":" : "");
        setenv("ASAN_OPTIONS", opts, 1);
        /* nss_wrapper's own locking (it unlocks on a thread other than
         * the locker's) trips a TSan build: not ours to report. */
        const char *tsan = getenv("TSAN_OPTIONS");
        snprintf(opts, sizeof opts, "%s%ssuppressions=%s/tsan.supp", tsan ? tsan : "",
                 tsan && *tsan ? ":" : "", dir);
        setenv("TSAN_OPTIONS", opts, 1);
        execl("/proc/self/exe", "test_pq_hosts", "--reach", conninfo, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    unlink(path);
    unlink(supp);
    rmdir(dir);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* The child of reach_with_hosts: connect, query, exit 0 if it worked. */
static int reach_main(const char *conninfo)
{
    loop = bt_loop_new();
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = conninfo;
    o.min_size = 0;
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    if (p == NULL)
        return 2;
    bt_future *f = bt_pq_query(p, "SELECT current_setting('port')", 0, NULL);
    /* No Check calls here (no test is running): the pool's connect and
     * acquire timeouts bound the wait. */
    if (f == NULL || bt_loop_run_until(loop, f) != 0)
        return 3;
    int rc = bt_future_error(f) == 0 ? 0 : 1;
    fprintf(stderr, "--reach %s: %s\n", conninfo,
            rc == 0 ? bt_pq_result_get(bt_future_value(f), 0, 0) : bt_future_error_message(f));
    bt_future_unref(f);
    bt_pq_pool_free(p);
    bt_loop_free(loop);
    return rc;
}

START_TEST(every_address_of_a_name_is_tried)
{
    /* What this machine makes of "localhost" (the server listens on
     * 127.0.0.1 only; where localhost gives ::1 first, that address must
     * be walked past). */
    struct addrinfo hints = { .ai_family = AF_UNSPEC,
                              .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_ADDRCONFIG };
    struct addrinfo *ai = NULL;
    ck_assert_int_eq(getaddrinfo("localhost", NULL, &hints, &ai), 0);
    int n = 0;
    bool v4_first = ai->ai_family == AF_INET;
    for (struct addrinfo *a = ai; a != NULL; a = a->ai_next)
        n++;
    freeaddrinfo(ai);
    fprintf(stderr, "localhost: %d address(es), 127.0.0.1 %s\n", n,
            v4_first ? "first" : "not first");
    char ci[256];
    snprintf(ci, sizeof ci, "host=localhost port=%d dbname=postgres user=postgres",
             bt_test_pg_port(primary));
    ck_assert_int_eq(reached(ci, NULL), bt_test_pg_port(primary));

    /* A name whose first address refuses (nothing listens on 127.0.0.2)
     * and whose second is the server. */
    snprintf(ci, sizeof ci, "host=bt-multi port=%d dbname=postgres user=postgres",
             bt_test_pg_port(primary));
    ck_assert_int_eq(reach_with_hosts("127.0.0.2 bt-multi\n127.0.0.1 bt-multi\n", ci), 0);
    /* The same name with the refusing address alone fails: the lookup did
     * go through our hosts file. */
    ck_assert_int_ne(reach_with_hosts("127.0.0.2 bt-multi\n", ci), 0);
}
END_TEST

START_TEST(target_session_attrs_pick_the_server)
{
    ck_assert_msg(standby != NULL, "the standby did not start");
    int pp = bt_test_pg_port(primary), sp = bt_test_pg_port(standby);
    static const struct {
        const char *attrs;
        bool standby_first;
        bool want_standby;
    } cases[] = {
        { "read-write", true, false },     { "primary", true, false },
        { "standby", false, true },        { "read-only", false, true },
        { "prefer-standby", false, true }, { "any", true, true },
        { "any", false, false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int names = 0; names < 2; names++) {
            const char *h = names ? "localhost" : "127.0.0.1";
            char ci[320];
            snprintf(ci, sizeof ci,
                     "host=%s,%s port=%d,%d dbname=postgres user=postgres "
                     "target_session_attrs=%s",
                     h, h, cases[i].standby_first ? sp : pp, cases[i].standby_first ? pp : sp,
                     cases[i].attrs);
            bool rec = false;
            int port = reached(ci, &rec);
            ck_assert_msg(rec == cases[i].want_standby && port == (rec ? sp : pp),
                          "%s: reached port %d (recovery %d)", ci, port, rec);
        }
    }
    /* prefer-standby takes the primary when no standby is up. */
    char ci[320];
    snprintf(ci, sizeof ci,
             "host=localhost port=%d dbname=postgres user=postgres "
             "target_session_attrs=prefer-standby",
             pp);
    ck_assert_int_eq(reached(ci, NULL), pp);
    /* No server that fits: the connect fails, and says why. */
    snprintf(ci, sizeof ci,
             "host=127.0.0.1 port=%d dbname=postgres user=postgres "
             "target_session_attrs=read-write",
             sp);
    bt_pq_pool *p = pool_for(ci, false);
    bt_future *ready = await(bt_pq_pool_ready(p));
    ck_assert_int_ne(bt_future_error(ready), 0);
    fprintf(stderr, "read-write on a standby: %s\n", bt_future_error_message(ready));
    bt_future_unref(ready);
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(connect_timeout_bounds_the_whole_walk)
{
    /* A first server that accepts the TCP connection and never answers
     * (its postmaster stopped): libpq waits on it, and the pool's
     * connect_timeout_ms, which bounds the whole walk, ends the wait. */
    char ci[256];
    snprintf(ci, sizeof ci, "host=127.0.0.1,127.0.0.1 port=%d,%d dbname=postgres user=postgres",
             bt_test_pg_port(other), bt_test_pg_port(primary));
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = ci;
    o.min_size = 0;
    o.connect_timeout_ms = 500;
    ck_assert_int_eq(bt_test_pg_freeze(other, false), 0);
    bt_pq_pool *p = bt_pq_pool_new(loop, &o);
    ck_assert_ptr_nonnull(p);
    bt_future *ready = await(bt_pq_pool_ready(p));
    ck_assert_int_eq(bt_future_error(ready), BT_ETIMEDOUT);
    ck_assert_msg(strstr(bt_future_error_message(ready), "connect_timeout_ms") != NULL, "%s",
                  bt_future_error_message(ready));
    bt_future_unref(ready);
    bt_pq_pool_free(p);
    ck_assert_int_eq(bt_test_pg_thaw(other), 0);
}
END_TEST

/* ---- Behind PgBouncer ------------------------------------------------------ */

enum { LOAD = 400 };

/* LOAD concurrent parameterised queries through p, two statements
 * alternating. Returns how many failed; *prepared counts the failures on
 * a prepared statement and *wrong the answers that came from the other
 * statement. */
static int run_load(bt_pq_pool *p, int *prepared, int *wrong)
{
    bt_future *fs[LOAD];
    char args[LOAD][16];
    for (int i = 0; i < LOAD; i++) {
        snprintf(args[i], sizeof args[i], "%d", i);
        const char *v[] = { args[i] };
        fs[i] = bt_pq_query(p, i % 2 ? "SELECT $1::int + 1" : "SELECT $1::int * 2", 1, v);
        ck_assert_ptr_nonnull(fs[i]);
    }
    int failed = 0;
    *prepared = *wrong = 0;
    for (int i = 0; i < LOAD; i++) {
        await(fs[i]);
        if (bt_future_error(fs[i]) != 0) {
            const char *m = bt_future_error_message(fs[i]);
            if (failed++ == 0)
                fprintf(stderr, "first failure: %s\n", m);
            if (strstr(m, "prepared statement") != NULL)
                (*prepared)++;
        } else {
            const char *got = bt_pq_result_get(bt_future_value(fs[i]), 0, 0);
            if (atoi(got) != (i % 2 ? i + 1 : i * 2) && (*wrong)++ == 0)
                fprintf(stderr, "first wrong answer: query %d got %s\n", i, got);
        }
        bt_future_unref(fs[i]);
    }
    return failed;
}

static void on_notify(const char *channel, const char *payload, int pid, void *arg)
{
    (void)channel;
    (void)payload;
    (void)pid;
    (void)arg;
}

START_TEST(transaction_pooling_through_pgbouncer)
{
    ck_assert_msg(bouncer != NULL, "pgbouncer did not start");
    bt_pq_pool *p = pool_for(bt_test_pgbouncer_conninfo(bouncer), true);
    int prepared = 0, wrong = 0;
    for (int round = 0; round < 3; round++) {
        ck_assert_int_eq(run_load(p, &prepared, &wrong), 0);
        ck_assert_int_eq(wrong, 0);
    }

    /* A transaction on an acquired connection, with SET LOCAL. */
    bt_pq_conn *c = bt_test_take(await(bt_pq_acquire(p)), "acquire");
    const char *steps[] = { "BEGIN", "SET LOCAL work_mem = '3MB'", "SHOW work_mem", "COMMIT" };
    for (size_t i = 0; i < 4; i++) {
        bt_future *f = await(bt_pq_conn_query(c, steps[i], 0, NULL));
        ck_assert_msg(bt_future_error(f) == 0, "%s: %s", steps[i], bt_future_error_message(f));
        if (i == 2)
            ck_assert_str_eq(bt_pq_result_get(bt_future_value(f), 0, 0), "3MB");
        bt_future_unref(f);
    }
    bt_pq_conn_release(c);

    /* What would leave state on a server session is refused, naming the
     * option. */
    bt_future *l = await(bt_pq_listen(p, "chan", on_notify, NULL));
    ck_assert_int_eq(bt_future_error(l), BT_ENOTSUP);
    ck_assert_msg(strstr(bt_future_error_message(l), "transaction_pooling") != NULL, "%s",
                  bt_future_error_message(l));
    bt_future_unref(l);
    const char *refused[] = { "LISTEN chan", "  set search_path = public", "/* x */ RESET ALL",
                              "SET SESSION work_mem = '1MB'", "PREPARE s AS SELECT 1" };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        bt_future *f = await(bt_pq_query(p, refused[i], 0, NULL));
        ck_assert_msg(bt_future_error(f) == BT_ENOTSUP, "%s: %d", refused[i], bt_future_error(f));
        ck_assert_msg(strstr(bt_future_error_message(f), "transaction_pooling") != NULL, "%s",
                      bt_future_error_message(f));
        bt_future_unref(f);
    }
    /* Look-alikes are not refused. */
    const char *fine[] = { "SELECT 'SET x'", "SELECT 1 AS settings", "SET TRANSACTION READ ONLY" };
    for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++) {
        bt_future *f = await(bt_pq_query(p, fine[i], 0, NULL));
        ck_assert_msg(bt_future_error(f) != BT_ENOTSUP, "%s: %s", fine[i],
                      bt_future_error_message(f));
        bt_future_unref(f);
    }
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(transaction_pooling_reads_past_comments)
{
    /* The statement's first keyword is found as the server finds it: past
     * line comments and block comments, which nest. The refusal needs no
     * pooler: it happens before anything is sent. */
    bt_pq_pool *p = pool_for(bt_test_pg_conninfo(primary), true);
    const char *refused[] = { "-- why\nLISTEN chan",
                              "/* outer /* inner */ still a comment */ LISTEN chan",
                              "/**/ SET /* x */ work_mem = '1MB'",
                              "/* a /* b /* c */ */ */\n-- d\n\f\vRESET ALL" };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        bt_future *f = await(bt_pq_query(p, refused[i], 0, NULL));
        ck_assert_msg(bt_future_error(f) == BT_ENOTSUP, "%s: %s", refused[i],
                      bt_future_error_message(f));
        bt_future_unref(f);
    }
    /* A keyword inside a comment is not the statement's, nested or not. */
    const char *fine[] = { "/* LISTEN chan */ SELECT 1", "/* x /* y */ LISTEN chan */ SELECT 1",
                           "SET /* not session-wide */ LOCAL work_mem = '1MB'" };
    for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++) {
        bt_future *f = await(bt_pq_query(p, fine[i], 0, NULL));
        ck_assert_msg(bt_future_error(f) == 0, "%s: %s", fine[i], bt_future_error_message(f));
        bt_future_unref(f);
    }
    bt_pq_pool_free(p);
}
END_TEST

START_TEST(prepared_statements_break_behind_pgbouncer)
{
    /* Without the option, the pool's prepared statements meet server
     * sessions that do not have them (or have another's of the same
     * name, even a different statement, which then answers in its place):
     * this is what transaction_pooling is for. */
    ck_assert_msg(bouncer != NULL, "pgbouncer did not start");
    bt_pq_pool *p = pool_for(bt_test_pgbouncer_conninfo(bouncer), false);
    int failed = 0, prepared = 0, wrong = 0;
    for (int round = 0; round < 3; round++) {
        int pr = 0, wr = 0;
        failed += run_load(p, &pr, &wr);
        prepared += pr;
        wrong += wr;
    }
    fprintf(stderr,
            "without transaction_pooling: %d of %d queries failed, %d on a prepared "
            "statement; %d answered by the other statement\n",
            failed, 3 * LOAD, prepared, wrong);
    ck_assert_int_gt(prepared + wrong, 0);
    bt_pq_pool_free(p);
}
END_TEST

static Suite *hosts_suite(void)
{
    Suite *s = suite_create("pq_hosts");
    TCase *tc = tcase_create("hosts");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, a_host_list_skips_a_closed_port);
    tcase_add_test(tc, every_address_of_a_name_is_tried);
    tcase_add_test(tc, target_session_attrs_pick_the_server);
    tcase_add_test(tc, a_stopped_first_server_is_skipped);
    tcase_add_test(tc, connect_timeout_bounds_the_whole_walk);
    tcase_add_test(tc, transaction_pooling_through_pgbouncer);
    tcase_add_test(tc, transaction_pooling_reads_past_comments);
    tcase_add_test(tc, prepared_statements_break_behind_pgbouncer);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--reach") == 0)
        return reach_main(argv[2]);
    primary = bt_test_pg_start();
    other = bt_test_pg_start();
    standby = primary != NULL ? bt_test_pg_start_standby(primary) : NULL;
    bouncer = primary != NULL ? bt_test_pgbouncer_start(primary, "transaction", 2) : NULL;
    if (primary == NULL || other == NULL || standby == NULL || bouncer == NULL)
        fprintf(stderr, "test_pq_hosts: a server did not start: its tests fail\n");
    int rc = bt_test_main(hosts_suite());
    bt_test_pgbouncer_free(bouncer);
    bt_test_pg_free(standby);
    bt_test_pg_free(other);
    bt_test_pg_free(primary);
    return rc;
}
