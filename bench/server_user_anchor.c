/* The anchor of bench/server_user: GET /user/{id} written by hand the way a
 * careful C programmer would without Baton. One evhttp server on one
 * libevent loop and 16 nonblocking libpq connections, each with the query
 * prepared once; a request takes an idle connection (or waits in a FIFO
 * for one), sends the prepared query, and answers with the row as JSON
 * (jansson, as the Baton side does). One query per connection at a time:
 * that is what plain libpq code does; pipelining is what the Baton pool
 * adds. No Baton anywhere in this file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "server_user.h"

#define NCONN 16
#define SQL "SELECT name, email FROM users WHERE id = $1"

typedef struct pending {
    struct pending *next;
    struct evhttp_request *req;
    char id[16];
} pending;

typedef struct {
    PGconn *pg;
    struct event *rd, *wr;
    pending *cur; /* the request whose query is in flight */
} conn;

static struct event_base *base;
static conn conns[NCONN];
static pending *q_head, *q_tail;

static void reply_error(struct evhttp_request *req, int status, const char *msg)
{
    json_t *j = json_pack("{s:s}", "error", msg);
    char *text = json_dumps(j, JSON_COMPACT);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evbuffer_add(evhttp_request_get_output_buffer(req), text, strlen(text));
    evhttp_send_reply(req, status, NULL, NULL);
    free(text);
    json_decref(j);
}

static void start_query(conn *c, pending *p)
{
    c->cur = p;
    const char *params[1] = { p->id };
    if (!PQsendQueryPrepared(c->pg, "user", 1, params, NULL, NULL, 0)) {
        c->cur = NULL;
        reply_error(p->req, 500, "internal server error");
        free(p);
        return;
    }
    if (PQflush(c->pg) == 1)
        event_add(c->wr, NULL);
}

static void next_job(conn *c)
{
    pending *p = q_head;
    if (!p)
        return;
    q_head = p->next;
    if (!q_head)
        q_tail = NULL;
    start_query(c, p);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn *c = arg;
    if (PQflush(c->pg) == 1)
        event_add(c->wr, NULL);
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn *c = arg;
    if (!PQconsumeInput(c->pg)) {
        fprintf(stderr, "anchor: %s", PQerrorMessage(c->pg));
        exit(1);
    }
    while (c->cur && !PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) { /* the query is complete */
            pending *p = c->cur;
            c->cur = NULL;
            free(p);
            next_job(c);
            break;
        }
        struct evhttp_request *req = c->cur->req;
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            reply_error(req, 500, "internal server error");
        } else if (PQntuples(r) == 0) {
            reply_error(req, 404, "user not found");
        } else {
            json_t *j = json_pack("{s:s, s:s, s:s}", "id", c->cur->id, "name", PQgetvalue(r, 0, 0),
                                  "email", PQgetvalue(r, 0, 1));
            char *text = json_dumps(j, JSON_COMPACT);
            evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                              "application/json");
            evbuffer_add(evhttp_request_get_output_buffer(req), text, strlen(text));
            evhttp_send_reply(req, 200, NULL, NULL);
            free(text);
            json_decref(j);
        }
        PQclear(r);
    }
}

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET || !path ||
        strncmp(path, "/user/", 6) != 0) {
        reply_error(req, 404, "not found");
        return;
    }
    const char *id = path + 6;
    size_t n = strlen(id);
    if (n == 0 || n > 10 || strspn(id, "0123456789") != n) {
        reply_error(req, 400, "id must be a positive integer");
        return;
    }
    pending *p = calloc(1, sizeof *p);
    p->req = req;
    memcpy(p->id, id, n + 1);
    for (int i = 0; i < NCONN; i++) {
        if (!conns[i].cur) {
            start_query(&conns[i], p);
            return;
        }
    }
    if (q_tail)
        q_tail->next = p;
    else
        q_head = p;
    q_tail = p;
}

int anchor_serve(const char *conninfo, int listen_fd)
{
    base = event_base_new();
    for (int i = 0; i < NCONN; i++) {
        conn *c = &conns[i];
        c->pg = PQconnectdb(conninfo);
        if (PQstatus(c->pg) != CONNECTION_OK) {
            fprintf(stderr, "anchor: %s", PQerrorMessage(c->pg));
            return 1;
        }
        PGresult *r = PQprepare(c->pg, "user", SQL, 1, NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "anchor: %s", PQerrorMessage(c->pg));
            return 1;
        }
        PQclear(r);
        PQsetnonblocking(c->pg, 1);
        c->rd = event_new(base, PQsocket(c->pg), EV_READ | EV_PERSIST, on_readable, c);
        c->wr = event_new(base, PQsocket(c->pg), EV_WRITE, on_writable, c);
        event_add(c->rd, NULL);
    }
    struct evhttp *http = evhttp_new(base);
    evhttp_set_gencb(http, on_request, NULL);
    if (!evhttp_accept_socket_with_handle(http, listen_fd))
        return 1;
    event_base_dispatch(base); /* until SIGTERM kills the process */
    return 0;
}
