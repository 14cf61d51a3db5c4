/* The fiber context switch (never installed).
 *
 * A context is a saved stack pointer: bt__ctx_switch pushes the
 * callee-saved registers on the current stack, stores the stack pointer in
 * `from`, loads the one in `to` and pops that stack's registers. That is
 * all a switch between two C functions that agreed to it needs to keep:
 * the caller-saved registers are dead across a call by the ABI. Written in
 * assembly for x86-64 and aarch64 (ELF); elsewhere, or with configure's
 * --with-fiber-switch=ucontext, it is swapcontext, which also saves and
 * restores the signal mask with a system call on every switch.
 */
#ifndef BATON_FIBER_CTX_H
#define BATON_FIBER_CTX_H

#include <stddef.h>

#if !defined(BT_FIBER_UCONTEXT) && \
    !(defined(__ELF__) && (defined(__x86_64__) || defined(__aarch64__)))
#define BT_FIBER_UCONTEXT 1
#endif

#ifdef BT_FIBER_UCONTEXT
#include <ucontext.h>
#endif

typedef struct bt__ctx {
#ifdef BT_FIBER_UCONTEXT
    ucontext_t uc;
#else
    void *sp;
#endif
} bt__ctx;

/* Prepare c to run entry(arg) on the stack [lo, lo + size) the first time
 * it is switched to. entry must never return: it switches away for good. */
void bt__ctx_make(bt__ctx *c, void *lo, size_t size, void (*entry)(void *), void *arg);

/* Save the current context in from and continue in to. Returns when
 * something switches back to from. */
#ifdef BT_FIBER_UCONTEXT
void bt__ctx_switch(bt__ctx *from, bt__ctx *to);
#else
void bt__ctx_swap(void **from_sp, void *to_sp);
static inline void bt__ctx_switch(bt__ctx *from, bt__ctx *to)
{
    bt__ctx_swap(&from->sp, to->sp);
}
#endif

/* "asm" or "ucontext", for the benchmark's output and the docs. */
extern const char bt__ctx_kind[];

#endif
