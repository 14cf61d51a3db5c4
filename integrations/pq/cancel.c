/* Cancel requests: PQcancel on a thread of its own, bounded on the loop
 * by cancel_timeout_ms. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pq-internal.h"

/* DESIGN
 * PQcancel opens a new connection to the postmaster, sends the 16-byte
 * CancelRequest and waits for the postmaster to close it. It blocks, has
 * no timeout and retries on EINTR, so nothing can interrupt it: with the
 * postmaster stopped (SIGSTOP, a wedged host) the kernel still completes
 * the TCP handshake into the listen backlog and PQcancel waits forever.
 * libpq 17's PQcancelStart/PQcancelPoll would let the loop drive the
 * request; Debian 12 ships libpq 15, whose API does not expose the
 * backend's secret key either, so we cannot send the packet ourselves.
 *
 * So each cancel request runs on a detached thread of its own, never on
 * the offload pool: a job there that never ends would hold a blocking-lane
 * thread and make bt_loop_free wait for it. The loop side does not wait
 * for the thread either. It watches a pipe the thread writes one byte to
 * when PQcancel returns, and arms a timer (cancel_timeout_ms). If the
 * timer fires first, the connection is closed and the pool replaces it:
 * the request may still reach the server later and would then hit
 * whatever that connection ran next, so the connection can never be
 * trusted with new work. The thread is abandoned: it finishes when the
 * postmaster answers (or the process exits), and its result is dropped.
 *
 * Lifetime: the context has two references, the thread's and the
 * connection's (the loop's); whichever lets go last closes the pipe and
 * frees the PGcancel, so the thread's write never lands on a descriptor
 * number that was closed and reused. At most MAX_CANCEL_THREADS cancels
 * are in flight in the process: past that (a server that answers none of
 * them) no new request is sent and the abandoned query simply runs to its
 * end, which also bounds the threads a wedged postmaster can pin. */

#define MAX_CANCEL_THREADS 64

static atomic_uint cancel_threads; /* in flight, in this process */
static atomic_bool cancel_cap_logged;

struct bt__pq_cancel {
    atomic_int refs;
    atomic_int ok; /* 1: PQcancel succeeded (set before the write) */
    PGcancel *cancel;
    int rfd, wfd;  /* the pipe; -1 when not watched */
    char err[256]; /* PQcancel's error, written before the write */
    /* Loop side only. */
    bt_pq_conn *c;    /* NULL once the connection let go */
    struct event *ev; /* rfd readable: the thread is done */
    bt_timer *timer;  /* the deadline */
    bt__pq_cancel_cb done;
    uint64_t timeout_ms;
};

static void cancel_unref(struct bt__pq_cancel *k)
{
    if (atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (k->rfd >= 0)
        close(k->rfd);
    if (k->wfd >= 0)
        close(k->wfd);
    PQfreeCancel(k->cancel);
    bt_free(k);
}

static void *cancel_thread(void *arg)
{
    struct bt__pq_cancel *k = arg;
    int ok = PQcancel(k->cancel, k->err, sizeof k->err);
    atomic_store_explicit(&k->ok, ok ? 1 : 0, memory_order_release);
    if (k->wfd >= 0) {
        ssize_t n;
        do
            n = write(k->wfd, "x", 1);
        while (n < 0 && errno == EINTR);
    }
    atomic_fetch_sub_explicit(&cancel_threads, 1, memory_order_relaxed);
    cancel_unref(k);
    return NULL;
}

/* Loop side: stop watching k and drop the connection's reference. */
static void cancel_release(struct bt__pq_cancel *k)
{
    if (k->ev != NULL) {
        event_free(k->ev);
        k->ev = NULL;
    }
    bt_timer *t = k->timer; /* the loop's, freed last (k may go first) */
    k->timer = NULL;
    if (k->c != NULL) {
        k->c->cancel_job = NULL;
        k->c = NULL;
    }
    cancel_unref(k);
    bt_timer_free(t); /* NULL-safe */
}

static void on_cancel_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct bt__pq_cancel *k = arg;
    bt_pq_conn *c = k->c;
    bt__pq_cancel_cb done = k->done;
    uint64_t ms = k->timeout_ms;
    if (atomic_load_explicit(&k->ok, memory_order_acquire) == 0) {
        size_t n = strlen(k->err);
        while (n > 0 && k->err[n - 1] == '\n')
            n--;
        bt_log(BT_LOG_DEBUG, "pq: cancel request failed: %.*s", (int)n, k->err);
    }
    cancel_release(k);
    if (c != NULL)
        done(c, true, ms);
}

static void on_cancel_deadline(bt_timer *t, void *arg)
{
    (void)t;
    struct bt__pq_cancel *k = arg;
    bt_pq_conn *c = k->c;
    bt__pq_cancel_cb done = k->done;
    uint64_t ms = k->timeout_ms;
    cancel_release(k); /* the thread goes on alone; its answer is dropped */
    if (c != NULL)
        done(c, false, ms);
}

void bt__pq_cancel_detach(bt_pq_conn *c)
{
    c->cancel_again = false;
    if (c->cancel_job != NULL)
        cancel_release(c->cancel_job);
}

/* Start k's thread, which then owns one reference. Returns false (k
 * untouched) if the thread could not start or too many are in flight. */
static bool cancel_start(struct bt__pq_cancel *k)
{
    if (atomic_fetch_add_explicit(&cancel_threads, 1, memory_order_relaxed) >= MAX_CANCEL_THREADS) {
        atomic_fetch_sub_explicit(&cancel_threads, 1, memory_order_relaxed);
        if (!atomic_exchange(&cancel_cap_logged, true))
            bt_log(BT_LOG_WARN,
                   "pq: %d cancel requests are still unanswered; sending no "
                   "more until some return (the queries run to their end)",
                   MAX_CANCEL_THREADS);
        return false;
    }
    pthread_attr_t attr;
    pthread_t th;
    bool ok = pthread_attr_init(&attr) == 0;
    if (ok) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        /* PQcancel needs little stack: a socket and a 16-byte packet. */
        pthread_attr_setstacksize(&attr, 256 * 1024);
        atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
        ok = pthread_create(&th, &attr, cancel_thread, k) == 0;
        if (!ok)
            atomic_fetch_sub_explicit(&k->refs, 1, memory_order_relaxed);
        pthread_attr_destroy(&attr);
    }
    if (!ok)
        atomic_fetch_sub_explicit(&cancel_threads, 1, memory_order_relaxed);
    return ok;
}

static struct bt__pq_cancel *cancel_new(PGconn *pg)
{
    struct bt__pq_cancel *k = bt_calloc(1, sizeof *k);
    if (k == NULL)
        return NULL;
    atomic_init(&k->refs, 1);
    atomic_init(&k->ok, 0);
    k->rfd = k->wfd = -1;
    k->cancel = PQgetCancel(pg);
    if (k->cancel == NULL) {
        bt_free(k);
        return NULL;
    }
    return k;
}

/* Ask the server to cancel what c is running. PQgetCancel copies what it
 * needs (address, backend key), so the thread does not touch c. */
void bt__pq_cancel_send(bt_pq_conn *c, bt__pq_cancel_cb done)
{
    if (c->pg == NULL || c->pool == NULL)
        return;
    c->cancel_sent = true;
    if (c->cancel_job != NULL) {
        /* One is on its way, but it may reach the server before the query
         * that asked for this one starts (the previous query's 57014 and
         * the thread's answer arrive together): cancel_done sends again if
         * an abandoned query is still running at the front then. */
        c->cancel_again = true;
        return;
    }
    bt_pq_pool *p = c->pool;
    struct bt__pq_cancel *k = cancel_new(c->pg);
    if (k == NULL)
        return;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
        cancel_unref(k);
        return;
    }
    k->rfd = fds[0];
    k->wfd = fds[1];
    k->timeout_ms = p->o.cancel_timeout_ms;
    k->done = done;
    k->ev = event_new(p->base, k->rfd, EV_READ, on_cancel_done, k);
    k->timer = bt_timer_new(p->loop, on_cancel_deadline, k);
    if (k->ev == NULL || k->timer == NULL || event_add(k->ev, NULL) != 0 ||
        bt_timer_start(k->timer, k->timeout_ms, 0) != 0 || !cancel_start(k)) {
        cancel_release(k);
        return;
    }
    k->c = c;
    c->cancel_job = k;
    p->st.cancels_sent++;
}

/* The pool is going away under running queries: ask the server to stop
 * them, and wait for nothing (no pipe, no timer; the thread frees k). */
void bt__pq_cancel_fire(PGconn *pg)
{
    struct bt__pq_cancel *k = cancel_new(pg);
    if (k == NULL)
        return;
    if (!cancel_start(k)) {
        cancel_unref(k);
        return;
    }
    cancel_unref(k); /* the thread's reference remains */
}
