/* The future's insides, shared by core/ and offload/ (never installed). */
#ifndef BATON_FUTURE_INTERNAL_H
#define BATON_FUTURE_INTERNAL_H

#include <stdatomic.h>

#include <baton/future.h>

#include "list.h"
#include "loop-internal.h"

/* A callback beyond the first (which lives inside the future: most
 * futures have one), on the future's `cbs` list; or one added after the
 * future's callbacks ran: then it is queued as a task of its own. A node is
 * only ever one of the two, so they share the memory. */
typedef struct bt__future_cb_node {
    union {
        bt__list link; /* on f->cbs */
        bt__task task; /* queued late */
    };
    bt_future *future;
    bt_future_cb cb;
    void *arg;
} bt__future_cb_node;

/* Laid out small (144 bytes on LP64), the fields a settle touches first:
 * a pool job carries one in its block, and in a burst of 200,000 jobs the
 * blocks' size is what decides whether they fit in the cache. */
struct bt_future {
    _Atomic int refs;
    int code;
    _Atomic unsigned char state; /* bt_future_state */
    _Atomic bool cancel_requested;
    bool error_read;
    bool value_taken;
    bool cancel_hook_ran;
    bt_loop *loop;
    /* The thread that made it (its loop's, as a rule): compared, never
     * dereferenced, so a thread may test "is this mine?" even while the
     * loop is being freed elsewhere. */
    uintptr_t owner;

    /* Place in the loop's list of pending futures. */
    bt__list pend;

    void *value;
    bt_destroy_fn dtor;
    char *message;

    bt_cancel_hook cancel_hook;
    void *cancel_arg;

    /* The first callback, then the others in the order they came
     * (bt__future_cb_node.link); while the future is pending, cbs is empty
     * unless first_cb is set. */
    bt_future_cb first_cb;
    void *first_arg;
    bt__list cbs;

    /* Scheduled once settled: runs the callbacks, then drops the loop's
     * reference. */
    bt__task settle_task;

    /* Gives the memory back when the last reference goes; NULL: bt_free.
     * Set for futures that live inside a larger block (a pool job). */
    void (*release)(bt_future *f);
};

/* bt_future_value without the call, for readers that run once per child of
 * a combinator (bt_results_value): the value of a future settled with one
 * and not taken, else NULL. f must not be NULL. */
static inline void *bt__future_value(const bt_future *f)
{
    if (atomic_load_explicit(&f->state, memory_order_acquire) != BT_FUTURE_VALUE || f->value_taken)
        return NULL;
    return f->value;
}

/* Start a pending future of loop in zeroed memory the caller provides,
 * with `refs` references (the loop's among them: 2 is the caller's and
 * the loop's); release(f) frees that memory once the last reference is
 * dropped. Returns f, or NULL if loop is NULL or closing. Loop thread. */
bt_future *bt__future_init(bt_future *f, bt_loop *loop, int refs, void (*release)(bt_future *));

/* Settle f as the public setters do (the callbacks run on a later pass),
 * taking ownership of value and message. A producer's shortcut: no
 * formatting, no copy of the message. Loop thread. */
int bt__future_settle(bt_future *f, bt_future_state st, void *value, bt_destroy_fn dtor, int code,
                      char *message);

/* Settle f and run its callbacks now, then drop the loop's reference and
 * `drop` references of the caller's with one atomic operation (if f was
 * settled already, only the caller's). Only from a task the loop runs
 * directly, inside no user callback (a producer's completion task): the
 * callbacks must not run inside code that is settling or cancelling
 * something. Saves a pass through the ready queue per future. */
void bt__future_settle_now(bt_future *f, bt_future_state st, void *value, bt_destroy_fn dtor,
                           int code, char *message, int drop);

/* A cancelled future may carry a message from its producer, starting with
 * "cancelled; " and saying what went on after the cancel (a pool job
 * abandoned while it runs: "cancelled; the job is still running on the
 * pool"). Returns the text after that prefix, or NULL. Loop thread. */
const char *bt__future_cancel_note(const bt_future *f);

/* True once the callbacks registered before and while settling have run. */
bool bt__future_callbacks_done(const bt_future *f);

/* Cancel every pending future of the loop (bt_loop_free). Returns how many
 * were pending, and how many of those nobody but the loop referenced. */
size_t bt__future_cancel_all(bt_loop *loop, size_t *dropped);

/* For a function that takes over futures (see "Ownership" in common.h)
 * and fails: let go of f so that nothing is left behind and nothing is
 * reported as a mistake of the caller's. bt__future_abandon cancels f if
 * it is still pending (only from f's loop thread: a future of another
 * thread's loop is left to run) and marks an error already there as read,
 * since the caller learns of the failure from the function itself.
 * bt__future_discard does that and drops the reference. NULL is a no-op
 * for both. */
void bt__future_abandon(bt_future *f);
void bt__future_discard(bt_future *f);

#endif
