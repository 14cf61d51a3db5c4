/* libbaton-curl's insides, shared by its files (never installed). */
#ifndef BATON_CURL_INTERNAL_H
#define BATON_CURL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <baton/curl.h>

/* One header as the user gave it, kept as the line curl wants:
 * "Name: value", "Name;" (send empty) or "Name:" (remove). */
typedef struct bt__http_header {
    char *line;
    size_t name_len;
} bt__http_header;

struct bt_http_request {
    char *method;
    char *url;
    char *query;                /* "a=1&b=2", already percent-encoded */
    size_t query_len;
    bt__http_header *headers;
    size_t nheaders;
    bool has_content_type;
    bool has_body;
    void *body;
    size_t body_len;
    char *body_file;
    bool has_timeout;
    uint64_t timeout_ms;
    bt_http_body_cb body_cb;
    void *body_cb_arg;
};

typedef struct bt__resp_header {
    char *name;                 /* name and value share one allocation */
    char *value;
} bt__resp_header;

struct bt_http_response {
    int status;
    int version;
    char *url;
    bt__resp_header *headers;
    size_t nheaders, cap_headers;
    char *body;
    size_t body_len, body_cap;
};

/* Response building, used by the transfer code. Each returns 0 or
 * BT_ENOMEM. */
bt_http_response *bt__http_response_new(void);
void bt__http_response_clear_headers(bt_http_response *r);
int bt__http_response_add_header_line(bt_http_response *r, const char *line, size_t len);
int bt__http_response_append_body(bt_http_response *r, const void *data, size_t len);
/* Give the body its trailing NUL (an empty body gets a static ""). */
int bt__http_response_finish(bt_http_response *r);

/* True if s is an HTTP token (method and header names). */
bool bt__http_is_token(const char *s, size_t len);

#endif
