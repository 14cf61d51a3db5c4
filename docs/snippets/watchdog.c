/* docs/watchdog.md: the snippet inside a complete program.
 * tests/check-snippets.sh checks that the page quotes it verbatim; `make
 * check` runs it (leak-free under --enable-asan). */
#include <stdio.h>

#include <baton/baton.h>

static void stop(void *loop) { bt_loop_stop(loop); }

int main(void)
{
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;

    bt_watchdog_start(loop, 100);          /* threshold in ms; 0 = 100 ms */
    bt_watchdog_set_threshold(loop, 250);  /* any time */

    /* Some turns of the loop for the watchdog to measure. */
    bt_loop_call_soon(loop, stop, loop);
    bt_loop_run(loop);

    char *h = bt_watchdog_histogram(loop); /* readable text, bt_free it */
    bt_watchdog_stats st = BT_SIZED(bt_watchdog_stats);                  /* or the numbers */
    bt_watchdog_get_stats(loop, &st);
    bt_watchdog_stop(loop);                /* the off switch; bt_loop_free also stops it */

    int rc = h != NULL ? 0 : 1;
    if (h != NULL)
        fputs(h, stdout);
    bt_free(h);
    bt_loop_free(loop);
    return rc;
}
