/* One hexadecimal digit's value, for the parsers of the integrations
 * (percent-decoding in http, bytea and uuid text in pq). Header-only and
 * static inline: each integration is its own shared object. */
#ifndef BATON_CORE_HEX_H
#define BATON_CORE_HEX_H

/* The value of c as a hex digit (either case), or -1. */
static inline int bt__hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

#endif
