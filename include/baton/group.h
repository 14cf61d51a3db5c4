/* Baton: task groups (structured concurrency, asyncio.TaskGroup).
 *
 * A group watches the futures added to it. The first child to fail
 * cancels every other child still pending; the group's future settles only
 * when every child has settled, so when it does, nothing the group started
 * is still running. It fails with the first child's error code and a
 * message that adds how many other children failed; it is cancelled if the
 * group was cancelled; otherwise it settles with a NULL value. Children's
 * values stay in the children: keep a reference of your own to each child
 * whose value you want (bt_future_ref it before bt_group_add).
 *
 * Lifetime: create, add children, take the group's future with
 * bt_group_wait (that "closes" the group: with no children left it
 * settles), drop the handle with bt_group_free whenever you like (that also
 * closes it); the group lives on until its future settles.
 *
 * A child that someone else cancels does not fail the group (as in
 * asyncio). A group's optional deadline fails it with BT_ETIMEDOUT and
 * cancels the children, unless a child failed first.
 *
 * Thread: the loop's, for every function here.
 */
#ifndef BATON_GROUP_H
#define BATON_GROUP_H

#include <stddef.h>
#include <stdint.h>

#include <baton/common.h>
#include <baton/future.h>
#include <baton/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bt_group bt_group;

/* A new, empty, open group. Returns: a handle to free with bt_group_free,
 * or NULL (NULL loop, out of memory, the loop is being freed). */
BT_EXPORT bt_group *bt_group_new(bt_loop *loop);

/* Add a child. Takes over child (see common.h): the group holds the
 * caller's reference; bt_future_ref the child first to read its value
 * later. Returns 0; BT_ESHUTDOWN if the group is no longer taking children
 * (a child failed, it was cancelled, its deadline passed, or it has
 * settled); BT_EINVAL (NULL, or a child of another loop); BT_ENOMEM. On
 * any failure the child is cancelled if pending and released, so that
 * nothing escapes the group. */
BT_EXPORT int bt_group_add(bt_group *g, bt_future *child);

/* The group's future. Closes the group: once no child is pending, the
 * future settles. Children may still be added while it is pending (from a
 * child's callback, say). Returns: new reference (each call returns the
 * same future), or NULL for NULL. */
BT_EXPORT bt_future *bt_group_wait(bt_group *g);

/* Fail the group with BT_ETIMEDOUT and cancel its children if it has not
 * settled within ms milliseconds from now. A second call replaces the
 * first. Returns 0, BT_EALREADY if the group has settled, BT_EINVAL,
 * BT_ENOMEM. */
BT_EXPORT int bt_group_set_deadline(bt_group *g, uint64_t ms);

/* Cancel the group: every pending child is cancelled, and the group's
 * future settles cancelled once they all have settled. The same as
 * bt_future_cancel on the group's future. Returns 0, BT_EALREADY if it had
 * settled, BT_EINVAL. */
BT_EXPORT int bt_group_cancel(bt_group *g);

/* Children still pending. 0 for NULL. */
BT_EXPORT size_t bt_group_pending(const bt_group *g);

/* Children that failed with an error so far (the first and the others).
 * 0 for NULL. */
BT_EXPORT size_t bt_group_failed(const bt_group *g);

/* Drop the handle, closing the group (see bt_group_wait). The group keeps
 * running until its children have settled; nothing is cancelled. NULL is a
 * no-op. May be called after the loop was freed. */
BT_EXPORT void bt_group_free(bt_group *g);

#ifdef __cplusplus
}
#endif
#endif
