/* fetch_urls: three GETs one after another, then all three at once with
 * bt_gather, printing both times.
 *
 * Mirrors the guide's "Running Tasks Concurrently": an httpx.AsyncClient
 * and asyncio.gather(*[fetch_url(client, url) for url in urls]) -- "if each
 * takes 200ms, the total is ~200ms instead of ~600ms".
 *
 * With no arguments it starts a small local server (evhttp, in a thread)
 * whose /users/N answers after 200 ms, and fetches three of those. Give it
 * URLs to fetch real ones instead:  ./fetch_urls https://example.com/ ...
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
#include <baton/compose.h>
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

static void show(const char *url, bt_future *f)
{
    if (bt_future_error(f) != 0) {
        printf("  %s: %s\n", url, bt_future_error_message(f));
        return;
    }
    bt_http_response *r = bt_future_value(f);
    size_t len;
    const char *body = bt_http_response_body(r, &len);
    printf("  %s: %d, %zu bytes: %.60s\n", url, bt_http_response_status(r), len, body);
}

int main(int argc, char **argv)
{
    static char local[3][64];
    const char *urls[16];
    size_t n = 0;
    if (argc > 1) {
        for (int i = 1; i < argc && n < 16; i++)
            urls[n++] = argv[i];
    } else {
        int port = start_local_server();
        if (port <= 0) {
            fprintf(stderr, "fetch_urls: could not start the local server\n");
            return 1;
        }
        for (int i = 0; i < 3; i++) {
            snprintf(local[i], sizeof local[i], "http://127.0.0.1:%d/users/%d", port, i + 1);
            urls[n++] = local[i];
        }
    }

    bt_loop *loop = bt_loop_new();
    bt_http_client *client = bt_http_client_new(loop);
    if (loop == NULL || client == NULL)
        return 1;
    bt_http_client_set_redirects(client, true, 10);
    int failed = 0;

    /* One after another: each GET waits for the one before. */
    uint64_t t0 = bt_hrtime();
    printf("sequential:\n");
    for (size_t i = 0; i < n; i++) {
        bt_future *f = bt_http_get(client, urls[i]);
        bt_loop_run_until(loop, f);
        show(urls[i], f);
        failed += bt_future_error(f) != 0;
        bt_future_unref(f);
    }
    double seq = (double)(bt_hrtime() - t0) / 1e6;

    /* All at once: results = await asyncio.gather(*[client.get(u) ...]) */
    t0 = bt_hrtime();
    bt_future *fs[16];
    for (size_t i = 0; i < n; i++)
        fs[i] = bt_http_get(client, urls[i]);
    bt_future *all = bt_gather(loop, fs, n, BT_GATHER_COLLECT);
    bt_loop_run_until(loop, all);
    double conc = (double)(bt_hrtime() - t0) / 1e6;
    printf("concurrent (gather):\n");
    bt_results *res = bt_future_value(all);
    for (size_t i = 0; i < n; i++) {
        show(urls[i], bt_results_future(res, i));
        failed += bt_results_error(res, i) != 0;
    }
    bt_future_unref(all); /* the gather took over fs[] */

    printf("sequential: %.0f ms, concurrent: %.0f ms\n", seq, conc);
    bt_http_client_free(client);
    bt_loop_free(loop);
    return failed ? 1 : 0;
}
