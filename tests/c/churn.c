/*
 * churn.c: 10,000 short-lived threads. Each allocates blocks of various sizes, frees some
 * itself, keeps some until it exits... and hands others to a global pool, from which later
 * threads and the main thread free them after their owner has exited. rampart must hand
 * the heaps of exited threads to new threads (and collect the blocks freed into them), so
 * memory stays flat however many threads come and go.
 *
 *   gcc -O2 -fno-builtin churn.c -lpthread -o churn
 *   RAMPART_STATS=1 LD_PRELOAD=target/release/librampart.so ./churn
 *
 * The resident set size (from /proc/self/statm) is measured after the first EARLY threads
 * and at the end; the program fails if the final RSS exceeds max(2 x early, early + 64 MiB).
 * It prints "churn: threads N, early RSS X KiB, final RSS Y KiB, ..." for the test to show.
 * Nothing here measures time. A watchdog alarm turns a hang into a failure (SIGALRM).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREADS 10000
#define BATCH 50
#define EARLY 1000
#define PER_THREAD 40
#define POOL 4096
#define WATCHDOG_S 240

/* The global pool of blocks handed over by threads that have since exited. */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static void *pool[POOL];
static size_t pool_size_of[POOL];
static int pool_len;
static long damaged;
static long alloc_failures;

static uint64_t next_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static size_t random_size(uint64_t *rng)
{
    uint64_t r = next_rand(rng);
    switch (r % 32) {
    case 0:
        return 40000 + (size_t)(r >> 16) % 100000; /* large */
    case 1:
        return 4096 + (size_t)(r >> 16) % 28000; /* biggest small classes */
    default:
        return 1 + (size_t)(r >> 16) % 1024;
    }
}

/* The last byte of a block, and its first when the block has two or more, are derived
 * from its size. */
static void mark(unsigned char *p, size_t n)
{
    p[n - 1] = (unsigned char)(n >> 3);
    if (n > 1)
        p[0] = (unsigned char)n;
}

static int marked(const unsigned char *p, size_t n)
{
    return p[n - 1] == (unsigned char)(n >> 3) && (n == 1 || p[0] == (unsigned char)n);
}

static void free_checked(void *p, size_t n)
{
    if (!marked(p, n))
        __atomic_fetch_add(&damaged, 1, __ATOMIC_RELAXED);
    free(p);
}

/* Frees up to `count` pooled blocks (their owners have exited or are about to). */
static void drain_pool(int count)
{
    void *take[64];
    size_t sizes[64];
    int n = 0;
    pthread_mutex_lock(&pool_lock);
    while (pool_len > 0 && n < count && n < 64) {
        pool_len--;
        take[n] = pool[pool_len];
        sizes[n] = pool_size_of[pool_len];
        n++;
    }
    pthread_mutex_unlock(&pool_lock);
    for (int i = 0; i < n; i++)
        free_checked(take[i], sizes[i]);
}

static void *thread_main(void *arg)
{
    uint64_t rng = 0x2545f4914f6cdd1dull ^ ((uintptr_t)arg * 0x9e3779b97f4a7c15ull);
    void *mine[PER_THREAD];
    size_t sizes[PER_THREAD];
    for (int i = 0; i < PER_THREAD; i++) {
        sizes[i] = random_size(&rng);
        mine[i] = malloc(sizes[i]);
        if (!mine[i]) {
            __atomic_fetch_add(&alloc_failures, 1, __ATOMIC_RELAXED);
            sizes[i] = 0;
            continue;
        }
        memset(mine[i], (int)i, sizes[i] < 256 ? sizes[i] : 256);
        mark(mine[i], sizes[i]);
    }
    /* Free a third now, hand a third over to the pool, keep the rest until the end. */
    for (int i = 0; i < PER_THREAD; i++) {
        if (!mine[i])
            continue;
        if (i % 3 == 0) {
            free_checked(mine[i], sizes[i]);
            mine[i] = NULL;
        } else if (i % 3 == 1) {
            pthread_mutex_lock(&pool_lock);
            if (pool_len < POOL) {
                pool[pool_len] = mine[i];
                pool_size_of[pool_len] = sizes[i];
                pool_len++;
                mine[i] = NULL;
            }
            pthread_mutex_unlock(&pool_lock);
        }
    }
    /* Free some blocks that earlier (now exited) threads handed over. */
    drain_pool(8);
    for (int i = 0; i < PER_THREAD; i++)
        if (mine[i])
            free_checked(mine[i], sizes[i]);
    return NULL;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2) {
        perror("/proc/self/statm");
        exit(2);
    }
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(void)
{
    alarm(WATCHDOG_S);
    setvbuf(stdout, NULL, _IOLBF, 0);
    long early = 0;
    int started = 0;
    while (started < THREADS) {
        pthread_t t[BATCH];
        int n = 0;
        for (; n < BATCH && started < THREADS; n++, started++)
            if (pthread_create(&t[n], NULL, thread_main, (void *)(intptr_t)started) != 0) {
                fprintf(stderr, "churn: pthread_create failed after %d threads\n", started);
                return 1;
            }
        for (int i = 0; i < n; i++)
            pthread_join(t[i], NULL);
        /* The main thread frees part of what the batch's threads left behind. */
        drain_pool(BATCH * 4);
        if (started == EARLY)
            early = rss_kib();
    }
    drain_pool(POOL);
    drain_pool(POOL);
    while (pool_len > 0)
        drain_pool(64);
    long final = rss_kib();
    long limit = early * 2 > early + 64 * 1024 ? early * 2 : early + 64 * 1024;
    printf("churn: threads %d, early RSS %ld KiB (after %d threads), final RSS %ld KiB, "
           "limit %ld KiB, damaged blocks %ld, failed allocations %ld\n",
           started, early, EARLY, final, limit, damaged, alloc_failures);
    int ok = 1;
    if (final > limit) {
        fprintf(stderr, "churn: RSS grew from %ld KiB to %ld KiB (limit %ld KiB): memory of "
                        "exited threads is not reused\n",
                early, final, limit);
        ok = 0;
    }
    if (damaged || alloc_failures) {
        fprintf(stderr, "churn: %ld damaged blocks, %ld failed allocations\n", damaged,
                alloc_failures);
        ok = 0;
    }
    fflush(stdout);
    return ok ? 0 : 1;
}
