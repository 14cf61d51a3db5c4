/* Baton: the umbrella header for the loop, futures and the offload pool.
 * The integrations have headers of their own: <baton/curl.h>,
 * <baton/pq.h>, <baton/http.h>, each with its own library. */
#ifndef BATON_H
#define BATON_H

#include <baton/common.h>
#include <baton/loop.h>
#include <baton/future.h>
#include <baton/pool.h>
#include <baton/fs.h>
#include <baton/bridge.h>
#include <baton/compose.h>
#include <baton/group.h>
#include <baton/semaphore.h>
#include <baton/watchdog.h>
#include <baton/fiber.h>

#endif
