/* The sized-struct rule of core/sized.h (docs/design.md, "Structs that can
 * grow"), on a struct that has grown: a caller built against the first
 * layout passes a smaller size, and the library, which knows the second,
 * must read its fields with defaults for the rest and write only up to
 * its size. Today's public structs have not grown yet, so their tests
 * (test_pool, test_loop) can only show the first layout. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "sized.h"

/* The first layout, as an old caller compiled it, and the second, as the
 * library knows it now. */
typedef struct {
    size_t size;
    uint32_t a;
    uint32_t b;
} v1_struct;

typedef struct {
    size_t size;
    uint32_t a;
    uint32_t b;
    uint64_t added; /* appended in the second layout */
} v2_struct;

#define CANARY 0xA5

START_TEST(old_input_gets_defaults_for_new_fields)
{
    /* An old caller's struct with its bytes followed by garbage the
     * library must not take for the new field. */
    unsigned char buf[sizeof(v2_struct)];
    memset(buf, CANARY, sizeof buf);
    v1_struct old = { .size = sizeof(v1_struct), .a = 7, .b = 9 };
    memcpy(buf, &old, sizeof old);

    v2_struct mine = { .size = 0, .a = 1, .b = 2, .added = 42 }; /* defaults */
    bt__sized_read(&mine, sizeof mine, buf, ((v1_struct *)buf)->size);
    ck_assert_uint_eq(mine.size, sizeof(v2_struct));
    ck_assert_uint_eq(mine.a, 7);
    ck_assert_uint_eq(mine.b, 9);
    ck_assert_uint_eq(mine.added, 42);
}
END_TEST

START_TEST(old_output_is_written_only_up_to_its_size)
{
    unsigned char buf[sizeof(v2_struct) + 8];
    memset(buf, CANARY, sizeof buf);
    v1_struct old = { .size = sizeof(v1_struct) };
    memcpy(buf, &old, sizeof old);

    v2_struct full = { .a = 3, .b = 4, .added = 5 };
    bt__sized_write(buf, ((v1_struct *)buf)->size, &full, sizeof full);
    v1_struct got;
    memcpy(&got, buf, sizeof got);
    ck_assert_uint_eq(got.size, sizeof(v1_struct));
    ck_assert_uint_eq(got.a, 3);
    ck_assert_uint_eq(got.b, 4);
    for (size_t i = sizeof(v1_struct); i < sizeof buf; i++)
        ck_assert_uint_eq(buf[i], CANARY);
}
END_TEST

START_TEST(newer_caller_keeps_fields_the_library_lacks)
{
    /* The other way round: a caller newer than the library. Its extra
     * field is neither read nor written. */
    v2_struct caller = { .size = sizeof(v2_struct), .a = 1, .b = 2, .added = 77 };
    v1_struct lib = { .a = 5, .b = 6 };
    bt__sized_write(&caller, caller.size, &lib, sizeof lib);
    ck_assert_uint_eq(caller.size, sizeof(v2_struct));
    ck_assert_uint_eq(caller.a, 5);
    ck_assert_uint_eq(caller.added, 77);

    v1_struct in = { .a = 0 };
    bt__sized_read(&in, sizeof in, &caller, caller.size);
    ck_assert_uint_eq(in.size, sizeof(v1_struct));
    ck_assert_uint_eq(in.b, 6);
}
END_TEST

START_TEST(too_small_is_refused_with_a_hint)
{
    bt_test_log_capture();
    ck_assert_int_eq(
        bt__sized_check(0, BT__SIZE_V1(v1_struct, b), "f", "v1_struct", "BT_SIZED(v1_struct)"),
        BT_EINVAL);
    ck_assert(bt_test_log_contains("BT_SIZED(v1_struct)"));
    ck_assert_int_eq(bt__sized_check(BT__SIZE_V1(v1_struct, a), BT__SIZE_V1(v1_struct, b), "f",
                                     "v1_struct", "x"),
                     BT_EINVAL);
    ck_assert_int_eq(bt__sized_check(BT__SIZE_V1(v1_struct, b), BT__SIZE_V1(v1_struct, b), "f",
                                     "v1_struct", "x"),
                     0);
    bt_test_log_clear();
}
END_TEST

static Suite *sized_suite(void)
{
    Suite *s = suite_create("sized");
    TCase *tc = tcase_create("sized");
    tcase_add_test(tc, old_input_gets_defaults_for_new_fields);
    tcase_add_test(tc, old_output_is_written_only_up_to_its_size);
    tcase_add_test(tc, newer_caller_keeps_fields_the_library_lacks);
    tcase_add_test(tc, too_small_is_refused_with_a_hint);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(sized_suite)
