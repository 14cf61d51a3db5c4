/* The pool's conninfo, parsed once into the keyword/value arrays that
 * PQconnectStartParams takes, with room for the resolved hostaddr. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "pq-internal.h"

static bool is_numeric(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* An integer as libpq's parse_int_param reads one: blanks around an
 * optional sign and digits. */
static bool is_int(const char *v, long min, long max)
{
    while (*v == ' ' || *v == '\t')
        v++;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (end == v || errno != 0)
        return false;
    while (*end == ' ' || *end == '\t')
        end++;
    return *end == '\0' && n >= min && n <= max;
}

static bool one_of(const char *v, const char *const *words)
{
    for (; *words != NULL; words++)
        if (strcmp(v, *words) == 0)
            return true;
    return false;
}

/* libpq checks most values only when a connection starts, so a pool would
 * accept "port=abc" and fail every query later with a vague error, while
 * it rejects an unknown key at once. Check here, once, the values libpq
 * would refuse: numbers and the keywords of the enumerated settings.
 * Returns true, or logs why and returns false. */
static bool values_ok(const PQconninfoOption *opts)
{
    static const char *const ints[] = { "connect_timeout",
                                        "keepalives",
                                        "keepalives_idle",
                                        "keepalives_interval",
                                        "keepalives_count",
                                        "tcp_user_timeout",
                                        NULL };
    static const struct {
        const char *key;
        const char *const words[8];
    } enums[] = {
        { "sslmode", { "disable", "allow", "prefer", "require", "verify-ca", "verify-full" } },
        { "gssencmode", { "disable", "prefer", "require" } },
        { "channel_binding", { "disable", "prefer", "require" } },
        { "target_session_attrs",
          { "any", "read-write", "read-only", "primary", "standby", "prefer-standby" } },
    };
    for (const PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL)
            continue;
        if (strcmp(o->keyword, "port") == 0) {
            /* A list, one per host; an empty entry means the default. */
            const char *v = o->val;
            for (;;) {
                size_t len = strcspn(v, ",");
                char one[32];
                if (len > 0 && (len >= sizeof one ||
                                (memcpy(one, v, len), one[len] = '\0', !is_int(one, 1, 65535)))) {
                    bt_log(BT_LOG_WARN,
                           "pq: bad conninfo: port=\"%s\" is not a port number "
                           "(1 to 65535, or a comma-separated list of them)",
                           o->val);
                    return false;
                }
                if (v[len] == '\0')
                    break;
                v += len + 1;
            }
        } else if (one_of(o->keyword, ints)) {
            if (*o->val != '\0' && !is_int(o->val, INT_MIN, INT_MAX)) {
                bt_log(BT_LOG_WARN, "pq: bad conninfo: %s=\"%s\" is not an integer", o->keyword,
                       o->val);
                return false;
            }
        } else {
            for (size_t i = 0; i < sizeof enums / sizeof enums[0]; i++)
                if (strcmp(o->keyword, enums[i].key) == 0 && *o->val != '\0' &&
                    !one_of(o->val, enums[i].words)) {
                    bt_log(BT_LOG_WARN, "pq: bad conninfo: %s=\"%s\" is not a valid value",
                           o->keyword, o->val);
                    return false;
                }
        }
    }
    return true;
}

/* The entries of a comma-separated list. */
static size_t entries(const char *list)
{
    size_t n = 1;
    for (; *list != '\0'; list++)
        if (*list == ',')
            n++;
    return n;
}

int bt__pq_parse_conninfo(bt_pq_pool *p)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(p->conninfo, &err);
    if (opts == NULL) {
        size_t n = err ? strlen(err) : 0;
        while (n > 0 && err[n - 1] == '\n')
            n--;
        if (err)
            bt_log(BT_LOG_WARN, "pq: bad conninfo: %.*s", (int)n, err);
        else
            bt_log(BT_LOG_WARN, "pq: bad conninfo (or out of memory)");
        PQfreemem(err);
        return BT_EINVAL;
    }
    if (!values_ok(opts)) {
        PQconninfoFree(opts);
        return BT_EINVAL;
    }
    size_t n = 0;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (o->val != NULL && *o->val)
            n++;
    /* + hostaddr + host + fallback_application_name + gssencmode + the
     * terminator */
    p->keys = bt_calloc(n + 5, sizeof *p->keys);
    p->vals = bt_calloc(n + 5, sizeof *p->vals);
    if (p->keys == NULL || p->vals == NULL) {
        PQconninfoFree(opts);
        return BT_ENOMEM;
    }
    size_t i = 0;
    const char *host = NULL, *hostaddr = NULL;
    bool gss = false;
    p->host_idx = p->hostaddr_idx = p->port_idx = -1;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (o->val == NULL || !*o->val)
            continue;
        p->keys[i] = bt_strdup(o->keyword);
        p->vals[i] = bt_strdup(o->val);
        if (p->keys[i] == NULL || p->vals[i] == NULL) {
            PQconninfoFree(opts);
            return BT_ENOMEM;
        }
        if (strcmp(o->keyword, "host") == 0) {
            host = p->vals[i];
            p->host_idx = (int)i;
        }
        if (strcmp(o->keyword, "gssencmode") == 0)
            gss = true;
        if (strcmp(o->keyword, "port") == 0)
            p->port_idx = (int)i;
        if (strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = p->vals[i];
            p->hostaddr_idx = (int)i;
        }
        i++;
    }
    PQconninfoFree(opts);
    if (host == NULL && hostaddr == NULL)
        host = getenv("PGHOST"); /* what libpq would use */
    if (host != NULL && hostaddr == NULL) {
        /* Resolution happens on the blocking lane, then libpq gets
         * hostaddr (see resolve.c). */
        bool names = false;
        const char *h = host;
        while (*h) {
            size_t len = strcspn(h, ",");
            char one[256];
            if (len && h[0] != '/' && h[0] != '@' && len < sizeof one) {
                memcpy(one, h, len);
                one[len] = '\0';
                /* A numeric address needs no lookup (in a list with names,
                 * the job passes it through as is). */
                if (!is_numeric(one))
                    names = true;
            } else if (len >= sizeof one) {
                names = true; /* let the resolver report it */
            }
            h += len;
            if (*h == ',')
                h++;
        }
        if (names) {
            /* Each name may give several addresses: libpq then gets one
             * entry per address in host, hostaddr and (if it is a list)
             * port, in matching order, and walks them itself. */
            if (p->port_idx >= 0 && strchr(p->vals[p->port_idx], ',') != NULL) {
                /* libpq refuses a port list that does not match the host
                 * list; once expanded it could no longer tell. */
                if (entries(p->vals[p->port_idx]) != entries(host)) {
                    bt_log(BT_LOG_WARN,
                           "pq: bad conninfo: %zu ports for %zu hosts (give one port, or "
                           "one per host)",
                           entries(p->vals[p->port_idx]), entries(host));
                    return BT_EINVAL;
                }
                p->ports = bt_strdup(p->vals[p->port_idx]);
                if (p->ports == NULL)
                    return BT_ENOMEM;
            }
            p->host = bt_strdup(host);
            p->keys[i] = bt_strdup("hostaddr");
            p->hostaddr_idx = (int)i;
            p->vals[i] = NULL;
            if (p->host == NULL || p->keys[i] == NULL)
                return BT_ENOMEM;
            i++;
            if (p->host_idx < 0) {
                p->host_idx = (int)i;
                p->keys[i] = bt_strdup("host");
                p->vals[i] = bt_strdup(host);
                if (p->keys[i] == NULL || p->vals[i] == NULL)
                    return BT_ENOMEM;
                i++;
            }
        }
    }
    p->keys[i] = bt_strdup("fallback_application_name");
    p->vals[i] = bt_strdup("baton");
    if (p->keys[i] == NULL || p->vals[i] == NULL)
        return BT_ENOMEM;
    i++;
    if (!gss && !getenv("PGGSSENCMODE")) {
        /* Unless asked for, no GSSAPI encryption: probing for it costs a
         * round trip per connect, and looking for Kerberos credentials can
         * block inside PQconnectPoll. */
        p->keys[i] = bt_strdup("gssencmode");
        p->vals[i] = bt_strdup("disable");
        if (p->keys[i] == NULL || p->vals[i] == NULL)
            return BT_ENOMEM;
    }
    return 0;
}
