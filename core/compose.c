/* gather, race, any and timeout: futures made of other futures.
 *
 * DESIGN
 * - A fan (gather, race, any) holds a reference to each child and to its
 *   result, and one callback on each child. `left` counts the child
 *   callbacks still to run; the fan is freed by the last of them, never
 *   earlier, so a child's callback always finds the fan alive.
 * - The result's cancel hook only forwards the request to the children.
 *   The result then settles from the last child callback: because
 *   cancellation was requested, the core turns whatever outcome we give it
 *   into "cancelled". So a cancelled fan never settles before its children.
 * - Fail fast and race settle the result early and cancel the siblings;
 *   their callbacks still run later and only read and drop the outcome.
 * - Everything runs on the loop thread; there is no lock.
 */
#include "config.h"

#include <inttypes.h>
#include <string.h>

#include <baton/compose.h>

#include "future-internal.h"
#include "timeval.h"

/* ---- Results ------------------------------------------------------------- */

/* A gather's results are the first field of its fan (below), and the
 * children's array follows the fan in the same block: one allocation per
 * gather, handed over whole to the gather's future when it succeeds. Empty
 * results are a block of their own with kids NULL. */
struct bt_results {
    size_t n;
    bt_future **kids; /* one reference each */
};

static void results_destroy(void *p)
{
    bt_results_free(p);
}

BT_EXPORT void bt_results_free(bt_results *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++)
        bt_future_unref(r->kids[i]);
    bt_free(r); /* the kids live in the same block */
}

BT_EXPORT size_t bt_results_count(const bt_results *r)
{
    return r ? r->n : 0;
}

BT_EXPORT bt_future *bt_results_future(const bt_results *r, size_t i)
{
    return r && i < r->n ? r->kids[i] : NULL;
}

BT_EXPORT void *bt_results_value(const bt_results *r, size_t i)
{
    return r != NULL && i < r->n ? bt__future_value(r->kids[i]) : NULL;
}

BT_EXPORT void *bt_results_take(bt_results *r, size_t i)
{
    return bt_future_take_value(bt_results_future(r, i));
}

BT_EXPORT int bt_results_error(bt_results *r, size_t i)
{
    if (r == NULL)
        return BT_EINVAL;
    if (i >= r->n)
        return BT_ERANGE;
    return bt_future_error(r->kids[i]);
}

BT_EXPORT const char *bt_results_error_message(bt_results *r, size_t i)
{
    return bt_future_error_message(bt_results_future(r, i));
}

BT_EXPORT size_t bt_results_failed(const bt_results *r)
{
    size_t n = 0;
    for (size_t i = 0; r && i < r->n; i++)
        if (bt_future_get_state(r->kids[i]) != BT_FUTURE_VALUE)
            n++;
    return n;
}

/* ---- Fans: gather, race, any ----------------------------------------------- */

/* The gathers first: fan_on_child tests `kind <= FAN_GATHER_COLLECT`. */
typedef enum { FAN_GATHER_FAST, FAN_GATHER_COLLECT, FAN_RACE, FAN_ANY } fan_kind;

/* One block: the fan, then its n children (fa->res.kids points there).
 * Each child's callback gets the fan itself as its argument, not a record
 * of its own: the index is needed only to name a child in an error
 * message, and is found then by a search (once per fan, when it fails). */
typedef struct fan {
    bt_results res; /* first: a successful gather hands the block over as its results */
    fan_kind kind;
    bt_future *result; /* owned reference */
    size_t left;       /* child callbacks still to run */
    int first_code;    /* any: the first child's error */
    char *first_msg;
} fan;

/* The last child callback has run (or none will): let go of the fan. */
static void fan_free(fan *fa)
{
    bt_future *result = fa->result;
    bt_free(fa->first_msg);
    bt_results_free(&fa->res); /* the kids' references, then the block */
    bt_future_unref(result);
}

static size_t fan_index(const fan *fa, const bt_future *kid)
{
    size_t i = 0;
    while (i < fa->res.n && fa->res.kids[i] != kid)
        i++;
    return i;
}

static void fan_cancel_others(fan *fa, const bt_future *except)
{
    for (size_t i = 0; i < fa->res.n; i++)
        if (fa->res.kids[i] != except)
            bt_future_cancel(fa->res.kids[i]); /* BT_EALREADY for settled ones */
}

static void fan_on_cancel(bt_future *result, void *arg)
{
    (void)result;
    fan *fa = arg;
    for (size_t i = 0; i < fa->res.n; i++)
        bt_future_cancel(fa->res.kids[i]);
}

/* A child settled while the result is still ours to settle. */
static void fan_decide(fan *fa, bt_future *kid)
{
    bt_future_state st = bt_future_get_state(kid);
    switch (fa->kind) {
    case FAN_GATHER_COLLECT:
        break;
    case FAN_GATHER_FAST:
        if (st == BT_FUTURE_ERROR) {
            bt_future_set_from(fa->result, kid);
            fan_cancel_others(fa, kid);
        } else if (st == BT_FUTURE_CANCELLED) {
            bt_future_set_error(fa->result, BT_ECANCELED, "gather: child %zu was cancelled",
                                fan_index(fa, kid));
            fan_cancel_others(fa, kid);
        }
        break;
    case FAN_RACE:
        if (st == BT_FUTURE_CANCELLED)
            bt_future_set_error(fa->result, BT_ECANCELED, "race: child %zu was cancelled",
                                fan_index(fa, kid));
        else
            bt_future_set_from(fa->result, kid);
        fan_cancel_others(fa, kid);
        break;
    case FAN_ANY:
        if (st == BT_FUTURE_VALUE) {
            bt_future_set_from(fa->result, kid);
            fan_cancel_others(fa, kid);
        } else if (fa->first_code == 0) {
            fa->first_code = bt_future_error(kid);
            fa->first_msg = bt_strdup(bt_future_error_message(kid));
        } else {
            bt_future_error(kid); /* read: the first error speaks for all */
        }
        break;
    }
}

/* Every child has settled and the result is still pending. Returns true
 * when the fan's block became the result's value (a gather's results):
 * the caller must not touch it any more. */
static bool fan_finish(fan *fa)
{
    if (bt_future_cancel_requested(fa->result)) {
        bt_future_set_cancelled(fa->result);
        return false;
    }
    switch (fa->kind) {
    case FAN_GATHER_FAST:
    case FAN_GATHER_COLLECT:
        /* The block, children and all, becomes the value: nothing to copy
         * and nothing to allocate, so this cannot fail. (Were the value
         * refused, the core would free it through results_destroy, so in
         * either case it is no longer ours.) */
        bt_future_set_value(fa->result, &fa->res, results_destroy);
        return true;
    case FAN_ANY:
        bt_future_set_error(fa->result, fa->first_code ? fa->first_code : BT_ECANCELED,
                            "any: all %zu children failed; the first: %s", fa->res.n,
                            fa->first_msg ? fa->first_msg : "cancelled");
        break;
    case FAN_RACE: /* the first child always decides */
        break;
    }
    return false;
}

static void fan_on_child(bt_future *kid, void *arg)
{
    fan *fa = arg;
    bt_future *result = fa->result;
    /* Read the fields, not through the getters: this runs once per child
     * (10,000 times for a gather of 10,000), on the loop thread that alone
     * writes them. A gather's child with a value decides nothing. */
    if (atomic_load_explicit(&result->state, memory_order_relaxed) != BT_FUTURE_PENDING) {
        bt_future_error(kid); /* consumed: the result has spoken */
    } else if (!atomic_load_explicit(&result->cancel_requested, memory_order_relaxed) &&
               (fa->kind > FAN_GATHER_COLLECT ||
                atomic_load_explicit(&kid->state, memory_order_relaxed) != BT_FUTURE_VALUE)) {
        fan_decide(fa, kid);
    }
    if (--fa->left == 0) {
        if (!bt_future_is_settled(result) && fan_finish(fa))
            bt_future_unref(result); /* the fan's reference; the block is the value now */
        else
            fan_free(fa);
    }
}

/* The fan takes over the caller's reference to each child, even when it
 * fails: discard them all then. */
static void discard_children(bt_future *const *children, size_t n)
{
    for (size_t i = 0; children != NULL && i < n; i++)
        bt__future_discard(children[i]);
}

static bt_future *fan_new(fan_kind kind, bt_loop *loop, bt_future *const *children, size_t n)
{
    if (loop == NULL || (children == NULL && n > 0)) {
        discard_children(children, n);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (children[i] == NULL || children[i]->loop != loop) {
            discard_children(children, n);
            return NULL;
        }
    }
    if (n == 0) {
        if (kind == FAN_RACE || kind == FAN_ANY)
            return bt_future_new_error(loop, BT_EINVAL, "%s of no futures",
                                       kind == FAN_RACE ? "race" : "any");
        bt_results *r = bt_calloc(1, sizeof *r);
        return r ? bt_future_new_value(loop, r, results_destroy) : NULL;
    }
    fan *fa = n <= (SIZE_MAX - sizeof(fan)) / sizeof(bt_future *)
                  ? bt_malloc(sizeof(fan) + n * sizeof(bt_future *))
                  : NULL;
    bt_future *result = fa != NULL ? bt_future_new(loop) : NULL;
    if (result == NULL) {
        bt_free(fa);
        discard_children(children, n);
        return NULL;
    }
    *fa = (fan){ .res = { n, (bt_future **)(void *)(fa + 1) }, .kind = kind, .result = result };
    for (size_t i = 0; i < n; i++) {
        fa->res.kids[i] = children[i]; /* the caller's reference, taken over */
        if (bt_future_add_callback(children[i], fan_on_child, fa) != 0) {
            /* Out of memory: abandon every child (the fan owns their
             * references now, the rest of them once copied). The callbacks
             * already added will run and, as the result is settled, only
             * free the fan. */
            memcpy(fa->res.kids + i + 1, children + i + 1, (n - i - 1) * sizeof *children);
            bt_future_set_cancelled(fa->result);
            for (size_t j = 0; j < n; j++)
                bt__future_abandon(fa->res.kids[j]);
            fa->left = i;
            if (i == 0)
                fan_free(fa);
            return NULL;
        }
        fa->left++;
    }
    bt_future_on_cancel(fa->result, fan_on_cancel, fa);
    return bt_future_ref(fa->result);
}

BT_EXPORT bt_future *bt_gather(bt_loop *loop, bt_future *const *children, size_t n,
                               bt_gather_mode mode)
{
    if (mode != BT_GATHER_FAIL_FAST && mode != BT_GATHER_COLLECT) {
        discard_children(children, n);
        return NULL;
    }
    return fan_new(mode == BT_GATHER_COLLECT ? FAN_GATHER_COLLECT : FAN_GATHER_FAST, loop, children,
                   n);
}

BT_EXPORT bt_future *bt_race(bt_loop *loop, bt_future *const *children, size_t n)
{
    return fan_new(FAN_RACE, loop, children, n);
}

BT_EXPORT bt_future *bt_any(bt_loop *loop, bt_future *const *children, size_t n)
{
    return fan_new(FAN_ANY, loop, children, n);
}

/* ---- timeout ------------------------------------------------------------------ */

/* One block per bt_timeout: the result future (first, so that its release
 * hook finds the block), the state, and the libevent timer in the bytes
 * after it (struct event's size is known only at run time). It was four
 * allocations (the state, a bt_timer, its struct event, the result); at
 * 10,000 timeouts the allocator's work, and the fresh pages it touched,
 * were most of the cost. The block lives as long as the result: its
 * references are the caller's, the loop's while pending, and the state's
 * own, dropped by the inner callback once the timer is deleted, so the
 * event is never pending when the block goes. */
typedef struct {
    bt_future result;
    bt_future *inner; /* owned */
    bt_loop *loop;
    uint64_t ms;
    bool timed_out;
    void *ev[]; /* struct event, event_get_struct_event_size() bytes */
} timeout_state;

static struct event *timeout_event(timeout_state *ts)
{
    return (struct event *)(void *)ts->ev;
}

static void timeout_release(bt_future *f)
{
    bt_free(f); /* the block starts with the result future */
}

static void timeout_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    timeout_state *ts = arg;
    /* Settled in the same turn, its callback not yet run: it wins. */
    if (bt_future_is_settled(ts->inner))
        return;
    ts->timed_out = true;
    bt_loop_enter_cb(ts->loop, (const void *)timeout_on_timer);
    bt_future_cancel(ts->inner);
    bt_loop_leave_cb(ts->loop);
}

static void timeout_on_inner(bt_future *inner, void *arg)
{
    timeout_state *ts = arg;
    bt_future *result = &ts->result;
    event_del(timeout_event(ts));
    if (ts->timed_out && !bt_future_cancel_requested(result)) {
        bt_future_error(inner);                           /* cancelled by us: nothing to report */
        const char *note = bt__future_cancel_note(inner); /* "the job is still running..." */
        bt_future_set_error(result, BT_ETIMEDOUT, "timed out after %" PRIu64 " ms%s%s", ts->ms,
                            note ? "; " : "", note ? note : "");
    } else {
        bt_future_set_from(result, inner);
    }
    ts->inner = NULL;
    bt_future_unref(inner);
    bt_future_unref(result); /* the state's: may free the block */
}

static void timeout_on_cancel(bt_future *result, void *arg)
{
    (void)result;
    timeout_state *ts = arg;
    event_del(timeout_event(ts));
    bt_future_cancel(ts->inner);
}

BT_EXPORT bt_future *bt_timeout(bt_future *f, uint64_t ms)
{
    if (f == NULL)
        return NULL;
    bt_loop *loop = f->loop;
    size_t ev_size = event_get_struct_event_size();
    timeout_state *ts = bt_calloc(1, sizeof *ts + ev_size);
    /* Three references: the caller's, the loop's, the state's. */
    if (ts == NULL || bt__future_init(&ts->result, loop, 3, timeout_release) == NULL) {
        bt_free(ts);
        bt__future_discard(f); /* taken over even when we fail */
        return NULL;
    }
    ts->loop = loop;
    ts->ms = ms;
    struct timeval tv = bt__timeval_ms(ms);
    bool armed = event_assign(timeout_event(ts), loop->base, -1, 0, timeout_on_timer, ts) == 0 &&
                 event_add(timeout_event(ts), &tv) == 0;
    if (!armed || bt_future_add_callback(f, timeout_on_inner, ts) != 0) {
        if (armed)
            event_del(timeout_event(ts));
        bt_future_set_cancelled(&ts->result); /* the loop's reference goes once it has run */
        bt_future_unref(&ts->result);
        bt_future_unref(&ts->result);
        bt__future_discard(f);
        return NULL;
    }
    ts->inner = f; /* the caller's reference, taken over */
    bt_future_on_cancel(&ts->result, timeout_on_cancel, ts);
    return &ts->result;
}
