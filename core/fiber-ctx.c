/* The fiber context switch: see fiber-ctx.h.
 *
 * x86-64 (System V): rbx, rbp, r12-r15 are callee-saved, and so are the
 * control bits of MXCSR and the x87 control word (a fiber that changes the
 * rounding mode must not change it for the code it switches to). aarch64
 * (AAPCS64): x19-x28, the frame pointer x29, the link register x30 and the
 * low halves of v8-v15 (d8-d15). A new context starts in bt__ctx_entry,
 * which finds entry and arg in two of the callee-saved registers the first
 * switch restores, and calls entry with the stack aligned as a call needs.
 */
#include "config.h"

#include <stdint.h>
#include <string.h>

#include "fiber-ctx.h"

#ifdef BT_FIBER_UCONTEXT

const char bt__ctx_kind[] = "ucontext";

/* makecontext passes int arguments only: the pointers go in two halves. */
static void ctx_tramp(unsigned hi_entry, unsigned lo_entry, unsigned hi_arg, unsigned lo_arg)
{
    uintptr_t e = ((uintptr_t)hi_entry << 16 << 16) | lo_entry;
    uintptr_t a = ((uintptr_t)hi_arg << 16 << 16) | lo_arg;
    void (*entry)(void *);
    memcpy(&entry, &e, sizeof entry);
    entry((void *)a);
}

void bt__ctx_make(bt__ctx *c, void *lo, size_t size, void (*entry)(void *), void *arg)
{
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = lo;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = NULL;
    uintptr_t e, a = (uintptr_t)arg;
    memcpy(&e, &entry, sizeof e);
    makecontext(&c->uc, (void (*)(void))ctx_tramp, 4, (unsigned)(e >> 16 >> 16), (unsigned)e,
                (unsigned)(a >> 16 >> 16), (unsigned)a);
}

void bt__ctx_switch(bt__ctx *from, bt__ctx *to)
{
    swapcontext(&from->uc, &to->uc);
}

#elif defined(__x86_64__)

const char bt__ctx_kind[] = "asm";

__asm__(".text\n"
        ".globl bt__ctx_swap\n"
        ".hidden bt__ctx_swap\n"
        ".type bt__ctx_swap,@function\n"
        ".p2align 4\n"
        "bt__ctx_swap:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    subq $8, %rsp\n"
        "    stmxcsr (%rsp)\n"
        "    fnstcw 4(%rsp)\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    ldmxcsr (%rsp)\n"
        "    fldcw 4(%rsp)\n"
        "    addq $8, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size bt__ctx_swap, .-bt__ctx_swap\n"
        ".type bt__ctx_entry,@function\n"
        ".p2align 4\n"
        "bt__ctx_entry:\n"
        "    movq %r12, %rdi\n"
        "    callq *%r13\n"
        "    ud2\n"
        ".size bt__ctx_entry, .-bt__ctx_entry\n");

void bt__ctx_entry(void);

void bt__ctx_make(bt__ctx *c, void *lo, size_t size, void (*entry)(void *), void *arg)
{
    /* From the top: 16 bytes of slack, then the frame bt__ctx_swap pops:
     * return address, rbp, rbx, r12, r13, r14, r15, MXCSR and x87 control
     * word. After its ret the stack pointer is 16-byte aligned, as the call
     * in bt__ctx_entry needs. */
    uintptr_t top = ((uintptr_t)lo + size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 16 - 64);
    uint32_t mxcsr;
    uint16_t fpucw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpucw));
    sp[0] = (uint64_t)mxcsr | (uint64_t)fpucw << 32;
    sp[1] = 0;                          /* r15 */
    sp[2] = 0;                          /* r14 */
    sp[3] = (uint64_t)(uintptr_t)entry; /* r13 */
    sp[4] = (uint64_t)(uintptr_t)arg;   /* r12 */
    sp[5] = 0;                          /* rbx */
    sp[6] = 0;                          /* rbp: ends frame-pointer walks */
    sp[7] = (uint64_t)(uintptr_t)bt__ctx_entry;
    c->sp = sp;
}

#elif defined(__aarch64__)

const char bt__ctx_kind[] = "asm";

__asm__(".text\n"
        ".globl bt__ctx_swap\n"
        ".hidden bt__ctx_swap\n"
        ".type bt__ctx_swap,%function\n"
        ".p2align 4\n"
        "bt__ctx_swap:\n"
        "    sub sp, sp, #160\n"
        "    stp x19, x20, [sp, #0]\n"
        "    stp x21, x22, [sp, #16]\n"
        "    stp x23, x24, [sp, #32]\n"
        "    stp x25, x26, [sp, #48]\n"
        "    stp x27, x28, [sp, #64]\n"
        "    stp x29, x30, [sp, #80]\n"
        "    stp d8, d9, [sp, #96]\n"
        "    stp d10, d11, [sp, #112]\n"
        "    stp d12, d13, [sp, #128]\n"
        "    stp d14, d15, [sp, #144]\n"
        "    mov x9, sp\n"
        "    str x9, [x0]\n"
        "    mov sp, x1\n"
        "    ldp x19, x20, [sp, #0]\n"
        "    ldp x21, x22, [sp, #16]\n"
        "    ldp x23, x24, [sp, #32]\n"
        "    ldp x25, x26, [sp, #48]\n"
        "    ldp x27, x28, [sp, #64]\n"
        "    ldp x29, x30, [sp, #80]\n"
        "    ldp d8, d9, [sp, #96]\n"
        "    ldp d10, d11, [sp, #112]\n"
        "    ldp d12, d13, [sp, #128]\n"
        "    ldp d14, d15, [sp, #144]\n"
        "    add sp, sp, #160\n"
        "    ret\n"
        ".size bt__ctx_swap, .-bt__ctx_swap\n"
        ".type bt__ctx_entry,%function\n"
        ".p2align 4\n"
        "bt__ctx_entry:\n"
        "    mov x0, x19\n"
        "    blr x20\n"
        "    brk #0\n"
        ".size bt__ctx_entry, .-bt__ctx_entry\n");

void bt__ctx_entry(void);

void bt__ctx_make(bt__ctx *c, void *lo, size_t size, void (*entry)(void *), void *arg)
{
    /* The frame bt__ctx_swap pops (160 bytes, 16-byte aligned), x19 = arg,
     * x20 = entry, x29 = 0 (ends frame walks), x30 = bt__ctx_entry. */
    uintptr_t top = ((uintptr_t)lo + size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 160);
    memset(sp, 0, 160);
    sp[0] = (uint64_t)(uintptr_t)arg;
    sp[1] = (uint64_t)(uintptr_t)entry;
    sp[10] = 0;
    sp[11] = (uint64_t)(uintptr_t)bt__ctx_entry;
    c->sp = sp;
}

#endif
