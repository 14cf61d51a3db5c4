/* The loop's hooks into core/fiber.c (never installed). */
#ifndef BATON_FIBER_INTERNAL_H
#define BATON_FIBER_INTERNAL_H

#include <baton/loop.h>

/* Fill the fiber fields of *out. Loop thread. */
void bt__fibers_stats(const bt_loop *loop, bt_loop_stats *out);

/* Release the loop's fiber stacks, at the end of bt_loop_free (every
 * fiber has been cancelled and run to its end by then; one that has not
 * is reported and its stack freed without unwinding). Loop thread. */
void bt__fibers_free(bt_loop *loop);

#endif
