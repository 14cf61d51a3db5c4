/* Retries: the policy, which outcomes are tried again, the wait between
 * attempts and the overall deadline. The transfer code (transfer.c) asks
 * here at the end of each attempt; a retried transfer keeps its future,
 * its request and its easy handle, leaves curl during the wait and is
 * added back for the next attempt (curl runs a re-added handle from the
 * start with the same options).
 *
 * DESIGN
 * - Everything runs on the client's loop thread. The wait between attempts
 *   is the transfer's own libevent timer (x->timer, which otherwise times
 *   the wait for a connection and the total), with x->backoff telling the
 *   timer callback which it is; the deadline is a second timer
 *   (x->deadline), armed at send for the whole life of the transfer. No
 *   thread sleeps.
 * - A decision is taken only with curl off the stack: bt__xfer_done runs
 *   from bt__http_flush after curl_multi_socket_action has returned, so
 *   removing and re-adding the handle is allowed there and in the timers.
 * - The future settles once: with the last attempt's outcome, with
 *   BT_ETIMEDOUT from the deadline, or cancelled. Cancelling goes through
 *   the transfer's cancel hook, which releases the transfer and with it
 *   both timers, so no attempt starts after it.
 */
#include "config.h"

#include "curl-internal.h"
#include "sized.h"
#include "timeval.h"

#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>

#include <baton/future.h>
#include <baton/loop.h>

/* ---- The policy ------------------------------------------------------------ */

#define DEFAULT_ATTEMPTS 3
#define DEFAULT_BASE_MS 100
#define DEFAULT_MAX_MS 30000
/* Waits and deadlines are capped at 30 days so that no sum or shift of
 * them overflows a uint64_t of nanoseconds. */

BT_EXPORT void bt_http_retry_policy_init_size(bt_http_retry_policy *p, size_t size)
{
    if (p == NULL || size < sizeof(size_t))
        return;
    bt_http_retry_policy d;
    memset(&d, 0, sizeof d);
    d.max_attempts = DEFAULT_ATTEMPTS;
    d.base_delay_ms = DEFAULT_BASE_MS;
    d.max_delay_ms = DEFAULT_MAX_MS;
    d.honor_retry_after = true;
    memset(p, 0, size); /* fields a newer header has: zero, "as before" */
    bt__sized_write(p, size, &d, sizeof d);
}

int bt__retry_policy_read(bt_http_retry_policy *out, const bt_http_retry_policy *in, const char *fn)
{
    if (bt__sized_check(in->size, BT__SIZE_V1(bt_http_retry_policy, honor_retry_after), fn,
                        "bt_http_retry_policy", "bt_http_retry_policy_init") != 0)
        return BT_EINVAL;
    bt_http_retry_policy_init(out);
    bt__sized_read(out, sizeof *out, in, in->size);
    const char *why = NULL;
    if (out->max_attempts == 0)
        why = "max_attempts is 0 (1 means a single attempt)";
    else if (out->max_delay_ms < out->base_delay_ms)
        why = "max_delay_ms is smaller than base_delay_ms";
    else if (out->max_delay_ms > BT__CURL_MAX_WAIT_MS || out->deadline_ms > BT__CURL_MAX_WAIT_MS)
        why = "a delay or the deadline is over 30 days";
    if (why != NULL) {
        bt_log(BT_LOG_WARN, "%s: %s", fn, why);
        return BT_EINVAL;
    }
    return 0;
}

BT_EXPORT int bt_http_client_set_retry(bt_http_client *c, const bt_http_retry_policy *policy)
{
    if (c == NULL)
        return BT_EINVAL;
    if (policy == NULL) {
        c->has_retry = false;
        return 0;
    }
    bt_http_retry_policy p;
    int rc = bt__retry_policy_read(&p, policy, "bt_http_client_set_retry");
    if (rc != 0)
        return rc;
    c->retry = p;
    c->has_retry = true;
    return 0;
}

BT_EXPORT int bt_http_request_set_retry(bt_http_request *req, const bt_http_retry_policy *policy)
{
    if (req == NULL)
        return BT_EINVAL;
    if (policy == NULL) {
        req->has_retry = true;
        req->retry_off = true;
        return 0;
    }
    bt_http_retry_policy p;
    int rc = bt__retry_policy_read(&p, policy, "bt_http_request_set_retry");
    if (rc != 0)
        return rc;
    req->retry = p;
    req->has_retry = true;
    req->retry_off = false;
    return 0;
}

/* ---- Which outcomes are retried ------------------------------------------- */

/* RFC 9110 9.2.2's idempotent methods, but TRACE, which nobody sends. */
static bool idempotent(const char *m)
{
    return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "PUT") == 0 ||
           strcmp(m, "DELETE") == 0 || strcmp(m, "OPTIONS") == 0;
}

static bool retryable_status(long status)
{
    return status == 429 || status == 502 || status == 503 || status == 504;
}

/* The connection failed before the request went out: safe for any
 * method. OPERATION_TIMEDOUT can only be the connect timeout, as the
 * client's total and wait timeouts are its own timers, not curl's. */
static bool before_sending(CURLcode rc)
{
    return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
           rc == CURLE_OPERATION_TIMEDOUT;
}

/* The connection broke once the request may have been sent: retried for
 * idempotent methods only. */
static bool connection_broke(CURLcode rc)
{
    return rc == CURLE_SEND_ERROR || rc == CURLE_RECV_ERROR || rc == CURLE_GOT_NOTHING ||
           rc == CURLE_PARTIAL_FILE;
}

/* Retry-After as delta-seconds or an HTTP-date (RFC 9110 10.2.3), in ms.
 * Returns false for a value that is neither. */
static bool parse_retry_after(const char *v, uint64_t *ms)
{
    while (*v == ' ' || *v == '\t')
        v++;
    if (*v >= '0' && *v <= '9') {
        uint64_t s = 0;
        for (; *v >= '0' && *v <= '9'; v++)
            if ((s = s * 10 + (uint64_t)(*v - '0')) > BT__CURL_MAX_WAIT_MS / 1000)
                s = BT__CURL_MAX_WAIT_MS / 1000; /* absurdly long: over any max delay */
        while (*v == ' ' || *v == '\t')
            v++;
        if (*v != '\0')
            return false;
        *ms = s * 1000;
        return true;
    }
    time_t t = curl_getdate(v, NULL); /* RFC 1123, RFC 850 and asctime */
    if (t == (time_t)-1)
        return false;
    time_t now = time(NULL);
    *ms = t > now ? (uint64_t)(t - now) * 1000 : 0;
    return true;
}

/* The wait Retry-After asks of the reply in x->resp: true with *ms set,
 * or false when there is none to honour. */
static bool retry_after_ms(xfer *x, uint64_t *ms)
{
    if (!x->pol.honor_retry_after)
        return false;
    const char *v = bt_http_response_header(x->resp, "Retry-After");
    return v != NULL && parse_retry_after(v, ms);
}

/* Whether a reply with this status is retried (the deadline aside), and
 * the wait its Retry-After asks for (*have_wait false when none). */
static bool status_wanted(xfer *x, long status, bool *have_wait, uint64_t *wait_ms)
{
    *have_wait = false;
    if (!x->retry || x->delivered || x->attempt >= x->pol.max_attempts ||
        !idempotent(x->req->method) || !retryable_status(status))
        return false;
    /* A server asking for a longer wait than the policy allows gets its
     * reply returned at once instead of an early retry (Envoy's rule). */
    *have_wait = retry_after_ms(x, wait_ms);
    return !*have_wait || *wait_ms <= x->pol.max_delay_ms;
}

bool bt__retry_status_wanted(xfer *x)
{
    bool have_wait;
    uint64_t wait_ms;
    return status_wanted(x, x->resp->status, &have_wait, &wait_ms);
}

/* ---- Waits ------------------------------------------------------------------ */

static uint64_t next_random(bt_http_client *c)
{
    /* xorshift64*: the jitter needs spread, not secrecy. */
    uint64_t s = c->rng;
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    c->rng = s;
    return s * 0x2545F4914F6CDD1DULL;
}

/* Full jitter (the AWS Architecture Blog's "Exponential Backoff And
 * Jitter"): uniform in [0, min(max, base * 2^(attempt-1))], so clients
 * that failed together do not come back together. */
static uint64_t backoff_ms(xfer *x)
{
    uint64_t ceiling = x->pol.base_delay_ms;
    for (unsigned i = 1; i < x->attempt && ceiling < x->pol.max_delay_ms; i++)
        ceiling *= 2;
    if (ceiling > x->pol.max_delay_ms)
        ceiling = x->pol.max_delay_ms;
    return next_random(x->c) % (ceiling + 1);
}

static void on_deadline(evutil_socket_t fd, short events, void *arg)
{
    xfer *x = arg;
    (void)fd;
    (void)events;
    x->deadline_armed = false;
    if (x->future == NULL)
        return; /* settled, and its release is on its way */
    /* bt__xfer_fail adds "(attempt N)" after the first. */
    bt__xfer_fail(x, BT_ETIMEDOUT, "the retry deadline of %llu ms passed %s",
                  (unsigned long long)x->pol.deadline_ms,
                  x->backoff ? "while waiting to retry" : "during an attempt");
    bt__xfer_release(x); /* from a libevent timer: curl is not on the stack */
}

void bt__retry_setup(xfer *x)
{
    bt_http_client *c = x->c;
    bt_http_request *req = x->req;
    x->attempt = 1;
    if (req->has_retry ? req->retry_off : !c->has_retry)
        return;
    x->pol = req->has_retry ? req->retry : c->retry;
    if (x->pol.max_attempts <= 1 && x->pol.deadline_ms == 0)
        return;
    x->retry = true;
    if (x->pol.deadline_ms != 0) {
        x->deadline_ns = bt_hrtime() + x->pol.deadline_ms * 1000000;
        struct timeval tv = bt__timeval_ms(x->pol.deadline_ms);
        evtimer_assign(x->deadline, c->base, on_deadline, x);
        evtimer_add(x->deadline, &tv);
        x->deadline_armed = true;
    }
}

void bt__retry_stop(xfer *x)
{
    if (x->deadline_armed) {
        evtimer_del(x->deadline);
        x->deadline_armed = false;
    }
}

/* The last outcome, for the deadline's message. */
static const char *outcome(xfer *x, CURLcode rc, char *buf, size_t len)
{
    if (rc == CURLE_OK)
        snprintf(buf, len, "a %d reply", x->resp->status);
    else
        snprintf(buf, len, "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
    return buf;
}

bool bt__retry_after_attempt(xfer *x, CURLcode rc)
{
    bt_http_client *c = x->c;
    uint64_t wait_ms = 0;
    bool have_wait = false;
    if (rc == CURLE_OK) {
        long status = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
        if (!status_wanted(x, status, &have_wait, &wait_ms))
            return false;
    } else {
        if (x->delivered || x->abort_code != 0 || x->attempt >= x->pol.max_attempts)
            return false;
        long sent = -1;
        curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &sent);
        bool any_method = before_sending(rc) && sent == 0;
        bool idem = idempotent(x->req->method) && (before_sending(rc) || connection_broke(rc));
        if (!any_method && !idem)
            return false;
    }
    if (!have_wait)
        wait_ms = backoff_ms(x);
    if (x->deadline_ns != 0 && bt_hrtime() + wait_ms * 1000000 >= x->deadline_ns) {
        char buf[CURL_ERROR_SIZE + 32];
        bt__xfer_fail(x, BT_ETIMEDOUT,
                      "the retry deadline of %llu ms leaves no room for a wait of %llu ms and "
                      "another attempt; the last one ended with %s",
                      (unsigned long long)x->pol.deadline_ms, (unsigned long long)wait_ms,
                      outcome(x, rc, buf, sizeof buf));
        bt__xfer_release(x);
        return true;
    }
    /* The body goes again from its start (a body in memory needs nothing:
     * curl sends POSTFIELDS anew). */
    if (x->file != NULL && fseeko(x->file, 0, SEEK_SET) != 0)
        return false;
    bt_http_response *fresh = bt__http_response_new();
    if (fresh == NULL)
        return false;

    /* Out of curl for the wait. */
    bt__xfer_leave_multi(x);
    bt__xfer_timer_stop(x);
    c->buffered -= x->held;
    x->held = 0;
    bt_http_response_free(x->resp);
    x->resp = fresh;
    x->got_conn = false;
    x->discarding = false;
    x->abort_code = 0;
    x->abort_msg = NULL;
    x->abort_limit = 0;
    x->abort_setter = NULL;
    x->errbuf[0] = '\0';

    x->backoff = true;
    struct timeval tv = bt__timeval_ms(wait_ms);
    evtimer_add(x->timer, &tv);
    x->timer_armed = true;
    return true;
}

void bt__retry_wait_done(xfer *x)
{
    x->backoff = false;
    x->attempt++;
    x->c->stats.retries++;
    bt__xfer_start(x);
}
