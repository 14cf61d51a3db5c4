/* fiber_switch: nanoseconds per stack switch of Baton's fiber context
 * (core/fiber-ctx.c, compiled in: the switch itself, not the await around
 * it), against glibc's swapcontext in the same process. Two contexts
 * ping-pong SWITCHES times; each round reports ns per one-way switch, and
 * the best of ROUNDS short rounds is printed: on a shared machine a round
 * that was preempted measures the scheduler, not the switch. */
#include "config.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include "bench.h"
#include "fiber-ctx.h"

#define SWITCHES 200000L
#define ROUNDS 21
#define STACK (64 * 1024)

/* ---- Baton ---------------------------------------------------------------- */

static bt__ctx main_ctx, fib_ctx;
static volatile long counter;

static void fib_entry(void *arg)
{
    (void)arg;
    for (;;) {
        counter++;
        bt__ctx_switch(&fib_ctx, &main_ctx);
    }
}

static double baton_round(void)
{
    uint64_t t0 = now_ns();
    for (long i = 0; i < SWITCHES / 2; i++)
        bt__ctx_switch(&main_ctx, &fib_ctx);
    return (double)(now_ns() - t0) / SWITCHES;
}

/* ---- ucontext -------------------------------------------------------------- */

static ucontext_t uc_main, uc_fib;

static void uc_entry(void)
{
    for (;;) {
        counter++;
        swapcontext(&uc_fib, &uc_main);
    }
}

static double uc_round(void)
{
    uint64_t t0 = now_ns();
    for (long i = 0; i < SWITCHES / 2; i++)
        swapcontext(&uc_main, &uc_fib);
    return (double)(now_ns() - t0) / SWITCHES;
}

int main(void)
{
    char *s1 = mmap(NULL, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *s2 = mmap(NULL, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s1 == MAP_FAILED || s2 == MAP_FAILED)
        return 1;
    bt__ctx_make(&fib_ctx, s1, STACK, fib_entry, NULL);
    getcontext(&uc_fib);
    uc_fib.uc_stack.ss_sp = s2;
    uc_fib.uc_stack.ss_size = STACK;
    uc_fib.uc_link = NULL;
    makecontext(&uc_fib, uc_entry, 0);
    double b[ROUNDS], u[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        b[r] = baton_round();
        u[r] = uc_round();
    }
    char name[64];
    snprintf(name, sizeof name, "fiber_switch_%s", bt__ctx_kind);
    double bb = b[0], ub = u[0];
    for (int r = 1; r < ROUNDS; r++) {
        bb = b[r] < bb ? b[r] : bb;
        ub = u[r] < ub ? u[r] : ub;
    }
    bench_line("fiber_switch", bb, "ucontext_swapcontext", ub, "ns/switch", "lower");
    fprintf(stderr, "(%s: switch implementation %s)\n", name, bt__ctx_kind);
    return 0;
}
