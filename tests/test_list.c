/* The intrusive list of core/list.h: order, removal from anywhere,
 * idempotent unlink, splice, plain iteration and removal while iterating. */
#include <stddef.h>

#include "harness.h"
#include "list.h"

typedef struct {
    int v;
    bt__list link;
} item;

/* The values on the list, head to tail, as digits of one number. */
static int digits(const bt__list *head)
{
    int n = 0;
    for (const bt__list *p = head->next; p != head; p = p->next)
        n = n * 10 + BT__LIST_ENTRY(p, item, link)->v;
    return n;
}

START_TEST(push_pop_remove)
{
    bt__list head;
    item it[5];
    bt__list_init(&head);
    ck_assert(bt__list_empty(&head));
    ck_assert_ptr_null(bt__list_first(&head));
    ck_assert_ptr_null(bt__list_pop_front(&head));
    for (int i = 0; i < 5; i++) {
        it[i].v = i + 1;
        bt__list_init(&it[i].link);
        ck_assert(!bt__list_linked(&it[i].link));
    }
    bt__list_push_back(&head, &it[1].link);
    bt__list_push_back(&head, &it[2].link);
    bt__list_push_front(&head, &it[0].link);
    bt__list_push_back(&head, &it[3].link);
    ck_assert_int_eq(digits(&head), 1234);
    ck_assert(bt__list_linked(&it[2].link));

    bt__list_remove(&it[2].link); /* from the middle */
    ck_assert(!bt__list_linked(&it[2].link));
    ck_assert_int_eq(digits(&head), 124);
    bt__list_remove(&it[2].link); /* a second removal changes nothing */
    bt__list_remove(&it[4].link); /* nor does removing a node never linked */
    ck_assert_int_eq(digits(&head), 124);

    bt__list *first = bt__list_pop_front(&head);
    ck_assert_ptr_eq(first, &it[0].link);
    ck_assert(!bt__list_linked(first));
    bt__list_remove(&it[3].link); /* the tail */
    ck_assert_int_eq(digits(&head), 2);
    bt__list_remove(&it[1].link);
    ck_assert(bt__list_empty(&head));
}
END_TEST

START_TEST(splice_and_safe_iteration)
{
    bt__list a, b, *pos, *tmp;
    item it[6];
    bt__list_init(&a);
    bt__list_init(&b);
    for (int i = 0; i < 6; i++) {
        it[i].v = i + 1;
        bt__list_push_back(i < 3 ? &a : &b, &it[i].link);
    }
    bt__list_splice_back(&a, &b);
    ck_assert(bt__list_empty(&b));
    ck_assert_int_eq(digits(&a), 123456);
    bt__list_splice_back(&a, &b); /* an empty source changes nothing */
    ck_assert_int_eq(digits(&a), 123456);

    /* Remove the even values while walking. */
    BT__LIST_FOREACH_SAFE (pos, tmp, &a) {
        if (BT__LIST_ENTRY(pos, item, link)->v % 2 == 0)
            bt__list_remove(pos);
    }
    ck_assert_int_eq(digits(&a), 135);
    BT__LIST_FOREACH_SAFE (pos, tmp, &a)
        bt__list_remove(pos);
    ck_assert(bt__list_empty(&a));
}
END_TEST

START_TEST(plain_iteration)
{
    bt__list head, *pos;
    item it[3];
    bt__list_init(&head);
    int n = 0;
    BT__LIST_FOREACH (pos, &head)
        n++;
    ck_assert_int_eq(n, 0); /* an empty list runs no body */
    for (int i = 0; i < 3; i++) {
        it[i].v = i + 1;
        bt__list_push_back(&head, &it[i].link);
    }
    BT__LIST_FOREACH (pos, &head)
        n = n * 10 + BT__LIST_ENTRY(pos, item, link)->v;
    ck_assert_int_eq(n, 123);
}
END_TEST

static Suite *list_suite(void)
{
    Suite *s = suite_create("list");
    TCase *tc = tcase_create("list");
    tcase_add_test(tc, push_pop_remove);
    tcase_add_test(tc, splice_and_safe_iteration);
    tcase_add_test(tc, plain_iteration);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(list_suite)
