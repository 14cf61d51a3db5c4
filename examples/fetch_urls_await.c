/* fetch_urls_await: three GETs one after another, then all three at once,
 * in await style (examples/fetch_urls.c is the callback version).
 *
 *     async def fetch_url(client, url):
 *         return await client.get(url)
 *
 *     for u in urls: await fetch_url(client, u)                    # ~600 ms
 *     await asyncio.gather(*[fetch_url(client, u) for u in urls])  # ~200 ms
 *
 * With no arguments it starts a small local server (evhttp, in a thread)
 * whose /users/N answers after 200 ms, and fetches three of those. Give it
 * URLs to fetch real ones instead:  ./fetch_urls_await https://example.com/ ...
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include <baton/baton.h>
#include <baton/curl.h>

/* ---- The local stand-in for api.example.com ------------------------------ */

static struct event_base *srv_base;

static void reply_later(evutil_socket_t fd, short what, void *arg)
{
    struct evhttp_request *req = arg;
    (void)fd;
    (void)what;
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{\"path\": \"%s\", \"name\": \"Alice\"}", evhttp_request_get_uri(req));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct timeval delay = {0, 200 * 1000}; /* "each takes 200ms" */
    event_base_once(srv_base, -1, EV_TIMEOUT, reply_later, req, &delay);
}

static void *serve(void *arg)
{
    (void)arg;
    event_base_dispatch(srv_base);
    return NULL;
}

static int start_local_server(void)
{
    srv_base = event_base_new();
    struct evhttp *http = evhttp_new(srv_base);
    evhttp_set_gencb(http, on_request, NULL);
    struct evhttp_bound_socket *s = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
    if (s == NULL)
        return -1;
    struct sockaddr_storage ss;
    ev_socklen_t len = sizeof ss;
    getsockname(evhttp_bound_socket_get_fd(s), (struct sockaddr *)&ss, &len);
    pthread_t t;
    if (pthread_create(&t, NULL, serve, NULL) != 0)
        return -1;
    pthread_detach(t); /* runs until the process exits */
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* ---- The guide's program -------------------------------------------------- */

typedef struct {
    const char *urls[16];
    size_t n;
    bt_http_client *client;
} app;

static int show(const char *url, int rc, bt_http_response *r, const char *msg)
{
    if (rc != 0) {
        printf("  %s: %s\n", url, msg);
        return 1;
    }
    size_t len;
    const char *body = bt_http_response_body(r, &len);
    printf("  %s: %d, %zu bytes: %.60s\n", url, bt_http_response_status(r), len, body);
    return 0;
}

static bt_future *main_async(bt_loop *loop, void *arg)
{
    app *a = arg;
    int failed = 0;

    /* One after another: each GET waits for the one before. */
    uint64_t t0 = bt_hrtime();
    printf("sequential:\n");
    for (size_t i = 0; i < a->n; i++) {
        bt_http_response *r;
        int rc = bt_await(bt_http_get(a->client, a->urls[i]), (void **)&r);
        failed += show(a->urls[i], rc, r, bt_await_error());
        bt_http_response_free(r);
    }
    double seq = (double)(bt_hrtime() - t0) / 1e6;

    /* All at once: results = await asyncio.gather(*[client.get(u) ...]) */
    t0 = bt_hrtime();
    bt_future *fs[16];
    for (size_t i = 0; i < a->n; i++)
        fs[i] = bt_http_get(a->client, a->urls[i]);
    bt_future *all = bt_gather(loop, fs, a->n, BT_GATHER_COLLECT); /* takes them */
    bt_results *res;
    int rc = bt_await(all, (void **)&res);
    double conc = (double)(bt_hrtime() - t0) / 1e6;
    if (rc != 0)
        return bt_future_new_error(loop, rc, "gather: %s", bt_await_error());
    printf("concurrent (gather):\n");
    for (size_t i = 0; i < a->n; i++) {
        int e = bt_results_error(res, i);
        failed += show(a->urls[i], e, bt_results_value(res, i), bt_results_error_message(res, i));
    }
    bt_results_free(res);
    printf("sequential: %.0f ms, concurrent: %.0f ms\n", seq, conc);
    return failed ? bt_future_new_error(loop, BT_EHTTP, "%d request(s) failed", failed)
                  : bt_future_new_value(loop, NULL, NULL);
}

int main(int argc, char **argv)
{
    static char local[3][64];
    app a = {.n = 0};
    if (argc > 1) {
        for (int i = 1; i < argc && a.n < 16; i++)
            a.urls[a.n++] = argv[i];
    } else {
        int port = start_local_server();
        if (port <= 0) {
            fprintf(stderr, "fetch_urls_await: could not start the local server\n");
            return 1;
        }
        for (int i = 0; i < 3; i++) {
            snprintf(local[i], sizeof local[i], "http://127.0.0.1:%d/users/%d", port, i + 1);
            a.urls[a.n++] = local[i];
        }
    }
    bt_loop *loop = bt_loop_new();
    a.client = loop ? bt_http_client_new(loop) : NULL;
    if (a.client == NULL)
        return 1;
    bt_http_client_set_redirects(a.client, true, 10);
    bt_future *f = bt_async(loop, main_async, &a);
    bt_loop_run_until(loop, f);
    int rc = bt_future_error(f);
    if (rc != 0)
        fprintf(stderr, "fetch_urls_await: %s\n", bt_future_error_message(f));
    bt_future_unref(f);
    bt_http_client_free(a.client);
    bt_loop_free(loop);
    return rc == 0 ? 0 : 1;
}
