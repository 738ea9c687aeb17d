/*
 * scaling: how an allocator's throughput holds up as threads grow, with the same total work
 * split over T threads. Two patterns:
 *
 * - larson: Larson and Krishnan's server model. Each thread owns a table of 1000 live
 *   blocks (16 - 256 B, from a key); each step frees a random slot's block and allocates a
 *   new one there. Every 2000 steps a thread swaps its whole table with the next thread's
 *   (a ring, through one lock-protected exchange slot per thread), so the blocks it frees
 *   from then on were allocated by another thread: the cross-thread frees of larson's
 *   threads that inherit their predecessors' blocks.
 * - prodcons: T/2 producers only allocate (16 - 512 B) and T/2 consumers only free, in
 *   batches of 64 through bounded queues (producer i feeds consumer i): every free is a
 *   cross-thread free.
 *
 * Every block is filled from its key and checked before its free (the suite's rules), so a
 * lost or overwritten block changes the checksum. The work is fixed in total (scale 1.0:
 * 8,000,000 malloc/free pairs), so on a machine with C cores the ideal wall time is the
 * same at every T >= C; the program prints `ops_per_sec`, the pairs per second of wall
 * time, and the checksum (the same under every allocator for a given pattern, T and scale).
 *
 * Build: gcc -O2 -pthread benches/c/scaling.c -o scaling
 * Run:   ./scaling larson|prodcons THREADS [scale]
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_common.h"

#define MAX_THREADS 256
#define SLOTS 1000
#define SWAP_EVERY 2000
#define BATCH 64
#define DEPTH 16
#define PAIRS 8000000L

static int threads;
static long pairs_per_thread;

/* ---- larson ---- */

struct table {
    struct bench_item slot[SLOTS];
};

/* Thread i hands its table to thread i + 1 through exchange[i + 1]: it puts its own in and,
 * once the previous thread has put one there, takes that. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    struct table *t;
} exchange[MAX_THREADS];

static size_t larson_size(uint64_t key) { return 16 + bench_hash(key) % (256 - 16 + 1); }

static struct table *swap_tables(int id, struct table *mine) {
    int next = (id + 1) % threads;
    pthread_mutex_lock(&exchange[next].lock);
    while (exchange[next].t) pthread_cond_wait(&exchange[next].changed, &exchange[next].lock);
    exchange[next].t = mine;
    pthread_cond_broadcast(&exchange[next].changed);
    pthread_mutex_unlock(&exchange[next].lock);
    pthread_mutex_lock(&exchange[id].lock);
    while (!exchange[id].t) pthread_cond_wait(&exchange[id].changed, &exchange[id].lock);
    struct table *got = exchange[id].t;
    exchange[id].t = NULL;
    pthread_cond_broadcast(&exchange[id].changed);
    pthread_mutex_unlock(&exchange[id].lock);
    return got;
}

static void *larson(void *arg) {
    long id = (long)arg;
    uint64_t rng = bench_seed(0x1a450 + id), sum = 0;
    struct table *t = bench_nonnull(calloc(1, sizeof *t), sizeof *t);
    for (int i = 0; i < SLOTS; i++) {
        uint64_t key = ((uint64_t)id << 40) | (uint64_t)i;
        size_t n = larson_size(key);
        t->slot[i] = (struct bench_item){bench_nonnull(malloc(n), n), n, key};
        bench_fill(t->slot[i].p, n, key);
    }
    for (long step = 0; step < pairs_per_thread; step++) {
        struct bench_item *s = &t->slot[bench_below(&rng, SLOTS)];
        sum += bench_check(s->p, s->n, s->key, "larson: block");
        free(s->p);
        uint64_t key = ((uint64_t)id << 40) | (uint64_t)(SLOTS + step);
        size_t n = larson_size(key);
        *s = (struct bench_item){bench_nonnull(malloc(n), n), n, key};
        bench_fill(s->p, n, key);
        if (threads > 1 && step % SWAP_EVERY == SWAP_EVERY - 1) t = swap_tables((int)id, t);
    }
    for (int i = 0; i < SLOTS; i++) {
        sum += bench_check(t->slot[i].p, t->slot[i].n, t->slot[i].key, "larson: last block");
        free(t->slot[i].p);
    }
    free(t);
    return (void *)(uintptr_t)sum;
}

/* ---- prodcons ---- */

static struct bench_queue queue[MAX_THREADS / 2];

static size_t prodcons_size(uint64_t key) { return 16 + bench_hash(key) % (512 - 16 + 1); }

static void *producer(void *arg) {
    long id = (long)arg;
    for (long b = 0; b < pairs_per_thread * 2 / BATCH; b++) {
        struct bench_item *batch = bench_nonnull(malloc(BATCH * sizeof *batch), BATCH * sizeof *batch);
        for (int i = 0; i < BATCH; i++) {
            uint64_t key = ((uint64_t)id << 40) | (uint64_t)(b * BATCH + i);
            size_t n = prodcons_size(key);
            batch[i] = (struct bench_item){bench_nonnull(malloc(n), n), n, key};
            bench_fill(batch[i].p, n, key);
        }
        bench_queue_push(&queue[id], (struct bench_item){batch, BATCH, 0});
    }
    bench_queue_push(&queue[id], (struct bench_item){NULL, 0, 0});
    return NULL;
}

static void *consumer(void *arg) {
    long id = (long)arg;
    uint64_t sum = 0;
    for (;;) {
        struct bench_item it = bench_queue_pop(&queue[id]);
        if (!it.p) break;
        struct bench_item *batch = it.p;
        for (size_t i = 0; i < it.n; i++) {
            sum += bench_check(batch[i].p, batch[i].n, batch[i].key, "prodcons: block");
            free(batch[i].p);
        }
        free(batch);
    }
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    if (argc < 3 || (strcmp(argv[1], "larson") && strcmp(argv[1], "prodcons"))) {
        fprintf(stderr, "usage: %s larson|prodcons THREADS [scale]\n", argv[0]);
        return 2;
    }
    int prodcons = !strcmp(argv[1], "prodcons");
    threads = atoi(argv[2]);
    if (threads < 1 || threads > MAX_THREADS || (prodcons && threads % 2)) {
        fprintf(stderr, "scaling: THREADS must be 1 - %d (even for prodcons)\n", MAX_THREADS);
        return 2;
    }
    double scale = bench_scale(argc - 2, argv + 2);
    long total = bench_scaled(PAIRS, scale);
    /* larson: every thread does its share of the pairs; prodcons: each producer makes
     * twice its share (half the threads produce), in whole batches. */
    pairs_per_thread = total / threads;
    if (prodcons && pairs_per_thread * 2 < BATCH) pairs_per_thread = BATCH / 2;
    pthread_t tid[MAX_THREADS];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (prodcons) {
        for (int i = 0; i < threads / 2; i++) bench_queue_init(&queue[i], DEPTH);
        for (long i = 0; i < threads / 2; i++) {
            pthread_create(&tid[2 * i], NULL, producer, (void *)i);
            pthread_create(&tid[2 * i + 1], NULL, consumer, (void *)i);
        }
    } else {
        for (int i = 0; i < threads; i++) {
            pthread_mutex_init(&exchange[i].lock, NULL);
            pthread_cond_init(&exchange[i].changed, NULL);
        }
        for (long i = 0; i < threads; i++) pthread_create(&tid[i], NULL, larson, (void *)i);
    }
    uint64_t sum = 0;
    for (int i = 0; i < threads; i++) {
        void *r;
        pthread_join(tid[i], &r);
        sum += (uint64_t)(uintptr_t)r;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    long done = prodcons ? pairs_per_thread * 2 / BATCH * BATCH * (threads / 2) : pairs_per_thread * threads;
    printf("%s threads %d pairs %ld seconds %.3f ops_per_sec %.0f\n", argv[1], threads, done,
           secs, (double)done / secs);
    bench_print_checksum(sum);
    return 0;
}
