/* Baton internal: reading and writing the caller's sized structs.
 *
 * Every public config or stats struct begins with `size_t size`, set by
 * the caller to the sizeof it was compiled with (see "Structs that can
 * grow" in docs/design.md and common.h). The library reads an input struct
 * and writes an output struct only up to that size, so that a program
 * built against an older header (a smaller struct) keeps working after
 * fields are appended: on input the fields it does not have take their
 * defaults, on output they are not written. A size smaller than the first
 * published layout (or 0: a struct nobody initialised) is refused.
 *
 * Static inline for the same reason as list.h: the integrations are
 * separate shared objects built with hidden visibility.
 */
#ifndef BATON_CORE_SIZED_H
#define BATON_CORE_SIZED_H

#include <stddef.h>
#include <string.h>

#include <baton/common.h>

/* The size of the first published layout of `type`: the end of its field
 * `last`, the last field it had then. Never change a type's V1 once
 * released: it is what the oldest callers pass. */
#define BT__SIZE_V1(type, last) (offsetof(type, last) + sizeof(((type *)0)->last))

/* 0 if size is at least v1; else BT_EINVAL after a log line that names
 * the function, the type and the way to initialise it (`how`). */
static inline int bt__sized_check(size_t size, size_t v1, const char *fn, const char *type,
                                  const char *how)
{
    if (size >= v1)
        return 0;
    bt_log(BT_LOG_WARN,
           "%s: %s.size is %zu, smaller than any %s the library knows (%zu): initialise it "
           "with %s",
           fn, type, size, type, v1, how);
    return BT_EINVAL;
}

/* Copy an input struct of the caller's `size` over `dst`, a whole struct
 * the library already filled with its defaults; fields past `size` keep
 * them, fields the library does not know (past `full`) are ignored. dst's
 * size field ends up `full`. */
static inline void bt__sized_read(void *dst, size_t full, const void *src, size_t size)
{
    memcpy(dst, src, size < full ? size : full);
    memcpy(dst, &full, sizeof full);
}

/* Copy a whole output struct `src` (of `full` bytes) to the caller's `dst`
 * of `size` bytes: only the first `size` bytes are written, and dst's size
 * field keeps the caller's value. Fields past `full`, which a newer header
 * has and this library does not, are left as the caller set them. */
static inline void bt__sized_write(void *dst, size_t size, void *src, size_t full)
{
    memcpy(src, &size, sizeof size);
    memcpy(dst, src, size < full ? size : full);
}

/* Zero the caller's struct p of `size` bytes, all but its size field,
 * and nothing past `full`. */
static inline void bt__sized_zero(void *p, size_t size, size_t full)
{
    size_t n = size < full ? size : full;
    if (n > sizeof(size_t))
        memset((char *)p + sizeof(size_t), 0, n - sizeof(size_t));
}

#endif
