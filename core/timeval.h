/* Baton internal: milliseconds as the struct timeval libevent takes.
 *
 * Every timer in core and the integrations converts a uint64_t of
 * milliseconds the same way; one function serves them all. Static inline
 * for the same reason as list.h: the integrations are separate shared
 * objects built with hidden visibility.
 */
#ifndef BATON_CORE_TIMEVAL_H
#define BATON_CORE_TIMEVAL_H

#include <stdint.h>
#include <sys/time.h>

static inline struct timeval bt__timeval_ms(uint64_t ms)
{
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
    return tv;
}

#endif
