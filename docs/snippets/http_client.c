/* docs/http-client.md, "A tour": the snippet inside a complete program.
 * tests/check-snippets.sh checks that the page quotes it verbatim. It
 * calls https://api.example.com, so `make check` only builds and links it
 * (the HTTP client's own tests run against a local server); given
 * `--run`, it runs the tour with u1..u3 from its arguments. */
#include <stdio.h>
#include <string.h>

#include <baton/baton.h>
#include <baton/curl.h>

static void tour(bt_loop *loop, const char *u1, const char *u2, const char *u3)
{
    bt_http_client *c = bt_http_client_new(loop);       /* async with AsyncClient() */
    bt_http_client_set_base_url(c, "https://api.example.com/v1");
    bt_http_client_add_header(c, "Authorization", "Bearer ...");
    bt_http_client_set_timeouts(c, 5000, 10000, 2000);  /* connect, total, wait for a connection */
    bt_http_client_set_limits(c, 100, 10);              /* connections: total, per host */

    /* Retries are opt-in: idempotent requests on 429/502/503/504 and broken
     * connections, any request whose connection failed before sending. */
    bt_http_retry_policy rp;
    bt_http_retry_policy_init(&rp);                     /* 3 attempts, full jitter from 100 ms */
    rp.deadline_ms = 20000;                             /* all attempts and waits together */
    bt_http_client_set_retry(c, &rp);                   /* or per request: bt_http_request_set_retry */

    /* response = await client.get("users/1") */
    bt_future *f = bt_http_get(c, "users/1");
    bt_loop_run_until(loop, f);
    if (bt_future_error(f) == 0) {
        bt_http_response *r = bt_future_value(f);       /* borrowed */
        printf("%d %s\n", bt_http_response_status(r), bt_http_response_header(r, "content-type"));
        size_t len;
        const char *body = bt_http_response_body(r, &len);
        fwrite(body, 1, len, stdout);
    } else {
        fprintf(stderr, "%s: %s\n", bt_err_name(bt_future_error(f)), bt_future_error_message(f));
    }
    bt_future_unref(f);

    /* Any method, headers, query, body (bytes or a file streamed from disk). */
    bt_http_request *req = bt_http_request_new("POST", "search");
    bt_http_request_add_query(req, "q", "a b&c");       /* -> ?q=a%20b%26c */
    bt_http_request_add_header(req, "Content-Type", "application/json");
    bt_http_request_set_body(req, "{\"x\":1}", 7);      /* or _set_body_file(req, path) */
    bt_future *g = bt_http_client_send(c, req);         /* the client takes req */

    /* results = await asyncio.gather(*[client.get(u) for u in urls]) */
    bt_future *fs[3] = { bt_http_get(c, u1), bt_http_get(c, u2), bt_http_get(c, u3) };
    bt_future *all = bt_gather(loop, fs, 3, BT_GATHER_FAIL_FAST);

    bt_http_client_free(c);   /* cancels what is still in flight */

    bt_loop_run_until(loop, g);
    bt_loop_run_until(loop, all);
    bt_future_error(g);
    bt_future_error(all);
    bt_future_unref(g);
    bt_future_unref(all);
}

int main(int argc, char **argv)
{
    if (argc < 5 || strcmp(argv[1], "--run") != 0)
        return 0; /* built and linked: that is the test */
    bt_loop *loop = bt_loop_new();
    if (loop == NULL)
        return 1;
    tour(loop, argv[2], argv[3], argv[4]);
    bt_loop_free(loop);
    return 0;
}
