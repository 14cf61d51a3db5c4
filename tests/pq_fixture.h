/* What the PostgreSQL suites that run against a throwaway server share:
 * a main that starts the server once (the tests run in forked children
 * and use it), the start of each test (the server is there, a new loop),
 * and pools made with the few fields the tests vary. It stands on
 * harness.h (Check) and pg_harness.h (the server), and links libbaton-pq;
 * pg_harness itself stays free of Check and Baton for the benchmarks,
 * examples and tools that start servers with it. */
#ifndef BATON_TESTS_PQ_FIXTURE_H
#define BATON_TESTS_PQ_FIXTURE_H

#include <baton/pq.h>

#include "harness.h"
#include "pg_harness.h"

/* Start a server into *pg, run the suite, stop the server; returns main's
 * exit code. A server that does not start is said on stderr under name,
 * and the suite runs anyway, so that each test reports the failure. */
int bt_test_pq_main(bt_test_pg **pg, Suite *s, const char *name);

/* A test's start: fails the test if the server did not start, else
 * returns a new loop (the test's to free, with bt_test_loop_free_clean). */
bt_loop *bt_test_pq_loop(const bt_test_pg *pg);

/* o initialised for conninfo (borrowed) with min_size and max_size; every
 * other field at its default, for the caller to change before the pool
 * is made. */
void bt_test_pq_options(bt_pq_options *o, const char *conninfo, unsigned min, unsigned max);

/* A new pool on loop, failing the test if bt_pq_pool_new refuses o. */
bt_pq_pool *bt_test_pq_pool(bt_loop *loop, const bt_pq_options *o);

#endif
