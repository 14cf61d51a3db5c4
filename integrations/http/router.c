/* Routes: method + pattern ("/user/{id}") to a handler.
 *
 * A pattern is split into segments once, when it is added; a request path
 * is split (and percent-decoded) once per request, and matched against
 * every route. That is a linear scan: services have tens of routes, and a
 * scan of tens of short string compares costs less than the request's
 * parsing. Precedence does not depend on the order routes were added in
 * beyond ties: among the routes whose pattern matches, the one with more
 * literal segments wins (so "/user/me" beats "/user/{id}"), then the first
 * added. The method is checked after the path, so that a path that matches
 * with another method gives 405 and an Allow header rather than 404.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http-internal.h"

static void route_clear(bt__route *rt)
{
    for (size_t i = 0; i < rt->nsegs; i++)
        bt_free(rt->segs[i]);
    bt_free(rt->segs);
    bt_free(rt->is_param);
    bt_free(rt->method);
    bt_free(rt->pattern);
}

/* Split pattern into rt's segments. Returns 0, BT_EINVAL, BT_ENOMEM. */
static int parse_pattern(bt__route *rt, const char *pattern)
{
    if (pattern[0] != '/')
        return BT_EINVAL;
    size_t n = 0;
    for (const char *p = pattern; *p; p++)
        if (*p == '/')
            n++;
    if (strcmp(pattern, "/") == 0)
        n = 0;
    rt->segs = bt_calloc(n ? n : 1, sizeof *rt->segs);
    rt->is_param = bt_calloc(n ? n : 1, sizeof *rt->is_param);
    if (rt->segs == NULL || rt->is_param == NULL)
        return BT_ENOMEM;
    const char *p = pattern + 1;
    for (size_t i = 0; i < n; i++) {
        const char *end = strchr(p, '/');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len >= 2 && p[0] == '{' && p[len - 1] == '}') {
            if (len == 2 || memchr(p + 1, '{', len - 2) != NULL ||
                memchr(p + 1, '}', len - 2) != NULL)
                return BT_EINVAL;
            rt->is_param[i] = true;
            rt->segs[i] = bt_malloc(len - 1);
            if (rt->segs[i] == NULL)
                return BT_ENOMEM;
            memcpy(rt->segs[i], p + 1, len - 2);
            rt->segs[i][len - 2] = '\0';
        } else {
            if (memchr(p, '{', len) != NULL || memchr(p, '}', len) != NULL)
                return BT_EINVAL;
            rt->segs[i] = bt_malloc(len + 1);
            if (rt->segs[i] == NULL)
                return BT_ENOMEM;
            memcpy(rt->segs[i], p, len);
            rt->segs[i][len] = '\0';
            rt->nliteral++;
        }
        rt->nsegs = i + 1;
        p = end != NULL ? end + 1 : p + len;
    }
    size_t nparams = rt->nsegs - rt->nliteral;
    return nparams > BT__HTTP_MAX_PARAMS ? BT_EINVAL : 0;
}

int bt__router_add(bt__router *r, const char *method, const char *pattern,
                   bt_http_handler_fn handler, void *arg, bool fiber)
{
    if (method == NULL || !*method || pattern == NULL || handler == NULL)
        return BT_EINVAL;
    for (const char *m = method; *m; m++)
        if (*m < 'A' || *m > 'Z')
            return BT_EINVAL;
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->routes[i].method, method) == 0 && strcmp(r->routes[i].pattern, pattern) == 0)
            return BT_EINVAL;
    bt__route rt = { 0 };
    int rc = parse_pattern(&rt, pattern);
    if (rc == 0) {
        rt.method = bt_strdup(method);
        rt.pattern = bt_strdup(pattern);
        if (rt.method == NULL || rt.pattern == NULL)
            rc = BT_ENOMEM;
    }
    if (rc == 0 && r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 8;
        bt__route *nr = bt_realloc(r->routes, cap * sizeof *nr);
        if (nr == NULL)
            rc = BT_ENOMEM;
        else {
            r->routes = nr;
            r->cap = cap;
        }
    }
    if (rc != 0) {
        route_clear(&rt);
        return rc;
    }
    rt.order = r->n;
    rt.handler = handler;
    rt.arg = arg;
    rt.fiber = fiber;
    r->routes[r->n++] = rt;
    return 0;
}

void bt__router_free(bt__router *r)
{
    for (size_t i = 0; i < r->n; i++)
        route_clear(&r->routes[i]);
    bt_free(r->routes);
    memset(r, 0, sizeof *r);
}

static bool path_matches(const bt__route *rt, char **segs, size_t nsegs)
{
    if (rt->nsegs != nsegs)
        return false;
    for (size_t i = 0; i < nsegs; i++) {
        if (rt->is_param[i]) {
            if (segs[i][0] == '\0')
                return false; /* "/user/" does not match "/user/{id}" */
        } else if (strcmp(rt->segs[i], segs[i]) != 0) {
            return false;
        }
    }
    return true;
}

static bool method_matches(const bt__route *rt, const char *method)
{
    if (strcmp(rt->method, method) == 0)
        return true;
    return strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0;
}

static bool better(const bt__route *a, const bt__route *b)
{
    if (b == NULL)
        return true;
    if (a->nliteral != b->nliteral)
        return a->nliteral > b->nliteral;
    return a->order < b->order;
}

int bt__router_match(const bt__router *r, const char *method, char **segs, size_t nsegs,
                     bt__match *m)
{
    memset(m, 0, sizeof *m);
    const bt__route *best = NULL;
    /* An exact method beats HEAD-answered-by-GET. */
    for (int pass = 0; pass < 2 && best == NULL; pass++) {
        for (size_t i = 0; i < r->n; i++) {
            const bt__route *rt = &r->routes[i];
            if (!path_matches(rt, segs, nsegs))
                continue;
            m->path_matched = true;
            bool ok = pass == 0 ? strcmp(rt->method, method) == 0 : method_matches(rt, method);
            if (ok && better(rt, best))
                best = rt;
        }
    }
    if (best != NULL) {
        m->route = best;
        m->path_matched = false;
        for (size_t i = 0; i < nsegs; i++) {
            if (best->is_param[i]) {
                m->names[m->nparams] = best->segs[i];
                m->values[m->nparams] = segs[i];
                m->nparams++;
            }
        }
        return 0;
    }
    if (!m->path_matched)
        return 0;
    /* 405: list the methods of every route whose path matches. */
    size_t cap = 64, len = 0;
    char *allow = bt_malloc(cap);
    if (allow == NULL)
        return BT_ENOMEM;
    allow[0] = '\0';
    bool has_get = false, has_head = false;
    for (size_t i = 0; i < r->n; i++) {
        const bt__route *rt = &r->routes[i];
        if (!path_matches(rt, segs, nsegs))
            continue;
        const char *names[2] = { rt->method, NULL };
        if (strcmp(rt->method, "GET") == 0)
            has_get = true;
        if (strcmp(rt->method, "HEAD") == 0)
            has_head = true;
        for (int k = 0; k < 2 && names[k] != NULL; k++) {
            size_t need = len + strlen(names[k]) + 3;
            if (need > cap) {
                char *na = bt_realloc(allow, need * 2);
                if (na == NULL) {
                    bt_free(allow);
                    return BT_ENOMEM;
                }
                allow = na;
                cap = need * 2;
            }
            len += (size_t)sprintf(allow + len, "%s%s", len ? ", " : "", names[k]);
        }
    }
    if (has_get && !has_head) {
        char *na = bt_realloc(allow, len + 7);
        if (na == NULL) {
            bt_free(allow);
            return BT_ENOMEM;
        }
        allow = na;
        strcpy(allow + len, ", HEAD");
    }
    m->allow = allow;
    return 0;
}
