/* hello_installed: a first program against an installed Baton.
 *
 * README.md ("Install") quotes this file; .ci/run installs Baton into a
 * temporary prefix and builds it there with
 *     cc hello_installed.c $(pkg-config --cflags --libs baton baton-pq baton-curl)
 * It hands one job to the worker pool and prints what came back, and makes
 * (then frees) an HTTP client and a PostgreSQL pool: enough to show the
 * three libraries found, linked and loaded, with no server to talk to.
 */
#include <stdint.h>
#include <stdio.h>

#include <baton/baton.h>
#include <baton/curl.h>
#include <baton/pq.h>

static int answer_job(bt_job *job, void *arg) /* runs on a worker thread */
{
    (void)arg;
    bt_job_set_value(job, (void *)(intptr_t)42, NULL);
    return 0;
}

static void print_answer(bt_future *f, void *arg) /* back on the loop */
{
    (void)arg;
    if (bt_future_error(f) == 0)
        printf("the pool answered %d\n", (int)(intptr_t)bt_future_value(f));
}

static bt_future *main_async(bt_loop *loop, void *arg)
{
    (void)arg;
    bt_pq_options o;
    bt_pq_options_init(&o);
    o.conninfo = "postgresql:///postgres";
    o.min_size = 0; /* connect on first use: this program sends no query */
    bt_pq_pool *db = bt_pq_pool_new(loop, &o);
    bt_http_client *http = bt_http_client_new(loop);
    printf("made a PostgreSQL pool: %s, an HTTP client: %s\n", db != NULL ? "yes" : "no",
           http != NULL ? "yes" : "no");
    bt_http_client_free(http);
    bt_pq_pool_free(db);

    bt_future *f = bt_to_thread(loop, answer_job, NULL); /* asyncio.to_thread */
    bt_future_add_callback(f, print_answer, NULL);
    return f; /* bt_run takes this reference */
}

int main(void) { return bt_run(main_async, NULL) == 0 ? 0 : 1; }
