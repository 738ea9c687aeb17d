/*
 * churn: thread churn. 2,000 short-lived threads, started in batches of 4 (the main thread
 * waits for a batch before starting the next). Each thread first frees up to 256 blocks
 * left in a shared lock-protected pool by earlier threads, then allocates 5,000 blocks
 * (16 B - 4 KiB, most of them small), fills them, and frees 85 % of them itself in a
 * random order; the other 15 % it leaves in the pool, so they outlive the thread that
 * allocated them. Between batches the main thread frees a quarter of the pool; what is
 * left at the end it frees too. An allocator with per-thread heaps must set up (or reuse)
 * a heap for every thread and deal with the blocks of heaps whose thread has exited.
 *
 * Build: gcc -O2 -pthread benches/c/churn.c -o churn
 * Run:   ./churn [scale]        (scale 1.0: 2,000 threads)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"

#define BATCH 4
#define THREADS_TOTAL 2000L
#define BLOCKS 5000
#define TAKE 256

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bench_item *pool;
static size_t pool_len, pool_cap;
static uint64_t checksum;

static size_t size_of_key(uint64_t key) {
    uint64_t h = bench_hash(key);
    if (h % 100 < 80) return 16 + (h >> 8) % (256 - 16 + 1);
    return 257 + (h >> 8) % (4096 - 257 + 1);
}

static int orphan(uint64_t key) { return (bench_hash(key ^ 0x0f) % 100) < 15; }

static void pool_put(struct bench_item it) {
    pthread_mutex_lock(&pool_lock);
    if (pool_len == pool_cap) {
        pool_cap = pool_cap ? 2 * pool_cap : 4096;
        pool = bench_nonnull(realloc(pool, pool_cap * sizeof *pool), pool_cap * sizeof *pool);
    }
    pool[pool_len++] = it;
    pthread_mutex_unlock(&pool_lock);
}

/* Frees up to `count` blocks of the pool (the most recently left ones); returns their sum. */
static uint64_t pool_free(size_t count, const char *who) {
    struct bench_item taken[TAKE];
    uint64_t sum = 0;
    while (count) {
        size_t k = count < TAKE ? count : TAKE;
        pthread_mutex_lock(&pool_lock);
        if (k > pool_len) k = pool_len;
        pool_len -= k;
        for (size_t i = 0; i < k; i++) taken[i] = pool[pool_len + i];
        pthread_mutex_unlock(&pool_lock);
        if (!k) break;
        for (size_t i = 0; i < k; i++) {
            sum += bench_check(taken[i].p, taken[i].n, taken[i].key, who);
            free(taken[i].p);
        }
        count -= k;
    }
    return sum;
}

static void *worker(void *arg) {
    long id = (long)arg;
    uint64_t rng = bench_seed(0xc402 + id), sum = pool_free(TAKE, "churn: block of an earlier thread");
    struct bench_item *mine = bench_nonnull(malloc(BLOCKS * sizeof *mine), BLOCKS * sizeof *mine);
    for (size_t i = 0; i < BLOCKS; i++) {
        uint64_t key = ((uint64_t)(id + 1) << 32) | i;
        size_t n = size_of_key(key);
        void *p = bench_nonnull(malloc(n), n);
        bench_fill(p, n, key);
        mine[i] = (struct bench_item){p, n, key};
    }
    for (size_t i = BLOCKS; i > 1; i--) {   /* shuffle: free in a random order */
        size_t j = bench_below(&rng, i);
        struct bench_item t = mine[i - 1];
        mine[i - 1] = mine[j];
        mine[j] = t;
    }
    for (size_t i = 0; i < BLOCKS; i++) {
        if (orphan(mine[i].key)) {
            pool_put(mine[i]);
        } else {
            sum += bench_check(mine[i].p, mine[i].n, mine[i].key, "churn: own block");
            free(mine[i].p);
        }
    }
    free(mine);
    __atomic_fetch_add(&checksum, sum, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv) {
    long threads = bench_scaled(THREADS_TOTAL, bench_scale(argc, argv));
    for (long first = 0; first < threads; first += BATCH) {
        pthread_t t[BATCH];
        long k = threads - first < BATCH ? threads - first : BATCH;
        for (long i = 0; i < k; i++)
            if (pthread_create(&t[i], NULL, worker, (void *)(first + i)))
                bench_die("pthread_create failed");
        for (long i = 0; i < k; i++) pthread_join(t[i], NULL);
        checksum += pool_free(pool_len / 4, "churn: block freed by the main thread");
    }
    checksum += pool_free(pool_len, "churn: block left at the end");
    free(pool);
    printf("churn: %ld threads in batches of %d, %d blocks each\n", threads, BATCH, BLOCKS);
    bench_print_checksum(checksum);
    return 0;
}
