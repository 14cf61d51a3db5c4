/* The offload pool's insides, shared by the files of offload/ (never installed). */
#ifndef BATON_POOL_INTERNAL_H
#define BATON_POOL_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <baton/pool.h>

#include "future-internal.h"
#include "loop-internal.h"

typedef struct bt__attach bt__attach;
typedef struct bt__worker bt__worker;
typedef struct bt__lane bt__lane;

/* Where a job is; changed under its lane's lock, except BATCH -> QUEUED,
 * which only the loop thread does (the only reader of BATCH). */
enum { JOB_BATCH = 1, JOB_QUEUED, JOB_RUNNING, JOB_DONE };

struct bt_job {
    bt__task task;            /* the admit task, then the completion task */
    bt_job *prev, *next;      /* in a loop's batch or a lane's queue */
    bt_pool *pool;
    bt__attach *att;          /* the (pool, loop) record; alive while queued
                                 or running (the closer waits for it) */
    bt_job_fn fn;
    void *arg;
    union {
        struct {              /* what the job left, for its future */
            void *value;
            bt_destroy_fn dtor;
        };
        struct {              /* bt_pool_submit_from's callback, until
                                 the job reaches its loop */
            bt_future_cb done;
            void *done_arg;
        };
    };
    char *message;
    uint64_t t_submit;
    int code;
    unsigned char where;
    unsigned char lane;       /* bt_lane */
    bool skipped;             /* never ran: settles as cancelled */
    bool in_batch;            /* in att's batch (loop thread only) */
    bool expected;            /* counted in the loop's `expected` */
    _Atomic bool cancelled;
    /* The job's future lives in the same block: one allocation per job,
     * and the completion finds both in the cache together. Its loop is
     * the job's loop (set before the future starts, for a job submitted
     * from another thread). The block is given back when the future's
     * last reference goes (the job holds one until it settles), so the
     * future may outlive the job's run. 112 + 144 bytes: four cache
     * lines, the block aligned on one. */
    bt_future fut;
};


/* One per (pool, loop): the loop's unflushed batches and its closer. Loop
 * thread only, except `running` and `closing` (atomics read by workers). */
struct bt__attach {
    bt_pool *pool;            /* holds a pool reference */
    bt_loop *loop;
    bt_job *batch_head[BT_LANE_COUNT], *batch_tail[BT_LANE_COUNT];
    size_t batch_n[BT_LANE_COUNT];
    /* The lane as seen when the batch began: its depth, its bound, and
     * whether its recent jobs were short. */
    size_t depth_seen[BT_LANE_COUNT];
    size_t max_seen[BT_LANE_COUNT];
    bool short_seen[BT_LANE_COUNT];
    bt__task flush_task;
    bool flush_scheduled;
    bool dead;                /* the closer ran; the flush task frees it */
    /* Written by workers for every batch they take: a line of its own,
     * or the loop would miss on the fields above at every submission. */
    char pad[64];
    _Atomic long running;     /* jobs taken by workers, not yet pushed back */
    _Atomic bool closing;     /* the loop is being freed */
    char pad_end[64];
};

/* Counters a worker writes alone (relaxed stores) and stats reads. */
struct bt__worker {
    bt__worker *next;
    bt__lane *lane;
    bt_pool *pool;
    unsigned index;
    _Atomic uint64_t done, failed, skipped, queue_ns, qwait_max, run_ns, run_max;
    _Atomic bool busy;
};

struct bt__lane {
    pthread_mutex_t mu;
    pthread_cond_t cv;        /* workers wait here for jobs */
    bt_job *head, *tail;      /* the queue (FIFO) */
    _Atomic size_t nq;        /* jobs in the queue (read unlocked by spinners) */
    _Atomic size_t depth;     /* in the queue (the bound's count; loops add
                                 their batch at hand-over) */
    _Atomic uint64_t avg_run_ns; /* recent jobs' run time, roughly */
    _Atomic size_t queue_max;
    unsigned threads;         /* alive (or being started) */
    unsigned target;          /* CPU: the size; blocking: the cap */
    unsigned sleepers;        /* in cond_wait */
    _Atomic unsigned spinners; /* lingering before sleep */
    unsigned next_index;
    bool stop;
    bt__worker *workers;
    /* Totals of retired workers and of loop-side events. */
    uint64_t submitted;
    _Atomic uint64_t rejected, cancelled;
    uint64_t done, failed, skipped, queue_ns, qwait_max, run_ns, run_max;
    uint64_t started, retired;
    bt_lane id;
};

struct bt_pool {
    _Atomic long refs;        /* the owner's, each attach's, each worker's,
                                 each job being admitted */
    _Atomic bool shutdown;
    bt_pool_config cfg;
    char name[12];
    uint64_t linger_ns;
    uint64_t idle_ns;
    bt__lane lane[BT_LANE_COUNT];
    pthread_mutex_t mu;       /* guards nothing but the two waits below */
    pthread_cond_t cv;
    _Atomic long live_threads;
    _Atomic long closers_waiting;
};

/* pool.c */
void bt__pool_ref(bt_pool *pool);
void bt__pool_unref(bt_pool *pool);
const char *bt__lane_name(bt_lane lane);
/* How many threads to add for the jobs now queued; lane lock held; raises
 * lane->threads by the answer, which the caller then starts with
 * bt__lane_spawn (lock not held). */
unsigned bt__lane_want_threads(bt__lane *lane);
unsigned bt__lane_spawn(bt_pool *pool, bt__lane *lane, unsigned n);

/* job.c: making, settling and cancelling jobs. Loop thread unless said. */
bt_job *bt__job_alloc(void);                    /* any thread */
/* Start the job's own future (job->fut) on loop, with three references:
 * the caller's, the loop's and the job's (job->future). NULL if the loop
 * is closing. From then on the block belongs to the future. */
bt_future *bt__job_future_init(bt_job *job, bt_loop *loop);
void bt__job_release(bt_job *job);  /* the block's memory: into this
                                       thread's cache, or freed */
void bt__job_free(bt_job *job);     /* destroys value, drops the job's
                                       reference on its future; any thread */
void bt__job_complete(bt__task *t);             /* the completion task */
void bt__job_cancel_now(bt_job *job);           /* never ran: cancelled */
void bt__batch_unlink(bt__attach *att, bt_job *job);
void bt__queue_unlink(bt__lane *lane, bt_job *job); /* lane lock held */
void bt__job_on_cancel(bt_future *f, void *arg);    /* the future's hook */

/* submit.c */
void bt__pool_forget_default(bt_pool *pool);

/* For the bridge: is the calling thread running a job, and has that job
 * been cancelled (its future, its loop or its pool shutting down)? */
bool bt__pool_in_job(void);
bool bt__pool_current_job_cancelled(void);

#endif
