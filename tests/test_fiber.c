/* Fibers: bt_async / bt_await over every kind of future the core makes
 * (the integrations' are in test_fiber_io.c), 100,000 awaits in a row,
 * cancellation mid-await, a timeout over a fiber, a group of fibers with
 * one failing, a fiber that never awaits, 10,000 fibers alive at once,
 * bt_loop_free with fibers suspended, a stack overflow that names the
 * fiber's function, and awaiting outside a fiber. */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <baton/fiber.h>

#include "harness.h"

static bt_loop *loop;

static void setup(void)
{
    loop = bt_loop_new();
    ck_assert_ptr_nonnull(loop);
}
static void teardown(void)
{
    bt_test_loop_free_clean(loop);
}

/* Run a fiber to its end; returns its future (the test's reference). */
static bt_future *run_fiber(bt_start_fn fn, void *arg)
{
    bt_future *f = bt_async(loop, fn, arg);
    ck_assert_ptr_nonnull(f);
    /* Generous: 100,000 switches under TSan on a loaded machine. */
    bt_test_run_until(loop, f, 200000);
    return f;
}

static bt_future *done(void)
{
    return bt_future_new_value(loop, NULL, NULL);
}

/* A pending future settled with (intptr_t)value from a later turn: each
 * await on one really suspends. */
typedef struct {
    bt_future *f;
    intptr_t v;
} soon_t;

static void soon_fire(void *arg)
{
    soon_t *s = arg;
    bt_future_set_value(s->f, (void *)s->v, NULL);
    bt_future_unref(s->f);
    free(s);
}

static bt_future *soon(intptr_t v)
{
    soon_t *s = malloc(sizeof *s);
    s->f = bt_future_new(loop);
    s->v = v;
    bt_future_ref(s->f);
    bt_loop_call_soon(loop, soon_fire, s);
    return s->f;
}

/* ---- The basics -------------------------------------------------------- */

static bt_future *sum_fiber(bt_loop *l, void *arg)
{
    long *sum = arg;
    ck_assert(bt_in_fiber());
    for (intptr_t i = 0; i < 100000; i++) {
        void *v;
        ck_assert_int_eq(bt_await(soon(i), &v), 0);
        *sum += (intptr_t)v;
    }
    return bt_future_new_value(l, (void *)(intptr_t)7, NULL);
}

START_TEST(await_in_a_loop_of_100000)
{
    long sum = 0;
    ck_assert(!bt_in_fiber());
    bt_future *f = run_fiber(sum_fiber, &sum);
    ck_assert_int_eq(bt_future_error(f), 0);
    ck_assert_ptr_eq(bt_future_value(f), (void *)(intptr_t)7);
    ck_assert_int_eq(sum, 100000L * 99999 / 2);
    bt_future_unref(f);
    bt_loop_stats st = BT_SIZED(bt_loop_stats);
    bt_loop_get_stats(loop, &st);
    ck_assert_uint_eq(st.fibers_alive, 0);
    ck_assert_uint_gt(st.fiber_stack_bytes, 0); /* kept for reuse */
}
END_TEST

static bt_future *outcomes_fiber(bt_loop *l, void *arg)
{
    (void)arg;
    /* A value moves to the caller. */
    char *s = NULL;
    ck_assert_int_eq(bt_await(bt_future_new_value(l, strdup("hi"), free), (void **)&s), 0);
    ck_assert_str_eq(s, "hi");
    free(s);
    ck_assert_ptr_null(bt_await_error());
    /* With value NULL it is destroyed (ASan/valgrind see a leak if not). */
    ck_assert_int_eq(bt_await(bt_future_new_value(l, strdup("x"), free), NULL), 0);
    /* An error: its code, and its message until the next await. */
    void *v = (void *)1;
    ck_assert_int_eq(bt_await(bt_future_new_error(l, BT_EIO, "disk %d", 3), &v), BT_EIO);
    ck_assert_ptr_null(v);
    ck_assert_str_eq(bt_await_error(), "disk 3");
    /* A future cancelled by someone else. */
    bt_future *c = bt_future_new(l);
    bt_future_cancel(c);
    ck_assert_int_eq(bt_await(c, NULL), BT_ECANCELED);
    ck_assert_str_eq(bt_await_error(), "cancelled");
    /* Bad arguments: a clear error, never a crash. */
    ck_assert_int_eq(bt_await(NULL, NULL), BT_EINVAL);
    ck_assert_ptr_nonnull(bt_await_error());
    bt_loop *other = bt_loop_new();
    ck_assert_int_eq(bt_await(bt_future_new_value(other, NULL, NULL), NULL), BT_EINVAL);
    ck_assert_ptr_nonnull(strstr(bt_await_error(), "another loop"));
    bt_loop_free(other);
    /* The fiber's own outcome: an error with a message. */
    return bt_future_new_error(l, BT_EPROTO, "fiber says no");
}

START_TEST(values_errors_and_messages)
{
    bt_future *f = run_fiber(outcomes_fiber, NULL);
    ck_assert_int_eq(bt_future_error(f), BT_EPROTO);
    ck_assert_str_eq(bt_future_error_message(f), "fiber says no");
    bt_future_unref(f);
}
END_TEST

START_TEST(await_outside_a_fiber_is_an_error)
{
    bt_test_log_capture();
    bt_future *f = bt_future_new_value(loop, strdup("v"), free);
    void *v = (void *)1;
    ck_assert_int_eq(bt_await(f, &v), BT_EINVAL); /* and f is consumed */
    ck_assert_ptr_null(v);
    ck_assert(bt_test_log_contains("outside a fiber"));
    ck_assert_ptr_null(bt_await_error());
    ck_assert_ptr_null(bt_async(NULL, NULL, NULL));
}
END_TEST

static int job_double(bt_job *job, void *arg)
{
    intptr_t x = (intptr_t)arg;
    bt_job_set_value(job, (void *)(x * 2), NULL);
    return 0;
}

static int await_in_job(bt_job *job, void *arg)
{
    (void)arg;
    /* A pool worker is no fiber. */
    int rc = bt_await(NULL, NULL);
    bt_job_set_value(job, (void *)(intptr_t)rc, NULL);
    return 0;
}

static bt_future *no_await_fiber(bt_loop *l, void *arg)
{
    (*(int *)arg)++;
    return bt_future_new_value(l, (void *)(intptr_t)42, NULL);
}

START_TEST(a_fiber_that_never_awaits)
{
    int calls = 0;
    bt_future *f = bt_async(loop, no_await_fiber, &calls);
    ck_assert_int_eq(calls, 0); /* it starts on a later turn */
    bt_test_run_until(loop, f, 5000);
    ck_assert_int_eq(calls, 1);
    ck_assert_ptr_eq(bt_future_value(f), (void *)(intptr_t)42);
    bt_future_unref(f);
}
END_TEST

START_TEST(cancelled_before_it_starts_never_runs)
{
    int calls = 0;
    bt_future *f = bt_async(loop, no_await_fiber, &calls);
    ck_assert_int_eq(bt_future_cancel(f), 0);
    bt_test_run_until(loop, f, 5000);
    ck_assert_int_eq(calls, 0);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    bt_future_unref(f);
}
END_TEST

static bt_future *return_pending(bt_loop *l, void *arg)
{
    (void)arg;
    return bt_to_thread(l, job_double, (void *)(intptr_t)21);
}

START_TEST(a_pending_future_returned_is_adopted)
{
    bt_future *f = run_fiber(return_pending, NULL);
    ck_assert_ptr_eq(bt_future_value(f), (void *)(intptr_t)42);
    bt_future_unref(f);
}
END_TEST

/* ---- Every kind of future of the core ------------------------------------ */

static int cpu_sum(bt_job *job, void *arg)
{
    long s = 0;
    for (long i = 0; i < (long)(intptr_t)arg; i++)
        s += i;
    bt_job_set_value(job, (void *)(intptr_t)s, NULL);
    return 0;
}

static bt_future *child_fiber(bt_loop *l, void *arg)
{
    void *v;
    int rc = bt_await(bt_sleep(l, 1), NULL);
    if (rc != 0)
        return bt_future_new_error(l, rc, "%s", bt_await_error());
    rc = bt_await(bt_to_thread(l, job_double, arg), &v);
    return rc ? bt_future_new_error(l, rc, "%s", bt_await_error())
              : bt_future_new_value(l, v, NULL);
}

static bt_future *every_kind(bt_loop *l, void *arg)
{
    (void)arg;
    void *v;
    /* to_thread, to_cpu, sleep */
    ck_assert_int_eq(bt_await(bt_to_thread(l, job_double, (void *)(intptr_t)5), &v), 0);
    ck_assert_ptr_eq(v, (void *)(intptr_t)10);
    ck_assert_int_eq(bt_await(bt_to_cpu(l, cpu_sum, (void *)(intptr_t)1000), &v), 0);
    ck_assert_ptr_eq(v, (void *)(intptr_t)(999 * 1000 / 2));
    uint64_t t0 = bt_hrtime();
    ck_assert_int_eq(bt_await(bt_sleep(l, 20), NULL), 0);
    ck_assert_uint_ge(bt_hrtime() - t0, 20u * 1000 * 1000);
    /* A job that awaits is refused, not crashed. */
    ck_assert_int_eq(bt_await(bt_to_thread(l, await_in_job, NULL), &v), 0);
    ck_assert_int_eq((int)(intptr_t)v, BT_EINVAL);

    /* gather: it takes over the children's references */
    bt_future *kids[3];
    for (int i = 0; i < 3; i++)
        kids[i] = bt_to_thread(l, job_double, (void *)(intptr_t)i);
    bt_results *r;
    ck_assert_int_eq(bt_await(bt_gather(l, kids, 3, BT_GATHER_FAIL_FAST), (void **)&r), 0);
    ck_assert_uint_eq(bt_results_count(r), 3);
    ck_assert_ptr_eq(bt_results_value(r, 2), (void *)(intptr_t)4);
    bt_results_free(r);

    /* race: the fast one wins, the slow one is cancelled */
    bt_future *slow0 = bt_sleep(l, 10000);
    bt_future *pair[2] = { bt_future_ref(slow0), soon(9) };
    ck_assert_int_eq(bt_await(bt_race(l, pair, 2), &v), 0);
    ck_assert_ptr_eq(v, (void *)(intptr_t)9);
    ck_assert_int_eq(bt_await(slow0, NULL), BT_ECANCELED); /* the loser */

    /* timeout: over a sleep that is too long */
    ck_assert_int_eq(bt_await(bt_timeout(bt_sleep(l, 10000), 10), NULL), BT_ETIMEDOUT);

    /* a group of child fibers */
    bt_group *g = bt_group_new(l);
    bt_future *c1 = bt_async(l, child_fiber, (void *)(intptr_t)1);
    bt_future *c2 = bt_async(l, child_fiber, (void *)(intptr_t)2);
    bt_group_add(g, bt_future_ref(c1)); /* the group takes a reference */
    bt_group_add(g, bt_future_ref(c2));
    ck_assert_int_eq(bt_await(bt_group_wait(g), NULL), 0);
    ck_assert_int_eq(bt_await(c1, &v), 0); /* settled: read at once */
    ck_assert_ptr_eq(v, (void *)(intptr_t)2);
    ck_assert_int_eq(bt_await(c2, &v), 0);
    ck_assert_ptr_eq(v, (void *)(intptr_t)4);
    bt_group_free(g);

    /* a semaphore: the second acquire waits for the release */
    bt_semaphore *s = bt_semaphore_new(l, 1);
    ck_assert_int_eq(bt_await(bt_semaphore_acquire(s), NULL), 0);
    bt_future *second = bt_semaphore_acquire(s);
    ck_assert(!bt_future_is_settled(second));
    bt_semaphore_release(s);
    ck_assert_int_eq(bt_await(second, NULL), 0);
    bt_semaphore_release(s);
    bt_semaphore_free(s);

    /* files */
    char path[] = "/tmp/bt_fiber_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(bt_await(bt_fs_write_file(l, path, "fiber", 5, 0600), NULL), 0);
    bt_fs_buf *b;
    ck_assert_int_eq(bt_await(bt_fs_read_file(l, path, 0), (void **)&b), 0);
    ck_assert_uint_eq(b->len, 5);
    ck_assert_int_eq(memcmp(b->data, "fiber", 5), 0);
    bt_fs_buf_free(b);
    unlink(path);
    ck_assert_int_eq(bt_await(bt_fs_read_file(l, path, 0), NULL), BT_ENOENT);
    return done();
}

START_TEST(await_every_kind_of_core_future)
{
    bt_future *f = run_fiber(every_kind, NULL);
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f);
}
END_TEST

/* The bridge: a plain thread calls into the loop, and the loop answers
 * with a fiber's future. */
static bt_future *bridge_main(bt_loop *l, void *arg)
{
    return bt_async(l, child_fiber, arg);
}

typedef struct {
    int rc;
    void *value;
} bridge_out;

static void *bridge_thread(void *arg)
{
    bridge_out *o = arg;
    bt_bridge_result r = BT_SIZED(bt_bridge_result);
    o->rc = bt_bridge_call(loop, bridge_main, (void *)(intptr_t)8, 20000, &r);
    o->value = r.value;
    bt_bridge_result_clear(&r);
    bt_loop_stop(loop);
    return NULL;
}

START_TEST(the_bridge_into_a_fiber)
{
    bridge_out o = { -1, NULL };
    pthread_t th;
    pthread_create(&th, NULL, bridge_thread, &o);
    bt_loop_run(loop);
    pthread_join(th, NULL);
    ck_assert_int_eq(o.rc, 0);
    ck_assert_ptr_eq(o.value, (void *)(intptr_t)16);
}
END_TEST

/* ---- Cancellation ---------------------------------------------------------- */

typedef struct {
    bt_test_long_job lj;
    int first_rc, later_rc;
    bool returned;
    bool job_running_when_woken;
} cancel_state;

static bt_future *long_wait_fiber(bt_loop *l, void *arg)
{
    cancel_state *cs = arg;
    cs->first_rc = bt_await(bt_to_thread(l, bt_test_long_job_run, &cs->lj), NULL);
    /* Woken at once: a job only stops at its next bt_job_cancelled poll. */
    cs->job_running_when_woken = !atomic_load(&cs->lj.saw_cancel);
    cs->later_rc = bt_await(bt_sleep(l, 1), NULL);
    cs->returned = true;
    return done();
}

static void cancel_when_started(bt_timer *t, void *arg)
{
    bt_future *f = arg;
    bt_future_cancel(f);
    bt_timer_free(t);
}

START_TEST(cancellation_mid_await)
{
    cancel_state cs = { 0 };
    bt_future *f = bt_async(loop, long_wait_fiber, &cs);
    bt_timer *t = bt_timer_new(loop, cancel_when_started, f);
    bt_timer_start(t, 20, 0);
    bt_test_run_until(loop, f, 20000);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    ck_assert_int_eq(cs.first_rc, BT_ECANCELED);
    ck_assert_int_eq(cs.later_rc, BT_ECANCELED);
    ck_assert(cs.returned);
    bt_future_unref(f);
}
END_TEST

/* A producer that cannot stop at once: the await still returns at once. */
static bt_future *stubborn_fiber(bt_loop *l, void *arg)
{
    (void)l;
    bt_test_prod *p = arg;
    int rc = bt_await(bt_future_ref(p->f), NULL);
    ck_assert_int_eq(rc, BT_ECANCELED);
    ck_assert_int_eq(p->hook_calls, 1);
    ck_assert(!bt_future_is_settled(p->f)); /* still running */
    return done();
}

START_TEST(cancel_wakes_the_fiber_before_the_producer_stops)
{
    bt_test_prod p;
    bt_test_prod_init(&p, loop, false);
    bt_future *f = bt_async(loop, stubborn_fiber, &p);
    bt_timer *t = bt_timer_new(loop, cancel_when_started, f);
    bt_timer_start(t, 10, 0);
    bt_test_run_until(loop, f, 20000);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    bt_future_set_value(p.f, NULL, NULL); /* discarded: cancel was asked */
    bt_future_unref(p.f);
    bt_future_unref(f);
}
END_TEST

static bt_future *sleepy_fiber(bt_loop *l, void *arg)
{
    int *rc = arg;
    *rc = bt_await(bt_sleep(l, 10000), NULL);
    return done();
}

START_TEST(a_timeout_over_a_fiber)
{
    int rc = 0;
    bt_future *f = bt_async(loop, sleepy_fiber, &rc);
    bt_future *t = bt_timeout(bt_future_ref(f), 30);
    bt_test_run_until(loop, t, 20000);
    ck_assert_int_eq(bt_future_error(t), BT_ETIMEDOUT);
    bt_test_run_until(loop, f, 20000); /* the fiber unwinds */
    ck_assert_int_eq(rc, BT_ECANCELED);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    bt_future_unref(t);
    bt_future_unref(f);
}
END_TEST

typedef struct {
    int id;
    int rc;
} member;

static bt_future *member_fiber(bt_loop *l, void *arg)
{
    member *m = arg;
    if (m->id == 1) {
        bt_await(bt_sleep(l, 5), NULL);
        return bt_future_new_error(l, BT_EPROTO, "member %d failed", m->id);
    }
    m->rc = bt_await(bt_sleep(l, 10000), NULL);
    return done();
}

START_TEST(a_group_of_fibers_with_one_failing)
{
    bt_group *g = bt_group_new(loop);
    member m[3] = { { 0, 1 }, { 1, 1 }, { 2, 1 } };
    bt_future *fs[3];
    for (int i = 0; i < 3; i++) {
        fs[i] = bt_async(loop, member_fiber, &m[i]);
        ck_assert_int_eq(bt_group_add(g, bt_future_ref(fs[i])), 0);
    }
    bt_future *w = bt_group_wait(g);
    bt_test_run_until(loop, w, 20000);
    ck_assert_int_eq(bt_future_error(w), BT_EPROTO);
    ck_assert_ptr_nonnull(strstr(bt_future_error_message(w), "member 1 failed"));
    /* The siblings were cancelled and returned before the group settled. */
    ck_assert_int_eq(m[0].rc, BT_ECANCELED);
    ck_assert_int_eq(m[2].rc, BT_ECANCELED);
    ck_assert_int_eq(bt_future_error(fs[0]), BT_ECANCELED);
    for (int i = 0; i < 3; i++)
        bt_future_unref(fs[i]);
    bt_future_unref(w);
    bt_group_free(g);
}
END_TEST

static bt_future *cancel_self(bt_loop *l, void *arg)
{
    bt_future **me = arg;
    bt_future_cancel(*me); /* from inside: the next await sees it */
    int rc = bt_await(bt_sleep(l, 10000), NULL);
    ck_assert_int_eq(rc, BT_ECANCELED);
    return done();
}

START_TEST(a_fiber_cancelling_itself)
{
    bt_future *f = NULL;
    f = bt_async(loop, cancel_self, &f);
    bt_test_run_until(loop, f, 20000);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    bt_future_unref(f);
}
END_TEST

/* ---- Many fibers, the loop's end, nesting ---------------------------------- */

typedef struct {
    bt_future *gate;
    int ended;
} herd;

static bt_future *herd_fiber(bt_loop *l, void *arg)
{
    herd *h = arg;
    char buf[64];
    snprintf(buf, sizeof buf, "%f", 1.5); /* a little stack, like real code */
    ck_assert_int_eq(bt_await(bt_future_ref(h->gate), NULL), 0);
    h->ended++;
    return bt_future_new_value(l, NULL, NULL);
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

START_TEST(ten_thousand_fibers_alive_at_once)
{
#ifdef __SANITIZE_THREAD__
    enum { N = 1000 }; /* each TSan fiber carries a thread's worth of state */
#else
    enum { N = 10000 };
#endif
    herd h = { bt_future_new(loop), 0 };
    bt_future **fs = malloc(N * sizeof *fs);
    long before = rss_kib();
    for (int i = 0; i < N; i++) {
        fs[i] = bt_async(loop, herd_fiber, &h);
        ck_assert_ptr_nonnull(fs[i]);
    }
    bt_future *s = bt_sleep(loop, 1);
    bt_test_run_until(loop, s, 200000); /* every fiber is now suspended */
    bt_future_unref(s);
    bt_loop_stats st = BT_SIZED(bt_loop_stats);
    bt_loop_get_stats(loop, &st);
    ck_assert_uint_eq(st.fibers_alive, N);
    long after = rss_kib();
    fprintf(stderr, "%d fibers alive: %ld KiB resident more, %.1f KiB per fiber; %llu MiB mapped\n",
            (int)N, after - before, (double)(after - before) / N,
            (unsigned long long)(st.fiber_stack_bytes >> 20));
    ck_assert_int_eq(h.ended, 0);
    bt_future_set_value(h.gate, NULL, NULL);
    for (int i = 0; i < N; i++) {
        bt_test_run_until(loop, fs[i], 200000); /* all resume in one turn */
        ck_assert_int_eq(bt_future_error(fs[i]), 0);
        bt_future_unref(fs[i]);
    }
    ck_assert_int_eq(h.ended, N);
    bt_loop_get_stats(loop, &st);
    ck_assert_uint_eq(st.fibers_alive, 0);
    free(fs);
    bt_future_unref(h.gate);
}
END_TEST

typedef struct {
    bt_test_prod prod;
    int rc;
    bool returned;
} at_exit_state;

static bt_future *stuck_fiber(bt_loop *l, void *arg)
{
    (void)l;
    at_exit_state *s = arg;
    s->rc = bt_await(bt_future_ref(s->prod.f), NULL);
    s->returned = true;
    return NULL; /* the loop is closing: nothing can be made */
}

START_TEST(loop_free_cancels_suspended_fibers)
{
    at_exit_state s = { .rc = 1 };
    bt_test_prod_init(&s.prod, loop, true);
    bt_future *f = bt_async(loop, stuck_fiber, &s);
    bt_future *tick = bt_sleep(loop, 1);
    bt_test_run_until(loop, tick, 20000);
    bt_future_unref(tick);
    ck_assert(!s.returned);
    bt_test_log_capture();
    bt_loop_free(loop);
    loop = NULL;
    ck_assert(s.returned);
    ck_assert_int_eq(s.rc, BT_ECANCELED);
    ck_assert_int_eq(bt_future_error(f), BT_ECANCELED);
    ck_assert(!bt_test_log_contains("did not return"));
    bt_future_unref(f);
    bt_future_unref(s.prod.f);
}
END_TEST

static void teardown_maybe(void)
{
    if (loop != NULL)
        bt_test_loop_free_clean(loop);
}

static bt_future *outer_fiber(bt_loop *l, void *arg)
{
    (void)arg;
    void *v;
    int rc = bt_await(bt_async(l, child_fiber, (void *)(intptr_t)3), &v);
    ck_assert_int_eq(rc, 0);
    ck_assert_ptr_eq(v, (void *)(intptr_t)6);
    return done();
}

START_TEST(a_fiber_awaits_another)
{
    bt_future *f = run_fiber(outer_fiber, NULL);
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f);
}
END_TEST

START_TEST(stack_size_setting)
{
    ck_assert_int_eq(bt_loop_set_fiber_stack(NULL, 65536), BT_EINVAL);
    ck_assert_int_eq(bt_loop_set_fiber_stack(loop, 100), BT_EINVAL);
    ck_assert_int_eq(bt_loop_set_fiber_stack(loop, 20000), 0); /* rounded up to pages */
    bt_future *f = run_fiber(outer_fiber, NULL);
    ck_assert_int_eq(bt_future_error(f), 0);
    bt_future_unref(f);
}
END_TEST

/* ---- The watchdog ---------------------------------------------------------- */

/* Exported, so that dladdr can name it (see below). */
__attribute__((visibility("default"))) bt_future *bt_test_blocking_fiber(bt_loop *l, void *arg);
bt_future *bt_test_blocking_fiber(bt_loop *l, void *arg)
{
    bool *seen = arg;
    /* Resumed from the awaited future's callback, then blocks the loop
     * until the watchdog has named it (10 s guard). */
    ck_assert_int_eq(bt_await(bt_sleep(l, 1), NULL), 0);
    uint64_t until = bt_hrtime() + 10ull * 1000 * 1000 * 1000;
    while (bt_hrtime() < until && !(*seen = bt_test_log_contains("bt_test_blocking_fiber")))
        usleep(1000);
    return done();
}

START_TEST(the_watchdog_names_a_blocking_fiber)
{
    bt_test_log_capture();
    ck_assert_int_eq(bt_watchdog_start(loop, 20), 0);
    bool seen = false;
    bt_future *f = run_fiber(bt_test_blocking_fiber, &seen);
    ck_assert_msg(seen, "the watchdog did not name the fiber's function");
    ck_assert(bt_test_log_contains("loop blocked"));
    bt_future_unref(f);
    ck_assert_int_eq(bt_watchdog_stop(loop), 0);
}
END_TEST

/* ---- Stack overflow ------------------------------------------------------- */

static int deep(volatile char *prev, int depth)
{
    volatile char frame[1024];
    frame[0] = (char)depth;
    frame[1023] = prev ? prev[0] : 0;
    if (depth > 1000000000)
        return 0;
    return deep(frame, depth + 1) + frame[512];
}

/* Exported (the build compiles with -fvisibility=hidden, the test links
 * with -export-dynamic), so that dladdr can name it. */
__attribute__((visibility("default"))) bt_future *bt_test_overflowing_fiber(bt_loop *l, void *arg);
bt_future *bt_test_overflowing_fiber(bt_loop *l, void *arg)
{
    (void)arg;
    deep(NULL, 0);
    return bt_future_new_value(l, NULL, NULL);
}

START_TEST(stack_overflow_dies_naming_the_function)
{
    int pipefd[2];
    ck_assert_int_eq(pipe(pipefd), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        bt_loop *l = bt_loop_new();
        bt_future *f = bt_async(l, bt_test_overflowing_fiber, NULL);
        bt_loop_run_until(l, f);
        _exit(0); /* not reached */
    }
    close(pipefd[1]);
    char buf[4096];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(pipefd[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    close(pipefd[0]);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status), "the child exited instead of dying: %s", buf);
    ck_assert_int_eq(WTERMSIG(status), SIGSEGV);
    ck_assert_msg(strstr(buf, "stack overflow in a fiber started with bt_test_overflowing_fiber"),
                  "message: %s", buf);
}
END_TEST

static Suite *fiber_suite(void)
{
    Suite *s = suite_create("fiber");
    TCase *tc = tcase_create("fiber");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, BT_TEST_TIMEOUT * 10);
    tcase_add_test(tc, await_in_a_loop_of_100000);
    tcase_add_test(tc, values_errors_and_messages);
    tcase_add_test(tc, await_outside_a_fiber_is_an_error);
    tcase_add_test(tc, a_fiber_that_never_awaits);
    tcase_add_test(tc, cancelled_before_it_starts_never_runs);
    tcase_add_test(tc, a_pending_future_returned_is_adopted);
    tcase_add_test(tc, await_every_kind_of_core_future);
    tcase_add_test(tc, the_bridge_into_a_fiber);
    tcase_add_test(tc, cancellation_mid_await);
    tcase_add_test(tc, cancel_wakes_the_fiber_before_the_producer_stops);
    tcase_add_test(tc, a_timeout_over_a_fiber);
    tcase_add_test(tc, a_group_of_fibers_with_one_failing);
    tcase_add_test(tc, a_fiber_cancelling_itself);
    tcase_add_test(tc, ten_thousand_fibers_alive_at_once);
    tcase_add_test(tc, a_fiber_awaits_another);
    tcase_add_test(tc, stack_size_setting);
    tcase_add_test(tc, the_watchdog_names_a_blocking_fiber);
    suite_add_tcase(s, tc);
    TCase *tc2 = tcase_create("end");
    tcase_add_checked_fixture(tc2, setup, teardown_maybe);
    tcase_set_timeout(tc2, BT_TEST_TIMEOUT);
    tcase_add_test(tc2, loop_free_cancels_suspended_fibers);
    tcase_add_test(tc2, stack_overflow_dies_naming_the_function);
    suite_add_tcase(s, tc2);
    return s;
}

BT_TEST_MAIN(fiber_suite)
