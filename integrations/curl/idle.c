/* The idle sweep: no connection lingers in curl's cache, holding its
 * socket, longer than the client's idle bound.
 *
 * DESIGN
 * - The problem: a server that closes a kept-alive connection leaves our
 *   socket in CLOSE_WAIT inside curl's connection cache. libcurl 7.88
 *   checks cached connections (readable at EOF means dead; idle longer
 *   than CURLOPT_MAXAGE_CONN means too old) only in one place: when a
 *   transfer looks for a connection (create_conn's prune, at most once a
 *   second). It reports no idle socket to the socket callback and has no
 *   call to prune the cache, so a client that sent one request and then
 *   went quiet held the socket until its next request or
 *   curl_multi_cleanup.
 * - The sweep: a libevent timer on the loop, armed while curl has sockets
 *   open (counted by the open and close socket callbacks), fires every
 *   max(1 s, idle_ms / 2) and adds one easy handle to the multi handle.
 *   That transfer makes curl run its prune (dead and aged connections
 *   closed through the close socket callback, after CURL_POLL_REMOVE for
 *   any watched one), and then ends at once without a byte on the wire:
 *   it asks for a fresh connection to 127.0.0.1 (a numeric address, so no
 *   resolver thread starts) and its open socket callback refuses to make
 *   a socket. Its CURLMSG_DONE is swallowed by bt__http_flush.
 * - Every transfer carries CURLOPT_MAXAGE_CONN from the same bound, so a
 *   connection idle that long is neither reused nor kept. curl counts in
 *   whole seconds and prunes when the whole seconds idle exceed the
 *   option: the option is the bound in seconds minus one.
 * - Threads: everything here runs on the loop thread, outside curl (a
 *   libevent timer; the sweep's handle is added and removed with curl off
 *   the stack).
 */
#include "config.h"

#include "curl-internal.h"
#include "timeval.h"

#include <event2/event.h>

#include <baton/loop.h>

#define DEFAULT_IDLE_MS 60000

static curl_socket_t on_sweep_socket(void *clientp, curlsocktype purpose,
                                     struct curl_sockaddr *addr)
{
    (void)clientp;
    (void)purpose;
    (void)addr;
    return CURL_SOCKET_BAD; /* the sweep never connects */
}

static size_t on_sweep_write(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

static uint64_t sweep_period_ms(const bt_http_client *c)
{
    return c->idle_ms / 2 > 1000 ? c->idle_ms / 2 : 1000;
}

/* curl prunes a connection when the whole seconds it has been idle exceed
 * CURLOPT_MAXAGE_CONN: the idle period, rounded up to seconds, less one. */
static long idle_age_s(const bt_http_client *c)
{
    return (long)((c->idle_ms + 999) / 1000) - 1;
}

void bt__idle_options(bt_http_client *c, CURL *easy)
{
    if (c->idle_ms)
        curl_easy_setopt(easy, CURLOPT_MAXAGE_CONN, idle_age_s(c));
}

static CURL *sweep_handle(bt_http_client *c)
{
    if (c->sweep != NULL)
        return c->sweep;
    CURL *e = curl_easy_init();
    if (e == NULL)
        return NULL;
    curl_easy_setopt(e, CURLOPT_URL, "http://127.0.0.1:9/");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L); /* never reuse, so never send */
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_sweep_socket);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_sweep_write);
    curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
    c->sweep = e;
    return e;
}

static void on_sweep_timer(evutil_socket_t fd, short events, void *arg)
{
    bt_http_client *c = arg;
    (void)fd;
    (void)events;
    c->sweep_armed = false;
    if (c->closed || c->idle_ms == 0)
        return;
    CURL *e = sweep_handle(c);
    if (e != NULL) {
        /* Still there from the last sweep (queued behind the connection
         * limits): its prune already ran; run it again. */
        if (c->sweep_in_multi) {
            curl_multi_remove_handle(c->multi, e);
            c->sweep_in_multi = false;
        }
        curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, idle_age_s(c));
        if (curl_multi_add_handle(c->multi, e) == CURLM_OK)
            c->sweep_in_multi = true;
        /* curl asks for a 0 ms timeout: the prune runs on the next turn. */
    }
    bt__idle_arm(c);
}

void bt__idle_arm(bt_http_client *c)
{
    if (c->sweep_armed || c->idle_ms == 0 || c->closed || c->nsockets == 0)
        return;
    uint64_t ms = sweep_period_ms(c);
    struct timeval tv = bt__timeval_ms(ms);
    evtimer_add(c->sweep_timer, &tv);
    c->sweep_armed = true;
}

bool bt__idle_sweep_done(bt_http_client *c, CURL *easy)
{
    if (easy != c->sweep || c->sweep == NULL)
        return false;
    curl_multi_remove_handle(c->multi, easy);
    c->sweep_in_multi = false;
    return true;
}

int bt__idle_init(bt_http_client *c)
{
    c->sweep_timer = evtimer_new(c->base, on_sweep_timer, c);
    if (c->sweep_timer == NULL)
        return BT_ENOMEM;
    c->idle_ms = DEFAULT_IDLE_MS;
    return 0;
}

void bt__idle_shutdown(bt_http_client *c)
{
    if (c->sweep != NULL) {
        if (c->sweep_in_multi)
            curl_multi_remove_handle(c->multi, c->sweep);
        curl_easy_cleanup(c->sweep);
        c->sweep = NULL;
        c->sweep_in_multi = false;
    }
    if (c->sweep_timer != NULL) {
        event_free(c->sweep_timer);
        c->sweep_timer = NULL;
    }
    c->sweep_armed = false;
}

BT_EXPORT int bt_http_client_set_idle_timeout(bt_http_client *c, uint64_t idle_ms)
{
    if (c == NULL || c->closed)
        return BT_EINVAL;
    if ((idle_ms > 0 && idle_ms < 1000) || idle_ms > BT__CURL_MAX_WAIT_MS) {
        bt_log(BT_LOG_WARN,
               "bt_http_client_set_idle_timeout: %llu ms is out of range (0, or 1000 ms to "
               "30 days)",
               (unsigned long long)idle_ms);
        return BT_EINVAL;
    }
    c->idle_ms = idle_ms;
    /* Disarm, then arm with the new period (a shorter one takes effect
     * now; 0 leaves it disarmed). */
    if (c->sweep_armed) {
        evtimer_del(c->sweep_timer);
        c->sweep_armed = false;
    }
    bt__idle_arm(c);
    c->gen++;
    return 0;
}
