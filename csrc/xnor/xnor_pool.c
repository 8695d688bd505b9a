/* A persistent worker pool for the XnorConv kernels.
 *
 * Creating threads on every call cost tens of microseconds per call and made two threads slower
 * than one on small layers.  Workers are created once (lazily, as many as the largest request so
 * far), spin for SPIN_SECONDS after a job so back-to-back layers find them awake, then sleep on a
 * condition variable.  One job runs at a time: a caller that finds the pool busy (another thread
 * of the process is inside a kernel) runs every share itself, which is correct, only slower.
 * After fork() the child starts with no workers (they do not exist there).
 *
 * Placement: Linux wakes a sleeping thread on the waker's CPU when the others look idle, so after
 * a pause a woken worker often shares the caller's CPU and, spinning there, keeps it: two threads
 * then ran slower than one (measured: 2.5 ms instead of 1.2 ms on a 512x512x28x28 layer after a
 * 50 ms pause).  A worker that finds itself on the caller's CPU moves off it (its affinity becomes
 * the process's CPUs minus that one).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#include "xnor_internal.h"

enum { MAX_WORKERS = 63 };
#define SPIN_SECONDS 100e-6

typedef void (*phase_fn)(void *ctx, int tid, int n);

typedef struct {
    phase_fn fn1, fn2;   /* fn2 NULL: one phase */
    void *ctx;
    int n;               /* shares */
    int active;          /* workers taking part: tids 1..active; the caller runs the rest */
} pool_job;

static pthread_mutex_t submit_mu = PTHREAD_MUTEX_INITIALIZER;   /* one job at a time */
static pthread_mutex_t wake_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cv = PTHREAD_COND_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static int workers;                        /* started, tids 1..workers; guarded by submit_mu */
static _Atomic unsigned long generation;   /* bumped (under wake_mu) to publish a job */
static pool_job job;                       /* written before the bump, read after it */
static _Atomic int arrived;                /* phase barrier */
static _Atomic int finished;               /* workers done with the current generation */
static unsigned long born[MAX_WORKERS + 1];   /* generation current when worker tid started */
static _Atomic int caller_cpu = -1;        /* CPU of the thread that published the job */
static cpu_set_t allowed;                  /* the caller's CPUs when the pool was created */
static int allowed_ok;

static inline void cpu_relax(void) {
#if XNOR_X86
    __builtin_ia32_pause();
#endif
}

/* Spin until *v reaches want, yielding the CPU after a while (the machine may be oversubscribed). */
static void spin_until(_Atomic int *v, int want) {
    for (unsigned i = 0; atomic_load_explicit(v, memory_order_acquire) < want; ++i)
        if (i < 4096) cpu_relax();
        else sched_yield();
}

static void run_shares(phase_fn fn, void *ctx, int from, int n) {
    for (int t = from; t < n; ++t) fn(ctx, t, n);
}

static unsigned long wait_for_job(unsigned long seen) {
    double until = xnor_now() + SPIN_SECONDS;
    for (unsigned i = 0;; ++i) {
        unsigned long g = atomic_load_explicit(&generation, memory_order_acquire);
        if (g != seen) return g;
        if ((i & 63) == 63 && xnor_now() > until) break;
        cpu_relax();
    }
    pthread_mutex_lock(&wake_mu);
    unsigned long g;
    while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen)
        pthread_cond_wait(&wake_cv, &wake_mu);
    pthread_mutex_unlock(&wake_mu);
    return g;
}

/* Move the calling worker off `cpu` when it runs there (see the placement note above). */
static void leave_cpu(int cpu) {
    if (!allowed_ok || cpu < 0 || sched_getcpu() != cpu || !CPU_ISSET(cpu, &allowed) ||
        CPU_COUNT(&allowed) < 2)
        return;
    cpu_set_t set = allowed;
    CPU_CLR(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);   /* best effort: a failure only costs speed */
}

static void *worker_main(void *arg) {
    int tid = (int)(intptr_t)arg;
    unsigned long seen = born[tid];   /* not the live value: the job may already be out */
    for (;;) {
        seen = wait_for_job(seen);
        pool_job j = job;
        if (tid <= j.active) {
            leave_cpu(atomic_load_explicit(&caller_cpu, memory_order_relaxed));
            j.fn1(j.ctx, tid, j.n);
            if (j.fn2) {
                atomic_fetch_add_explicit(&arrived, 1, memory_order_acq_rel);
                spin_until(&arrived, j.active + 1);
                j.fn2(j.ctx, tid, j.n);
            }
        }
        atomic_fetch_add_explicit(&finished, 1, memory_order_release);
    }
    return NULL;
}

static void forget_workers_in_child(void) {
    pthread_mutex_init(&submit_mu, NULL);
    pthread_mutex_init(&wake_mu, NULL);
    pthread_cond_init(&wake_cv, NULL);
    workers = 0;
}

static void install_atfork(void) { pthread_atfork(NULL, NULL, forget_workers_in_child); }

/* Start workers up to `want` (caller holds submit_mu); returns how many exist. */
static int grow_pool(int want) {
    pthread_once(&atfork_once, install_atfork);
    if (!workers) allowed_ok = sched_getaffinity(0, sizeof allowed, &allowed) == 0;
    if (want > MAX_WORKERS) want = MAX_WORKERS;
    while (workers < want) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        born[workers + 1] = atomic_load(&generation);   /* the job is published after this */
        int rc = pthread_create(&th, &attr, worker_main, (void *)(intptr_t)(workers + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        ++workers;
    }
    return workers;
}

void xnor_parallel2(int n, phase_fn fn1, phase_fn fn2, void *ctx, double *mid_wall,
                    double *mid_cpu) {
    int active = 0;
    if (n > MAX_WORKERS + 1) n = MAX_WORKERS + 1;
    int pooled = n > 1 && pthread_mutex_trylock(&submit_mu) == 0;
    if (pooled) {
        active = grow_pool(n - 1);
        if (active > n - 1) active = n - 1;
        job = (pool_job){fn1, fn2, ctx, n, active};
        atomic_store_explicit(&caller_cpu, sched_getcpu(), memory_order_relaxed);
        atomic_store(&arrived, 0);
        atomic_store(&finished, 0);
        pthread_mutex_lock(&wake_mu);
        atomic_fetch_add_explicit(&generation, 1, memory_order_release);
        pthread_cond_broadcast(&wake_cv);
        pthread_mutex_unlock(&wake_mu);
    }
    fn1(ctx, 0, n);
    run_shares(fn1, ctx, active + 1, n);
    if (fn2) {
        if (active) {
            atomic_fetch_add_explicit(&arrived, 1, memory_order_acq_rel);
            spin_until(&arrived, active + 1);
        }
        if (mid_wall) *mid_wall = xnor_now();
        if (mid_cpu) *mid_cpu = xnor_cpu_now();
        fn2(ctx, 0, n);
        run_shares(fn2, ctx, active + 1, n);
    }
    if (pooled) {
        spin_until(&finished, workers);
        pthread_mutex_unlock(&submit_mu);
    }
}

void xnor_parallel(int n, phase_fn fn, void *ctx) { xnor_parallel2(n, fn, NULL, ctx, NULL, NULL); }
