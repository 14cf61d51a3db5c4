/* bench/server_user: the anchor server's entry point (no Baton in it). */
#ifndef BATON_BENCH_SERVER_USER_H
#define BATON_BENCH_SERVER_USER_H

/* Serve GET /user/{id} on listen_fd (listening, nonblocking) with 16
 * libpq connections to conninfo. Returns only on a setup failure. */
int anchor_serve(const char *conninfo, int listen_fd);

#endif
