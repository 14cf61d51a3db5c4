/* A job's life, shared by the files of offload/ (never installed): the
 * job block, and what job.c does with it. job.c knows nothing of lanes,
 * workers or attachments: pool.c and submit.c call down into it. */
#ifndef BATON_JOB_INTERNAL_H
#define BATON_JOB_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>

#include <baton/pool.h>

#include "future-internal.h"
#include "loop-internal.h"

/* The pool's records a job points to; defined in pool-internal.h, opaque
 * to job.c. */
typedef struct bt__attach bt__attach;
typedef struct bt__batch bt__batch;

/* Where a job is; changed under its lane's lock, except BATCH -> QUEUED,
 * which only the loop thread does before the hand-over publishes the job
 * (the loop is the only reader of BATCH). QUEUED: on the lane's incoming
 * stack or in its queue. */
enum { JOB_BATCH = 1, JOB_QUEUED, JOB_RUNNING, JOB_DONE };

struct bt_job {
    /* Aligned so that the block's size rounds up to whole 16-byte vectors
     * (job_block_zero). */
    _Alignas(16) bt__task task; /* the admit task, then the completion task
                                 (its link lists jobs being cancelled) */
    bt__batch *batch;           /* the hand-over it came in, job->batch->job[slot];
                                 valid while in_batch or QUEUED */
    bt_pool *pool;
    bt__attach *att; /* the (pool, loop) record; alive while queued
                                 or running (the closer waits for it) */
    bt_job_fn fn;
    void *arg;
    /* Set when the pool owns arg (bt_pool_submit_owned): called once the
     * job has returned or will never run; NULL once called. */
    bt_destroy_fn arg_free;
    union {
        struct { /* what the job left, for its future */
            void *value;
            bt_destroy_fn dtor;
        };
        struct { /* bt_pool_submit_from's callback, until
                                 the job reaches its loop */
            bt_future_cb done;
            void *done_arg;
        };
    };
    char *message;
    int code;
    unsigned char where;
    unsigned char lane; /* bt_lane */
    unsigned char slot;
    bool skipped;  /* never ran: settles as cancelled */
    bool in_batch; /* in att's batch (loop thread only) */
    bool expected; /* counted in the loop's `expected` */
    /* Its future may settle (cancelled) while it runs: it has no arg, or
     * the pool owns its arg. A job with a borrowed arg is waited for. */
    bool abandonable;
    _Atomic bool cancelled;
    /* Inside fn now (bt__job_run): what a closer whose deadline passed
     * counts as abandoned; a job its worker took but has not started is
     * skipped later instead, and counted cancelled then. */
    _Atomic bool in_fn;
    /* The job's future lives in the same block: one allocation per job,
     * and the completion finds both in the cache together. Its loop is
     * the job's loop (set before the future starts, for a job submitted
     * from another thread). The block is given back when the future's
     * last reference goes (the job holds one until it settles), so the
     * future may outlive the job's run. Conversely a cancelled job that
     * is abandoned (its future settled while it runs) keeps the block
     * alive through that same reference until it returns. At most
     * 112 + 144 bytes: four cache lines, the block aligned on one. */
    bt_future fut;
};

/* The job block's promise: four cache lines (job.c aligns each block on
 * one). A field added beyond that costs a fifth line per job. */
_Static_assert(sizeof(bt_job) == 256, "a job block is four cache lines");

/* The message of a future whose job was abandoned on cancel. */
#define BT__JOB_ABANDONED_MSG "cancelled; the job is still running on the pool"

/* Made: a zeroed block, from this thread's cache or the heap; NULL when
 * out of memory. Any thread. */
bt_job *bt__job_alloc(void);
/* Start the job's own future (job->fut) on loop, with three references:
 * the caller's, the loop's and the job's. NULL if the loop is closing.
 * From then on the block belongs to the future. Loop thread. */
bt_future *bt__job_future_init(bt_job *job, bt_loop *loop);
/* A block whose future never started goes back: into this thread's
 * cache, or freed. */
void bt__job_release(bt_job *job);

/* Run: call fn, unless skip (the job was cancelled before it started:
 * it settles cancelled). Records fn's outcome, gives back an owned arg.
 * Returns whether fn ran. The worker's thread, no lock held. */
bool bt__job_run(bt_job *job, bool skip);
/* The job the calling thread is running now (inside bt__job_run), or
 * NULL. */
bt_job *bt__job_current(void);
/* Send a job that ran, or was skipped, back to its loop, where it
 * settles. Returns 0, or BT_ESHUTDOWN if the loop was freed without its
 * closers running (then bt__job_free it); *woke tells whether the loop
 * had to be woken for it (bt__loop_push_woke). Any thread. */
int bt__job_send_back(bt_job *job, bool *woke);

/* Settled, loop side: a job that never ran (cancelled in its batch or
 * its queue) settles cancelled now. The caller counts it. Loop thread. */
void bt__job_cancel_now(bt_job *job);
/* Abandoned: a running job's future settles cancelled now, with
 * BT__JOB_ABANDONED_MSG, if the job holds none of the caller's memory and
 * its future is not settled yet. Returns whether it did (the caller counts
 * it). The job keeps its reference on the block until it returns. Loop
 * thread. */
bool bt__job_abandon(bt_job *job);

/* The pool owns the job's arg: free it now (once). The thread that holds
 * the job: its worker, or the loop once the job came back. */
void bt__job_drop_arg(bt_job *job);
/* Destroy what the job left and drop its reference on its future: for a
 * job whose loop can no longer take it back. Any thread. */
void bt__job_free(bt_job *job);
/* The job ended after its loop's closer abandoned it: destroy what it
 * left and drop its reference on its future, on the worker thread,
 * without touching the loop. */
void bt__job_drop_abandoned(bt_job *job);

#endif
