/* docs/offload.md: its four snippets inside one complete program.
 * tests/check-snippets.sh checks that the page quotes them verbatim; `make
 * check` runs it (leak-free under --enable-asan). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What the tour's hash job works on, and what it replies to. */
struct req {
    const char *data;
    size_t len;
};

static char *slow_hash(const char *data, size_t len)
{
    unsigned long h = 5381;
    for (size_t i = 0; i < len; i++)
        h = h * 33 + (unsigned char)data[i];
    char *out = malloc(32);
    if (out != NULL)
        snprintf(out, 32, "%016lx", h);
    return out;
}

static int replies;
static void reply(void *conn, const char *digest)
{
    printf("%s: %s\n", (const char *)conn, digest);
    replies++;
}
static void reply_error(void *conn, const char *message)
{
    fprintf(stderr, "%s: %s\n", (const char *)conn, message);
}

#include <baton/baton.h>
#include <baton/pool.h>

/* Runs on a worker thread: never touches the loop. */
static int hash_job(bt_job *job, void *arg)
{
    struct req *r = arg;
    char *digest = slow_hash(r->data, r->len);
    if (digest == NULL)
        return bt_job_fail(job, BT_ENOMEM, "hashing %zu bytes", r->len);
    bt_job_set_value(job, digest, free);  /* the future's value */
    return 0;
}

static void on_hashed(bt_future *f, void *arg)  /* on the loop thread */
{
    if (bt_future_error(f) == 0)
        reply(arg, bt_future_value(f));
    else
        reply_error(arg, bt_future_error_message(f));
}

static void start_hash(bt_loop *loop, struct req *r, void *conn)
{
    bt_future *f = bt_to_cpu(loop, hash_job, r);     /* CPU lane, default pool */
    bt_future_add_callback(f, on_hashed, conn);
    bt_future_unref(f);
}

static void configure_a_pool(void)
{
    bt_pool_config cfg;
    bt_pool_config_init(&cfg);
    cfg.cpu_threads = 8;           /* default: online cores */
    cfg.blocking_max = 32;         /* cap of the elastic lane (default 64) */
    cfg.blocking_idle_ms = 5000;   /* retire idle blocking threads (10 s) */
    cfg.cpu_queue_max = 10000;     /* bounds: a full lane fails at once */
    cfg.stack_size = 256 << 10;
    cfg.name = "web";              /* threads show as web-cpu-0, web-blk-3 */
    bt_pool *pool = bt_pool_new(&cfg);
    /* ... one pool shared by a loop per core ... */
    bt_pool_set_threads(pool, BT_LANE_CPU, 4);   /* resize at run time */
    bt_pool_free(pool);
}

static int files_ok;

static void read_and_write(bt_loop *loop, const void *buf, size_t len)
{
    bt_future *r = bt_fs_read_file(loop, "config.json", 1 << 20);  /* bt_fs_buf * */
    bt_future *w = bt_fs_write_file(loop, "state.json", buf, len, 0600);

    bt_loop_run_until(loop, r);
    bt_loop_run_until(loop, w);
    bt_fs_buf *b = bt_future_value(r);
    files_ok = bt_future_error(r) == 0 && bt_future_error(w) == 0 && b->len == 2;
    bt_future_unref(r);
    bt_future_unref(w);
}

/* The bridge: a price looked up on the loop for a plain thread. */
static bt_future *lookup_price(bt_loop *loop, void *arg)
{
    (void)arg;
    return bt_future_new_value(loop, strdup("4.20"), free);
}

static int bridged;
static void use(void *value) { bridged = strcmp(value, "4.20") == 0; }
#define log(...) (fprintf(stderr, __VA_ARGS__), fputc('\n', stderr))

static void *plain_thread(void *loop_arg)
{
    bt_loop *loop = loop_arg;
    char item[] = "item-7";
    /* On a plain thread (a legacy thread-per-request server): */
    bt_bridge_result res = BT_SIZED(bt_bridge_result);
    int rc = bt_bridge_call(loop, lookup_price, item, 500 /* ms */, &res);
    if (rc == 0) use(res.value); else log("%s: %s", bt_err_name(rc), res.message);
    bt_bridge_result_clear(&res);
    bt_loop_stop(loop);
    return NULL;
}

int main(void)
{
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;

    struct req r = {"hello", 5};
    start_hash(loop, &r, "conn-1");

    configure_a_pool();

    /* The file operations, in a folder of their own. */
    char dir[] = "/tmp/baton-snippet-XXXXXX";
    if (mkdtemp(dir) == NULL || chdir(dir) != 0)
        return 1;
    FILE *cf = fopen("config.json", "w");
    if (cf == NULL)
        return 1;
    fputs("{}", cf);
    fclose(cf);
    read_and_write(loop, "{\"n\":1}", 7);
    unlink("config.json");
    unlink("state.json");
    if (chdir("/") != 0 || rmdir(dir) != 0)
        return 1;

    pthread_t t;
    if (pthread_create(&t, NULL, plain_thread, loop) != 0)
        return 1;
    bt_loop_run(loop); /* until the plain thread stops it */
    pthread_join(t, NULL);
    /* On a busy machine the hash job may not have run yet: wait for its
     * reply (bounded), rather than have bt_loop_free report it cancelled. */
    for (int i = 0; i < 5000 && replies == 0; i++) {
        bt_future *tick = bt_sleep(loop, 1);
        bt_loop_run_until(loop, tick);
        bt_future_unref(tick);
    }

    bt_loop_free(loop);
    printf("replies %d, files %d, bridged %d\n", replies, files_ok, bridged);
    return replies == 1 && files_ok && bridged ? 0 : 1;
}
