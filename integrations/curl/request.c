/* The request builder and the response: plain data, no loop, no curl
 * handle (only curl_easy_escape, which needs none). */
#include "config.h"

#include "curl-internal.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

bool bt__http_is_token(const char *s, size_t len)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!isalnum(ch) && (ch == '\0' || strchr(extra, ch) == NULL))
            return false;
    }
    return true;
}

static bool has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

/* ---- Requests ----------------------------------------------------------- */

BT_EXPORT bt_http_request *bt_http_request_new(const char *method, const char *url)
{
    if (method == NULL || url == NULL || url[0] == '\0' ||
        !bt__http_is_token(method, strlen(method)))
        return NULL;
    bt_http_request *req = bt_calloc(1, sizeof *req);
    if (req == NULL)
        return NULL;
    req->method = bt_strdup(method);
    req->url = bt_strdup(url);
    if (req->method == NULL || req->url == NULL) {
        bt_http_request_free(req);
        return NULL;
    }
    return req;
}

BT_EXPORT void bt_http_request_free(bt_http_request *req)
{
    if (req == NULL)
        return;
    bt_free(req->method);
    bt_free(req->url);
    bt_free(req->query);
    for (size_t i = 0; i < req->nheaders; i++)
        bt_free(req->headers[i].line);
    bt_free(req->headers);
    bt_free(req->body);
    bt_free(req->body_file);
    bt_free(req);
}

BT_EXPORT int bt_http_request_add_header(bt_http_request *req, const char *name, const char *value)
{
    if (req == NULL || name == NULL)
        return BT_EINVAL;
    size_t nlen = strlen(name);
    if (!bt__http_is_token(name, nlen) || (value && has_crlf(value)))
        return BT_EINVAL;
    /* curl's conventions: "Name:" removes a header it would add, "Name;"
     * sends it empty. */
    char *line;
    if (value == NULL)
        line = bt_asprintf("%s:", name);
    else if (value[0] == '\0')
        line = bt_asprintf("%s;", name);
    else
        line = bt_asprintf("%s: %s", name, value);
    if (line == NULL)
        return BT_ENOMEM;
    bt__http_header *h = bt_realloc(req->headers, (req->nheaders + 1) * sizeof *h);
    if (h == NULL) {
        bt_free(line);
        return BT_ENOMEM;
    }
    req->headers = h;
    h[req->nheaders].line = line;
    h[req->nheaders].name_len = nlen;
    req->nheaders++;
    if (nlen == 12 && strncasecmp(name, "Content-Type", 12) == 0)
        req->has_content_type = true;
    return 0;
}

BT_EXPORT int bt_http_request_add_query(bt_http_request *req, const char *name, const char *value)
{
    if (req == NULL || name == NULL || name[0] == '\0' || value == NULL)
        return BT_EINVAL;
    /* curl_easy_escape encodes everything but RFC 3986's unreserved set,
     * so '&', '=', '+', '#' and spaces in a name or value stay data. */
    char *en = curl_easy_escape(NULL, name, 0);
    char *ev = curl_easy_escape(NULL, value, 0);
    int rc = BT_ENOMEM;
    if (en && ev) {
        size_t add = strlen(en) + 1 + strlen(ev) + (req->query_len ? 1 : 0);
        char *q = bt_realloc(req->query, req->query_len + add + 1);
        if (q) {
            int n =
                snprintf(q + req->query_len, add + 1, "%s%s=%s", req->query_len ? "&" : "", en, ev);
            req->query = q;
            req->query_len += (size_t)n;
            rc = 0;
        }
    }
    curl_free(en);
    curl_free(ev);
    return rc;
}

BT_EXPORT int bt_http_request_set_body(bt_http_request *req, const void *data, size_t len)
{
    if (req == NULL || (data == NULL && len > 0))
        return BT_EINVAL;
    void *copy = bt_malloc(len ? len : 1);
    if (copy == NULL)
        return BT_ENOMEM;
    if (len)
        memcpy(copy, data, len);
    bt_free(req->body);
    bt_free(req->body_file);
    req->body_file = NULL;
    req->body = copy;
    req->body_len = len;
    req->has_body = true;
    return 0;
}

BT_EXPORT int bt_http_request_set_body_file(bt_http_request *req, const char *path)
{
    if (req == NULL || path == NULL || path[0] == '\0')
        return BT_EINVAL;
    char *copy = bt_strdup(path);
    if (copy == NULL)
        return BT_ENOMEM;
    bt_free(req->body);
    bt_free(req->body_file);
    req->body = NULL;
    req->body_len = 0;
    req->body_file = copy;
    req->has_body = true;
    return 0;
}

BT_EXPORT int bt_http_request_set_timeout(bt_http_request *req, uint64_t total_ms)
{
    if (req == NULL)
        return BT_EINVAL;
    req->has_timeout = true;
    req->timeout_ms = total_ms;
    return 0;
}

BT_EXPORT int bt_http_request_set_body_cb(bt_http_request *req, bt_http_body_cb cb, void *arg)
{
    if (req == NULL)
        return BT_EINVAL;
    req->body_cb = cb;
    req->body_cb_arg = arg;
    return 0;
}

/* ---- Responses ---------------------------------------------------------- */

static char empty_body[1] = "";

bt_http_response *bt__http_response_new(void)
{
    return bt_calloc(1, sizeof(bt_http_response));
}

void bt__http_response_clear_headers(bt_http_response *r)
{
    for (size_t i = 0; i < r->nheaders; i++)
        bt_free(r->headers[i].name);
    r->nheaders = 0;
}

int bt__http_response_add_header_line(bt_http_response *r, const char *line, size_t len)
{
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
        len--;
    if (len == 0)
        return 0;
    if (line[0] == ' ' || line[0] == '\t') {
        /* An obsolete folded continuation: joined to the previous value. */
        if (r->nheaders == 0)
            return 0;
        bt__resp_header *h = &r->headers[r->nheaders - 1];
        size_t nl = strlen(h->name), vl = strlen(h->value);
        while (len > 0 && (*line == ' ' || *line == '\t'))
            line++, len--;
        char *n = bt_malloc(nl + 1 + vl + 1 + len + 1);
        if (n == NULL)
            return BT_ENOMEM;
        memcpy(n, h->name, nl + 1);
        char *v = n + nl + 1;
        memcpy(v, h->value, vl);
        v[vl] = ' ';
        memcpy(v + vl + 1, line, len);
        v[vl + 1 + len] = '\0';
        bt_free(h->name);
        h->name = n;
        h->value = v;
        return 0;
    }
    const char *colon = memchr(line, ':', len);
    if (colon == NULL)
        return 0; /* not a header; curl already judged the reply */
    if (r->nheaders == r->cap_headers) {
        size_t cap = r->cap_headers ? r->cap_headers * 2 : 8;
        bt__resp_header *h = bt_realloc(r->headers, cap * sizeof *h);
        if (h == NULL)
            return BT_ENOMEM;
        r->headers = h;
        r->cap_headers = cap;
    }
    char *n = bt_malloc(len + 2);
    if (n == NULL)
        return BT_ENOMEM;
    size_t nl = (size_t)(colon - line);
    memcpy(n, line, nl);
    n[nl] = '\0';
    const char *v = colon + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    char *vd = n + nl + 1;
    memcpy(vd, v, (size_t)(end - v));
    vd[end - v] = '\0';
    r->headers[r->nheaders].name = n;
    r->headers[r->nheaders].value = vd;
    r->nheaders++;
    return 0;
}

int bt__http_response_append_body(bt_http_response *r, const void *data, size_t len)
{
    if (r->body_len + len + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 1024;
        while (cap < r->body_len + len + 1)
            cap *= 2;
        char *b = bt_realloc(r->body, cap);
        if (b == NULL)
            return BT_ENOMEM;
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, len);
    r->body_len += len;
    return 0;
}

int bt__http_response_reserve(bt_http_response *r, size_t cap)
{
    char *b = bt_realloc(r->body, cap);
    if (b == NULL)
        return BT_ENOMEM;
    r->body = b;
    r->body_cap = cap;
    return 0;
}

int bt__http_response_finish(bt_http_response *r)
{
    if (r->body)
        r->body[r->body_len] = '\0'; /* append_body always leaves room */
    return 0;
}

BT_EXPORT int bt_http_response_status(const bt_http_response *r)
{
    return r ? r->status : 0;
}

BT_EXPORT const char *bt_http_response_header(const bt_http_response *r, const char *name)
{
    if (r == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

BT_EXPORT size_t bt_http_response_header_count(const bt_http_response *r)
{
    return r ? r->nheaders : 0;
}

BT_EXPORT int bt_http_response_header_at(const bt_http_response *r, size_t i, const char **name,
                                         const char **value)
{
    if (r == NULL)
        return BT_EINVAL;
    if (i >= r->nheaders)
        return BT_ERANGE;
    if (name)
        *name = r->headers[i].name;
    if (value)
        *value = r->headers[i].value;
    return 0;
}

BT_EXPORT const char *bt_http_response_body(const bt_http_response *r, size_t *len)
{
    if (len)
        *len = r && r->body ? r->body_len : 0;
    if (r == NULL || r->body == NULL)
        return empty_body;
    return r->body;
}

BT_EXPORT const char *bt_http_response_url(const bt_http_response *r)
{
    return r && r->url ? r->url : "";
}

BT_EXPORT int bt_http_response_version(const bt_http_response *r)
{
    return r ? r->version : 0;
}

BT_EXPORT void bt_http_response_free(bt_http_response *r)
{
    if (r == NULL)
        return;
    bt__http_response_clear_headers(r);
    bt_free(r->headers);
    bt_free(r->body);
    bt_free(r->url);
    bt_free(r);
}
