/* docs/http-server.md, "TLS": a complete program (tests/check-snippets.sh
 * checks that the page quotes it verbatim). It serves HTTPS on port 8443
 * until SIGINT or SIGTERM and needs a certificate, so `make check` only
 * builds and links it; tests/test_http_tls.c runs real handshakes. */
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
    int rc = bt_http_app_set_tls(app, "/etc/baton/fullchain.pem", "/etc/baton/privkey.pem");
    if (rc == 0) /* else logged: which file, and OpenSSL's reason */
        rc = bt_http_app_run(app, "0.0.0.0", 8443, NULL, NULL); /* SIGHUP reloads the certificate */
    bt_http_app_free(app);
    return rc == 0 ? 0 : 1;
}
