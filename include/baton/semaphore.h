/* Baton: an asynchronous semaphore (asyncio.Semaphore).
 *
 * Bounds how many operations run at once: "at most 100 requests at a
 * time". Acquiring is a future that settles (with a NULL value) when a
 * permit is granted. Waiters are served strictly in arrival order (FIFO):
 * a release hands its permit straight to the oldest waiter, and a new
 * acquire never overtakes a queue. A waiter that is cancelled leaves the
 * queue at once and takes no permit.
 *
 * Once an acquire future has settled with a value, its holder owns one
 * permit and must give it back with bt_semaphore_release, even if it lost
 * interest in the meantime. bt_semaphore_run does the acquire / release
 * pairing for you and is the idiom to prefer.
 *
 * Thread: the loop's, for every function here.
 */
#ifndef BATON_SEMAPHORE_H
#define BATON_SEMAPHORE_H

#include <stddef.h>

#include <baton/common.h>
#include <baton/compose.h>
#include <baton/future.h>
#include <baton/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bt_semaphore bt_semaphore;

/* A semaphore with `permits` permits (at least 1). Returns: a new semaphore
 * to free with bt_semaphore_free, or NULL (NULL loop, permits == 0, out of
 * memory). */
BT_EXPORT bt_semaphore *bt_semaphore_new(bt_loop *loop, size_t permits);

/* Free the semaphore. Waiters still queued are cancelled. Permits still
 * held must not be released afterwards. NULL is a no-op. A semaphore may be
 * freed after its loop (the loop's freeing cancelled the waiters). */
BT_EXPORT void bt_semaphore_free(bt_semaphore *s);

/* Ask for a permit. Returns: new reference to a future that settles with a
 * NULL value when the permit is granted (already settled if one was free
 * and nobody was waiting), or NULL (NULL s, out of memory). Cancel it to
 * leave the queue. */
BT_EXPORT bt_future *bt_semaphore_acquire(bt_semaphore *s);

/* Take a permit only if one is free and nobody is waiting. Returns 0 (a
 * permit is now held), BT_EAGAIN, or BT_EINVAL. */
BT_EXPORT int bt_semaphore_try_acquire(bt_semaphore *s);

/* Give a permit back; the oldest waiter, if any, gets it. Returns 0,
 * BT_ERANGE if no permit was held (a release without an acquire: a bug the
 * semaphore refuses instead of silently raising its bound), BT_EINVAL. */
BT_EXPORT int bt_semaphore_release(bt_semaphore *s);

/* Permits free now, and futures waiting. 0 for NULL. */
BT_EXPORT size_t bt_semaphore_available(const bt_semaphore *s);
BT_EXPORT size_t bt_semaphore_waiting(const bt_semaphore *s);

/* `async with sem: return await fn()`: acquire a permit, then call
 * fn(loop, arg) and adopt the future it returns; the permit is released
 * when that future settles, whatever its outcome. Cancelling the result
 * while it waits leaves the queue; once fn has run, it cancels fn's future.
 * If fn returns NULL the result fails with BT_ENOMEM. The semaphore must
 * outlive the result. Returns: new reference, or NULL (fn is then never
 * called). */
BT_EXPORT bt_future *bt_semaphore_run(bt_semaphore *s, bt_start_fn fn, void *arg);

#ifdef __cplusplus
}
#endif
#endif
