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

/* A growing string of comma-separated lists, on the worker thread. */
struct list_buf {
    char *s;
    size_t len, cap;
    bool empty; /* no entry yet */
};

static int list_add(struct list_buf *b, const char *entry, size_t n)
{
    size_t need = b->len + n + 2;
    if (need > b->cap) {
        size_t cap = need * 2 + 64;
        char *s = bt_realloc(b->s, cap);
        if (s == NULL)
            return BT_ENOMEM;
        b->s = s;
        b->cap = cap;
    }
    if (!b->empty)
        b->s[b->len++] = ',';
    memcpy(b->s + b->len, entry, n);
    b->len += n;
    b->s[b->len] = '\0';
    b->empty = false;
    return 0;
}

/* The n-th entry of a comma-separated list (libpq keeps empty entries
 * positional), or the only one if the list has one; sets *len. */
static const char *list_nth(const char *list, size_t n, size_t *len)
{
    const char *at = list;
    if (strchr(list, ',') != NULL)
        for (size_t i = 0; i < n && at != NULL; i++) {
            at = strchr(at, ',');
            if (at != NULL)
                at++;
        }
    if (at == NULL)
        at = "";
    *len = strcspn(at, ",");
    return at;
}

/* One host entry (its port entry beside it) becomes one entry per address
 * in the three lists: a name through getaddrinfo (every address, in the
 * resolver's order, as libpq would try them), a numeric address as is,
 * and a socket directory or an empty entry with an empty hostaddr. */
static int add_host(bt_job *job, struct list_buf *hl, struct list_buf *al, struct list_buf *pl,
                    const char *h, const char *port, size_t port_len, bool expand_ports)
{
    int rc = 0;
    size_t hlen = strlen(h);
    if (*h == '\0' || *h == '/' || *h == '@' || is_numeric(h)) {
        const char *addr = *h == '\0' || *h == '/' || *h == '@' ? "" : h;
        if ((rc = list_add(hl, h, hlen)) != 0 || (rc = list_add(al, addr, strlen(addr))) != 0 ||
            (expand_ports && (rc = list_add(pl, port, port_len)) != 0))
            return rc;
        return 0;
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC,
                              .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_ADDRCONFIG };
    struct addrinfo *ai = NULL;
    int e = getaddrinfo(h, NULL, &hints, &ai);
    if (e != 0 || ai == NULL) {
        if (ai)
            freeaddrinfo(ai);
        return bt_job_fail(job, BT_EDNS, "could not resolve host name \"%s\": %s", h,
                           e != 0 ? gai_strerror(e) : "no address");
    }
    for (struct addrinfo *a = ai; a != NULL && rc == 0; a = a->ai_next) {
        char addr[INET6_ADDRSTRLEN] = "";
        void *sa;
        if (a->ai_family == AF_INET)
            sa = &((struct sockaddr_in *)a->ai_addr)->sin_addr;
        else if (a->ai_family == AF_INET6)
            sa = &((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
        else
            continue;
        if (inet_ntop(a->ai_family, sa, addr, sizeof addr) == NULL)
            continue;
        if ((rc = list_add(hl, h, hlen)) == 0 && (rc = list_add(al, addr, strlen(addr))) == 0 &&
            expand_ports)
            rc = list_add(pl, port, port_len);
    }
    freeaddrinfo(ai);
    return rc;
}

/* Worker thread. arg is "HOSTS\0PORTS": the conninfo's host list ("a,b,/tmp")
 * and its port list if it has several entries (else ""). The value is
 * "HOSTS\0HOSTADDRS\0PORTS", three lists of one entry per address to try,
 * in libpq's order: the hosts in turn, each name's addresses in the order
 * getaddrinfo gave them. libpq, given hostaddr, connects to that address
 * and still uses host for TLS checks and the password file; given lists,
 * it walks them itself and applies target_session_attrs. PORTS is empty
 * when the conninfo's single port (or none) applies to every entry. A name
 * that does not resolve is left out, as libpq skips a host it cannot
 * resolve; the job fails only if nothing is left to try. */
static int resolve_job(bt_job *job, void *arg)
{
    const char *hosts = arg;
    const char *ports = hosts + strlen(hosts) + 1;
    bool expand_ports = *ports != '\0';
    struct list_buf hl = { .empty = true }, al = { .empty = true }, pl = { .empty = true };
    char *copy = bt_strdup(hosts);
    int rc = copy == NULL ? BT_ENOMEM : 0, last_fail = 0;
    size_t n = 0;
    for (char *h = copy; rc == 0 && h != NULL; n++) {
        char *comma = strchr(h, ',');
        if (comma)
            *comma = '\0';
        size_t port_len = 0;
        const char *port = expand_ports ? list_nth(ports, n, &port_len) : "";
        rc = add_host(job, &hl, &al, &pl, h, port, port_len, expand_ports);
        if (rc == BT_EDNS) {
            last_fail = rc; /* its message is on the job; the next host may do */
            rc = 0;
        }
        h = comma ? comma + 1 : NULL;
    }
    bt_free(copy);
    if (rc == 0 && hl.empty)
        rc = last_fail != 0 ? last_fail : BT_EDNS;
    char *out = NULL;
    if (rc == 0) {
        size_t total = hl.len + al.len + pl.len + 3;
        out = bt_malloc(total);
        if (out == NULL) {
            rc = BT_ENOMEM;
        } else {
            char *at = out;
            memcpy(at, hl.s, hl.len + 1);
            at += hl.len + 1;
            memcpy(at, al.s != NULL ? al.s : "", al.len + 1);
            at += al.len + 1;
            memcpy(at, pl.s != NULL ? pl.s : "", pl.len + 1);
        }
    }
    bt_free(hl.s);
    bt_free(al.s);
    bt_free(pl.s);
    if (rc != 0)
        return rc;
    return bt_job_set_value(job, out, bt_free);
}

static void resolve_done(bt_future *f, void *arg)
{
    struct bt__pq_resolve *r = arg;
    int err = bt_future_error(f);
    bt_pq_conn *c = r->c;
    if (c != NULL) {
        c->resolve = NULL;
        char *lists = err == 0 ? bt_future_take_value(f) : NULL;
        r->done(c, err, err != 0 ? bt_future_error_message(f) : NULL, lists);
    }
    /* The loop keeps its own reference until the callbacks have run. */
    bt_future_unref(r->f);
    bt_free(r);
}

int bt__pq_resolve_start(bt_pq_conn *c, const char *hosts, const char *ports,
                         bt__pq_resolved_cb done)
{
    struct bt__pq_resolve *r = bt_calloc(1, sizeof *r);
    if (r == NULL)
        return BT_ENOMEM;
    r->c = c;
    r->done = done;
    if (ports == NULL)
        ports = "";
    size_t hn = strlen(hosts), pn = strlen(ports);
    char *copy = bt_malloc(hn + pn + 2); /* "HOSTS\0PORTS\0": see resolve_job */
    if (copy == NULL) {
        bt_free(r);
        return BT_ENOMEM;
    }
    memcpy(copy, hosts, hn + 1);
    memcpy(copy + hn + 1, ports, pn + 1);
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
