/* Responses: a status, headers and a body, made by handlers on any thread
 * (a worker may build one) and sent by the server on its loop. JSON goes
 * through jansson, so no string is ever escaped by hand. */
#include "config.h"

#include <string.h>
#include <strings.h>

#include "http-internal.h"
#include "response-internal.h"

BT_EXPORT bt_http_reply *bt_http_reply_new(int status)
{
    if (status < 100 || status > 599)
        return NULL;
    bt_http_reply *r = bt_calloc(1, sizeof *r);
    if (r != NULL)
        r->status = status;
    return r;
}

BT_EXPORT void bt_http_reply_free(void *p)
{
    bt_http_reply *r = p;
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nheaders; i++) {
        bt_free(r->headers[i].name);
        bt_free(r->headers[i].value);
    }
    bt_free(r->headers);
    bt_free(r->body);
    bt_free(r);
}

static bool has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

BT_EXPORT int bt_http_reply_add_header(bt_http_reply *r, const char *name, const char *value)
{
    if (r == NULL || name == NULL || !*name || value == NULL || has_crlf(name) || has_crlf(value) ||
        strchr(name, ':') != NULL)
        return BT_EINVAL;
    if (r->nheaders == r->capheaders) {
        size_t cap = r->capheaders ? r->capheaders * 2 : 4;
        bt__header *nh = bt_realloc(r->headers, cap * sizeof *nh);
        if (nh == NULL)
            return BT_ENOMEM;
        r->headers = nh;
        r->capheaders = cap;
    }
    char *n = bt_strdup(name), *v = bt_strdup(value);
    if (n == NULL || v == NULL) {
        bt_free(n);
        bt_free(v);
        return BT_ENOMEM;
    }
    r->headers[r->nheaders].name = n;
    r->headers[r->nheaders].value = v;
    r->nheaders++;
    return 0;
}

/* Drop every header called name (case-insensitively). */
static void remove_header(bt_http_reply *r, const char *name)
{
    size_t w = 0;
    for (size_t i = 0; i < r->nheaders; i++) {
        if (strcasecmp(r->headers[i].name, name) == 0) {
            bt_free(r->headers[i].name);
            bt_free(r->headers[i].value);
        } else {
            r->headers[w++] = r->headers[i];
        }
    }
    r->nheaders = w;
}

BT_EXPORT int bt_http_reply_set_body(bt_http_reply *r, const char *content_type, const void *body,
                                     size_t len)
{
    if (r == NULL || (body == NULL && len))
        return BT_EINVAL;
    char *copy = NULL;
    if (len) {
        copy = bt_malloc(len);
        if (copy == NULL)
            return BT_ENOMEM;
        memcpy(copy, body, len);
    }
    if (content_type != NULL) {
        if (has_crlf(content_type)) {
            bt_free(copy);
            return BT_EINVAL;
        }
        remove_header(r, "Content-Type");
        int rc = bt_http_reply_add_header(r, "Content-Type", content_type);
        if (rc) {
            bt_free(copy);
            return rc;
        }
    }
    bt_free(r->body);
    r->body = copy;
    r->len = len;
    return 0;
}

BT_EXPORT int bt_http_reply_set_json(bt_http_reply *r, const json_t *json)
{
    if (r == NULL || json == NULL)
        return BT_EINVAL;
    /* JSON_ENCODE_ANY: a handler may answer a bare array or string too.
     * json_dumpb writes into our buffer, so the text never passes through
     * jansson's allocator. */
    size_t flags = JSON_COMPACT | JSON_ENCODE_ANY;
    size_t len = json_dumpb(json, NULL, 0, flags);
    if (len == 0)
        return BT_EINVAL;
    char *text = bt_malloc(len);
    if (text == NULL)
        return BT_ENOMEM;
    json_dumpb(json, text, len, flags);
    remove_header(r, "Content-Type");
    int rc = bt_http_reply_add_header(r, "Content-Type", "application/json");
    if (rc) {
        bt_free(text);
        return rc;
    }
    bt_free(r->body);
    r->body = text;
    r->len = len;
    return 0;
}

BT_EXPORT int bt_http_reply_status(const bt_http_reply *r)
{
    return r != NULL ? r->status : BT_EINVAL;
}

BT_EXPORT bt_future *bt_http_reply_future(bt_loop *loop, bt_http_reply *resp)
{
    if (resp == NULL)
        return NULL;
    return bt_future_new_value(loop, resp, bt_http_reply_free);
}

BT_EXPORT bt_future *bt_http_respond(bt_loop *loop, int status, const char *content_type,
                                     const void *body, size_t len)
{
    bt_http_reply *r = bt_http_reply_new(status);
    if (r == NULL)
        return NULL;
    if ((body != NULL || content_type != NULL) &&
        bt_http_reply_set_body(r, content_type, body, len) != 0) {
        bt_http_reply_free(r);
        return NULL;
    }
    return bt_http_reply_future(loop, r);
}

BT_EXPORT bt_future *bt_http_respond_json(bt_loop *loop, int status, json_t *json)
{
    if (json == NULL) {
        /* Usually a json_pack whose format did not match its arguments:
         * a mistake in the caller's code, which BT_ENOMEM would hide. */
        bt_log(BT_LOG_ERROR, "bt_http_respond_json: json is NULL (did a json_pack fail?)");
        return bt_future_new_error(loop, BT_EINVAL,
                                   "bt_http_respond_json: json is NULL (did a json_pack fail?)");
    }
    bt_http_reply *r = bt_http_reply_new(status);
    int rc = r != NULL ? bt_http_reply_set_json(r, json) : BT_EINVAL;
    json_decref(json);
    if (rc) {
        bt_http_reply_free(r);
        return NULL;
    }
    return bt_http_reply_future(loop, r);
}

BT_EXPORT bt_future *bt_http_respond_error(bt_loop *loop, int status, const char *message)
{
    return bt_http_respond_json(loop, status,
                                json_pack("{s:s}", "error", message != NULL ? message : ""));
}
