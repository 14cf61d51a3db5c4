/* Jobs: a job's whole life, from the block it is made in to its future
 * settling: what a job function may call, the per-thread job cache, the
 * run on a worker, the trip back to its loop, settling, cancelling and
 * abandoning. It knows nothing of lanes, workers or attachments: pool.c
 * and submit.c call down into it (see the DESIGN comment in pool.c). */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "job-internal.h"

/* Under AddressSanitizer, a block waiting in the cache is poisoned: a
 * future used (or unreferenced a second time) after its last reference
 * went is reported, as it would be for memory given back to malloc. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define JOB_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define JOB_ASAN 1
#endif
#ifdef JOB_ASAN
#include <sanitizer/asan_interface.h>
#define JOB_POISON(j) ASAN_POISON_MEMORY_REGION((j), sizeof(bt_job))
#define JOB_UNPOISON(j) ASAN_UNPOISON_MEMORY_REGION((j), sizeof(bt_job))
#else
#define JOB_POISON(j) ((void)(j))
#define JOB_UNPOISON(j) ((void)(j))
#endif

/* ---- Inside a job ------------------------------------------------------- */

BT_EXPORT int bt_job_set_value(bt_job *job, void *value, bt_destroy_fn dtor)
{
    if (job == NULL)
        return BT_EINVAL;
    if (job->dtor && job->value != value)
        job->dtor(job->value);
    job->value = value;
    job->dtor = dtor;
    return 0;
}

BT_EXPORT int bt_job_fail(bt_job *job, int code, const char *fmt, ...)
{
    if (code >= 0)
        code = BT_EJOB;
    if (job == NULL)
        return code;
    bt_free(job->message);
    job->message = NULL;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        job->message = bt_vasprintf(fmt, ap);
        va_end(ap);
    }
    job->code = code;
    return code;
}

BT_EXPORT bt_loop *bt_job_loop(const bt_job *job)
{
    return job != NULL ? job->fut.loop : NULL;
}

/* ---- The run, on a worker --------------------------------------------------- */

static _Thread_local bt_job *current_job; /* running on this thread */

bt_job *bt__job_current(void)
{
    return current_job;
}

bool bt__job_run(bt_job *job, bool skip)
{
    if (skip) {
        job->skipped = true;
    } else {
        current_job = job;
        atomic_store_explicit(&job->in_fn, true, memory_order_relaxed);
        int rc = job->fn(job, job->arg);
        atomic_store_explicit(&job->in_fn, false, memory_order_relaxed);
        current_job = NULL;
        if (rc > 0)
            rc = BT_EJOB;
        if (rc < 0 && job->code == 0)
            job->code = rc; /* failed without bt_job_fail */
        else if (rc == 0)
            job->code = 0; /* success wins over an earlier bt_job_fail */
    }
    bt__job_drop_arg(job); /* the job is done with it */
    return !skip;
}

/* ---- Jobs on the loop side ----------------------------------------------- */

/* Jobs are made on loop threads (and by bt_pool_submit_from's callers),
 * and each such thread keeps the job blocks it retired for reuse. A burst
 * then reuses memory that is already mapped instead of growing the heap
 * again after glibc trimmed it: page faults were two thirds of the CPU
 * cost of a burst of trivial jobs before this cache. A block goes to the
 * cache of the thread that drops its future's last reference, if that
 * thread makes jobs (a loop thread, as a rule, so the cache holds about
 * what was once in flight there); other threads free it. The cache is
 * capped at JOB_CACHE_MAX blocks and gives back every TRIM_NS the part of
 * it that went unused all that time (a working-set trim, like Go's
 * scavenger), so a one-off burst does not pin its memory for good.
 *
 * The cache is an array of pointers, not a list threaded through the
 * blocks: a list makes each allocation wait for the previous block's
 * memory (its `next`), a miss per job once a burst outgrows the cache,
 * while the array lets the allocator prefetch blocks a few jobs ahead. */
#define JOB_CACHE_MAX ((size_t)1 << 20)
#define JOB_CACHE_MIN 64
#define JOB_CACHE_TRIM_NS 5000000000ull
#define JOB_PREFETCH_AHEAD 4
/* Cache operations between two looks at the clock for the trim (a power
 * of two): a clock read costs 80 to 90 ns on the 2-core test machine, a
 * cached allocation tens; one read per 4096 operations is lost in the
 * noise, and the 5 s trim period is never late by more than a burst. */
#define JOB_CACHE_CLOCK_EVERY 4096u
_Static_assert((JOB_CACHE_CLOCK_EVERY & (JOB_CACHE_CLOCK_EVERY - 1)) == 0, "a power of two");

typedef struct {
    bt_job **slot;
    size_t n, cap;
    size_t low; /* the smallest n since the last trim */
    uint64_t next_trim;
    unsigned ops;
    bool makes_jobs; /* this thread has called bt__job_alloc */
    bool keyed;
} job_cache_t;

/* initial-exec: a plain offset from the thread pointer instead of a call
 * to __tls_get_addr on every job (the block is small enough for the
 * static TLS that glibc keeps spare for libraries loaded with dlopen). */
static _Thread_local job_cache_t job_cache __attribute__((tls_model("initial-exec")));
static pthread_key_t job_cache_key;
static pthread_once_t job_cache_once = PTHREAD_ONCE_INIT;

/* A block starts on a cache line, so that a job's 256 bytes span four
 * lines, not five: allocated through bt_malloc (which promises 16-byte
 * alignment) with room to align, the pointer to free kept just before. */
#define JOB_ALIGN 64

static bt_job *job_block_new(void)
{
    char *raw = bt_malloc(sizeof(bt_job) + JOB_ALIGN + sizeof(void *));
    if (raw == NULL)
        return NULL;
    uintptr_t at = ((uintptr_t)raw + sizeof(void *) + JOB_ALIGN - 1) & ~(uintptr_t)(JOB_ALIGN - 1);
    bt_job *j = (bt_job *)at;
    ((void **)j)[-1] = raw;
    memset(j, 0, sizeof *j);
    return j;
}

static void job_block_free(bt_job *j)
{
    bt_free(((void **)j)[-1]);
}

/* Zero a block with plain 16-byte stores: for 256 bytes, memset's `rep
 * stos` costs more to start than the stores themselves (a tenth of the
 * loop thread's time in a burst, measured). */
typedef uint64_t job_zero_vec __attribute__((vector_size(16), aligned(16)));

static void job_block_zero(bt_job *j)
{
    _Static_assert(sizeof(bt_job) % sizeof(job_zero_vec) == 0, "whole vectors");
    job_zero_vec *v = (job_zero_vec *)(void *)j;
#if defined(__clang__)
#pragma clang loop unroll(full)
#elif defined(__GNUC__)
#pragma GCC unroll 16
#endif
    for (size_t i = 0; i < sizeof(bt_job) / sizeof *v; i++)
        v[i] = (job_zero_vec){ 0, 0 };
}

/* Free the n blocks at the bottom of the stack (the coldest ones). */
static void job_cache_free_n(job_cache_t *c, size_t n)
{
    if (n > c->n)
        n = c->n;
    for (size_t i = 0; i < n; i++) {
        JOB_UNPOISON(c->slot[i]);
        job_block_free(c->slot[i]);
    }
    memmove(c->slot, c->slot + n, (c->n - n) * sizeof *c->slot);
    c->n -= n;
}

static void job_cache_drop(void *arg)
{
    job_cache_t *c = arg;
    job_cache_free_n(c, c->n);
    bt_free(c->slot);
    c->slot = NULL;
    c->cap = 0;
}

static void job_cache_init(void)
{
    pthread_key_create(&job_cache_key, job_cache_drop);
}

/* Every few thousand operations, look at the clock; past the period, free
 * what stayed unused through it. */
static void job_cache_tick(job_cache_t *c)
{
    if (c->n < c->low)
        c->low = c->n;
    if ((++c->ops & (JOB_CACHE_CLOCK_EVERY - 1)) != 0)
        return;
    uint64_t now = bt_hrtime();
    if (now < c->next_trim)
        return;
    if (c->next_trim)
        job_cache_free_n(c, c->low);
    c->low = c->n;
    c->next_trim = now + JOB_CACHE_TRIM_NS;
}

bt_job *bt__job_alloc(void)
{
    job_cache_t *c = &job_cache;
    c->makes_jobs = true;
    if (c->n == 0)
        return job_block_new();
    bt_job *j = c->slot[--c->n];
    JOB_UNPOISON(j);
    if (c->n >= JOB_PREFETCH_AHEAD) {
        const char *ahead = (const char *)c->slot[c->n - JOB_PREFETCH_AHEAD];
        for (size_t off = 0; off < sizeof *j; off += 64)
            __builtin_prefetch(ahead + off, 1);
    }
    job_cache_tick(c);
    job_block_zero(j);
    return j;
}

/* Room for one more block; false if the cache is full or cannot grow. */
static bool job_cache_room(job_cache_t *c)
{
    if (c->n < c->cap)
        return true;
    if (c->cap >= JOB_CACHE_MAX)
        return false;
    size_t cap = c->cap ? c->cap * 2 : JOB_CACHE_MIN;
    bt_job **slot = bt_realloc(c->slot, cap * sizeof *slot);
    if (slot == NULL)
        return false;
    c->slot = slot;
    c->cap = cap;
    return true;
}

void bt__job_release(bt_job *job)
{
    job_cache_t *c = &job_cache;
    if (!c->makes_jobs || !job_cache_room(c)) {
        job_block_free(job);
        return;
    }
    if (!c->keyed) { /* so that the cache is freed when the thread exits */
        pthread_once(&job_cache_once, job_cache_init);
        pthread_setspecific(job_cache_key, c);
        c->keyed = true;
    }
    JOB_POISON(job);
    c->slot[c->n++] = job;
    job_cache_tick(c);
}

/* The job's future lost its last reference: the block goes. */
static void job_future_release(bt_future *f)
{
    bt__job_release((bt_job *)((char *)f - offsetof(bt_job, fut)));
}

bt_future *bt__job_future_init(bt_job *job, bt_loop *loop)
{
    /* The caller's reference, the loop's, and the job's own. */
    return bt__future_init(&job->fut, loop, 3, job_future_release);
}

void bt__job_drop_arg(bt_job *job)
{
    bt_destroy_fn arg_free = job->arg_free;
    if (arg_free != NULL) {
        job->arg_free = NULL;
        arg_free(job->arg);
    }
}

void bt__job_drop_abandoned(bt_job *job)
{
    /* The future was settled (cancelled) by the loop's shutdown, or is
     * about to be: bt_loop_free cancels every pending future after its
     * closers. Only the job's own fields and its reference are ours. */
    bt__job_free(job);
}

void bt__job_free(bt_job *job)
{
    bt__job_drop_arg(job);
    if (job->dtor)
        job->dtor(job->value);
    bt_free(job->message);
    bt_future_unref(&job->fut); /* may give the block back: last touch */
}

/* Settle a job's future from the loop thread with what the job left (its
 * value or error, handed over as they are), and drop the job's reference:
 * the block's last touch. `now`: from the completion task, where the
 * callbacks may run at once. */
static void job_settle(bt_job *job, bool now)
{
    bt_future *f = &job->fut;
    bt_future_state st = BT_FUTURE_VALUE;
    int code = 0;
    if (job->skipped) {
        st = BT_FUTURE_CANCELLED;
        code = BT_ECANCELED;
    } else if (job->code != 0) {
        st = BT_FUTURE_ERROR;
        code = job->code;
    }
    void *value = st == BT_FUTURE_VALUE ? job->value : NULL;
    bt_destroy_fn dtor = st == BT_FUTURE_VALUE ? job->dtor : NULL;
    char *message = st == BT_FUTURE_ERROR ? job->message : NULL;
    if (dtor == NULL && job->dtor)
        job->dtor(job->value); /* a value left by a job that then failed */
    if (message == NULL)
        bt_free(job->message);
    bt__job_drop_arg(job); /* back from its worker, or never ran */
    if (job->expected)
        bt__loop_expect(f->loop, -1);
    if (now) {
        bt__future_settle_now(f, st, value, dtor, code, message, 1);
    } else {
        bt__future_settle(f, st, value, dtor, code, message);
        bt_future_unref(f);
    }
}

/* The completion task: runs on the loop thread, from the inbox. */
static void job_complete(bt__task *t)
{
    job_settle((bt_job *)t, true);
}

/* Back on its loop: the completion task runs from the loop's inbox. */
int bt__job_send_back(bt_job *job, bool *woke)
{
    job->task.run = job_complete;
    return bt__loop_push_woke(job->fut.loop, &job->task, woke);
}

void bt__job_cancel_now(bt_job *job)
{
    job->skipped = true;
    job_settle(job, false);
}

/* The future settles now, cancelled, with a message that says the job
 * goes on. The job keeps its reference on the block until it returns
 * (job_settle then finds the future settled and destroys what it left),
 * so the worker never writes into freed memory. Its completion may
 * already be in the loop's inbox: it is abandoned all the same, having
 * ended a moment ago. */
bool bt__job_abandon(bt_job *job)
{
    bt_future *f = &job->fut;
    if (!job->abandonable || bt_future_is_settled(f))
        return false;
    /* The loop spins for expected completions: not for this one. */
    if (job->expected) {
        job->expected = false;
        bt__loop_expect(f->loop, -1);
    }
    bt__future_settle(f, BT_FUTURE_CANCELLED, NULL, NULL, BT_ECANCELED,
                      bt_strdup(BT__JOB_ABANDONED_MSG));
    return true;
}
