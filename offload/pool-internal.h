/* The offload pool's insides, shared by the files of offload/ (never installed). */
#ifndef BATON_POOL_INTERNAL_H
#define BATON_POOL_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <baton/pool.h>

#include "future-internal.h"
#include "job-internal.h"
#include "loop-internal.h"

typedef struct bt__worker bt__worker;
typedef struct bt__lane bt__lane;

/* How many jobs a loop hands over at once, at most. */
#define BT__BATCH_MAX 64

/* A hand-over: up to BT__BATCH_MAX jobs of one loop for one lane, filled
 * by the loop, then pushed onto the lane's incoming stack with one
 * compare-and-swap. Workers take slices of it under the lane's lock; an
 * array rather than a list, so a worker starts loading all the jobs it
 * took at once instead of one miss after another. */
struct bt__batch {
    bt__batch *next;            /* on the incoming stack, in the queue, or
                                 free */
    bt__attach *att;            /* the loop's, whose jobs these are */
    uint64_t t_submit;          /* when it was handed over */
    unsigned n;                 /* slots filled */
    unsigned live;              /* of them, not cancelled at the hand-over */
    unsigned first;             /* the first slot not yet taken (lane lock) */
    bt_job *job[BT__BATCH_MAX]; /* NULL: cancelled while waiting */
};

/* One per (pool, loop): the loop's unflushed batches and its closer. Loop
 * thread only, except the atomics at its end (read by workers).
 *
 * Its life: `running` counts the loop's hold (1, from the attach's making
 * until its closer, or its flush task, lets go) plus the jobs workers took
 * and have not pushed back yet. Whoever brings it to 0 frees the attach:
 * the loop side, as a rule; a worker, when the closer gave up waiting at
 * its deadline and abandoned jobs still running (bt__attach_release). */
struct bt__attach {
    bt_pool *pool; /* holds a pool reference */
    bt_loop *loop;
    bt__batch *batch[BT_LANE_COUNT]; /* being filled, not handed over */
    bt__batch *free_batches;         /* for reuse, and how many */
    size_t free_n;
    /* The lane as seen when the batch began: its depth, its bound, and
     * whether its recent jobs were short. */
    size_t depth_seen[BT_LANE_COUNT];
    size_t max_seen[BT_LANE_COUNT];
    bool short_seen[BT_LANE_COUNT];
    bt__task flush_task;
    bool flush_scheduled;
    bool dead; /* the closer ran; the flush task frees it */
    /* Written by workers for every batch they take: a line of its own,
     * or the loop would miss on the fields above at every submission. */
    char pad[64];
    _Atomic long running;                     /* the loop's hold + jobs taken by workers,
                                 not yet pushed back (see above) */
    _Atomic long lane_running[BT_LANE_COUNT]; /* those jobs, per lane */
    _Atomic(bt__batch *) returned;            /* spent hand-overs workers gave back */
    _Atomic bool closing;                     /* the loop is being freed */
    /* The closer's deadline passed with jobs still running: their
     * completions are dropped, never pushed to the (freed) loop. */
    _Atomic bool abandoned;
    char pad_end[64];
};

/* The counters of workers, summed: a lane's retired workers' totals, or
 * a snapshot for stats (worker_totals_add in pool.c). */
typedef struct {
    uint64_t done, failed, skipped, queue_ns, qwait_max, run_ns, run_max;
} bt__worker_totals;

/* Counters a worker writes alone (relaxed stores) and stats reads. */
struct bt__worker {
    bt__worker *next;
    bt__lane *lane;
    bt_pool *pool;
    unsigned index;
    _Atomic uint64_t done, failed, skipped, queue_ns, qwait_max, run_ns, run_max;
    _Atomic bool busy;
    /* The attach whose loop this worker is pushing a completion to, NULL
     * otherwise: a closer that abandons its jobs waits until no worker
     * is inside a push to its loop (see worker_push in pool.c). */
    _Atomic(bt__attach *) pushing_to;
    /* The last completion it pushed had to wake its loop: the loop was
     * not spinning for it, so the next job will not come at once either
     * (worker_wait). The worker's own. */
    bool woke_loop;
};

/* Idle workers sleep on a futex (Linux), elsewhere on a condvar. */
#if defined(__linux__)
#define BT__LANE_FUTEX 1
#endif

struct bt__lane {
    pthread_mutex_t mu;
#ifdef BT__LANE_FUTEX
    /* Workers sleep on this word (bt__lane_wake_unlock bumps it): a wake
     * is one system call, made without the lock, and the woken worker
     * takes a lock nobody marked contended (after a condvar wait glibc
     * does, and then every unlock is a futex call). */
    _Atomic uint32_t wake_seq;
#else
    pthread_cond_t cv; /* workers wait here for jobs */
#endif
    bt__batch *head, *tail; /* the queue of hand-overs (FIFO) */
    /* Hand-overs no worker has moved to the queue yet: a lock-free stack,
     * newest first (bt__lane_splice). */
    _Atomic(bt__batch *) incoming;
    _Atomic size_t depth;        /* handed over, not yet taken or cancelled:
                                 the bound's count, and what lingering
                                 workers watch */
    _Atomic uint64_t avg_run_ns; /* recent jobs' run time, roughly */
    _Atomic size_t queue_max;
    /* Written under the lock; threads, sleepers and stop are also read
     * without it, by loops handing over a batch. */
    _Atomic unsigned threads; /* alive (or being started) */
    unsigned target;          /* CPU: the size; blocking: the cap */
    /* Workers asleep (low 32 bits), and of them how many a waker has
     * already woken (high 32 bits): one word, so that a waker claims
     * sleepers and a sleeper leaves in one atomic step each (see
     * bt__lane_sleeping). Without the claims a burst's next hand-over,
     * a few microseconds later, woke the same sleeper again: one futex
     * call more per hand-over. */
    _Atomic uint64_t sleepers;
    _Atomic unsigned spinners; /* lingering before sleep */
    /* Whether lingering pays (worker_wait): the lingerer's, lock held. */
    bt__spin_budget spin_budget;
    unsigned next_index;
    _Atomic bool stop;
    bt__worker *workers;
    /* Totals of retired workers and of loop-side events. */
    uint64_t submitted;
    _Atomic uint64_t rejected, cancelled, abandoned;
    /* Of `cancelled`, those cancelled in their loop's batch, before the
     * hand-over counted them in `submitted`: stats adds them there. */
    _Atomic uint64_t cancelled_unsent;
    bt__worker_totals retired_totals;
    uint64_t started, retired;
    bt_lane id;
};

struct bt_pool {
    _Atomic long refs; /* the owner's, each attach's, each worker's,
                                 each job being admitted */
    _Atomic bool shutdown;
    bt_pool_config cfg;
    char name[12];
    uint64_t linger_ns;
    uint64_t idle_ns;
    uint64_t shutdown_ns; /* UINT64_MAX: wait for running jobs forever */
    bt__lane lane[BT_LANE_COUNT];
    pthread_mutex_t mu; /* guards nothing but the two waits below */
    pthread_cond_t cv;
    _Atomic long live_threads;
    _Atomic long closers_waiting;
};

/* pool.c: pools, lanes, workers, attachments' last counts, stats, the
 * default pool. */
void bt__pool_ref(bt_pool *pool);
void bt__pool_unref(bt_pool *pool);
const char *bt__lane_name(bt_lane lane);
/* How many threads to add for the jobs now queued; lane lock held; raises
 * lane->threads by the answer, which the caller then starts with
 * bt__lane_spawn (lock not held). */
unsigned bt__lane_want_threads(bt__lane *lane);
unsigned bt__lane_spawn(bt_pool *pool, bt__lane *lane, unsigned n);
/* How many workers sleep and have not been woken yet. Claims never
 * exceed sleepers: a waker claims within the count, and a sleeper that
 * leaves (woken, timed out, or having found work before it slept) takes
 * a claim with it if there is one. Any thread. */
static inline unsigned bt__lane_sleeping(bt__lane *lane)
{
    uint64_t w = atomic_load(&lane->sleepers);
    return (uint32_t)w - (uint32_t)(w >> 32);
}

/* Wake up to n sleeping workers (UINT_MAX: all), and unlock the lane:
 * lane lock held on entry, not on return. */
void bt__lane_wake_unlock(bt__lane *lane, unsigned n);
/* Move the batches handed over (lane->incoming) to the end of the queue,
 * oldest first. Lane lock held: every look at the queue under the lock
 * starts with it. */
void bt__lane_splice(bt__lane *lane);
/* A queued job leaves its hand-over (lane lock held, after a splice). */
void bt__lane_remove(bt__lane *lane, bt_job *job);
/* A job leaves before it ran: counted in the lane's `cancelled` (and, if
 * it was never handed over, in `submitted` too), settled cancelled. Loop
 * thread. */
void bt__lane_job_cancelled(bt__lane *lane, bt_job *job, bool handed_over);
/* Send the lane's queued jobs back to their loops, cancelled (any
 * thread; lock not held). */
void bt__lane_cancel_queue(bt_pool *pool, bt__lane *lane);
/* A job's future's cancel hook (loop thread): out of its batch or queue,
 * or its flag raised, and abandoned if it can be. */
void bt__lane_on_cancel(bt_future *f, void *arg);
/* Let go of n of att's `running` counts; the last one frees att. Any
 * thread. */
void bt__attach_release(bt__attach *att, long n);

/* submit.c: the loop side (attachments, batches, closers, submission). */
/* A hand-over for att's next batch (reused when one came back), or NULL;
 * give one back with bt__batch_put. Loop thread. */
bt__batch *bt__batch_get(bt__attach *att);
void bt__batch_put(bt__attach *att, bt__batch *b);

/* For the bridge: is the calling thread running a job, and has that job
 * been cancelled (its future, its loop or its pool shutting down)? */
bool bt__pool_in_job(void);
bool bt__pool_current_job_cancelled(void);

#endif
