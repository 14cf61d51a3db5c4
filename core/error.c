/* Error codes: names and descriptions. */
#include "config.h"

#include <baton/common.h>

#define BT_ERRORS(X)                                              \
    X(BT_EPERM, "operation not permitted")                        \
    X(BT_ENOENT, "no such file or directory")                     \
    X(BT_EIO, "input/output error")                               \
    X(BT_EBADF, "bad file descriptor")                            \
    X(BT_EAGAIN, "resource temporarily unavailable (queue full)") \
    X(BT_ENOMEM, "out of memory")                                 \
    X(BT_EACCES, "permission denied")                             \
    X(BT_EBUSY, "resource busy")                                  \
    X(BT_EEXIST, "already exists")                                \
    X(BT_EINVAL, "invalid argument")                              \
    X(BT_ENOSPC, "no space left")                                 \
    X(BT_EPIPE, "broken pipe")                                    \
    X(BT_ERANGE, "result out of range")                           \
    X(BT_EDEADLK, "the wait would deadlock")                      \
    X(BT_ENOSYS, "function not implemented")                      \
    X(BT_EPROTO, "protocol error")                                \
    X(BT_EMSGSIZE, "size limit exceeded")                         \
    X(BT_ENOTSUP, "not supported")                                \
    X(BT_EADDRINUSE, "address already in use")                    \
    X(BT_ENETUNREACH, "network unreachable")                      \
    X(BT_ECONNABORTED, "connection aborted")                      \
    X(BT_ECONNRESET, "connection reset by peer")                  \
    X(BT_ESHUTDOWN, "shutting down")                              \
    X(BT_ETIMEDOUT, "timed out")                                  \
    X(BT_ECONNREFUSED, "connection refused")                      \
    X(BT_EHOSTUNREACH, "host unreachable")                        \
    X(BT_EALREADY, "already settled")                             \
    X(BT_EINPROGRESS, "still pending")                            \
    X(BT_ECANCELED, "cancelled")                                  \
    X(BT_EDNS, "host name could not be resolved")                 \
    X(BT_ETLS, "TLS failure")                                     \
    X(BT_ESQL, "the database server reported an error")           \
    X(BT_EHTTP, "HTTP failure")                                   \
    X(BT_EJOB, "the job failed")                                  \
    X(BT_ETYPE, "type mismatch")

BT_EXPORT const char *bt_strerror(int code)
{
    if (code == 0)
        return "success";
#define X(c, s)      \
    if (code == (c)) \
        return s;
    BT_ERRORS(X)
#undef X
    return "unknown error";
}

BT_EXPORT const char *bt_err_name(int code)
{
    if (code == 0)
        return "0";
#define X(c, s)      \
    if (code == (c)) \
        return #c;
    BT_ERRORS(X)
#undef X
    return "BT_E?";
}
