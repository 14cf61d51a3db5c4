/* The sync bridge: a plain thread runs a future-returning function on a
 * loop and waits for the outcome.
 *
 * DESIGN
 * - One refcounted call record, shared by the waiting thread and the loop
 *   (two references). The loop side makes the future and, when it settles,
 *   copies the outcome into the record under its mutex and signals.
 * - The waiter may give up (timeout) first: it marks the record abandoned
 *   under the mutex and posts a cancel to the loop. From then on the loop
 *   side destroys whatever outcome arrives. Whoever drops the last
 *   reference frees the record, so neither side waits for the other.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include <baton/bridge.h>

#include "future-internal.h"
#include "pool-internal.h"
#include "sized.h"

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic int refs;
    bool done;
    bool abandoned;
    int code;
    void *value;
    bt_destroy_fn dtor;
    char *message;
    bt_loop *loop;
    bt_main_fn fn;
    void *arg;
    bt_future *f; /* loop thread only */
} bridge_call;

static void call_unref(bridge_call *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    if (c->dtor)
        c->dtor(c->value);
    bt_free(c->message);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    bt_free(c);
}

/* Loop thread: record the outcome, or destroy it if the waiter left. */
static void call_finish(bridge_call *c, int code, void *value, bt_destroy_fn dtor, const char *msg)
{
    pthread_mutex_lock(&c->mu);
    if (!c->abandoned) {
        c->code = code;
        c->value = value;
        c->dtor = dtor;
        c->message = msg ? bt_strdup(msg) : NULL;
        value = NULL;
        dtor = NULL;
    }
    c->done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (dtor)
        dtor(value);
}

static void on_settled(bt_future *f, void *arg)
{
    bridge_call *c = arg;
    int code = bt_future_error(f);
    void *value = NULL;
    bt_destroy_fn dtor = NULL;
    const char *msg = NULL;
    if (code == 0) {
        dtor = f->value_taken ? NULL : f->dtor;
        value = bt_future_take_value(f);
    } else {
        msg = bt_future_error_message(f);
    }
    call_finish(c, code, value, dtor, msg);
    c->f = NULL;
    bt_future_unref(f);
    call_unref(c);
}

static void call_start(void *arg)
{
    bridge_call *c = arg;
    bt_future *f = c->fn(c->loop, c->arg);
    if (f == NULL) {
        call_finish(c, BT_EINVAL, NULL, NULL, "the bridged function returned no future");
        call_unref(c);
        return;
    }
    if (bt_future_add_callback(f, on_settled, c) != 0) {
        bt_future_cancel(f);
        bt_future_unref(f);
        call_finish(c, BT_ENOMEM, NULL, NULL, "out of memory waiting for a future");
        call_unref(c);
        return;
    }
    c->f = f;
    pthread_mutex_lock(&c->mu);
    bool abandoned = c->abandoned;
    pthread_mutex_unlock(&c->mu);
    if (abandoned)
        bt_future_cancel(f);
}

/* Posted by a waiter that timed out. Holds a reference of its own. */
static void call_cancel(void *arg)
{
    bridge_call *c = arg;
    if (c->f)
        bt_future_cancel(c->f);
    call_unref(c);
}

BT_EXPORT int bt_bridge_call(bt_loop *loop, bt_main_fn fn, void *arg, uint64_t timeout_ms,
                             bt_bridge_result *out)
{
    if (out == NULL)
        return BT_EINVAL;
    /* Past this check every field written below is one of the first
     * layout's, all within out->size. */
    if (bt__sized_check(out->size, BT__SIZE_V1(bt_bridge_result, message), "bt_bridge_call",
                        "bt_bridge_result", "BT_SIZED(bt_bridge_result)") != 0)
        return BT_EINVAL;
    bt__sized_zero(out, out->size, sizeof *out);
    if (loop == NULL || fn == NULL)
        return BT_EINVAL;
    if (bt_loop_is_current(loop)) {
        out->message = bt_strdup("bt_bridge_call from the loop's own thread would wait forever");
        return BT_EDEADLK;
    }
    bridge_call *c = bt_calloc(1, sizeof *c);
    if (c == NULL)
        return BT_ENOMEM;
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&c->refs, 2);
    c->loop = loop;
    c->fn = fn;
    c->arg = arg;
    int rc = bt_loop_post(loop, call_start, c);
    if (rc != 0) {
        atomic_store(&c->refs, 1);
        call_unref(c);
        return rc;
    }

    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    uint64_t ns = (uint64_t)deadline.tv_nsec + (timeout_ms % 1000) * 1000000u;
    deadline.tv_sec += (time_t)(timeout_ms / 1000 + ns / 1000000000u);
    deadline.tv_nsec = (long)(ns % 1000000000u);

    /* A job (on a pool worker) that waits for a loop must not outlive its
     * own cancellation: bt_loop_free waits for running jobs, and the loop
     * it waits for may be that one. Such a caller waits in slices and
     * gives up when its job is cancelled. */
    bool in_job = bt__pool_in_job();
    bool cancelled = false;
    pthread_mutex_lock(&c->mu);
    int wrc = 0;
    while (!c->done && wrc != ETIMEDOUT) {
        if (in_job) {
            if (bt__pool_current_job_cancelled()) {
                cancelled = true;
                break;
            }
            struct timespec slice;
            clock_gettime(CLOCK_MONOTONIC, &slice);
            slice.tv_nsec += 10000000; /* 10 ms */
            if (slice.tv_nsec >= 1000000000) {
                slice.tv_sec++;
                slice.tv_nsec -= 1000000000;
            }
            if (timeout_ms &&
                (slice.tv_sec > deadline.tv_sec ||
                 (slice.tv_sec == deadline.tv_sec && slice.tv_nsec > deadline.tv_nsec)))
                slice = deadline;
            wrc = pthread_cond_timedwait(&c->cv, &c->mu, &slice);
            if (wrc == ETIMEDOUT && (timeout_ms == 0 || slice.tv_sec != deadline.tv_sec ||
                                     slice.tv_nsec != deadline.tv_nsec))
                wrc = 0; /* only a slice ended */
        } else if (timeout_ms == 0) {
            pthread_cond_wait(&c->cv, &c->mu);
        } else {
            wrc = pthread_cond_timedwait(&c->cv, &c->mu, &deadline);
        }
    }
    if (!c->done) {
        c->abandoned = true;
        pthread_mutex_unlock(&c->mu);
        atomic_fetch_add(&c->refs, 1);
        if (bt_loop_post(loop, call_cancel, c) != 0)
            call_unref(c); /* the loop is closing: it cancels the future itself */
        call_unref(c);
        if (cancelled) {
            out->message = bt_strdup("the calling job was cancelled while it waited");
            return BT_ECANCELED;
        }
        out->message = bt_asprintf("no outcome within %llu ms", (unsigned long long)timeout_ms);
        return BT_ETIMEDOUT;
    }
    rc = c->code;
    out->value = c->value;
    out->dtor = c->dtor;
    out->message = c->message;
    c->value = NULL;
    c->dtor = NULL;
    c->message = NULL;
    pthread_mutex_unlock(&c->mu);
    call_unref(c);
    return rc;
}

BT_EXPORT void bt_bridge_result_clear(bt_bridge_result *r)
{
    if (r == NULL)
        return;
    /* A result bt_bridge_call refused (its size unset) holds nothing of
     * ours, only what was on the caller's stack: touch none of it. */
    if (bt__sized_check(r->size, BT__SIZE_V1(bt_bridge_result, message), "bt_bridge_result_clear",
                        "bt_bridge_result", "BT_SIZED(bt_bridge_result)") != 0)
        return;
    if (r->dtor)
        r->dtor(r->value);
    bt_free(r->message);
    bt__sized_zero(r, r->size, sizeof *r);
}
