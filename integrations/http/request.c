/* A request as the server hands it to a handler: copied out of evhttp's
 * request (method, percent-decoded path and segments, headers in one
 * block, body, query string), so it stays readable until the handler's
 * future settles whatever happens to the connection; and the
 * bt_http_req_* accessors. Loop thread only. */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "hex.h"
#include "http-internal.h"

void bt__http_req_free(bt_http_req *req)
{
    if (req->state_dtor != NULL)
        req->state_dtor(req->state);
    if (req->segs != req->inline_segs)
        bt_free(req->segs);
    bt_free(req->path);
    bt_free(req->raw_query);
    if (req->query != NULL) {
        evhttp_clear_headers(req->query);
        bt_free(req->query);
    }
    bt_free(req->headers); /* one block with the strings */
    bt_free(req->body);
    bt_future_unref(req->fut);
    bt_future_unref(req->fiber);
    bt_free(req);
}

/* Split the raw path into percent-decoded segments, all in one block:
 * the decoded path ("/user/42", for bt_http_req_path) followed by each
 * segment, NUL-terminated. A '%' not followed by two hex digits stays as
 * it is. Returns 0, BT_EINVAL (a segment decodes to a NUL byte, or the
 * path is not absolute), BT_ENOMEM. */
int bt__http_req_split_path(bt_http_req *req, const char *raw)
{
    if (raw == NULL || !*raw)
        raw = "/";
    if (raw[0] != '/')
        return BT_EINVAL;
    size_t len = strlen(raw);
    size_t n = 0;
    for (const char *p = raw; *p; p++)
        if (*p == '/')
            n++;
    if (len == 1)
        n = 0;
    req->path = bt_malloc(2 * len + 2);
    if (req->path == NULL)
        return BT_ENOMEM;
    if (n > BT__HTTP_INLINE_SEGS) {
        req->segs = bt_malloc(n * sizeof *req->segs);
        if (req->segs == NULL)
            return BT_ENOMEM;
    } else {
        req->segs = req->inline_segs;
    }
    char *path = req->path;
    char *w = req->path + len + 1; /* the segments go after the path */
    const char *p = raw + 1;
    size_t plen = 0;
    path[plen++] = '/';
    for (size_t i = 0; i < n; i++) {
        req->segs[i] = w;
        for (; *p && *p != '/'; p++) {
            char c = *p;
            int hi, lo;
            if (c == '%' && (hi = bt__hexval((unsigned char)p[1])) >= 0 &&
                (lo = bt__hexval((unsigned char)p[2])) >= 0) {
                c = (char)(hi * 16 + lo);
                if (c == '\0')
                    return BT_EINVAL;
                p += 2;
            }
            *w++ = c;
        }
        *w++ = '\0';
        req->nsegs = i + 1;
        size_t sl = strlen(req->segs[i]);
        if (i > 0)
            path[plen++] = '/';
        memcpy(path + plen, req->segs[i], sl);
        plen += sl;
        if (*p == '/')
            p++;
    }
    path[plen] = '\0';
    return 0;
}

/* Copy the headers into one block, the body, the query string, the peer. */
int bt__http_req_copy(bt_http_req *req, struct evhttp_request *ev)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(ev);
    size_t n = 0, bytes = 0;
    struct evkeyval *h;
    TAILQ_FOREACH(h, in, next)
    {
        n++;
        bytes += strlen(h->key) + strlen(h->value) + 2;
    }
    if (n) {
        req->headers = bt_malloc(n * sizeof *req->headers + bytes);
        if (req->headers == NULL)
            return BT_ENOMEM;
        char *w = (char *)(req->headers + n);
        TAILQ_FOREACH(h, in, next)
        {
            bt__http_kv *k = &req->headers[req->nheaders++];
            size_t kl = strlen(h->key) + 1, vl = strlen(h->value) + 1;
            k->name = memcpy(w, h->key, kl);
            w += kl;
            k->value = memcpy(w, h->value, vl);
            w += vl;
        }
    }
    struct evbuffer *body = evhttp_request_get_input_buffer(ev);
    size_t len = evbuffer_get_length(body);
    if (len) {
        req->body = bt_malloc(len + 1);
        if (req->body == NULL)
            return BT_ENOMEM;
        evbuffer_copyout(body, req->body, len);
        req->body[len] = '\0';
        req->body_len = len;
    }
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(ev));
    if (q != NULL) {
        req->raw_query = bt_strdup(q);
        if (req->raw_query == NULL)
            return BT_ENOMEM;
    }
    req->evcon = evhttp_request_get_connection(ev);
    req->bev = req->evcon != NULL ? evhttp_connection_get_bufferevent(req->evcon) : NULL;
    return 0;
}

/* ---- Request accessors ------------------------------------------------------ */

BT_EXPORT const char *bt_http_req_method(const bt_http_req *req)
{
    return req != NULL ? req->method : NULL;
}
BT_EXPORT const char *bt_http_req_path(const bt_http_req *req)
{
    return req != NULL ? req->path : NULL;
}

BT_EXPORT const char *bt_http_req_param(const bt_http_req *req, const char *name)
{
    if (req == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < req->nparams; i++)
        if (strcmp(req->pnames[i], name) == 0)
            return req->pvalues[i];
    return NULL;
}

BT_EXPORT const char *bt_http_req_query(const bt_http_req *req, const char *name)
{
    if (req == NULL || name == NULL || req->raw_query == NULL)
        return NULL;
    bt_http_req *r = (bt_http_req *)req; /* the parse is a cache */
    if (r->query == NULL) {
        r->query = bt_calloc(1, sizeof *r->query);
        if (r->query == NULL)
            return NULL;
        TAILQ_INIT(r->query);
        if (evhttp_parse_query_str(r->raw_query, r->query) != 0) {
            evhttp_clear_headers(r->query);
            TAILQ_INIT(r->query);
        }
    }
    struct evkeyval *h;
    TAILQ_FOREACH(h, r->query, next)
    if (strcmp(h->key, name) == 0)
        return h->value;
    return NULL;
}

BT_EXPORT const char *bt_http_req_header(const bt_http_req *req, const char *name)
{
    if (req == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

BT_EXPORT const void *bt_http_req_body(const bt_http_req *req, size_t *len)
{
    if (len != NULL)
        *len = req != NULL ? req->body_len : 0;
    return req != NULL ? req->body : NULL;
}

BT_EXPORT json_t *bt_http_req_json(const bt_http_req *req)
{
    if (req == NULL || !req->body_len)
        return NULL;
    return json_loadb(req->body, req->body_len, 0, NULL);
}

BT_EXPORT int bt_http_req_set_state(bt_http_req *req, void *state, bt_destroy_fn dtor)
{
    if (req == NULL)
        return BT_EINVAL;
    if (req->state_dtor != NULL)
        req->state_dtor(req->state);
    req->state = state;
    req->state_dtor = dtor;
    return 0;
}

BT_EXPORT const char *bt_http_req_peer(const bt_http_req *req)
{
    if (req == NULL)
        return NULL;
    bt_http_req *r = (bt_http_req *)req; /* a cache, filled on first use */
    if (!r->peer[0] && r->evcon != NULL && r->ev != NULL && !r->disconnected) {
        char *addr = NULL;
        ev_uint16_t port = 0;
        evhttp_connection_get_peer(r->evcon, &addr, &port);
        snprintf(r->peer, sizeof r->peer, "%s", addr != NULL ? addr : "");
    }
    return r->peer;
}
BT_EXPORT bt_loop *bt_http_req_loop(const bt_http_req *req)
{
    return req != NULL ? req->loop : NULL;
}
BT_EXPORT void *bt_http_req_loop_data(const bt_http_req *req)
{
    return req != NULL ? req->loop_data : NULL;
}
