/* Host name resolution before a connect, on the offload pool's blocking
 * lane: getaddrinfo blocks. The job is given its own copy of the host list
 * (bt_to_thread_owned: the pool frees it once the job is done with it) and
 * returns the answer as its value, so it shares no memory with the loop.
 * A lookup that outlives its connection, its pool or its loop (abandoned
 * when cancelled, or at the pool's shutdown deadline) therefore touches
 * nothing freed. The loop side keeps a small context whose back pointer
 * the connection clears when it gives up. The connection's timer
 * (resolve_timeout_ms, connect.c) bounds the wait; a late answer is
 * dropped. */
#include "config.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <baton/pool.h>

#include "pq-internal.h"

/* Loop thread only. */
struct bt__pq_resolve {
    bt_pq_conn *c; /* NULL once the connection gave up on us */
    bt__pq_resolved_cb done;
    bt_future *f; /* the job's future: our reference, dropped in resolve_done */
};

static bool is_numeric(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* Worker thread: getaddrinfo for each host that is a name in `hosts`
 * ("a,b,/tmp" as in the conninfo); the value is the matching hostaddr list.
 * libpq, given hostaddr, connects to that address and still uses host for
 * TLS checks and the password file. Only the first address of each name is
 * used. */
static int resolve_job(bt_job *job, void *arg)
{
    const char *hosts = arg;
    size_t cap = strlen(hosts) * 2 + 64, len = 0;
    char *out = bt_malloc(cap);
    if (out == NULL)
        return bt_job_fail(job, BT_ENOMEM, "out of memory resolving %s", hosts);
    out[0] = '\0';
    char *copy = bt_strdup(hosts), *save = NULL;
    if (copy == NULL) {
        bt_free(out);
        return BT_ENOMEM;
    }
    int rc = 0;
    bool first = true;
    /* strtok_r would skip empty entries; libpq keeps them positional. */
    for (char *h = copy; h; first = false) {
        char *comma = strchr(h, ',');
        if (comma)
            *comma = '\0';
        char addr[INET6_ADDRSTRLEN] = "";
        if (*h && *h != '/' && *h != '@') {
            if (is_numeric(h)) {
                snprintf(addr, sizeof addr, "%s", h);
            } else {
                struct addrinfo hints = { .ai_family = AF_UNSPEC,
                                          .ai_socktype = SOCK_STREAM,
                                          .ai_flags = AI_ADDRCONFIG };
                struct addrinfo *ai = NULL;
                int e = getaddrinfo(h, NULL, &hints, &ai);
                if (e != 0 || ai == NULL) {
                    rc = bt_job_fail(job, BT_EDNS, "could not resolve host name \"%s\": %s", h,
                                     gai_strerror(e));
                    if (ai)
                        freeaddrinfo(ai);
                    break;
                }
                void *sa = ai->ai_family == AF_INET
                               ? (void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                               : (void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
                inet_ntop(ai->ai_family, sa, addr, sizeof addr);
                freeaddrinfo(ai);
            }
        }
        size_t need = strlen(addr) + 2;
        if (len + need >= cap) {
            cap = (len + need) * 2;
            char *n = bt_realloc(out, cap);
            if (n == NULL) {
                rc = BT_ENOMEM;
                break;
            }
            out = n;
        }
        len += (size_t)snprintf(out + len, cap - len, "%s%s", first ? "" : ",", addr);
        h = comma ? comma + 1 : NULL;
    }
    (void)save;
    bt_free(copy);
    if (rc != 0) {
        bt_free(out);
        return rc;
    }
    return bt_job_set_value(job, out, bt_free);
}

static void resolve_done(bt_future *f, void *arg)
{
    struct bt__pq_resolve *r = arg;
    int err = bt_future_error(f);
    bt_pq_conn *c = r->c;
    if (c != NULL) {
        c->resolve = NULL;
        char *hostaddr = err == 0 ? bt_future_take_value(f) : NULL;
        r->done(c, err, err != 0 ? bt_future_error_message(f) : NULL, hostaddr);
    }
    /* The loop keeps its own reference until the callbacks have run. */
    bt_future_unref(r->f);
    bt_free(r);
}

int bt__pq_resolve_start(bt_pq_conn *c, const char *hosts, bt__pq_resolved_cb done)
{
    struct bt__pq_resolve *r = bt_calloc(1, sizeof *r);
    if (r == NULL)
        return BT_ENOMEM;
    r->c = c;
    r->done = done;
    char *copy = bt_strdup(hosts);
    if (copy == NULL) {
        bt_free(r);
        return BT_ENOMEM;
    }
    /* The pool owns copy from here, on failure too. */
    bt_future *f = bt_to_thread_owned(c->pool->loop, resolve_job, copy, bt_free);
    if (f == NULL || bt_future_add_callback(f, resolve_done, r) != 0) {
        if (f != NULL) {
            bt_future_cancel(f);
            bt_future_error(f);
            bt_future_unref(f);
        }
        bt_free(r);
        return BT_ENOMEM;
    }
    r->f = f; /* keep our reference: detach cancels the job through it */
    c->resolve = r;
    return 0;
}

/* The connection gives up on its lookup (timeout, close, shutdown). Cancel
 * the job: a queued one never runs, a running one (a hung getaddrinfo) is
 * abandoned by the pool, which is safe since its arg is owned and its answer
 * is a value. Its future settles cancelled and resolve_done, run later by
 * the loop (settling runs no callback inside the call), sees c == NULL,
 * drops our reference and frees r. */
void bt__pq_resolve_detach(bt_pq_conn *c)
{
    struct bt__pq_resolve *r = c->resolve;
    if (r != NULL) {
        r->c = NULL;
        c->resolve = NULL;
        bt_future_cancel(r->f);
    }
}
