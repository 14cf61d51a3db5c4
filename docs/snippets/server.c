/* README.md, "FastAPI: the server": the snippet's parts inside a complete
 * program (examples/server.c is the whole service). tests/check-snippets.sh
 * checks that the README quotes these parts verbatim. The handler needs a
 * PostgreSQL pool and an upstream on each loop, so `make check` only
 * builds and links it; `make demo` and tests/test_server_demo run the
 * real service. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <baton/baton.h>
#include <baton/curl.h>
#include <baton/http.h>
#include <baton/pq.h>

typedef struct {
    bt_pq_pool *db;
    bt_http_client *http;
} loop_state;

typedef struct {
    char id[24];
} user_call;

/* Both parts settled: a real service would read them, hash on the CPU
 * lane and answer JSON (examples/server.c). */
static bt_future *on_fetched(bt_future *both, void *arg)
{
    user_call *uc = arg;
    bt_results *r = bt_future_value(both);
    bool ok = bt_results_error(r, 0) == 0 && bt_results_error(r, 1) == 0;
    return bt_http_respond_json(bt_future_loop(both), ok ? 200 : 502,
                                json_pack("{s:s}", "id", uc->id));
}

static bt_future *get_user(bt_http_req *req, void *arg)   /* @app.get("/user/{id}") */
{
    (void)arg;
    bt_loop *loop = bt_http_req_loop(req);
    loop_state *st = bt_http_req_loop_data(req);
    if (st == NULL)
        return bt_http_respond_error(loop, 503, "no database on this loop");
    user_call *uc = bt_calloc(1, sizeof *uc);
    if (uc == NULL)
        return NULL;
    bt_http_req_set_state(req, uc, bt_free);
    snprintf(uc->id, sizeof uc->id, "%s", bt_http_req_param(req, "id"));
    const char *params[] = {uc->id};
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:8001/profile/%s", uc->id);
    bt_future *parts[2] = {
        bt_pq_query(st->db, "SELECT name, email FROM users WHERE id = $1", 1, params),
        bt_http_get(st->http, url),
    };
    bt_future *both = bt_gather(loop, parts, 2, BT_GATHER_COLLECT);
    if (both == NULL)
        return NULL; /* out of memory; the gather cancelled both parts */
    return bt_future_after(both, on_fetched, uc);  /* hashes on the CPU lane, answers JSON */
}

static int serve(int port)
{
    bt_http_app *app = bt_http_app_new();
    bt_http_app_route(app, "GET", "/user/{id}", get_user, NULL);
    bt_http_app_enable_metrics(app, "/metrics");
    return bt_http_app_run(app, "127.0.0.1", port, NULL, NULL);  /* one loop per core; SIGTERM drains */
}

int main(int argc, char **argv)
{
    if (argc < 3 || strcmp(argv[1], "--run") != 0)
        return 0; /* built and linked: that is the test */
    return serve(atoi(argv[2])) == 0 ? 0 : 1;
}
