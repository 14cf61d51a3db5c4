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

/* ---- Results ------------------------------------------------------------- */

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
    bt_free(r->kids);
    bt_free(r);
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
    return bt_future_value(bt_results_future(r, i));
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

typedef enum { FAN_GATHER_FAST, FAN_GATHER_COLLECT, FAN_RACE, FAN_ANY } fan_kind;

typedef struct fan fan;
typedef struct {
    fan *fan;
    size_t index;
} fan_slot;

struct fan {
    fan_kind kind;
    bt_future *result; /* owned reference */
    bt_future **kids;  /* owned references; NULLed when moved to results */
    fan_slot *slots;
    size_t n;
    size_t left;    /* child callbacks still to run */
    int first_code; /* any: the first child's error */
    char *first_msg;
};

static void fan_free(fan *fa)
{
    if (fa->kids)
        for (size_t i = 0; i < fa->n; i++)
            bt_future_unref(fa->kids[i]);
    bt_free(fa->kids);
    bt_free(fa->slots);
    bt_free(fa->first_msg);
    bt_future_unref(fa->result);
    bt_free(fa);
}

static void fan_cancel_others(fan *fa, size_t except)
{
    for (size_t i = 0; i < fa->n; i++)
        if (i != except && fa->kids[i] != fa->kids[except])
            bt_future_cancel(fa->kids[i]); /* BT_EALREADY for settled ones */
}

static void fan_on_cancel(bt_future *result, void *arg)
{
    (void)result;
    fan *fa = arg;
    for (size_t i = 0; i < fa->n; i++)
        bt_future_cancel(fa->kids[i]);
}

/* A child settled while the result is still ours to settle. */
static void fan_decide(fan *fa, bt_future *kid, size_t i)
{
    bt_future_state st = bt_future_get_state(kid);
    switch (fa->kind) {
    case FAN_GATHER_COLLECT:
        break;
    case FAN_GATHER_FAST:
        if (st == BT_FUTURE_ERROR) {
            bt_future_set_from(fa->result, kid);
            fan_cancel_others(fa, i);
        } else if (st == BT_FUTURE_CANCELLED) {
            bt_future_set_error(fa->result, BT_ECANCELED, "gather: child %zu was cancelled", i);
            fan_cancel_others(fa, i);
        }
        break;
    case FAN_RACE:
        if (st == BT_FUTURE_CANCELLED)
            bt_future_set_error(fa->result, BT_ECANCELED, "race: child %zu was cancelled", i);
        else
            bt_future_set_from(fa->result, kid);
        fan_cancel_others(fa, i);
        break;
    case FAN_ANY:
        if (st == BT_FUTURE_VALUE) {
            bt_future_set_from(fa->result, kid);
            fan_cancel_others(fa, i);
        } else if (fa->first_code == 0) {
            fa->first_code = bt_future_error(kid);
            fa->first_msg = bt_strdup(bt_future_error_message(kid));
        } else {
            bt_future_error(kid); /* read: the first error speaks for all */
        }
        break;
    }
}

/* Every child has settled and the result is still pending. */
static void fan_finish(fan *fa)
{
    if (bt_future_cancel_requested(fa->result)) {
        bt_future_set_cancelled(fa->result);
        return;
    }
    switch (fa->kind) {
    case FAN_GATHER_FAST:
    case FAN_GATHER_COLLECT: {
        bt_results *r = bt_malloc(sizeof *r);
        if (r == NULL) {
            bt_future_set_error(fa->result, BT_ENOMEM, "gather: out of memory for the results");
            return;
        }
        r->n = fa->n;
        r->kids = fa->kids; /* the references move to the results */
        fa->kids = NULL;
        bt_future_set_value(fa->result, r, results_destroy);
        break;
    }
    case FAN_ANY:
        bt_future_set_error(fa->result, fa->first_code ? fa->first_code : BT_ECANCELED,
                            "any: all %zu children failed; the first: %s", fa->n,
                            fa->first_msg ? fa->first_msg : "cancelled");
        break;
    case FAN_RACE: /* the first child always decides */
        break;
    }
}

static void fan_on_child(bt_future *kid, void *arg)
{
    fan_slot *slot = arg;
    fan *fa = slot->fan;
    if (bt_future_is_settled(fa->result)) {
        bt_future_error(kid); /* consumed: the result has spoken */
    } else if (!bt_future_cancel_requested(fa->result)) {
        fan_decide(fa, kid, slot->index);
    }
    if (--fa->left == 0) {
        if (!bt_future_is_settled(fa->result))
            fan_finish(fa);
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
    fan *fa = n <= SIZE_MAX / sizeof(fan_slot) ? bt_calloc(1, sizeof *fa) : NULL;
    if (fa == NULL) {
        discard_children(children, n);
        return NULL;
    }
    fa->kind = kind;
    fa->n = n;
    fa->kids = bt_calloc(n, sizeof *fa->kids);
    fa->slots = bt_calloc(n, sizeof *fa->slots);
    fa->result = fa->kids && fa->slots ? bt_future_new(loop) : NULL;
    if (fa->result == NULL) {
        bt_free(fa->kids);
        fa->kids = NULL;
        fan_free(fa);
        discard_children(children, n);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        fa->slots[i].fan = fa;
        fa->slots[i].index = i;
        fa->kids[i] = children[i]; /* the caller's reference, taken over */
    }
    for (size_t i = 0; i < n; i++) {
        if (bt_future_add_callback(children[i], fan_on_child, &fa->slots[i]) != 0) {
            /* Out of memory: abandon every child (the fan owns their
             * references now). The callbacks already added will run and,
             * as the result is settled, only free the fan. */
            bt_future_set_cancelled(fa->result);
            for (size_t j = 0; j < n; j++)
                bt__future_abandon(fa->kids[j]);
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

typedef struct {
    bt_future *result; /* owned */
    bt_future *inner;  /* owned */
    bt_timer *timer;
    uint64_t ms;
    bool timed_out;
} timeout_state;

static void timeout_on_timer(bt_timer *t, void *arg)
{
    (void)t;
    timeout_state *ts = arg;
    /* Settled in the same turn, its callback not yet run: it wins. */
    if (bt_future_is_settled(ts->inner))
        return;
    ts->timed_out = true;
    bt_future_cancel(ts->inner);
}

static void timeout_on_inner(bt_future *inner, void *arg)
{
    timeout_state *ts = arg;
    bt_timer_free(ts->timer);
    if (ts->timed_out && !bt_future_cancel_requested(ts->result)) {
        bt_future_error(inner);                           /* cancelled by us: nothing to report */
        const char *note = bt__future_cancel_note(inner); /* "the job is still running..." */
        bt_future_set_error(ts->result, BT_ETIMEDOUT, "timed out after %" PRIu64 " ms%s%s", ts->ms,
                            note ? "; " : "", note ? note : "");
    } else {
        bt_future_set_from(ts->result, inner);
    }
    bt_future_unref(ts->result);
    bt_future_unref(ts->inner);
    bt_free(ts);
}

static void timeout_on_cancel(bt_future *result, void *arg)
{
    (void)result;
    timeout_state *ts = arg;
    bt_timer_stop(ts->timer);
    bt_future_cancel(ts->inner);
}

BT_EXPORT bt_future *bt_timeout(bt_future *f, uint64_t ms)
{
    if (f == NULL)
        return NULL;
    timeout_state *ts = bt_calloc(1, sizeof *ts);
    if (ts == NULL) {
        bt__future_discard(f);
        return NULL;
    }
    ts->ms = ms;
    ts->timer = bt_timer_new(f->loop, timeout_on_timer, ts);
    ts->result = ts->timer ? bt_future_new(f->loop) : NULL;
    if (ts->result == NULL || bt_timer_start(ts->timer, ms, 0) != 0 ||
        bt_future_add_callback(f, timeout_on_inner, ts) != 0) {
        bt_timer_free(ts->timer);
        if (ts->result) {
            bt_future_set_cancelled(ts->result);
            bt_future_unref(ts->result);
        }
        bt_free(ts);
        bt__future_discard(f); /* taken over even when we fail */
        return NULL;
    }
    ts->inner = f; /* the caller's reference, taken over */
    bt_future_on_cancel(ts->result, timeout_on_cancel, ts);
    return bt_future_ref(ts->result);
}
