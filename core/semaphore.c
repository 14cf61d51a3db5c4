/* An asynchronous, FIFO-fair semaphore.
 *
 * DESIGN
 * - `available` counts free permits, `held` the permits granted and not yet
 *   released. A release with waiters queued does not raise `available`: it
 *   settles the oldest waiter, so the permit passes hand to hand and no
 *   newcomer can take it in between (fairness). Hence: available > 0 only
 *   while the queue is empty.
 * - A waiter is a queue node whose future's cancel hook unlinks it; the
 *   hook settles the future cancelled at once, so a cancelled waiter never
 *   holds a permit. A granted waiter's future is settled, so a later cancel
 *   request is refused by the core (BT_EALREADY) and cannot lose a permit.
 * - No closer is needed: at loop free, the core cancels every pending
 *   future, whose hooks empty the queue; the semaphore itself keeps no
 *   libevent object.
 */
#include "config.h"

#include <baton/semaphore.h>

#include "future-internal.h"
#include "list.h"

typedef struct waiter {
    bt__list link; /* on the semaphore's queue */
    bt_semaphore *sem;
    bt_future *f; /* plain: the loop keeps it while pending */
} waiter;

struct bt_semaphore {
    bt_loop *loop;
    size_t available;
    size_t held;
    size_t nwaiting;
    bt__list waiters; /* oldest first */
};

BT_EXPORT bt_semaphore *bt_semaphore_new(bt_loop *loop, size_t permits)
{
    if (loop == NULL || permits == 0)
        return NULL;
    bt_semaphore *s = bt_calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->loop = loop;
    s->available = permits;
    bt__list_init(&s->waiters);
    return s;
}

static void unlink_waiter(bt_semaphore *s, waiter *w)
{
    bt__list_remove(&w->link);
    s->nwaiting--;
}

static void waiter_on_cancel(bt_future *f, void *arg)
{
    waiter *w = arg;
    unlink_waiter(w->sem, w);
    bt_free(w);
    bt_future_set_cancelled(f);
}

BT_EXPORT void bt_semaphore_free(bt_semaphore *s)
{
    if (s == NULL)
        return;
    for (bt__list *n; (n = bt__list_first(&s->waiters)) != NULL;)
        bt_future_cancel(BT__LIST_ENTRY(n, waiter, link)->f); /* the hook unlinks it */
    bt_free(s);
}

BT_EXPORT bt_future *bt_semaphore_acquire(bt_semaphore *s)
{
    if (s == NULL)
        return NULL;
    if (s->available > 0 && bt__list_empty(&s->waiters)) {
        bt_future *f = bt_future_new_value(s->loop, NULL, NULL);
        if (f != NULL) {
            s->available--;
            s->held++;
        }
        return f;
    }
    waiter *w = bt_calloc(1, sizeof *w);
    bt_future *f = w != NULL ? bt_future_new(s->loop) : NULL;
    if (f == NULL) {
        bt_free(w);
        return NULL;
    }
    w->sem = s;
    w->f = f;
    bt__list_push_back(&s->waiters, &w->link);
    s->nwaiting++;
    bt_future_on_cancel(f, waiter_on_cancel, w);
    return f;
}

BT_EXPORT int bt_semaphore_try_acquire(bt_semaphore *s)
{
    if (s == NULL)
        return BT_EINVAL;
    if (s->available == 0 || !bt__list_empty(&s->waiters))
        return BT_EAGAIN;
    s->available--;
    s->held++;
    return 0;
}

BT_EXPORT int bt_semaphore_release(bt_semaphore *s)
{
    if (s == NULL)
        return BT_EINVAL;
    if (s->held == 0)
        return BT_ERANGE;
    bt__list *first = bt__list_first(&s->waiters);
    if (first == NULL) {
        s->held--;
        s->available++;
        return 0;
    }
    /* Hand the permit over: `held` stays the same. */
    waiter *w = BT__LIST_ENTRY(first, waiter, link);
    unlink_waiter(s, w);
    bt_future_on_cancel(w->f, NULL, NULL);
    bt_future_set_value(w->f, NULL, NULL);
    bt_free(w);
    return 0;
}

BT_EXPORT size_t bt_semaphore_available(const bt_semaphore *s)
{
    return s != NULL ? s->available : 0;
}

BT_EXPORT size_t bt_semaphore_waiting(const bt_semaphore *s)
{
    return s != NULL ? s->nwaiting : 0;
}

/* ---- bt_semaphore_run -------------------------------------------------- */

typedef struct {
    bt_semaphore *sem;
    bt_future *result;  /* owned */
    bt_future *acquire; /* owned until granted or cancelled */
    bt_future *work;    /* owned once fn has run */
    bt_start_fn fn;
    void *arg;
} sem_run;

static void run_free(sem_run *r)
{
    bt_future_unref(r->acquire);
    bt_future_unref(r->work);
    bt_future_unref(r->result);
    bt_free(r);
}

static void run_on_work(bt_future *work, void *arg)
{
    sem_run *r = arg;
    bt_semaphore_release(r->sem);
    bt_future_set_from(r->result, work);
    run_free(r);
}

static void run_on_acquire(bt_future *acq, void *arg)
{
    sem_run *r = arg;
    if (bt_future_get_state(acq) != BT_FUTURE_VALUE) {
        bt_future_set_from(r->result, acq); /* cancelled */
        run_free(r);
        return;
    }
    if (bt_future_cancel_requested(r->result)) {
        bt_semaphore_release(r->sem);
        bt_future_set_cancelled(r->result);
        run_free(r);
        return;
    }
    r->work = r->fn(r->sem->loop, r->arg);
    if (r->work == NULL) {
        bt_semaphore_release(r->sem);
        bt_future_set_error(r->result, BT_ENOMEM, "semaphore run: the function returned no future");
        run_free(r);
        return;
    }
    if (bt_future_add_callback(r->work, run_on_work, r) != 0) {
        bt_future_cancel(r->work);
        bt_semaphore_release(r->sem);
        bt_future_set_error(r->result, BT_ENOMEM, "semaphore run: out of memory");
        run_free(r);
    }
}

static void run_on_cancel(bt_future *result, void *arg)
{
    (void)result;
    sem_run *r = arg;
    if (r->work != NULL)
        bt_future_cancel(r->work);
    else
        bt_future_cancel(r->acquire); /* leaves the queue, or already granted */
}

BT_EXPORT bt_future *bt_semaphore_run(bt_semaphore *s, bt_start_fn fn, void *arg)
{
    if (s == NULL || fn == NULL)
        return NULL;
    sem_run *r = bt_calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->sem = s;
    r->fn = fn;
    r->arg = arg;
    r->result = bt_future_new(s->loop);
    r->acquire = r->result != NULL ? bt_semaphore_acquire(s) : NULL;
    if (r->acquire == NULL || bt_future_add_callback(r->acquire, run_on_acquire, r) != 0) {
        if (r->acquire != NULL) {
            if (bt_future_cancel(r->acquire) == BT_EALREADY)
                bt_semaphore_release(s); /* granted at once: give it back */
        }
        if (r->result != NULL)
            bt_future_set_cancelled(r->result);
        run_free(r);
        return NULL;
    }
    bt_future_on_cancel(r->result, run_on_cancel, r);
    return bt_future_ref(r->result);
}
