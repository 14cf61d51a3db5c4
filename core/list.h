/* Baton internal: one intrusive doubly linked list for the whole tree.
 *
 * A list is a circular chain through a sentinel head (the shape of Linux's
 * list.h and libuv's queue.h): the empty list is a head that points at
 * itself, so insertion and removal never test for the ends and never need
 * the list they belong to. A node that is not on any list points at itself
 * too (after bt__list_init or bt__list_remove), so bt__list_linked tells
 * whether it is on one, and removing an unlinked node is a no-op.
 *
 * Everything here is static inline: the integrations are separate shared
 * objects built with hidden visibility, so a function in libbaton could not
 * be shared with them without exporting it. Not thread-safe: each list is
 * guarded by whoever owns it (most are loop-thread only).
 */
#ifndef BATON_CORE_LIST_H
#define BATON_CORE_LIST_H

#include <stdbool.h>
#include <stddef.h>

typedef struct bt__list {
    struct bt__list *next, *prev;
} bt__list;

/* The struct that holds `node` as its field `member`. */
#define BT__LIST_ENTRY(node, type, member) ((type *)(void *)((char *)(node)-offsetof(type, member)))

/* for (pos = first; pos != head; pos = next), where the body leaves pos
 * on the list. */
#define BT__LIST_FOREACH(pos, head) for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)

/* for (pos = first; pos != head; pos = next), where the body may remove
 * (or free) pos: `tmp` holds the next node before the body runs. */
#define BT__LIST_FOREACH_SAFE(pos, tmp, head)                        \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); \
         (pos) = (tmp), (tmp) = (pos)->next)

/* An empty list head, or an unlinked node. */
static inline void bt__list_init(bt__list *l)
{
    l->next = l->prev = l;
}

static inline bool bt__list_empty(const bt__list *head)
{
    return head->next == head;
}

/* True when node is on a list (it was inserted and not removed since). */
static inline bool bt__list_linked(const bt__list *node)
{
    return node->next != node;
}

static inline void bt__list__insert(bt__list *node, bt__list *prev, bt__list *next)
{
    node->prev = prev;
    node->next = next;
    prev->next = node;
    next->prev = node;
}

/* Append node at the tail: lists used as queues are served head first. */
static inline void bt__list_push_back(bt__list *head, bt__list *node)
{
    bt__list__insert(node, head->prev, head);
}

static inline void bt__list_push_front(bt__list *head, bt__list *node)
{
    bt__list__insert(node, head, head->next);
}

/* Unlink node from whatever list holds it and leave it unlinked. A node
 * that is not linked stays as it is. */
static inline void bt__list_remove(bt__list *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    bt__list_init(node);
}

/* The first node, or NULL for an empty list. */
static inline bt__list *bt__list_first(const bt__list *head)
{
    return bt__list_empty(head) ? NULL : head->next;
}

/* Remove and return the first node, or NULL for an empty list. */
static inline bt__list *bt__list_pop_front(bt__list *head)
{
    bt__list *node = bt__list_first(head);
    if (node != NULL)
        bt__list_remove(node);
    return node;
}

/* Move every node of `from` to the tail of `to`, in order; `from` ends empty. */
static inline void bt__list_splice_back(bt__list *to, bt__list *from)
{
    if (bt__list_empty(from))
        return;
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    bt__list_init(from);
}

#endif
