/* README.md, "When to use it": the to_thread snippet inside a complete
 * program. tests/check-snippets.sh checks that the README quotes it
 * verbatim; `make check` runs it (leak-free under --enable-asan). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <baton/baton.h>

/* A blocking call of a synchronous library. */
static char *legacy_lookup(const char *key)
{
    usleep(300 * 1000);
    size_t n = strlen(key) + 16;
    char *out = malloc(n);
    if (out != NULL)
        snprintf(out, n, "value-of-%s", key);
    return out;
}

static int lookup_job(bt_job *job, void *arg)       /* runs on a worker */
{
    char *v = legacy_lookup(arg);                   /* blocks for 300 ms */
    if (v == NULL)
        return bt_job_fail(job, BT_ENOMEM, "lookup of %s", (const char *)arg);
    bt_job_set_value(job, v, free);
    return 0;
}

int main(void)
{
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;

    bt_future *f = bt_to_thread(loop, lookup_job, "user:42");  /* asyncio.to_thread */

    bt_loop_run_until(loop, f);
    int rc = bt_future_error(f);
    if (rc == 0)
        printf("%s\n", (const char *)bt_future_value(f));
    bt_future_unref(f);
    bt_loop_free(loop);
    return rc == 0 ? 0 : 1;
}
