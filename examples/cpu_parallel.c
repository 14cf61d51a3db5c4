/* cpu_parallel: CPU work spread over every core, from one loop.
 *
 * The guide says not to use asyncio for CPU-heavy work: one Python
 * process runs one thread of Python at a time, so it takes
 * multiprocessing. In C the pool's CPU lane (one thread per core) does it
 * inside one process: the loop submits 32 chunks of a prime count with
 * bt_to_cpu, gathers the futures as they settle, and stays free to serve
 * timers (a 10 ms heartbeat here) the whole time. It first counts the same
 * chunks on one thread, so the speedup it prints is measured, in the same
 * run, on the same machine (on a busy machine it is smaller than the
 * number of threads).
 */
#include <stdio.h>
#include <stdlib.h>

#include <baton/baton.h>
#include <baton/pool.h>

#define CHUNKS 32
#define LIMIT 2000000L

typedef struct {
    long from, to;
} range;

static int is_prime(long n)
{
    if (n < 2)
        return 0;
    for (long d = 2; d * d <= n; d++)
        if (n % d == 0)
            return 0;
    return 1;
}

/* Count primes in [from, to); -1 if job (NULL: none) was cancelled. */
static long count_range(const range *r, bt_job *job)
{
    long n = 0;
    for (long i = r->from; i < r->to; i++) {
        if ((i & 0xffff) == 0 && job != NULL && bt_job_cancelled(job))
            return -1;
        n += is_prime(i);
    }
    return n;
}

/* Runs on a CPU worker, polls for cancel. */
static int count_job(bt_job *job, void *arg)
{
    long n = count_range(arg, job);
    if (n < 0)
        return BT_ECANCELED;
    bt_job_set_value(job, (void *)(intptr_t)n, NULL);
    return 0;
}

typedef struct {
    long total;
    int left;
    int beats;
    bt_loop *loop;
} tally;

static void on_chunk(bt_future *f, void *arg)
{
    tally *t = arg;
    if (bt_future_error(f) == 0)
        t->total += (long)(intptr_t)bt_future_value(f);
    else
        fprintf(stderr, "chunk failed: %s\n", bt_future_error_message(f));
    if (--t->left == 0)
        bt_loop_stop(t->loop);
}

static void on_beat(bt_timer *tm, void *arg)
{
    (void)tm;
    ((tally *)arg)->beats++;
}

int main(void)
{
    bt_loop *loop = bt_loop_new();
    tally t = {0, CHUNKS, 0, loop};
    range r[CHUNKS];
    for (int i = 0; i < CHUNKS; i++) {
        r[i].from = LIMIT / CHUNKS * i;
        r[i].to = LIMIT / CHUNKS * (i + 1);
    }

    /* The baseline: the same chunks, one after the other, on this thread. */
    uint64_t start = bt_hrtime();
    long serial = 0;
    for (int i = 0; i < CHUNKS; i++)
        serial += count_range(&r[i], NULL);
    double serial_ms = (double)(bt_hrtime() - start) / 1e6;

    bt_timer *beat = bt_timer_new(loop, on_beat, &t);
    bt_timer_start(beat, 10, 10);
    start = bt_hrtime();
    for (int i = 0; i < CHUNKS; i++) {
        bt_future *f = bt_to_cpu(loop, count_job, &r[i]);
        bt_future_add_callback(f, on_chunk, &t);
        bt_future_unref(f);
    }
    bt_loop_run(loop);
    double ms = (double)(bt_hrtime() - start) / 1e6;

    bt_pool_stats st = BT_SIZED(bt_pool_stats);
    bt_pool_get_stats(bt_pool_default(), &st);
    printf("%ld primes below %ld\n", t.total, LIMIT);
    printf("one thread:              %6.0f ms\n", serial_ms);
    printf("pool, %2u CPU threads:    %6.0f ms (%.1fx), the loop beat %d times meanwhile\n",
           st.lane[BT_LANE_CPU].threads, ms, ms > 0 ? serial_ms / ms : 0.0, t.beats);
    bt_timer_free(beat);
    bt_loop_free(loop);
    return t.total == 148933 && serial == t.total ? 0 : 1; /* pi(2,000,000) */
}
