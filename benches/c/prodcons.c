/*
 * prodcons: producer-consumer. 2 producer threads only allocate and 2 consumer threads
 * only free: each producer allocates blocks (90 % of them 16 - 512 B, 10 % 513 B - 8 KiB),
 * fills them, and sends them in batches of 64 through bounded lock-protected queues (one
 * per consumer, fed by both producers, 32 batches deep, so a producer that runs ahead
 * waits), alternating between the consumers; the consumers check and free every block and the
 * batch array itself. Every free is a cross-thread free, the case that allocators with
 * thread-local heaps handle least well (the memory must find its way back to the producer).
 *
 * Build: gcc -O2 -pthread benches/c/prodcons.c -o prodcons
 * Run:   ./prodcons [scale]        (scale 1.0: 2 x 6,000,000 blocks)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"

#define PRODUCERS 2
#define CONSUMERS 2
#define BATCH 64
#define DEPTH 32
#define BLOCKS 6000000L

static struct bench_queue queue[CONSUMERS]; /* each fed by both producers */
static long blocks;
static uint64_t checksum;

static size_t size_of_key(uint64_t key) {
    uint64_t h = bench_hash(key);
    if (h % 100 < 90) return 16 + (h >> 8) % (512 - 16 + 1);
    return 513 + (h >> 8) % (8192 - 513 + 1);
}

static void *producer(void *arg) {
    long id = (long)arg;
    long sent = 0;
    for (long i = 0; i < blocks; sent++) {
        size_t count = blocks - i < BATCH ? (size_t)(blocks - i) : BATCH;
        struct bench_item *batch = bench_nonnull(malloc(BATCH * sizeof *batch), BATCH * sizeof *batch);
        for (size_t k = 0; k < count; k++, i++) {
            uint64_t key = ((uint64_t)(id + 1) << 40) | (uint64_t)i;
            size_t n = size_of_key(key);
            void *p = bench_nonnull(malloc(n), n);
            bench_fill(p, n, key);
            batch[k] = (struct bench_item){p, n, key};
        }
        bench_queue_push(&queue[(sent + id) % CONSUMERS], (struct bench_item){batch, count, 0});
    }
    for (int c = 0; c < CONSUMERS; c++)  /* the end: an empty batch */
        bench_queue_push(&queue[c], (struct bench_item){NULL, 0, 0});
    return NULL;
}

static void *consumer(void *arg) {
    long id = (long)arg;
    uint64_t sum = 0;
    int open = PRODUCERS;
    while (open) {
        struct bench_item b = bench_queue_pop(&queue[id]);
        if (!b.p) {
            open--;
            continue;
        }
        struct bench_item *batch = b.p;
        for (size_t k = 0; k < b.n; k++) {
            sum += bench_check(batch[k].p, batch[k].n, batch[k].key, "prodcons: consumer");
            free(batch[k].p);
        }
        free(batch);
    }
    __atomic_fetch_add(&checksum, sum, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv) {
    blocks = bench_scaled(BLOCKS, bench_scale(argc, argv));
    for (int c = 0; c < CONSUMERS; c++) bench_queue_init(&queue[c], DEPTH);
    pthread_t tp[PRODUCERS], tc[CONSUMERS];
    for (long i = 0; i < CONSUMERS; i++)
        if (pthread_create(&tc[i], NULL, consumer, (void *)i)) bench_die("pthread_create failed");
    for (long i = 0; i < PRODUCERS; i++)
        if (pthread_create(&tp[i], NULL, producer, (void *)i)) bench_die("pthread_create failed");
    for (int i = 0; i < PRODUCERS; i++) pthread_join(tp[i], NULL);
    for (int i = 0; i < CONSUMERS; i++) pthread_join(tc[i], NULL);
    for (int c = 0; c < CONSUMERS; c++) bench_queue_destroy(&queue[c]);
    printf("prodcons: %d producers x %ld blocks, %d consumers\n", PRODUCERS, blocks, CONSUMERS);
    bench_print_checksum(checksum);
    return 0;
}
