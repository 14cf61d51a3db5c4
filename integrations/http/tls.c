/* TLS on the server: the certificate, its reload, and each connection's
 * OpenSSL bufferevent.
 *
 * DESIGN
 * - The app holds one SSL_CTX for new handshakes, behind a mutex that the
 *   loops of every server take for an instant at each accept (to take a
 *   reference) and a reload takes to swap the pointer. SSL_new holds a
 *   reference on its SSL_CTX, so a reload frees only the app's reference
 *   to the old context: open connections keep their SSL (and through it
 *   the old certificate) until they close, and are never dropped.
 * - A reload builds the new context completely (chain, key, the check
 *   that they match) before the swap; on any failure the old one stays.
 * - A connection's bufferevent is libevent's bufferevent_openssl over the
 *   socket evhttp hands it (evhttp_set_bevcb, through the guard), so the
 *   guard and evhttp see decrypted bytes in its input buffer and write
 *   plain bytes to its output, as with a plain socket.
 * - OpenSSL's error queue is per thread: every call that may fail starts
 *   by clearing it, and the failure's text is taken on the same thread.
 * Without OpenSSL (configure --without-openssl) the public calls answer
 * BT_ENOTSUP and the rest is never reached (app->tls stays NULL).
 */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "http-internal.h"

#ifdef BT_HAVE_OPENSSL

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>

struct bt__tls {
    pthread_mutex_t lock; /* guards ctx */
    SSL_CTX *ctx;         /* for new handshakes; the app's reference */
    char *cert_file;
    char *key_file;
};

/* OpenSSL's reasons for the last failure on this thread, oldest first,
 * joined by "; " into buf (which the queue is emptied into). */
static const char *ssl_reasons(char *buf, size_t size)
{
    size_t off = 0;
    unsigned long e;
    buf[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        const char *r = ERR_reason_error_string(e);
        char tmp[256];
        if (r == NULL) {
            ERR_error_string_n(e, tmp, sizeof tmp);
            r = tmp;
        }
        if (off < size) {
            int n = snprintf(buf + off, size - off, "%s%s", off ? "; " : "", r);
            off += n > 0 ? (size_t)n : 0;
        }
    }
    if (buf[0] == '\0')
        snprintf(buf, size, "%s", "unknown error");
    return buf;
}

/* ALPN: this server speaks http/1.1 only. A client that offers protocols
 * but not http/1.1 gets the no_application_protocol alert (RFC 7301
 * section 3.2); one that offers none is served. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char ours[] = "\x08http/1.1";
    unsigned char *sel = NULL;
    (void)ssl;
    (void)arg;
    if (SSL_select_next_proto(&sel, outlen, ours, sizeof ours - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* A context with the chain and key, or NULL (logged). */
static SSL_CTX *make_ctx(const char *cert_file, const char *key_file)
{
    char why[512];
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        bt_log(BT_LOG_ERROR, "http: TLS: cannot make a context: %s", ssl_reasons(why, sizeof why));
        return NULL;
    }
    /* TLS 1.0 and 1.1 are deprecated (RFC 8996). */
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    /* Most clients close a keep-alive connection without close_notify.
     * OpenSSL 3 calls that an error, which libevent 2.1 (written before)
     * does not take for the dirty shutdown it allows: an end of stream. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    /* An idle keep-alive connection would otherwise hold about 34 KiB of
     * OpenSSL buffers. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        bt_log(BT_LOG_ERROR, "http: TLS certificate %s: %s", cert_file,
               ssl_reasons(why, sizeof why));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        bt_log(BT_LOG_ERROR, "http: TLS key %s (for the certificate %s): %s", key_file, cert_file,
               ssl_reasons(why, sizeof why));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        bt_log(BT_LOG_ERROR, "http: TLS key %s does not match the certificate %s: %s", key_file,
               cert_file, ssl_reasons(why, sizeof why));
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static void tls_free(bt__tls *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    bt_free(t->cert_file);
    bt_free(t->key_file);
    pthread_mutex_destroy(&t->lock);
    bt_free(t);
}

void bt__tls_free(bt_http_app *app)
{
    tls_free(app->tls);
    app->tls = NULL;
}

int bt__tls_set(bt_http_app *app, const char *cert_file, const char *key_file)
{
    bt__tls *t = bt_calloc(1, sizeof *t);
    if (t == NULL)
        return BT_ENOMEM;
    pthread_mutex_init(&t->lock, NULL);
    t->cert_file = bt_strdup(cert_file);
    t->key_file = bt_strdup(key_file);
    if (t->cert_file == NULL || t->key_file == NULL) {
        tls_free(t);
        return BT_ENOMEM;
    }
    t->ctx = make_ctx(cert_file, key_file);
    if (t->ctx == NULL) {
        tls_free(t);
        return BT_EINVAL;
    }
    bt__tls_free(app);
    app->tls = t;
    return 0;
}

int bt__tls_reload(bt_http_app *app)
{
    bt__tls *t = app->tls;
    if (t == NULL) {
        bt_log(BT_LOG_ERROR, "http: TLS reload on an app without TLS");
        return BT_EINVAL;
    }
    SSL_CTX *ctx = make_ctx(t->cert_file, t->key_file);
    if (ctx == NULL) {
        bt_log(BT_LOG_ERROR, "http: TLS reload failed: the previous certificate keeps serving");
        return BT_EINVAL;
    }
    pthread_mutex_lock(&t->lock);
    SSL_CTX *old = t->ctx;
    t->ctx = ctx;
    pthread_mutex_unlock(&t->lock);
    SSL_CTX_free(old); /* the connections made with it hold their own references */
    bt_log(BT_LOG_INFO, "http: TLS certificate %s reloaded", t->cert_file);
    return 0;
}

static void peer_name(evutil_socket_t fd, char *out, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &sl) != 0)
        return;
    const void *addr = ss.ss_family == AF_INET6
                           ? (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                           : (const void *)&((struct sockaddr_in *)&ss)->sin_addr;
    inet_ntop(ss.ss_family, addr, out, (socklen_t)size);
}

/* The handshake starts: the socket is connected now, and may not be when
 * a failure is logged (the client has seen the close and gone), so the
 * peer's address is taken here, and the socket set to TCP_NODELAY. Its end is noted too: after a later
 * fatal error OpenSSL reports the connection as in its handshake again
 * (SSL_is_init_finished turns false). */
static void on_info(const SSL *ssl, int where, int ret)
{
    (void)ret;
    bt__tls_info *info = SSL_get_app_data(ssl);
    if (info == NULL)
        return;
    if ((where & SSL_CB_HANDSHAKE_START) && info->peer[0] == '\0') {
        int fd = SSL_get_fd(ssl);
        peer_name(fd, info->peer, sizeof info->peer);
        /* bufferevent_openssl writes a reply as one TLS record per
         * evbuffer chunk (evhttp's head, then its body), each its own
         * send(): with Nagle's algorithm the second waits for the
         * client's delayed ACK, 40 ms. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (where & SSL_CB_HANDSHAKE_DONE)
        info->handshake_done = true;
}

struct bufferevent *bt__tls_bev_new(bt_http_app *app, struct event_base *base, bt__tls_info *info)
{
    bt__tls *t = app->tls;
    pthread_mutex_lock(&t->lock);
    SSL_CTX *ctx = t->ctx;
    SSL_CTX_up_ref(ctx);
    pthread_mutex_unlock(&t->lock);
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* the SSL holds its own reference */
    if (ssl == NULL)
        return NULL;
    if (info != NULL) {
        SSL_set_app_data(ssl, info);
        SSL_set_info_callback(ssl, on_info);
    }
    /* Frees ssl on failure and, with BEV_OPT_CLOSE_ON_FREE, with the
     * bufferevent. */
    struct bufferevent *bev = bufferevent_openssl_socket_new(
        base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL)
        return NULL;
    /* A client that closes without close_notify (most do, between
     * keep-alive requests) is an end of stream, not an error. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

void bt__tls_log_failure(struct bufferevent *bev, const bt__tls_info *info)
{
    if (info->handshake_done)
        return;
    /* bufferevent_openssl keeps the errors of a failed handshake; the
     * first it recorded is SSL_get_error's code, the rest OpenSSL's
     * reasons. */
    char why[256] = "";
    unsigned long e;
    while ((e = bufferevent_get_openssl_error(bev)) != 0) {
        const char *r = ERR_GET_LIB(e) != 0 ? ERR_reason_error_string(e) : NULL;
        if (r != NULL && why[0] == '\0')
            snprintf(why, sizeof why, "%s", r);
    }
    if (why[0] == '\0')
        return; /* closed before or during the handshake, without an error */
    bt_log(BT_LOG_DEBUG, "http: TLS handshake with %s failed: %s",
           info->peer[0] != '\0' ? info->peer : "-", why);
}

#else /* !BT_HAVE_OPENSSL */

void bt__tls_free(bt_http_app *app)
{
    (void)app;
}

#endif /* BT_HAVE_OPENSSL */

BT_EXPORT int bt_http_app_set_tls(bt_http_app *app, const char *cert_file, const char *key_file)
{
    if (app == NULL || cert_file == NULL || key_file == NULL)
        return BT_EINVAL;
#ifdef BT_HAVE_OPENSSL
    if (atomic_load(&app->servers) != 0 || atomic_load(&app->running))
        return BT_EBUSY;
    return bt__tls_set(app, cert_file, key_file);
#else
    bt_log(BT_LOG_ERROR, "http: TLS is not available: libbaton-http was built without OpenSSL "
                         "(configure found no libssl-dev, or was given --without-openssl)");
    return BT_ENOTSUP;
#endif
}

BT_EXPORT int bt_http_app_reload_tls(bt_http_app *app)
{
    if (app == NULL)
        return BT_EINVAL;
#ifdef BT_HAVE_OPENSSL
    return bt__tls_reload(app);
#else
    return BT_ENOTSUP;
#endif
}
