/* Futures: settle once, run callbacks from the loop, count references.
 *
 * DESIGN
 * - State changes happen on the loop thread only; state is atomic so that
 *   other threads (a worker polling bt_future_cancel_requested, a bridge
 *   thread) may read it.
 * - A pending future is on its loop's pending list and holds one reference
 *   for the loop. Settling takes it off the list and schedules settle_task,
 *   which runs the callbacks registered so far (and any added while they
 *   run), then drops the loop's reference. A callback added after that
 *   runs as a task of its own, holding a reference until it has run.
 * - Settling never calls a callback directly, so no callback runs inside
 *   the call that registered it or inside the producer's settle call. The
 *   one exception is bt__future_settle_now, for a producer's completion
 *   task (a pool job's): the loop runs that task directly, with no user
 *   code on the stack, so running the callbacks there breaks neither rule
 *   and saves a pass through the ready FIFO.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "future-internal.h"

static void pending_remove(bt_future *f)
{
    bt__list_remove(&f->pend);
    f->loop->pending.count--;
}

static void run_settle_task(bt__task *t);

bt_future *bt__future_init(bt_future *f, bt_loop *loop, int refs, void (*release)(bt_future *))
{
    if (loop == NULL || loop->closing)
        return NULL;
    f->release = release;
    f->owner = (uintptr_t)pthread_self();
    atomic_init(&f->refs, refs);
    atomic_init(&f->state, BT_FUTURE_PENDING);
    atomic_init(&f->cancel_requested, false);
    f->loop = loop;
    f->settle_task.run = run_settle_task;
    bt__list_init(&f->cbs);
    bt__list_push_front(&loop->pending.head, &f->pend);
    loop->pending.count++;
    return f;
}

static bt_future *future_alloc(bt_loop *loop)
{
    if (loop == NULL || loop->closing)
        return NULL;
    bt_future *f = bt_calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    return bt__future_init(f, loop, 2, NULL); /* the caller's, the loop's */
}

BT_EXPORT bt_future *bt_future_new(bt_loop *loop)
{
    return future_alloc(loop);
}

BT_EXPORT bt_future *bt_future_ref(bt_future *f)
{
    if (f)
        atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
    return f;
}

static void future_destroy(bt_future *f)
{
    if (atomic_load_explicit(&f->state, memory_order_relaxed) == BT_FUTURE_ERROR && !f->error_read)
        bt_log(BT_LOG_WARN, "future freed with an error nobody read: %s (%s)",
               f->message ? f->message : bt_strerror(f->code), bt_err_name(f->code));
    if (f->dtor && !f->value_taken)
        f->dtor(f->value);
    bt__list *l; /* only reachable if never settled, which the loop prevents */
    while ((l = bt__list_pop_front(&f->cbs)) != NULL)
        bt_free(BT__LIST_ENTRY(l, bt__future_cb_node, link));
    bt_free(f->message);
    if (f->release)
        f->release(f);
    else
        bt_free(f);
}

/* The last reference but the loop's was just dropped. If the future is
 * still pending, nobody asked to cancel it and nobody waits on it, its
 * outcome can never be seen: asyncio's "Task was destroyed but it is
 * pending", caught at the moment it happens (not only at bt_loop_free).
 * Only on the loop thread, where state and callbacks cannot change under
 * us: the caller checked that it runs there (bt_future_unref's on_loop); a
 * reference dropped on another thread is left to bt_loop_free. */
static void check_dropped(bt_future *f)
{
    /* State first: a settled future may outlive its loop. */
    if (atomic_load_explicit(&f->state, memory_order_acquire) != BT_FUTURE_PENDING ||
        f->loop->closing || atomic_load_explicit(&f->cancel_requested, memory_order_relaxed) ||
        f->first_cb != NULL)
        return;
    bt_log(BT_LOG_WARN,
           "future %p dropped while still pending with nobody waiting on it: its outcome "
           "will be lost (add a callback, or cancel it before dropping it)",
           (void *)f);
}

BT_EXPORT void bt_future_unref(bt_future *f)
{
    if (f == NULL)
        return;
    /* Decide before letting go: once our reference is gone another thread
     * may drop the last one and free f. A pending future on its own loop's
     * thread is still held by the loop, so check_dropped may read it. The
     * owner test comes first: it reads nothing but f, so a thread that
     * did not make f never touches a loop that may be being freed. */
    bool on_loop = f->owner == (uintptr_t)pthread_self() &&
                   atomic_load_explicit(&f->state, memory_order_acquire) == BT_FUTURE_PENDING &&
                   bt_loop_is_current(f->loop);
    int prev = atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel);
    if (prev <= 0) {
        /* A reference dropped twice: f is already destroyed. Say so
         * rather than destroy it again. Caught here when the memory still
         * holds the count (a pool job's block waits in its thread's cache
         * with 0); under AddressSanitizer the read above is reported as a
         * use after free (cached job blocks are poisoned too). Best effort:
         * memory already reused by a live future is not caught (its count
         * is above 0, as it was before this check existed); ASan is the
         * authority. */
        atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
        bt_log(BT_LOG_ERROR,
               "bt_future_unref: future %p has no reference left: a reference was dropped "
               "twice (the future is already freed)",
               (void *)f);
        return;
    }
    if (prev == 1)
        future_destroy(f);
    else if (prev == 2 && on_loop)
        check_dropped(f);
}

BT_EXPORT bt_loop *bt_future_loop(const bt_future *f)
{
    return f ? f->loop : NULL;
}

/* ---- Settling -------------------------------------------------------- */

/* Run the callbacks registered so far, and those added while they run. */
static void run_callbacks(bt_future *f)
{
    if (f->first_cb) {
        bt_loop_enter_cb(f->loop, (const void *)f->first_cb);
        f->first_cb(f, f->first_arg);
        bt_loop_leave_cb(f->loop);
    }
    bt__list *l;
    while ((l = bt__list_pop_front(&f->cbs)) != NULL) {
        bt__future_cb_node *n = BT__LIST_ENTRY(l, bt__future_cb_node, link);
        bt_loop_enter_cb(f->loop, (const void *)n->cb);
        n->cb(f, n->arg);
        bt_loop_leave_cb(f->loop);
        bt_free(n);
    }
    f->first_cb = NULL;
    f->settle_task.next = &f->settle_task; /* marks "callbacks done" */
}

static void run_settle_task(bt__task *t)
{
    bt_future *f = (bt_future *)((char *)t - offsetof(bt_future, settle_task));
    run_callbacks(f);
    bt_future_unref(f); /* the loop's reference */
}

static bool callbacks_done(const bt_future *f)
{
    return f->settle_task.next == &f->settle_task;
}

bool bt__future_callbacks_done(const bt_future *f)
{
    return callbacks_done(f);
}

/* Common tail of every setter, but for running the callbacks. Takes
 * ownership of value and message. */
static int settle_state(bt_future *f, bt_future_state st, void *value, bt_destroy_fn dtor, int code,
                        char *message)
{
    if (f == NULL) {
        if (dtor)
            dtor(value);
        bt_free(message);
        return BT_EINVAL;
    }
    if (atomic_load_explicit(&f->state, memory_order_relaxed) != BT_FUTURE_PENDING) {
        if (dtor)
            dtor(value);
        bt_free(message);
        return BT_EALREADY;
    }
    if (st != BT_FUTURE_CANCELLED &&
        atomic_load_explicit(&f->cancel_requested, memory_order_relaxed)) {
        /* Cancellation was asked for: the late outcome is discarded. */
        if (dtor)
            dtor(value);
        bt_free(message);
        st = BT_FUTURE_CANCELLED;
        value = NULL;
        dtor = NULL;
        message = NULL;
    }
    f->value = value;
    f->dtor = dtor;
    f->code = st == BT_FUTURE_ERROR ? code : st == BT_FUTURE_CANCELLED ? BT_ECANCELED : 0;
    f->message = message;
    pending_remove(f);
    atomic_store_explicit(&f->state, st, memory_order_release);
    return 0;
}

/* Settle, and leave the callbacks to a task of their own: the caller may
 * be inside anybody's code. */
static int settle(bt_future *f, bt_future_state st, void *value, bt_destroy_fn dtor, int code,
                  char *message)
{
    int rc = settle_state(f, st, value, dtor, code, message);
    if (rc == 0)
        bt__loop_schedule(f->loop, &f->settle_task);
    return rc;
}

int bt__future_settle(bt_future *f, bt_future_state st, void *value, bt_destroy_fn dtor, int code,
                      char *message)
{
    return settle(f, st, value, dtor, code, message);
}

void bt__future_settle_now(bt_future *f, bt_future_state st, void *value, bt_destroy_fn dtor,
                           int code, char *message, int drop)
{
    int refs = drop;
    if (settle_state(f, st, value, dtor, code, message) == 0) {
        run_callbacks(f);
        refs++; /* the loop's */
    }
    if (refs && atomic_fetch_sub_explicit(&f->refs, refs, memory_order_acq_rel) == refs)
        future_destroy(f);
}

BT_EXPORT int bt_future_set_value(bt_future *f, void *value, bt_destroy_fn dtor)
{
    return settle(f, BT_FUTURE_VALUE, value, dtor, 0, NULL);
}

BT_EXPORT int bt_future_set_errorv(bt_future *f, int code, const char *fmt, va_list ap)
{
    if (code >= 0)
        code = BT_EINVAL; /* a producer bug; still settle, and say so */
    char *msg = fmt ? bt_vasprintf(fmt, ap) : NULL;
    return settle(f, BT_FUTURE_ERROR, NULL, NULL, code, msg);
}

BT_EXPORT int bt_future_set_error(bt_future *f, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = bt_future_set_errorv(f, code, fmt, ap);
    va_end(ap);
    return rc;
}

BT_EXPORT int bt_future_set_cancelled(bt_future *f)
{
    return settle(f, BT_FUTURE_CANCELLED, NULL, NULL, BT_ECANCELED, NULL);
}

BT_EXPORT int bt_future_set_from(bt_future *f, bt_future *src)
{
    if (f == NULL)
        return BT_EINVAL;
    if (bt_future_is_settled(f))
        return BT_EALREADY; /* src keeps its value for its other consumers */
    if (src == NULL)
        return f ? bt_future_set_error(f, BT_EINVAL, "no source future") : BT_EINVAL;
    switch (bt_future_get_state(src)) {
    case BT_FUTURE_VALUE: {
        bt_destroy_fn dtor = src->value_taken ? NULL : src->dtor;
        void *v = bt_future_take_value(src);
        return settle(f, BT_FUTURE_VALUE, v, dtor, 0, NULL);
    }
    case BT_FUTURE_ERROR:
        src->error_read = true;
        return settle(f, BT_FUTURE_ERROR, NULL, NULL, src->code,
                      src->message ? bt_strdup(src->message) : NULL);
    case BT_FUTURE_CANCELLED:
        return bt_future_set_cancelled(f);
    default:
        return f ? bt_future_set_error(f, BT_EINVAL, "source future still pending") : BT_EINVAL;
    }
}

BT_EXPORT bt_future *bt_future_new_value(bt_loop *loop, void *value, bt_destroy_fn dtor)
{
    bt_future *f = future_alloc(loop);
    if (f == NULL) {
        if (dtor)
            dtor(value);
        return NULL;
    }
    settle(f, BT_FUTURE_VALUE, value, dtor, 0, NULL);
    return f;
}

BT_EXPORT bt_future *bt_future_new_error(bt_loop *loop, int code, const char *fmt, ...)
{
    bt_future *f = future_alloc(loop);
    if (f == NULL)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    bt_future_set_errorv(f, code, fmt, ap);
    va_end(ap);
    return f;
}

/* ---- Cancellation ------------------------------------------------------ */

BT_EXPORT void bt_future_on_cancel(bt_future *f, bt_cancel_hook hook, void *arg)
{
    if (f == NULL)
        return;
    f->cancel_hook = hook;
    f->cancel_arg = arg;
}

BT_EXPORT bool bt_future_cancel_requested(const bt_future *f)
{
    return f && atomic_load_explicit(&f->cancel_requested, memory_order_acquire);
}

BT_EXPORT int bt_future_cancel(bt_future *f)
{
    if (f == NULL)
        return BT_EINVAL;
    if (bt_future_is_settled(f))
        return BT_EALREADY;
    if (atomic_exchange_explicit(&f->cancel_requested, true, memory_order_acq_rel))
        return 0; /* asked before; the producer is on it */
    if (f->cancel_hook && !f->cancel_hook_ran) {
        f->cancel_hook_ran = true;
        bt_future_ref(f);
        f->cancel_hook(f, f->cancel_arg);
        bt_future_unref(f);
    } else {
        bt_future_set_cancelled(f);
    }
    return 0;
}

size_t bt__future_cancel_all(bt_loop *loop, size_t *dropped)
{
    size_t n = 0;
    *dropped = 0;
    bt__list *l;
    while ((l = bt__list_first(&loop->pending.head)) != NULL) {
        bt_future *f = BT__LIST_ENTRY(l, bt_future, pend);
        n++;
        if (atomic_load_explicit(&f->refs, memory_order_relaxed) == 1 && f->first_cb == NULL)
            (*dropped)++;
        bt_future_ref(f);
        bt_future_cancel(f);
        /* A producer that could not stop at once has no loop left to settle
         * on: settle it here. Producers that keep plain pointers to their
         * futures register a closer and are gone by now. */
        bt_future_set_cancelled(f);
        bt_future_unref(f);
    }
    return n;
}

void bt__future_abandon(bt_future *f)
{
    if (f == NULL)
        return;
    switch (bt_future_get_state(f)) {
    case BT_FUTURE_PENDING:
        /* A cancelled future is not reported as dropped while pending,
         * and whatever it settles with later becomes "cancelled". */
        if (bt_loop_is_current(f->loop))
            bt_future_cancel(f);
        break;
    case BT_FUTURE_ERROR:
        f->error_read = true;
        break;
    default:
        break;
    }
}

void bt__future_discard(bt_future *f)
{
    bt__future_abandon(f);
    bt_future_unref(f);
}

const char *bt__future_cancel_note(const bt_future *f)
{
    static const char prefix[] = "cancelled; ";
    if (f == NULL || bt_future_get_state(f) != BT_FUTURE_CANCELLED || f->message == NULL ||
        strncmp(f->message, prefix, sizeof prefix - 1) != 0)
        return NULL;
    return f->message + sizeof prefix - 1;
}

/* ---- Reading ------------------------------------------------------------- */

BT_EXPORT bt_future_state bt_future_get_state(const bt_future *f)
{
    if (f == NULL)
        return BT_FUTURE_PENDING;
    return (bt_future_state)atomic_load_explicit(&f->state, memory_order_acquire);
}

BT_EXPORT bool bt_future_is_settled(const bt_future *f)
{
    return f && bt_future_get_state(f) != BT_FUTURE_PENDING;
}

BT_EXPORT int bt_future_error(bt_future *f)
{
    if (f == NULL)
        return BT_EINVAL;
    switch (bt_future_get_state(f)) {
    case BT_FUTURE_PENDING:
        return BT_EINPROGRESS;
    case BT_FUTURE_VALUE:
        return 0;
    case BT_FUTURE_ERROR:
        f->error_read = true;
        return f->code;
    default:
        return BT_ECANCELED;
    }
}

BT_EXPORT const char *bt_future_error_message(bt_future *f)
{
    if (f == NULL)
        return NULL;
    switch (bt_future_get_state(f)) {
    case BT_FUTURE_ERROR:
        f->error_read = true;
        return f->message ? f->message : bt_strerror(f->code);
    case BT_FUTURE_CANCELLED:
        return f->message ? f->message : "cancelled";
    default:
        return NULL;
    }
}

BT_EXPORT void *bt_future_value(const bt_future *f)
{
    return f != NULL ? bt__future_value(f) : NULL;
}

BT_EXPORT void *bt_future_take_value(bt_future *f)
{
    void *v = bt_future_value(f);
    if (f && bt_future_get_state(f) == BT_FUTURE_VALUE)
        f->value_taken = true;
    return v;
}

/* ---- Callbacks ------------------------------------------------------------ */

static void run_late_cb(bt__task *t)
{
    bt__future_cb_node *n = (bt__future_cb_node *)(void *)t; /* task is at offset 0 */
    bt_future *f = n->future;
    bt_loop_enter_cb(f->loop, (const void *)n->cb);
    n->cb(f, n->arg);
    bt_loop_leave_cb(f->loop);
    bt_free(n);
    bt_future_unref(f);
}

BT_EXPORT int bt_future_add_callback(bt_future *f, bt_future_cb cb, void *arg)
{
    if (f == NULL || cb == NULL)
        return BT_EINVAL;
    if (!callbacks_done(f) && f->first_cb == NULL) {
        f->first_cb = cb;
        f->first_arg = arg;
        return 0;
    }
    bt__future_cb_node *n = bt_calloc(1, sizeof *n);
    if (n == NULL)
        return BT_ENOMEM;
    n->future = f;
    n->cb = cb;
    n->arg = arg;
    if (callbacks_done(f)) {
        /* The settle task has come and gone: run on a later turn. */
        n->task.run = run_late_cb;
        bt_future_ref(f);
        bt__loop_schedule(f->loop, &n->task);
        return 0;
    }
    bt__list_push_back(&f->cbs, &n->link);
    return 0;
}

/* ---- Chaining ---------------------------------------------------------------- */

typedef struct {
    bt_future *result; /* owned: bt_loop_free may settle and release it early */
    bt_future *src;    /* owned: the caller's reference, taken over */
    bt_future *inner;  /* owned */
    bt_then_fn fn;
    void *arg;
    bool on_value_only;
} chain;

static void chain_on_cancel(bt_future *result, void *arg)
{
    (void)result;
    chain *c = arg;
    bt_future_cancel(c->inner ? c->inner : c->src);
}

/* Only ever called once src's callbacks are running or have run, so src
 * has no callback of ours left to find the chain gone. */
static void chain_free(chain *c)
{
    bt_future_unref(c->inner);
    bt_future_unref(c->src);
    bt_future_unref(c->result);
    bt_free(c);
}

static void chain_on_inner(bt_future *inner, void *arg)
{
    chain *c = arg;
    bt_future_set_from(c->result, inner);
    chain_free(c);
}

static void chain_on_src(bt_future *src, void *arg)
{
    chain *c = arg;
    if (bt_future_is_settled(c->result)) {
        bt_future_error(src); /* consumed: nobody is left to read it */
        chain_free(c);        /* settled by bt_loop_free: nothing to hand on */
        return;
    }
    if (bt_future_cancel_requested(c->result)) {
        bt_future_error(src);
        bt_future_set_cancelled(c->result); /* do not start fn for nobody */
        chain_free(c);
        return;
    }
    if (c->on_value_only && bt_future_get_state(src) != BT_FUTURE_VALUE) {
        bt_future_set_from(c->result, src);
        chain_free(c);
        return;
    }
    bt_future *g = c->fn(src, c->arg);
    if (g == NULL) {
        bt_future_set_error(c->result, BT_ENOMEM, "chained function returned no future");
        chain_free(c);
        return;
    }
    c->inner = g;
    if (bt_future_add_callback(g, chain_on_inner, c) != 0) {
        bt_future_set_error(c->result, BT_ENOMEM, "out of memory chaining a future");
        bt_future_cancel(g);
        chain_free(c);
        return;
    }
    if (bt_future_cancel_requested(c->result))
        bt_future_cancel(g);
}

static bt_future *chain_new(bt_future *f, bt_then_fn fn, void *arg, bool on_value_only)
{
    if (f == NULL)
        return NULL;
    chain *c = fn ? bt_calloc(1, sizeof *c) : NULL;
    bt_future *r = c ? bt_future_new(f->loop) : NULL;
    if (r == NULL || bt_future_add_callback(f, chain_on_src, c) != 0) {
        if (r) {
            bt_future_set_cancelled(r);
            bt_future_unref(r);
        }
        bt_free(c);
        bt__future_discard(f); /* taken over even when we fail */
        return NULL;
    }
    c->result = bt_future_ref(r);
    c->src = f;
    c->fn = fn;
    c->arg = arg;
    c->on_value_only = on_value_only;
    bt_future_on_cancel(r, chain_on_cancel, c);
    return r;
}

BT_EXPORT bt_future *bt_future_then(bt_future *f, bt_then_fn fn, void *arg)
{
    return chain_new(f, fn, arg, true);
}

BT_EXPORT bt_future *bt_future_after(bt_future *f, bt_then_fn fn, void *arg)
{
    return chain_new(f, fn, arg, false);
}
