#include "pq_fixture.h"

#include <stdio.h>

int bt_test_pq_main(bt_test_pg **pg, Suite *s, const char *name)
{
    *pg = bt_test_pg_start();
    if (*pg == NULL)
        fprintf(stderr, "%s: could not start PostgreSQL: every test fails\n", name);
    int rc = bt_test_main(s);
    bt_test_pg_free(*pg);
    return rc;
}

bt_loop *bt_test_pq_loop(const bt_test_pg *pg)
{
    ck_assert_msg(pg != NULL, "PostgreSQL did not start");
    bt_loop *loop = bt_loop_new();
    ck_assert_ptr_nonnull(loop);
    return loop;
}

void bt_test_pq_options(bt_pq_options *o, const char *conninfo, unsigned min, unsigned max)
{
    bt_pq_options_init(o);
    o->conninfo = conninfo;
    o->min_size = min;
    o->max_size = max;
}

bt_pq_pool *bt_test_pq_pool(bt_loop *loop, const bt_pq_options *o)
{
    bt_pq_pool *p = bt_pq_pool_new(loop, o);
    ck_assert_ptr_nonnull(p);
    return p;
}
