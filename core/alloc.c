/* The one place Baton allocates through, so that tests can make it fail. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <baton/common.h>

/* Set once before threads start (see the header), read everywhere. */
static bt_malloc_fn g_malloc = malloc;
static bt_realloc_fn g_realloc = realloc;
static bt_free_fn g_free = free;

BT_EXPORT void bt_set_allocator(bt_malloc_fn m, bt_realloc_fn r, bt_free_fn f)
{
    if (m == NULL || r == NULL || f == NULL) { /* all three or none */
        m = malloc;
        r = realloc;
        f = free;
    }
    g_malloc = m;
    g_realloc = r;
    g_free = f;
}

BT_EXPORT void *bt_malloc(size_t size)
{
    return g_malloc(size ? size : 1);
}

BT_EXPORT void *bt_calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    size_t total = n * size;
    void *p = bt_malloc(total);
    if (p != NULL)
        memset(p, 0, total > 0 ? total : 1);
    return p;
}

BT_EXPORT void *bt_realloc(void *ptr, size_t size)
{
    return g_realloc(ptr, size ? size : 1);
}

BT_EXPORT void bt_free(void *ptr)
{
    if (ptr != NULL)
        g_free(ptr);
}

BT_EXPORT char *bt_strdup(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = bt_malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

BT_EXPORT char *bt_vasprintf(const char *fmt, va_list ap)
{
    if (fmt == NULL)
        return NULL;
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return NULL;
    char *s = bt_malloc((size_t)n + 1);
    if (s != NULL)
        vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

BT_EXPORT char *bt_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = bt_vasprintf(fmt, ap);
    va_end(ap);
    return s;
}
