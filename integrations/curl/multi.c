/* The HTTP client's engine: one curl multi handle on the loop's event_base.
 *
 * DESIGN
 * - Wiring (curl's "multi_socket" API): curl tells us which sockets to
 *   watch (on_socket, CURLMOPT_SOCKETFUNCTION) and when to wake it
 *   (on_curl_timer, CURLMOPT_TIMERFUNCTION); we hand events back with
 *   curl_multi_socket_action, and drain curl_multi_info_read after every
 *   call. Both callbacks only touch libevent: curl forbids calling into
 *   the multi handle from its callbacks, so a timeout of 0 is a zero-delay
 *   libevent timer, not a direct socket_action. CURL_POLL_REMOVE means
 *   "stop watching": the socket may live on in curl's connection cache.
 * - User code runs inside curl only through a streaming body callback.
 *   While curl is on the stack (in_curl > 0), whatever would call into the
 *   multi handle is deferred: a cancelled transfer is marked and removed,
 *   a new request is added, and a client free is done, right after
 *   curl_multi_socket_action returns (still the same loop turn).
 * - Futures: a transfer keeps a plain pointer to its future until it
 *   settles it (the loop keeps a pending future alive). Settling never
 *   runs callbacks inline, so settling from inside curl is safe.
 *   Cancellation settles at once and removes the transfer at once (or
 *   right after curl returns), which closes or frees its connection slot.
 * - Timeouts: curl's CURLOPT_TIMEOUT counts the time a transfer waits
 *   behind CURLMOPT_MAX_*_CONNECTIONS, so the total timeout is our own
 *   libevent timer, started when the transfer gets a connection (curl's
 *   open-socket or pre-request callback, whichever comes first). Before
 *   that the same timer measures the wait for a connection. Timers with
 *   the client's default durations use libevent's common timeouts (O(1)).
 * - Shutdown: a loop closer cancels every transfer and cleans up the multi
 *   handle before the loop frees its event_base.
 * - fd numbers: libcurl 7.88 closes a socket that is still connecting (a
 *   cancel, the connect timeout, a happy-eyeballs loser) with a plain
 *   close() and only then reports CURL_POLL_REMOVE. Had libevent watched
 *   curl's fd, event_del would hand epoll_ctl a number that is no longer
 *   ours: another thread may have opened it in between (TSan reported the
 *   race on that file descriptor), or curl itself, for its next attempt,
 *   in which case curl sees the same number with the same interest, says
 *   nothing, and the new socket was never in epoll. So libevent watches
 *   a duplicate (F_DUPFD_CLOEXEC) that only the client closes, after
 *   event_del; a number curl hands back from its open socket callback
 *   while a watch still holds it moves that watch to the new socket; and
 *   a watch still open when curl's close socket callback runs drops its
 *   duplicate then.
 * - A connection's watch lives from curl's open socket callback to its
 *   close socket callback, indexed by fd (byfd). Once curl has connected
 *   the socket, the watch keeps its duplicate across the CURL_POLL_REMOVE
 *   that ends each transfer on a kept-alive connection, and the next
 *   transfer re-arms it (one epoll_ctl). A new duplicate per transfer
 *   cost a dup and a close per request, about a tenth of
 *   bench/http_get's requests per second. So one dup and one close per
 *   connection, none per request or event.
 * - When to let go of it. curl 7.88 closes a socket that is still
 *   connecting (a cancel, the connect timeout, a happy-eyeballs loser)
 *   with a plain close(), not through the close socket callback, and then
 *   says CURL_POLL_REMOVE; a socket that has connected (the winner, made
 *   "active") it closes through the callback. So a watch lets go of its
 *   duplicate at CURL_POLL_REMOVE unless its socket connected, which the
 *   watch knows by curl asking to read it (curl asks only to write to a
 *   TCP socket that is connecting; an HTTP/3 attempt would read while
 *   connecting, and the client never asks for HTTP/3). Else the
 *   duplicate would keep the half-open socket alive, and its byfd entry
 *   could be taken for another socket on the same number (the threaded
 *   resolver's, which curl does not open through us). Those other
 *   sockets get a duplicate per watch.
 */
#include "config.h"

#include "curl-internal.h"
#include "timeval.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include <baton/loop.h>

/* ---- Socket and timer wiring --------------------------------------------- */

static void curl_action(bt_http_client *c, curl_socket_t fd, int mask)
{
    int running = 0;
    c->in_curl++;
    curl_multi_socket_action(c->multi, fd, mask, &running);
    c->in_curl--;
    c->still_running = (size_t)running;
    bt__http_flush(c);
}

static void on_sock_event(evutil_socket_t evfd, short events, void *arg)
{
    sockwatch *w = arg;
    bt_http_client *c = w->c;
    curl_socket_t fd = w->fd; /* curl's number, not our duplicate */
    (void)evfd;
    int mask =
        ((events & EV_READ) ? CURL_CSELECT_IN : 0) | ((events & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    bt_loop *loop = c->loop; /* c may be freed by a deferred free */
    bt_loop_enter_cb(loop, (const void *)on_sock_event);
    curl_action(c, fd, mask); /* w may be gone after this */
    bt_loop_leave_cb(loop);
}

static void watch_disarm(sockwatch *w)
{
    if (w->armed)
        event_del(w->ev);
    w->armed = false;
}

/* Watch w->fd for w->kind, through a new duplicate if w has none. If none
 * can be made (EMFILE), watch curl's fd itself: the old behaviour, racy
 * as above. */
static void watch_arm(sockwatch *w)
{
    watch_disarm(w);
    if (w->evfd < 0) {
        w->evfd = fcntl(w->fd, F_DUPFD_CLOEXEC, 0);
        if (w->evfd < 0)
            w->evfd = w->fd;
    }
    event_assign(w->ev, w->c->base, w->evfd, w->kind, on_sock_event, w);
    event_add(w->ev, NULL);
    w->armed = true;
}

/* Stop watching: event_del on our duplicate, then close it. */
static void watch_detach(sockwatch *w)
{
    watch_disarm(w);
    if (w->evfd >= 0 && w->evfd != w->fd)
        close(w->evfd);
    w->evfd = -1;
}

static sockwatch *byfd_get(const bt_http_client *c, curl_socket_t s)
{
    return s >= 0 && (size_t)s < c->nbyfd ? c->byfd[s] : NULL;
}

/* Let go of w's socket as a connection: curl closed it. */
static void watch_unconn(sockwatch *w)
{
    if (!w->conn)
        return;
    w->c->byfd[w->fd] = NULL;
    w->conn = false;
}

/* Free w if nothing holds it: curl (assigned) or its open socket (conn). */
static void watch_maybe_free(sockwatch *w)
{
    if (w->assigned || w->conn)
        return;
    watch_detach(w);
    bt__list_remove(&w->node);
    bt_free(w);
}

static sockwatch *watch_new(bt_http_client *c, curl_socket_t s)
{
    sockwatch *w = bt_calloc(1, sizeof *w + event_get_struct_event_size());
    if (w == NULL)
        return NULL;
    w->c = c;
    w->fd = s;
    w->evfd = -1;
    w->ev = (struct event *)(w + 1);
    bt__list_push_front(&c->watches, &w->node);
    return w;
}

/* A watch curl still holds on number s, made before curl closed that
 * socket without CURL_POLL_REMOVE (not in byfd: never a connection's, or
 * closed as one). A list walk: rare, once per new connection. */
static sockwatch *watch_find_held(bt_http_client *c, curl_socket_t s)
{
    bt__list *n;
    BT__LIST_FOREACH (n, &c->watches) {
        sockwatch *w = BT__LIST_ENTRY(n, sockwatch, node);
        if (w->fd == s && w->assigned && !w->conn)
            return w;
    }
    return NULL;
}

/* The watch on number s, if any: a connection's, or one curl holds. */
static sockwatch *watch_on(bt_http_client *c, curl_socket_t s)
{
    sockwatch *w = byfd_get(c, s);
    return w != NULL ? w : watch_find_held(c, s);
}

int bt__http_socket_opened(bt_http_client *c, curl_socket_t s)
{
    if (s < 0)
        return 0;
    if ((size_t)s >= c->nbyfd) {
        size_t n = c->nbyfd ? c->nbyfd : 64;
        while (n <= (size_t)s)
            n *= 2;
        sockwatch **grown = bt_realloc(c->byfd, n * sizeof *grown);
        if (grown == NULL)
            return BT_ENOMEM;
        memset(grown + c->nbyfd, 0, (n - c->nbyfd) * sizeof *grown);
        c->byfd = grown;
        c->nbyfd = n;
    }
    /* A watch on this number is for a socket curl closed without its
     * close callback or without CURL_POLL_REMOVE. If curl holds it, curl
     * believes s is watched for w->kind: make that true of the new
     * socket. If not, it is a connection's watch that nothing needs. */
    sockwatch *w = watch_on(c, s);
    if (w != NULL) {
        watch_unconn(w);
        watch_detach(w);
        if (w->assigned) {
            watch_arm(w);
            w->connected = false;
        } else {
            watch_maybe_free(w);
            w = NULL;
        }
    }
    if (w == NULL && (w = watch_new(c, s)) == NULL)
        return BT_ENOMEM;
    w->conn = true;
    c->byfd[s] = w;
    return 0;
}

void bt__http_socket_closing(bt_http_client *c, curl_socket_t s)
{
    sockwatch *w = watch_on(c, s);
    if (w == NULL)
        return;
    watch_unconn(w);
    watch_detach(w); /* if curl holds it: until curl removes or reuses it */
    watch_maybe_free(w);
}

void bt__http_watches_free(bt_http_client *c)
{
    bt__list *n;
    while ((n = bt__list_pop_front(&c->watches)) != NULL) {
        sockwatch *w = BT__LIST_ENTRY(n, sockwatch, node);
        watch_detach(w);
        bt_free(w);
    }
    bt_free(c->byfd);
    c->byfd = NULL;
    c->nbyfd = 0;
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    bt_http_client *c = userp;
    sockwatch *w = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        /* Stop watching; curl may keep the connection for reuse and will
         * tell us again when it wants events on it. A connected
         * connection's watch keeps its duplicate for then. */
        if (w != NULL) {
            w->assigned = false;
            if (w->conn && w->connected)
                watch_disarm(w);
            else
                watch_unconn(w); /* maybe closed by now: see the DESIGN */
            watch_maybe_free(w);
        }
        return 0;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                 ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (w == NULL) {
        /* A connection's socket curl watches again, or a socket it did not
         * open through us (the resolver's). */
        if ((w = byfd_get(c, s)) == NULL && (w = watch_new(c, s)) == NULL)
            return -1; /* curl fails the transfer */
        w->assigned = true;
        curl_multi_assign(c->multi, s, w);
    } else if (w->kind == kind && w->armed) {
        return 0;
    }
    /* A new watch, one watched again, or the same socket with a new
     * interest: the duplicate, if any, is kept. curl reads a socket only
     * once it has connected. */
    if (what & CURL_POLL_IN)
        w->connected = true;
    w->kind = kind;
    watch_arm(w);
    return 0;
}

static void on_curl_timeout(evutil_socket_t fd, short events, void *arg)
{
    bt_http_client *c = arg;
    (void)fd;
    (void)events;
    bt_loop *loop = c->loop;
    bt_loop_enter_cb(loop, (const void *)on_curl_timeout);
    curl_action(c, CURL_SOCKET_TIMEOUT, 0);
    bt_loop_leave_cb(loop);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    bt_http_client *c = userp;
    (void)multi;
    if (timeout_ms < 0) {
        evtimer_del(c->curl_timer);
    } else {
        /* Never socket_action from here: a 0 ms timer runs it next. */
        struct timeval tv = bt__timeval_ms((uint64_t)timeout_ms);
        evtimer_add(c->curl_timer, &tv);
    }
    return 0;
}

int bt__http_multi_wire(bt_http_client *c)
{
    c->curl_timer = evtimer_new(c->base, on_curl_timeout, c);
    if (c->curl_timer == NULL)
        return BT_ENOMEM;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    return 0;
}

/* ---- Deferred work and completions --------------------------------------- */

void bt__http_flush(bt_http_client *c)
{
    if (c->in_curl > 0)
        return;
    for (;;) {
        /* Adds and removes asked for while curl was on the stack. */
        while (c->deferred) {
            xfer *x = c->deferred;
            c->deferred = x->next_deferred;
            x->deferred = false;
            if (x->future == NULL) {
                bt__xfer_release(x);
            } else if (!x->in_multi) {
                if (curl_multi_add_handle(c->multi, x->easy) == CURLM_OK) {
                    x->in_multi = true;
                    c->stats.in_flight++;
                    c->stats.started++;
                } else {
                    bt__xfer_fail(x, BT_ENOMEM, "curl refused the transfer");
                    bt__xfer_release(x);
                }
            }
        }
        int left;
        CURLMsg *m;
        bool any = false;
        while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            if (bt__idle_sweep_done(c, m->easy_handle))
                continue; /* m is invalid now; the sweep has no future */
            xfer *x = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            CURLcode rc = m->data.result;
            any = true;
            bt__xfer_done(x, rc); /* m is invalid after this */
        }
        if (!any && c->deferred == NULL)
            break;
    }
    if (c->free_pending) {
        c->free_pending = false;
        bt__http_client_destroy(c);
    }
}
