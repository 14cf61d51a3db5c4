/* Fibers: bt_async and bt_await (see include/baton/fiber.h).
 *
 * DESIGN
 * - Everything here happens on the loop's thread: a fiber is created,
 *   resumed, suspended and ended there, so no field needs an atomic. The
 *   one exception is the SIGSEGV handler, which runs on the faulting
 *   thread and reads that thread's current fiber.
 * - A fiber is one mapping: [guard page][stack ... struct bt__fiber]. The
 *   struct at the top of its own stack means a fiber costs one mmap (or
 *   none, from the loop's free list), no malloc, and one resident page
 *   for a fiber that stays shallow. The mapping outlives the fiber's run
 *   while something still refers to the struct (`refs`, below), and then
 *   goes back to the free list.
 * - Suspension happens only in bt_await: the fiber registers a callback on
 *   the future and switches back to whoever resumed it. Resumption happens
 *   only from the loop: that callback (futures run their callbacks from
 *   the loop, never inside a settle call), the start task, or the wake task
 *   a cancellation queues. So a fiber never runs inside somebody's settle
 *   or cancel call, and the code that resumed it is always a loop task.
 * - Resume saves the resumer's context on the resumer's own stack (any
 *   stack: a fiber may free another loop, whose fibers then resume on top
 *   of it) and the fiber switches back to exactly that context.
 * - refs (loop thread): one while the fiber has not ended, one for each
 *   await callback registered and not yet run, one for the queued start or
 *   wake task, one while the future fn returned is pending. A stale await
 *   callback (the fiber was woken by its cancellation first) finds
 *   `awaiting` no longer pointing at its future and only drops its ref;
 *   once cancelled, a fiber registers no further callbacks.
 * - Cancellation: the cancel hook of the fiber's future sets `cancelled`,
 *   cancels the awaited future and queues the wake task, so the await
 *   returns BT_ECANCELED on the next turn even if the awaited work cannot
 *   stop at once (a job already running). The fiber's future settles when
 *   the fiber has returned (its outcome is then discarded as cancelled).
 */
#include "config.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#ifdef HAVE_DLFCN_H
#include <dlfcn.h>
#endif

#include <baton/fiber.h>

#include "fiber-ctx.h"
#include "future-internal.h"
#include "list.h"

/* ---- Sanitizers and valgrind ------------------------------------------- */

#if defined(__SANITIZE_ADDRESS__)
#define BT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BT_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define BT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define BT_TSAN 1
#endif
#endif

#ifdef BT_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef BT_TSAN
#include <sanitizer/tsan_interface.h>
#endif
#ifdef HAVE_VALGRIND_VALGRIND_H
#include <valgrind/valgrind.h>
#endif

#define MIN_STACK (16u * 1024u)
#define MAX_STACK (1024u * 1024u * 1024u)
#define FREE_MAX 64 /* stacks a loop keeps for reuse */
/* The guard below each stack: no access, address space only. A frame
 * larger than the guard could step over it into the mapping below (often
 * another fiber's stack, with its record at the top) without a fault, so
 * the guard is as large as the frames we expect, not one page; the fault
 * handler also takes faults up to this far under the mapping. */
#define GUARD_SLACK (64u * 1024u)

typedef struct bt__fiber bt__fiber;

/* The loop's fibers: owned by the loop (loop->fibers), loop thread only. */
typedef struct bt__fibers {
    size_t stack_size; /* usable bytes of new stacks */
    bt__list free;     /* mappings to reuse, all of stack_size */
    size_t nfree;
    size_t alive;  /* fibers started and not yet ended */
    size_t mapped; /* bytes mapped: the fibers' and the free list's */
    bt__list live; /* every mapping in use, for bt_loop_free */
} bt__fibers;

struct bt__fiber {
    bt__ctx ctx;     /* the fiber's saved context while suspended */
    bt__ctx *caller; /* the resumer's, on the resumer's stack */
    bt__fiber *prev_current;
    bt__fibers *fs;
    bt_loop *loop;
    bt_start_fn fn;
    void *arg;
    bt_future *result;      /* ours: settled when the fiber has returned */
    bt_future *awaiting;    /* borrowed from the bt_await frame */
    bt_future *ret;         /* what fn returned; ours */
    bt_future *last_failed; /* ours, for bt_await_error */
    const char *last_msg;
    int refs;
    bool started, ended, cancelled, task_queued;
    bt__task task; /* start, then wake */
    char *map;     /* the mapping: guard page first */
    size_t map_size;
    size_t guard;
    char *stack_lo;
    size_t stack_size;
    bt__list link; /* on the loop's live list while in use, then on free */
    unsigned vg_id;
#ifdef BT_ASAN
    void *asan_fake;
    const void *asan_caller_lo;
    size_t asan_caller_size;
#endif
#ifdef BT_TSAN
    void *tsan_fiber;
    void *tsan_caller;
#endif
};

/* The struct's room at the top of the mapping, kept 64-byte aligned. */
#define FIBER_RECORD ((sizeof(bt__fiber) + 63) & ~(size_t)63)

static _Thread_local bt__fiber *tls_current;

/* The fiber's function as a data pointer, for dladdr and the watchdog. */
static const void *fn_addr(const bt__fiber *fib)
{
    const void *p;
    memcpy(&p, &fib->fn, sizeof p);
    return p;
}

/* ---- Stack overflow ------------------------------------------------------ */

static struct sigaction old_segv;
static pthread_once_t segv_once = PTHREAD_ONCE_INIT;
static _Thread_local bool tls_altstack_checked;

static void put(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void put_hex(uintptr_t v)
{
    char buf[2 + 2 * sizeof v + 1];
    char *p = buf + sizeof buf - 1;
    *p = '\0';
    do {
        *--p = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    *--p = 'x';
    *--p = '0';
    put(p);
}

static void put_dec(size_t v)
{
    char buf[24];
    char *p = buf + sizeof buf - 1;
    *p = '\0';
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(p);
}

/* A fault in (or just under) the running fiber's guard page is a stack
 * overflow: say so, naming the fiber's function, and die of the signal.
 * Anything else goes to the handler that was there before ours. Runs on
 * the alternate signal stack, since the fiber's own is exhausted. dladdr
 * is not async-signal-safe, but the process is about to die anyway and the
 * name is the point of the message. */
static void on_segv(int sig, siginfo_t *si, void *uctx)
{
    bt__fiber *fib = tls_current;
    uintptr_t a = (uintptr_t)si->si_addr;
    if (fib != NULL && a + GUARD_SLACK >= (uintptr_t)fib->map &&
        a < (uintptr_t)fib->map + fib->guard) {
        put("baton: fatal: stack overflow in a fiber started with ");
        const void *fn = fn_addr(fib);
        const char *name = NULL;
#ifdef HAVE_DLFCN_H
        Dl_info di;
        if (dladdr(fn, &di) != 0 && di.dli_sname != NULL)
            name = di.dli_sname;
#endif
        put(name != NULL ? name : "an unnamed function");
        put(" (");
        put_hex((uintptr_t)fn);
        put("); its stack is ");
        put_dec(fib->map_size - fib->guard);
        put(" bytes: raise it with bt_loop_set_fiber_stack\n");
        signal(SIGSEGV, SIG_DFL);
        return; /* the fault repeats, now fatal */
    }
    if (old_segv.sa_flags & SA_SIGINFO) {
        if (old_segv.sa_sigaction != NULL) {
            old_segv.sa_sigaction(sig, si, uctx);
            return;
        }
    } else if (old_segv.sa_handler != SIG_DFL && old_segv.sa_handler != SIG_IGN) {
        old_segv.sa_handler(sig);
        return;
    }
    signal(SIGSEGV, SIG_DFL);
}

static void segv_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
}

/* The handler needs a stack of its own on each thread that runs fibers.
 * Keep one the thread (or a sanitizer) already set up. The one made here
 * lives as long as the thread (a few pages per loop thread). */
static void altstack_ensure(void)
{
    if (tls_altstack_checked)
        return;
    tls_altstack_checked = true;
    stack_t old;
    if (sigaltstack(NULL, &old) == 0 && !(old.ss_flags & SS_DISABLE))
        return;
    size_t size = 64 * 1024;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return;
    stack_t ss = { .ss_sp = p, .ss_size = size, .ss_flags = 0 };
    if (sigaltstack(&ss, NULL) != 0)
        munmap(p, size);
}

/* ---- Stacks ------------------------------------------------------------- */

static size_t page_size(void)
{
    static size_t ps;
    if (ps == 0) {
        long v = sysconf(_SC_PAGESIZE);
        ps = v > 0 ? (size_t)v : 4096;
    }
    return ps;
}

static size_t round_page(size_t n)
{
    size_t ps = page_size();
    return (n + ps - 1) / ps * ps;
}

/* The loop reaches the fibers only through these (core/loop-internal.h). */
static void fibers_stats(const bt_loop *loop, bt_loop_stats *out);
static void fibers_free(bt_loop *loop);
static const bt__loop_fiber_hooks fiber_hooks = { .stats = fibers_stats, .free = fibers_free };

static bt__fibers *fibers_of(bt_loop *loop)
{
    if (loop->fibers == NULL) {
        bt__fibers *fs = bt_calloc(1, sizeof *fs);
        if (fs == NULL)
            return NULL;
        fs->stack_size = BT_FIBER_STACK_DEFAULT;
        bt__list_init(&fs->free);
        bt__list_init(&fs->live);
        loop->fibers = fs;
        loop->fiber_hooks = &fiber_hooks;
    }
    return loop->fibers;
}

/* A stack whose fiber ended never popped its frames: under ASan their
 * redzones are still poisoned, and would be reported as errors when the
 * memory is reused (as a stack, or as whatever mmap hands out next). */
static void stack_unpoison(char *lo, size_t size)
{
#ifdef BT_ASAN
    __asan_unpoison_memory_region(lo, size);
#else
    (void)lo;
    (void)size;
#endif
}

static void map_release(bt__fibers *fs, char *map, size_t map_size, unsigned vg_id)
{
    stack_unpoison(map + page_size(), map_size - page_size());
#ifdef HAVE_VALGRIND_VALGRIND_H
    VALGRIND_STACK_DEREGISTER(vg_id);
#else
    (void)vg_id;
#endif
    munmap(map, map_size);
    fs->mapped -= map_size;
}

/* A mapping for a new fiber, its struct zeroed: from the free list, or a
 * new one. NULL when out of address space. */
static bt__fiber *fiber_map(bt__fibers *fs)
{
    bt__list *reuse = bt__list_pop_front(&fs->free);
    if (reuse != NULL) {
        bt__fiber *fib = BT__LIST_ENTRY(reuse, bt__fiber, link);
        fs->nfree--;
        char *map = fib->map;
        size_t map_size = fib->map_size, guard = fib->guard, stack_size = fib->stack_size;
        unsigned vg_id = fib->vg_id;
        memset(fib, 0, sizeof *fib);
        fib->map = map;
        fib->map_size = map_size;
        fib->guard = guard;
        fib->vg_id = vg_id;
        fib->stack_lo = map + guard;
        fib->stack_size = stack_size;
        stack_unpoison(fib->stack_lo, fib->stack_size);
        return fib;
    }
    size_t guard = GUARD_SLACK > page_size() ? GUARD_SLACK : page_size();
    size_t map_size = guard + fs->stack_size;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
#ifdef MAP_STACK
    flags |= MAP_STACK;
#endif
    char *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (map == MAP_FAILED)
        return NULL;
    if (mprotect(map, guard, PROT_NONE) != 0) {
        munmap(map, map_size);
        return NULL;
    }
    fs->mapped += map_size;
    /* The struct sits at the top, the stack grows down from under it. */
    bt__fiber *fib = (bt__fiber *)(map + map_size - FIBER_RECORD);
    fib->map = map;
    fib->map_size = map_size;
    fib->guard = guard;
    fib->stack_lo = map + guard;
    fib->stack_size = fs->stack_size - FIBER_RECORD;
#ifdef HAVE_VALGRIND_VALGRIND_H
    fib->vg_id = VALGRIND_STACK_REGISTER(fib->stack_lo, fib->stack_lo + fib->stack_size);
#endif
    return fib;
}

/* The last reference is gone: the mapping goes back to the free list (or
 * away, if the list is full or the stack size has changed since). */
static void fiber_unref(bt__fiber *fib)
{
    if (--fib->refs > 0)
        return;
    bt__fibers *fs = fib->fs;
    bt__list_remove(&fib->link);
    if (fs->nfree < FREE_MAX && fib->map_size == fib->guard + fs->stack_size) {
        bt__list_push_front(&fs->free, &fib->link);
        fs->nfree++;
    } else {
        map_release(fs, fib->map, fib->map_size, fib->vg_id);
    }
}

/* ---- Switching ------------------------------------------------------------ */

static void fiber_main(void *p);

/* Switch into fib until it suspends or ends. Loop thread, from a loop
 * task (or a fiber's own callback), on any stack. */
static void fiber_switch_in(bt__fiber *fib)
{
    bt__ctx here;
    fib->caller = &here;
    fib->prev_current = tls_current;
    tls_current = fib;
    /* The watchdog names a fiber that blocks the loop by its function. */
    bt_loop_enter_cb(fib->loop, fn_addr(fib));
#ifdef BT_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, fib->stack_lo, fib->stack_size);
#endif
#ifdef BT_TSAN
    fib->tsan_caller = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(fib->tsan_fiber, 0);
#endif
    bt__ctx_switch(&here, &fib->ctx);
#ifdef BT_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
    bt_loop_leave_cb(fib->loop);
}

/* Back to the resumer; returns when the fiber is resumed. On the fiber. */
static void fiber_switch_out(bt__fiber *fib, bool for_good)
{
    tls_current = fib->prev_current;
#ifdef BT_ASAN
    __sanitizer_start_switch_fiber(for_good ? NULL : &fib->asan_fake, fib->asan_caller_lo,
                                   fib->asan_caller_size);
#else
    (void)for_good;
#endif
#ifdef BT_TSAN
    __tsan_switch_to_fiber(fib->tsan_caller, 0);
#endif
    bt__ctx_switch(&fib->ctx, fib->caller);
#ifdef BT_ASAN
    __sanitizer_finish_switch_fiber(fib->asan_fake, &fib->asan_caller_lo, &fib->asan_caller_size);
#endif
}

static void fiber_main(void *p)
{
    bt__fiber *fib = p;
#ifdef BT_ASAN
    __sanitizer_finish_switch_fiber(NULL, &fib->asan_caller_lo, &fib->asan_caller_size);
#endif
    fib->ret = fib->fn(fib->loop, fib->arg);
    fib->ended = true;
    fiber_switch_out(fib, true);
    __builtin_unreachable();
}

/* ---- Ending ----------------------------------------------------------------- */

static void on_ret_settled(bt_future *ret, void *arg)
{
    bt__fiber *fib = arg;
    bt_future_set_from(fib->result, ret);
    bt_future_unref(fib->ret);
    fib->ret = NULL;
    bt_future_unref(fib->result);
    fib->result = NULL;
    fiber_unref(fib);
}

/* fn has returned (or was never called): hand its outcome to the fiber's
 * future. On the resumer's stack. */
static void fiber_end(bt__fiber *fib)
{
    bt__fibers *fs = fib->fs;
    fs->alive--;
    bt_future_unref(fib->last_failed);
    fib->last_failed = NULL;
#ifdef BT_TSAN
    if (fib->tsan_fiber != NULL)
        __tsan_destroy_fiber(fib->tsan_fiber);
    fib->tsan_fiber = NULL;
#endif
    bt_future *r = fib->ret;
    if (r == NULL) {
        if (fib->cancelled || fib->loop->closing)
            bt_future_set_cancelled(fib->result);
        else
            bt_future_set_error(fib->result, BT_ENOMEM, "fiber function returned no future");
    } else if (bt_future_is_settled(r) || bt_future_is_settled(fib->result)) {
        bt_future_set_from(fib->result, r);
        bt_future_unref(r);
        fib->ret = NULL;
    } else if (bt_future_add_callback(r, on_ret_settled, fib) == 0) {
        /* Adopt the pending future: the cancel hook now cancels it. */
        fib->refs++;
        bt_future_ref(fib->result);
        if (fib->cancelled)
            bt_future_cancel(r);
    } else {
        bt_future_set_error(fib->result, BT_ENOMEM, "out of memory adopting a fiber's future");
        bt_future_cancel(r);
        bt_future_unref(r);
        fib->ret = NULL;
    }
    bt_future_unref(fib->result);
    if (fib->ret == NULL)
        fib->result = NULL;
    fiber_unref(fib); /* the run's reference */
}

static void fiber_resume(bt__fiber *fib)
{
    fiber_switch_in(fib);
    if (fib->ended)
        fiber_end(fib);
}

/* ---- Tasks and callbacks ------------------------------------------------------ */

static void run_task(bt__task *t)
{
    bt__fiber *fib = (bt__fiber *)((char *)t - offsetof(bt__fiber, task));
    fib->task_queued = false;
    if (!fib->started) {
        fib->started = true;
        if (fib->cancelled) {
            fib->ended = true; /* cancelled before it ran: fn is never called */
            fiber_end(fib);
        } else {
            fiber_resume(fib);
        }
    } else if (fib->awaiting != NULL && !fib->ended) {
        fib->awaiting = NULL;
        fiber_resume(fib);
    }
    fiber_unref(fib);
}

static void queue_task(bt__fiber *fib)
{
    if (fib->task_queued)
        return;
    fib->task_queued = true;
    fib->refs++;
    fib->task.run = run_task;
    bt__loop_schedule(fib->loop, &fib->task);
}

static void on_awaited(bt_future *f, void *arg)
{
    bt__fiber *fib = arg;
    if (fib->awaiting == f && !fib->ended) {
        fib->awaiting = NULL;
        fiber_resume(fib);
    }
    fiber_unref(fib);
}

static void on_result_cancel(bt_future *result, void *arg)
{
    (void)result;
    bt__fiber *fib = arg;
    if (fib->ended) {
        if (fib->ret != NULL)
            bt_future_cancel(fib->ret); /* the adopted future */
        return;
    }
    fib->cancelled = true;
    if (fib->awaiting != NULL) {
        /* Wake it on the next turn even if the awaited work cannot stop at
         * once (a job already running settles only when it returns). */
        queue_task(fib);
        bt_future_cancel(fib->awaiting);
    }
    /* Not started: the start task sees the flag. Running (it cancelled its
     * own future): its next await sees it. */
}

/* ---- Public ------------------------------------------------------------------ */

BT_EXPORT bt_future *bt_async(bt_loop *loop, bt_start_fn fn, void *arg)
{
    if (loop == NULL || fn == NULL) {
        bt_log(BT_LOG_ERROR, "bt_async: %s is NULL", loop == NULL ? "loop" : "fn");
        return NULL;
    }
    if (!bt_loop_is_current(loop)) {
        bt_log(BT_LOG_ERROR, "bt_async called off the loop's thread: refused");
        return NULL;
    }
    if (loop->closing)
        return NULL;
    bt__fibers *fs = fibers_of(loop);
    if (fs == NULL)
        return NULL;
    pthread_once(&segv_once, segv_install);
    altstack_ensure();
    bt__fiber *fib = fiber_map(fs);
    if (fib == NULL) {
        bt_log(BT_LOG_ERROR, "bt_async: cannot map a fiber stack of %zu bytes", fs->stack_size);
        return NULL;
    }
    fib->fs = fs;
    fib->refs = 1; /* the run's; queue_task adds the start task's */
    bt__list_push_front(&fs->live, &fib->link);
    bt_future *r = bt_future_new(loop);
    if (r == NULL) {
        fiber_unref(fib);
        return NULL;
    }
    fib->loop = loop;
    fib->fn = fn;
    fib->arg = arg;
    fib->result = bt_future_ref(r);
#ifdef BT_TSAN
    fib->tsan_fiber = __tsan_create_fiber(0);
#endif
    bt__ctx_make(&fib->ctx, fib->stack_lo, fib->stack_size, fiber_main, fib);
    bt_future_on_cancel(r, on_result_cancel, fib);
    fs->alive++;
    queue_task(fib);
    return r;
}

BT_EXPORT int bt_await(bt_future *f, void **value)
{
    if (value != NULL)
        *value = NULL;
    bt__fiber *fib = tls_current;
    if (fib == NULL) {
        bt_log(BT_LOG_ERROR, "bt_await called outside a fiber (start one with bt_async; "
                             "never await on a pool worker): returned BT_EINVAL");
        bt_future_unref(f);
        return BT_EINVAL;
    }
    bt_future_unref(fib->last_failed);
    fib->last_failed = NULL;
    fib->last_msg = NULL;
    if (f == NULL) {
        fib->last_msg = "bt_await: no future (the call that should have made it failed)";
        return BT_EINVAL;
    }
    if (f->loop != fib->loop) {
        fib->last_msg = "bt_await: a future of another loop";
        bt_future_unref(f);
        return BT_EINVAL;
    }
    if (!fib->cancelled && !bt_future_is_settled(f)) {
        if (bt_future_add_callback(f, on_awaited, fib) != 0) {
            fib->last_msg = "bt_await: out of memory";
            bt_future_unref(f);
            return BT_ENOMEM;
        }
        fib->refs++;
        fib->awaiting = f;
        fiber_switch_out(fib, false);
        /* Resumed by on_awaited, or by the wake task of a cancellation. */
    }
    if (fib->cancelled) {
        if (!bt_future_is_settled(f))
            bt_future_cancel(f);
        else
            (void)bt_future_error(f); /* nobody will want that error now */
        fib->last_msg = "cancelled";
        bt_future_unref(f);
        return BT_ECANCELED;
    }
    switch (bt_future_get_state(f)) {
    case BT_FUTURE_VALUE:
        if (value != NULL)
            *value = bt_future_take_value(f);
        bt_future_unref(f);
        return 0;
    case BT_FUTURE_ERROR: {
        int rc = bt_future_error(f);
        fib->last_msg = bt_future_error_message(f);
        fib->last_failed = f; /* keeps the message alive */
        return rc;
    }
    default:
        fib->last_msg = "cancelled";
        bt_future_unref(f);
        return BT_ECANCELED;
    }
}

BT_EXPORT const char *bt_await_error(void)
{
    return tls_current != NULL ? tls_current->last_msg : NULL;
}

BT_EXPORT bool bt_in_fiber(void)
{
    return tls_current != NULL;
}

BT_EXPORT int bt_loop_set_fiber_stack(bt_loop *loop, size_t bytes)
{
    if (loop == NULL || bytes < MIN_STACK || bytes > MAX_STACK)
        return BT_EINVAL;
    bt__fibers *fs = fibers_of(loop);
    if (fs == NULL)
        return BT_ENOMEM;
    size_t size = round_page(bytes);
    if (size != fs->stack_size) {
        fs->stack_size = size;
        for (bt__list *n; (n = bt__list_pop_front(&fs->free)) != NULL;) { /* wrong size now */
            bt__fiber *fib = BT__LIST_ENTRY(n, bt__fiber, link);
            map_release(fs, fib->map, fib->map_size, fib->vg_id);
        }
        fs->nfree = 0;
    }
    return 0;
}

/* ---- For the loop ----------------------------------------------------------- */

static void fibers_stats(const bt_loop *loop, bt_loop_stats *out)
{
    const bt__fibers *fs = loop->fibers;
    out->fibers_alive = fs != NULL ? fs->alive : 0;
    out->fiber_stack_bytes = fs != NULL ? fs->mapped : 0;
}

static void fibers_free(bt_loop *loop)
{
    bt__fibers *fs = loop->fibers;
    if (fs == NULL)
        return;
    if (fs->alive > 0)
        bt_log(BT_LOG_WARN,
               "loop freed with %zu fiber%s that did not return after being cancelled "
               "(awaiting in a loop that ignores BT_ECANCELED?): their stacks are freed "
               "without unwinding",
               fs->alive, fs->alive == 1 ? "" : "s");
    bt__list_splice_back(&fs->live, &fs->free);
    for (bt__list *n; (n = bt__list_pop_front(&fs->live)) != NULL;) {
        bt__fiber *fib = BT__LIST_ENTRY(n, bt__fiber, link);
        map_release(fs, fib->map, fib->map_size, fib->vg_id);
    }
    bt_free(fs);
    loop->fibers = NULL;
    loop->fiber_hooks = NULL;
}
