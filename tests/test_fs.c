/* File operations on the blocking lane: whole-file read and atomic write,
 * open/read/write/close/stat, errors that name the path, bad arguments. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <baton/fs.h>

#include "harness.h"

static bt_loop *loop;
static char dir[64];

static void setup(void)
{
    loop = bt_loop_new();
    ck_assert_ptr_nonnull(loop);
    strcpy(dir, "/tmp/bt-fs-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    bt_test_loop_free_clean(loop);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Settle f and return it (the caller unrefs). */
static bt_future *wait(bt_future *f)
{
    ck_assert_ptr_nonnull(f);
    bt_test_run_until(loop, f, 10000);
    return f;
}

static char *path_of(const char *name)
{
    static char p[128];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

START_TEST(write_then_read_whole_file)
{
    const char *text = "hello, baton\n";
    bt_future *w = wait(bt_fs_write_file(loop, path_of("a.txt"), text, strlen(text), 0600));
    ck_assert_int_eq(bt_future_error(w), 0);
    bt_future_unref(w);
    bt_future *r = wait(bt_fs_read_file(loop, path_of("a.txt"), 0));
    ck_assert_int_eq(bt_future_error(r), 0);
    bt_fs_buf *b = bt_future_value(r);
    ck_assert_uint_eq(b->len, strlen(text));
    ck_assert_str_eq(b->data, text);
    bt_future_unref(r);
    struct stat st;
    ck_assert_int_eq(stat(path_of("a.txt"), &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
}
END_TEST

START_TEST(write_file_replaces_atomically)
{
    char big[100000];
    memset(big, 'x', sizeof big);
    bt_future *w = wait(bt_fs_write_file(loop, path_of("b"), "old", 3, 0));
    bt_future_unref(w);
    w = wait(bt_fs_write_file(loop, path_of("b"), big, sizeof big, 0));
    ck_assert_int_eq(bt_future_error(w), 0);
    bt_future_unref(w);
    bt_future *r = wait(bt_fs_read_file(loop, path_of("b"), 0));
    ck_assert_uint_eq(((bt_fs_buf *)bt_future_value(r))->len, sizeof big);
    bt_fs_buf *b = bt_future_take_value(r);
    bt_future_unref(r);
    bt_fs_buf_free(b);
    /* No temporary file is left behind. */
    char cmd[160];
    snprintf(cmd, sizeof cmd, "test $(ls -A %s | wc -l) -eq 1", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(read_errors_name_the_path)
{
    bt_future *r = wait(bt_fs_read_file(loop, path_of("missing"), 0));
    ck_assert_int_eq(bt_future_error(r), BT_ENOENT);
    ck_assert_ptr_nonnull(strstr(bt_future_error_message(r), "missing"));
    bt_future_unref(r);
    bt_future *w = wait(bt_fs_write_file(loop, path_of("no/such/dir/f"), "x", 1, 0));
    ck_assert_int_eq(bt_future_error(w), BT_ENOENT);
    bt_future_unref(w);
    /* A size bound. */
    w = wait(bt_fs_write_file(loop, path_of("c"), "0123456789", 10, 0));
    bt_future_unref(w);
    r = wait(bt_fs_read_file(loop, path_of("c"), 5));
    ck_assert_int_eq(bt_future_error(r), BT_EMSGSIZE);
    bt_future_unref(r);
    r = wait(bt_fs_read_file(loop, dir, 0)); /* a folder */
    ck_assert_int_eq(bt_future_error(r), -EISDIR);
    bt_future_unref(r);
}
END_TEST

START_TEST(read_file_without_a_size)
{
    /* procfs reports size 0: the read goes on to end of file. */
    bt_future *r = wait(bt_fs_read_file(loop, "/proc/self/status", 0));
    ck_assert_int_eq(bt_future_error(r), 0);
    bt_fs_buf *b = bt_future_value(r);
    ck_assert_uint_gt(b->len, 0);
    ck_assert_ptr_nonnull(strstr(b->data, "Name:"));
    bt_future_unref(r);
}
END_TEST

START_TEST(open_write_read_close_stat)
{
    bt_future *o = wait(bt_fs_open(loop, path_of("d"), O_RDWR | O_CREAT | O_TRUNC, 0644));
    int fd = bt_fs_take_fd(o);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bt_fs_take_fd(o), BT_EALREADY);
    bt_future_unref(o);

    bt_future *w = wait(bt_fs_write(loop, fd, "abcdef", 6, -1));
    ck_assert_int_eq(bt_future_error(w), 0);
    ck_assert_uint_eq(*(size_t *)bt_future_value(w), 6);
    bt_future_unref(w);
    w = wait(bt_fs_write(loop, fd, "XY", 2, 2)); /* at an offset */
    bt_future_unref(w);

    bt_future *r = wait(bt_fs_read(loop, fd, 100, 0));
    ck_assert_int_eq(bt_future_error(r), 0);
    ck_assert_str_eq(((bt_fs_buf *)bt_future_value(r))->data, "abXYef");
    bt_future_unref(r);
    r = wait(bt_fs_read(loop, fd, 100, 6)); /* end of file */
    ck_assert_uint_eq(((bt_fs_buf *)bt_future_value(r))->len, 0);
    bt_future_unref(r);

    bt_future *s = wait(bt_fs_stat(loop, path_of("d")));
    ck_assert_int_eq(bt_future_error(s), 0);
    ck_assert_int_eq(((struct stat *)bt_future_value(s))->st_size, 6);
    bt_future_unref(s);
    s = wait(bt_fs_stat(loop, path_of("nope")));
    ck_assert_int_eq(bt_future_error(s), BT_ENOENT);
    bt_future_unref(s);

    bt_future *c = wait(bt_fs_close(loop, fd));
    ck_assert_int_eq(bt_future_error(c), 0);
    bt_future_unref(c);
    /* Reading a closed fd is an error, not a crash. */
    r = wait(bt_fs_read(loop, fd, 10, 0));
    ck_assert_int_eq(bt_future_error(r), BT_EBADF);
    bt_future_unref(r);
}
END_TEST

START_TEST(untaken_fd_is_closed)
{
    bt_future *o = wait(bt_fs_open(loop, "/dev/null", O_RDONLY, 0));
    ck_assert_int_eq(bt_future_error(o), 0);
    int fd = *(int *)bt_future_value(o);
    bt_future_unref(o); /* nobody took it */
    ck_assert_int_eq(fcntl(fd, F_GETFD), -1);
}
END_TEST

START_TEST(bad_arguments)
{
    ck_assert_ptr_null(bt_fs_read_file(NULL, "/x", 0));
    bt_future *f[6] = {
        bt_fs_read_file(loop, NULL, 0),
        bt_fs_write_file(loop, NULL, "x", 1, 0),
        bt_fs_write_file(loop, "/x", NULL, 1, 0),
        bt_fs_open(loop, NULL, O_RDONLY, 0),
        bt_fs_read(loop, -1, 1, 0),
        bt_fs_stat(loop, NULL),
    };
    for (int i = 0; i < 6; i++) {
        ck_assert_ptr_nonnull(f[i]);
        ck_assert_int_eq(bt_future_error(f[i]), BT_EINVAL);
        bt_future_unref(f[i]);
    }
    ck_assert_int_eq(bt_fs_take_fd(NULL), BT_EINVAL);
    bt_fs_buf_free(NULL);
}
END_TEST

static Suite *fs_suite(void)
{
    Suite *s = suite_create("fs");
    TCase *tc = tcase_create("fs");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, BT_TEST_TIMEOUT);
    tcase_add_test(tc, write_then_read_whole_file);
    tcase_add_test(tc, write_file_replaces_atomically);
    tcase_add_test(tc, read_errors_name_the_path);
    tcase_add_test(tc, read_file_without_a_size);
    tcase_add_test(tc, open_write_read_close_stat);
    tcase_add_test(tc, untaken_fd_is_closed);
    tcase_add_test(tc, bad_arguments);
    suite_add_tcase(s, tc);
    return s;
}

BT_TEST_MAIN(fs_suite)
