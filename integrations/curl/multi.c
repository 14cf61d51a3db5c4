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
 *   duplicate then. One dup and one close per watch (a transfer's use of
 *   a connection), none per event.
 */
#include "config.h"

#include "curl-internal.h"
#include "timeval.h"

#include <fcntl.h>
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

/* Stop watching: event_del on our duplicate, then close it. */
static void watch_detach(sockwatch *w)
{
    if (w->evfd < 0)
        return;
    event_del(w->ev);
    if (w->evfd != w->fd)
        close(w->evfd);
    w->evfd = -1;
}

/* Watch w->fd for w->kind through a new duplicate. If none can be made
 * (EMFILE), watch curl's fd itself: the old behaviour, racy as above. */
static void watch_arm(sockwatch *w)
{
    event_assign(w->ev, w->c->base, w->evfd, w->kind, on_sock_event, w);
    event_add(w->ev, NULL);
}

static void watch_attach(sockwatch *w)
{
    w->evfd = fcntl(w->fd, F_DUPFD_CLOEXEC, 0);
    if (w->evfd < 0)
        w->evfd = w->fd;
    watch_arm(w);
}

static sockwatch *watch_find(bt_http_client *c, curl_socket_t s)
{
    bt__list *n;
    BT__LIST_FOREACH (n, &c->watches) {
        sockwatch *w = BT__LIST_ENTRY(n, sockwatch, node);
        if (w->fd == s)
            return w;
    }
    return NULL;
}

void bt__http_socket_opened(bt_http_client *c, curl_socket_t s)
{
    sockwatch *w = watch_find(c, s);
    if (w == NULL)
        return;
    /* curl closed the socket this watch was for without CURL_POLL_REMOVE
     * and got the number again: curl believes s is watched for w->kind,
     * so make it true of the new socket. */
    watch_detach(w);
    watch_attach(w);
}

void bt__http_socket_closing(bt_http_client *c, curl_socket_t s)
{
    sockwatch *w = watch_find(c, s);
    if (w != NULL)
        watch_detach(w); /* parked until curl removes or reuses it */
}

void bt__http_watches_free(bt_http_client *c)
{
    bt__list *n;
    while ((n = bt__list_pop_front(&c->watches)) != NULL) {
        sockwatch *w = BT__LIST_ENTRY(n, sockwatch, node);
        watch_detach(w);
        bt_free(w);
    }
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    bt_http_client *c = userp;
    sockwatch *w = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        /* Stop watching; curl may keep the connection for reuse and will
         * tell us again when it wants events on it. */
        if (w != NULL) {
            watch_detach(w);
            bt__list_remove(&w->node);
            bt_free(w);
        }
        return 0;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                 ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (w == NULL) {
        w = bt_calloc(1, sizeof *w + event_get_struct_event_size());
        if (w == NULL)
            return -1; /* curl fails the transfer */
        w->c = c;
        w->fd = s;
        w->evfd = -1;
        w->ev = (struct event *)(w + 1);
        bt__list_push_front(&c->watches, &w->node);
        curl_multi_assign(c->multi, s, w);
    } else if (w->kind == kind && w->evfd >= 0) {
        return 0;
    } else if (w->evfd >= 0) {
        /* Same socket, new interest: keep the duplicate. */
        event_del(w->ev);
        w->kind = kind;
        watch_arm(w);
        return 0;
    }
    w->kind = kind;
    watch_attach(w);
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
