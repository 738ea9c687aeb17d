/*
 * server: a server-like pattern. 4 threads allocate blocks of random sizes (95 % of them
 * 16 B - 1 KiB, 5 % 1 KiB - 64 KiB) with random lifetimes: each new block takes a random
 * slot of the thread's table of 1024 live blocks, and the block it displaces is freed there
 * or (35 %) handed to one of 4 shared lock-protected queues; on 35 % of its steps a thread
 * also takes a block from a random queue and frees it. So about a third of all frees
 * happen in another thread than the allocation, at random times, as when requests are
 * handed between worker threads. Every block is filled with a pattern derived from its key
 * and checked before it is freed.
 *
 * Build: gcc -O2 -pthread benches/c/server.c -o server
 * Run:   ./server [scale]        (scale 1.0: 4 x 2,000,000 blocks)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"

#define THREADS 4
#define QUEUES 4
#define QUEUE_CAP 4096
#define SLOTS 1024
#define STEPS 2000000L

static struct bench_queue queues[QUEUES];
static long steps;
static uint64_t checksum;

static size_t size_of_key(uint64_t key) {
    uint64_t h = bench_hash(key);
    if (h % 100 < 95) return 16 + (h >> 8) % (1024 - 16 + 1);
    return 1025 + (h >> 8) % (65536 - 1025 + 1);
}

static void *worker(void *arg) {
    long id = (long)arg;
    uint64_t rng = bench_seed(0x5e7e7 + id), sum = 0;
    struct bench_item *slot = calloc(SLOTS, sizeof *slot);
    bench_nonnull(slot, SLOTS * sizeof *slot);
    for (long i = 0; i < steps; i++) {
        uint64_t key = ((uint64_t)(id + 1) << 40) | (uint64_t)i;
        size_t n = size_of_key(key);
        void *p = bench_nonnull(malloc(n), n);
        bench_fill(p, n, key);
        size_t j = bench_below(&rng, SLOTS);
        struct bench_item victim = slot[j];
        slot[j] = (struct bench_item){p, n, key};
        if (victim.p) {
            int handed = 0;
            if (bench_below(&rng, 100) < 35)
                handed = bench_queue_try_push(&queues[bench_below(&rng, QUEUES)], victim);
            if (!handed) {
                sum += bench_check(victim.p, victim.n, victim.key, "server: own block");
                free(victim.p);
            }
        }
        if (bench_below(&rng, 100) < 35) {
            struct bench_item it;
            if (bench_queue_try_pop(&queues[bench_below(&rng, QUEUES)], &it)) {
                sum += bench_check(it.p, it.n, it.key, "server: block from a queue");
                free(it.p);
            }
        }
    }
    for (size_t j = 0; j < SLOTS; j++)
        if (slot[j].p) {
            sum += bench_check(slot[j].p, slot[j].n, slot[j].key, "server: own block at exit");
            free(slot[j].p);
        }
    free(slot);
    __atomic_fetch_add(&checksum, sum, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv) {
    steps = bench_scaled(STEPS, bench_scale(argc, argv));
    for (int q = 0; q < QUEUES; q++) bench_queue_init(&queues[q], QUEUE_CAP);
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)i)) bench_die("pthread_create failed");
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    for (int q = 0; q < QUEUES; q++) {
        struct bench_item it;
        while (bench_queue_try_pop(&queues[q], &it)) {
            checksum += bench_check(it.p, it.n, it.key, "server: block left in a queue");
            free(it.p);
        }
        bench_queue_destroy(&queues[q]);
    }
    printf("server: %d threads, %ld blocks each\n", THREADS, steps);
    bench_print_checksum(checksum);
    return 0;
}
