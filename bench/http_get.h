/* bench/http_get: shared between the Baton client and the raw anchor. */
#ifndef BATON_BENCH_HTTP_GET_H
#define BATON_BENCH_HTTP_GET_H

#include <stddef.h>

typedef struct {
    double seconds; /* wall time */
    double cpu;     /* this process's user+system seconds */
    int ok, failed;
} http_get_result;

/* The anchor: a raw curl multi + libevent client, hiperfifo style. Runs n
 * GETs of url with at most conc in flight. Returns 0 or -1. */
int http_get_anchor(const char *url, int n, int conc, http_get_result *out);

double http_get_now(void);
double http_get_cpu(void);

#endif
