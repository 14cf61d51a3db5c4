/* The loop: call_soon order, posts from many threads, one wakeup per
 * burst, stop from another thread, timers, sleep, adopting a base, bt_run. */
#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

static void stop_cb(void *arg)
{
    bt_loop_stop(arg);
}

static int seq[16];
static int nseq;
static void push_seq(void *arg)
{
    seq[nseq++] = (int)(intptr_t)arg;
}

static void schedule_more(void *arg)
{
    push_seq(arg);
    bt_loop_call_soon(loop, push_seq, (void *)(intptr_t)100);
    ck_assert_int_eq(nseq, 1); /* not run inside call_soon */
}

START_TEST(call_soon_runs_in_order)
{
    nseq = 0;
    bt_loop_call_soon(loop, schedule_more, (void *)(intptr_t)0);
    for (int i = 1; i < 4; i++)
        bt_loop_call_soon(loop, push_seq, (void *)(intptr_t)i);
    ck_assert_int_eq(nseq, 0);
    bt_future *s = bt_sleep(loop, 5);
    bt_test_run_until(loop, s, 1000);
    bt_future_unref(s);
    ck_assert_int_eq(nseq, 5);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(seq[i], i);
    ck_assert_int_eq(seq[4], 100); /* scheduled during the pass: after it */
    ck_assert_int_eq(bt_loop_call_soon(NULL, push_seq, NULL), BT_EINVAL);
    ck_assert_int_eq(bt_loop_call_soon(loop, NULL, NULL), BT_EINVAL);
}
END_TEST

#define POSTERS 8
#define PER_POSTER 20000

typedef struct {
    int id;
    int last[POSTERS];
    long total;
    bool out_of_order;
} post_state;

typedef struct {
    post_state *st;
    int id;
    int n;
} post_msg;

static void on_post(void *arg)
{
    post_msg *m = arg;
    if (m->n != m->st->last[m->id] + 1)
        m->st->out_of_order = true;
    m->st->last[m->id] = m->n;
    if (++m->st->total == (long)POSTERS * PER_POSTER)
        bt_loop_stop(loop);
    free(m);
}

typedef struct {
    post_state *st;
    int id;
} poster_arg;

static void *poster(void *arg)
{
    poster_arg *pa = arg;
    for (int i = 1; i <= PER_POSTER; i++) {
        post_msg *m = malloc(sizeof *m);
        *m = (post_msg){ pa->st, pa->id, i };
        ck_assert_int_eq(bt_loop_post(loop, on_post, m), 0);
    }
    return NULL;
}

START_TEST(post_from_many_threads)
{
    post_state st = { 0 };
    pthread_t th[POSTERS];
    poster_arg pa[POSTERS];
    for (int i = 0; i < POSTERS; i++) {
        pa[i] = (poster_arg){ &st, i };
        pthread_create(&th[i], NULL, poster, &pa[i]);
    }
    bt_loop_run(loop);
    for (int i = 0; i < POSTERS; i++)
        pthread_join(th[i], NULL);
    ck_assert_int_eq(st.total, (long)POSTERS * PER_POSTER);
    ck_assert_msg(!st.out_of_order, "posts from one thread ran out of order");
    for (int i = 0; i < POSTERS; i++)
        ck_assert_int_eq(st.last[i], PER_POSTER);
}
END_TEST

static void count_cb(void *arg)
{
    (*(int *)arg)++;
}

START_TEST(burst_costs_one_wakeup)
{
    int ran = 0;
    /* The loop is not running: 1000 posts land in the inbox at once. */
    for (int i = 0; i < 1000; i++)
        bt_loop_post(loop, count_cb, &ran);
    bt_loop_post(loop, stop_cb, loop);
    bt_loop_run(loop);
    bt_loop_stats st = BT_SIZED(bt_loop_stats);
    ck_assert_int_eq(bt_loop_get_stats(loop, &st), 0);
    ck_assert_int_eq(ran, 1000);
    ck_assert_uint_eq(st.wakeups, 1);
    ck_assert_uint_eq(st.posted_run, 1001);
}
END_TEST

START_TEST(one_write_wakes_once)
{
    /* On epoll the wakeup eventfd is watched edge-triggered and never
     * read: one write must wake the loop once, not on every pass of the
     * 20 ms that follow (a level-triggered fd left unread would). */
    int ran = 0;
    bt_loop_post(loop, count_cb, &ran);
    bt_future *s = bt_sleep(loop, 20);
    bt_test_run_until(loop, s, 2000);
    bt_future_unref(s);
    bt_loop_post(loop, count_cb, &ran); /* and the next write wakes it again */
    bt_loop_post(loop, stop_cb, loop);
    bt_loop_run(loop);
    bt_loop_stats st = BT_SIZED(bt_loop_stats);
    ck_assert_int_eq(bt_loop_get_stats(loop, &st), 0);
    ck_assert_int_eq(ran, 2);
    ck_assert_uint_eq(st.wakeups, 2);
}
END_TEST

static void *stopper(void *arg)
{
    usleep(20000);
    bt_loop_stop(arg);
    return NULL;
}

START_TEST(stop_from_another_thread)
{
    pthread_t th;
    pthread_create(&th, NULL, stopper, loop);
    ck_assert_int_eq(bt_loop_run(loop), 0);
    pthread_join(th, NULL);
    /* run_until returns BT_ESHUTDOWN when stopped before the future. */
    bt_future *f = bt_future_new(loop);
    pthread_create(&th, NULL, stopper, loop);
    ck_assert_int_eq(bt_loop_run_until(loop, f), BT_ESHUTDOWN);
    pthread_join(th, NULL);
    bt_future_set_cancelled(f);
    bt_future_unref(f);
}
END_TEST

/* A loop on its own thread that a post from here ends: the thread frees
 * it as soon as the stop task has run, maybe before bt_loop_post has
 * written the wakeup fd (the HTTP app's shutdown does this with each of
 * its loops), or by bt_loop_stop. The free must wait for the post or the
 * stop to finish; under ThreadSanitizer a close of the fd under the write
 * is reported. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bt_loop *loop;
    bool ready;
    int ran;
} own_loop;

static void stop_own(void *arg)
{
    own_loop *o = arg;
    o->ran++;
    bt_loop_stop(o->loop);
}

static void *run_own_loop(void *arg)
{
    own_loop *o = arg;
    bt_loop *l = bt_loop_new();
    pthread_mutex_lock(&o->mu);
    o->loop = l;
    o->ready = true;
    pthread_cond_signal(&o->cv);
    pthread_mutex_unlock(&o->mu);
    if (l != NULL) {
        bt_loop_run(l);
        bt_loop_free(l);
    }
    return NULL;
}

START_TEST(post_that_ends_the_loop_races_its_free)
{
    for (int i = 0; i < 200; i++) {
        own_loop o = { .loop = NULL, .ready = false, .ran = 0 };
        pthread_mutex_init(&o.mu, NULL);
        pthread_cond_init(&o.cv, NULL);
        pthread_t th;
        ck_assert_int_eq(pthread_create(&th, NULL, run_own_loop, &o), 0);
        pthread_mutex_lock(&o.mu);
        while (!o.ready)
            pthread_cond_wait(&o.cv, &o.mu);
        bt_loop *l = o.loop;
        pthread_mutex_unlock(&o.mu);
        ck_assert_ptr_nonnull(l);
        if (i % 2 == 0)
            usleep(200); /* half the time the loop is asleep in epoll */
        if (i % 4 < 2) {
            ck_assert_int_eq(bt_loop_post(l, stop_own, &o), 0);
        } else {
            o.ran = 1;
            bt_loop_stop(l); /* the same race, without a task */
        }
        pthread_join(th, NULL);
        ck_assert_int_eq(o.ran, 1);
        pthread_mutex_destroy(&o.mu);
        pthread_cond_destroy(&o.cv);
    }
}
END_TEST

static void tick(bt_timer *t, void *arg)
{
    int *n = arg;
    if (++*n == 3) {
        bt_timer_free(t); /* inside its own callback */
        bt_loop_stop(loop);
    }
}

START_TEST(timers_repeat_and_free_in_callback)
{
    int n = 0;
    bt_timer *t = bt_timer_new(loop, tick, &n);
    ck_assert_int_eq(bt_timer_start(t, 1, 1), 0);
    ck_assert(bt_timer_is_active(t));
    bt_loop_run(loop);
    ck_assert_int_eq(n, 3);
}
END_TEST

START_TEST(sleep_takes_about_its_time)
{
    uint64_t t0 = bt_hrtime();
    bt_future *s = bt_sleep(loop, 30);
    bt_test_run_until(loop, s, 2000);
    ck_assert_int_eq(bt_future_error(s), 0);
    ck_assert_uint_ge(bt_hrtime() - t0, 29 * 1000000ull); /* never early */
    bt_future_unref(s);
}
END_TEST

START_TEST(sleep_cancelled)
{
    bt_future *s = bt_sleep(loop, 60000);
    ck_assert_int_eq(bt_future_cancel(s), 0);
    ck_assert_int_eq(bt_future_error(s), BT_ECANCELED);
    bt_future_unref(s);
}
END_TEST

static void break_base(void *arg)
{
    event_base_loopbreak(arg);
}

START_TEST(adopt_existing_base)
{
    struct event_base *base = event_base_new();
    bt_loop *l = bt_loop_adopt(base);
    ck_assert_ptr_nonnull(l);
    ck_assert_ptr_eq(bt_loop_base(l), base);
    int ran = 0;
    bt_loop_call_soon(l, count_cb, &ran);
    bt_loop_post(l, count_cb, &ran);
    bt_loop_post(l, break_base, base);
    /* The program keeps running its own base; Baton's work runs from it. */
    event_base_dispatch(base);
    ck_assert_int_eq(ran, 2);
    bt_loop_free(l);
    event_base_free(base); /* still the program's */
}
END_TEST

static void settle_later(void *arg)
{
    bt_future_set_value(arg, (void *)"done", NULL);
}

static void fail_later(void *arg)
{
    bt_future_set_error(arg, BT_EIO, "disk");
}

static bt_future *main_ok(bt_loop *l, void *arg)
{
    bt_future *f = bt_future_new(l);
    bt_loop_call_soon(l, settle_later, f);
    *(int *)arg = 1;
    return f;
}

static bt_future *main_fail(bt_loop *l, void *arg)
{
    (void)arg;
    return bt_future_new_error(l, BT_EIO, "boom");
}

static bt_future *main_leaves_work(bt_loop *l, void *arg)
{
    bt_future **leftover = arg;
    *leftover = bt_sleep(l, 100000);
    return bt_sleep(l, 1);
}

START_TEST(run_like_asyncio)
{
    int called = 0;
    ck_assert_int_eq(bt_run(main_ok, &called), 0);
    ck_assert_int_eq(called, 1);
    bt_test_log_capture();
    ck_assert_int_eq(bt_run(main_fail, NULL), BT_EIO);
    ck_assert(bt_test_log_contains("main future failed: boom"));
    bt_future *leftover = NULL;
    ck_assert_int_eq(bt_run(main_leaves_work, &leftover), 0);
    ck_assert_int_eq(bt_future_get_state(leftover), BT_FUTURE_CANCELLED);
    bt_future_unref(leftover);
    ck_assert_int_eq(bt_run(NULL, NULL), BT_EINVAL);
}
END_TEST

static void closer(void *arg)
{
    (*(int *)arg) += 10;
}

static int closer_order[4];
static int nclosers;
static void closer_a(void *arg)
{
    (void)arg;
    closer_order[nclosers++] = 'a';
}
static void closer_b(void *arg)
{
    (void)arg;
    closer_order[nclosers++] = 'b';
}

static void nested_run(void *arg)
{
    *(int *)arg = bt_loop_run(loop);
    bt_loop_stop(loop);
}

START_TEST(nested_run_is_refused)
{
    int rc = 0;
    bt_loop_call_soon(loop, nested_run, &rc);
    bt_loop_run(loop);
    ck_assert_int_eq(rc, BT_EBUSY);
    bt_loop *other = bt_loop_new();
    bt_future *f = bt_future_new(other);
    ck_assert_int_eq(bt_loop_run_until(loop, f), BT_EINVAL); /* another loop's */
    bt_future_set_cancelled(f);
    bt_future_unref(f);
    bt_loop_free(other);
}
END_TEST

static void stop_loop_cb(void *arg)
{
    bt_loop_stop(arg);
}
static void break_after(evutil_socket_t fd, short w, void *arg)
{
    (void)fd;
    (void)w;
    event_base_loopbreak(arg);
}

START_TEST(stop_on_adopted_base_is_once)
{
    struct event_base *base = event_base_new();
    bt_loop *l = bt_loop_adopt(base);
    bt_loop_post(l, stop_loop_cb, l);
    ck_assert_int_eq(event_base_dispatch(base), 0); /* broken by bt_loop_stop */
    /* A later wakeup must not break the program's base again. */
    int ran = 0;
    struct timeval tv = { 0, 30000 };
    event_base_once(base, -1, EV_TIMEOUT, break_after, base, &tv);
    bt_loop_post(l, count_cb, &ran);
    event_base_dispatch(base);
    ck_assert_int_eq(ran, 1);
    /* The 30 ms timer, not the post's wakeup, ended the second dispatch:
     * had it been the wakeup, the timer would still be pending. */
    ck_assert_int_eq(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED), 1);
    bt_loop_free(l);
    event_base_free(base);
}
END_TEST

static void read_main_error(bt_future *f, void *arg)
{
    (void)arg;
    ck_assert_int_eq(bt_future_error(f), BT_EIO);
}

static bt_future *main_reads_own_error(bt_loop *l, void *arg)
{
    (void)arg;
    bt_future *f = bt_future_new(l);
    bt_future_add_callback(f, read_main_error, NULL);
    bt_loop_call_soon(l, fail_later, f);
    return f;
}

START_TEST(run_quiet_when_main_read_its_error)
{
    bt_test_log_capture();
    ck_assert_int_eq(bt_run(main_reads_own_error, NULL), BT_EIO);
    ck_assert(!bt_test_log_contains("main future failed"));
}
END_TEST

/* Stats need their size (docs/design.md, "Structs that can grow"): 0 is
 * refused with a hint, and a caller's struct of the first layout is
 * written up to its size and not past it. */
START_TEST(stats_need_their_size)
{
    bt_test_log_capture();
    bt_loop_stats st = { 0 };
    ck_assert_int_eq(bt_loop_get_stats(loop, &st), BT_EINVAL);
    ck_assert(bt_test_log_contains("BT_SIZED(bt_loop_stats)"));
    bt_test_log_clear();

    size_t v1 = offsetof(bt_loop_stats, fiber_stack_bytes) + sizeof st.fiber_stack_bytes;
    unsigned char buf[sizeof(bt_loop_stats) + 16];
    memset(buf, 0xA5, sizeof buf);
    bt_loop_stats *old = (bt_loop_stats *)(void *)buf;
    old->size = v1;
    ck_assert_int_eq(bt_loop_get_stats(loop, old), 0);
    ck_assert_uint_eq(old->size, v1);
    ck_assert_uint_eq(old->pending, 0);
    for (size_t i = v1; i < sizeof buf; i++)
        ck_assert_uint_eq(buf[i], 0xA5);
}
END_TEST

START_TEST(closers_run_in_reverse)
{
    bt_loop *l = bt_loop_new();
    nclosers = 0;
    bt_loop_add_closer(l, closer_a, NULL);
    bt_loop_add_closer(l, closer_b, NULL);
    bt_loop_free(l);
    ck_assert_int_eq(nclosers, 2);
    ck_assert_int_eq(closer_order[0], 'b');
    ck_assert_int_eq(closer_order[1], 'a');
}
END_TEST

START_TEST(closers_run_at_free)
{
    bt_loop *l = bt_loop_new();
    int n = 0;
    ck_assert_int_eq(bt_loop_add_closer(l, closer, &n), 0);
    ck_assert_int_eq(bt_loop_add_closer(l, closer, &n), 0);
    ck_assert_int_eq(bt_loop_remove_closer(l, closer, &n), 0);
    ck_assert_int_eq(bt_loop_remove_closer(l, count_cb, &n), BT_ENOENT);
    bt_loop_free(l);
    ck_assert_int_eq(n, 10);
}
END_TEST

static Suite *loop_suite(void)
{
    Suite *s = suite_create("loop");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, BT_TEST_TIMEOUT);
    tcase_add_test(tc, call_soon_runs_in_order);
    tcase_add_test(tc, post_from_many_threads);
    tcase_add_test(tc, burst_costs_one_wakeup);
    tcase_add_test(tc, one_write_wakes_once);
    tcase_add_test(tc, stop_from_another_thread);
    tcase_add_test(tc, post_that_ends_the_loop_races_its_free);
    tcase_add_test(tc, timers_repeat_and_free_in_callback);
    tcase_add_test(tc, sleep_takes_about_its_time);
    tcase_add_test(tc, sleep_cancelled);
    tcase_add_test(tc, adopt_existing_base);
    tcase_add_test(tc, run_like_asyncio);
    tcase_add_test(tc, closers_run_at_free);
    tcase_add_test(tc, closers_run_in_reverse);
    tcase_add_test(tc, stats_need_their_size);
    tcase_add_test(tc, nested_run_is_refused);
    tcase_add_test(tc, stop_on_adopted_base_is_once);
    tcase_add_test(tc, run_quiet_when_main_read_its_error);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(loop_suite)
