/* docs/http-server.md, "A tour": a complete program (tests/check-snippets.sh
 * checks that the page quotes it verbatim). It serves on port 8000 until
 * SIGINT or SIGTERM, so `make check` only builds and links it; the
 * server's own tests run real requests. */
#include <baton/http.h>

static bt_future *hello(bt_http_req *req, void *arg)
{
    (void)arg;
    return bt_http_respond_json(bt_http_req_loop(req), 200,
                                json_pack("{s:s}", "hello", bt_http_req_param(req, "name")));
}

int main(void)
{
    bt_http_app *app = bt_http_app_new();
    bt_http_app_route(app, "GET", "/hello/{name}", hello, NULL);
    bt_http_app_enable_metrics(app, "/metrics");
    int rc = bt_http_app_run(app, "0.0.0.0", 8000, NULL, NULL); /* until SIGINT/SIGTERM */
    bt_http_app_free(app);
    return rc == 0 ? 0 : 1;
}
