/* The response's layout, shared by response.c and server.c. */
#ifndef BATON_HTTP_RESPONSE_INTERNAL_H
#define BATON_HTTP_RESPONSE_INTERNAL_H

#include <stddef.h>

typedef struct {
    char *name;
    char *value;
} bt__header;

struct bt_http_reply {
    int status;
    bt__header *headers;
    size_t nheaders, capheaders;
    char *body;
    size_t len;
};

#endif
