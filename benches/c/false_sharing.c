/*
 * false_sharing: allocator-induced false sharing, after Hoard's "active-false" and
 * "passive-false" (cache-scratch) tests. 4 threads each allocate small objects (8 - 64 B),
 * write every byte of each many times in a tight loop, check it and free it. An allocator
 * that hands neighbouring bytes of one cache line to different threads makes these writes
 * ping-pong the line between cores and the program slows down by a large factor.
 *
 *   phase 1, active false sharing: the threads allocate and free their own objects;
 *   phase 2, passive false sharing: before each thread starts, the main thread allocates
 *     one small object per thread, back to back (so they likely share a cache line), and
 *     hands each to its thread, which frees it first; an allocator that gives a freed
 *     block back to whichever thread freed it then lets the threads write to one line.
 *
 * Build: gcc -O2 -pthread benches/c/false_sharing.c -o false_sharing
 * Run:   ./false_sharing [scale]        (scale 1.0: 2 phases x 4 threads x 100,000 objects)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"

#define THREADS 4
#define OBJECTS 100000L
#define PASSES 200      /* writes of every byte of an object */

struct job {
    long id, phase;
    unsigned char *given;   /* phase 2: the main thread's block, to free first */
    size_t given_n;
    uint64_t given_key, sum;
};

static long objects;

static size_t size_of_key(uint64_t key) { return 8 + bench_hash(key) % (64 - 8 + 1); }

static void *worker(void *arg) {
    struct job *job = arg;
    uint64_t sum = 0;
    if (job->given) {
        sum += bench_check(job->given, job->given_n, job->given_key, "false_sharing: given block");
        free(job->given);
    }
    for (long i = 0; i < objects; i++) {
        uint64_t key = ((uint64_t)(job->phase * THREADS + job->id + 1) << 40) | (uint64_t)i;
        size_t n = size_of_key(key);
        volatile unsigned char *p = bench_nonnull(malloc(n), n);
        for (size_t k = 0; k < n; k++) p[k] = (unsigned char)bench_word(key, k);
        for (int pass = 0; pass < PASSES; pass++)
            for (size_t k = 0; k < n; k++) p[k]++;
        for (size_t k = 0; k < n; k++)
            if (p[k] != (unsigned char)(bench_word(key, k) + PASSES))
                bench_die("false_sharing: object %p (%zu bytes) thread %ld: byte %zu is %02x, "
                          "expected %02x", (void *)p, n, job->id, k, p[k],
                          (unsigned char)(bench_word(key, k) + PASSES));
        sum += bench_mix(key, n);
        free((void *)p);
    }
    job->sum = sum;
    return NULL;
}

int main(int argc, char **argv) {
    objects = bench_scaled(OBJECTS, bench_scale(argc, argv));
    uint64_t checksum = 0;
    for (long phase = 0; phase < 2; phase++) {
        pthread_t t[THREADS];
        struct job job[THREADS];
        for (long i = 0; i < THREADS; i++) {
            job[i] = (struct job){.id = i, .phase = phase};
            if (phase == 1) {
                uint64_t key = ((uint64_t)0xff << 40) | (uint64_t)i;
                job[i].given_n = size_of_key(key);
                job[i].given_key = key;
                job[i].given = bench_nonnull(malloc(job[i].given_n), job[i].given_n);
                bench_fill(job[i].given, job[i].given_n, key);
            }
        }
        for (long i = 0; i < THREADS; i++)
            if (pthread_create(&t[i], NULL, worker, &job[i])) bench_die("pthread_create failed");
        for (int i = 0; i < THREADS; i++) {
            pthread_join(t[i], NULL);
            checksum += job[i].sum;
        }
    }
    printf("false_sharing: 2 phases x %d threads x %ld objects, %d passes each\n", THREADS,
           objects, PASSES);
    bench_print_checksum(checksum);
    return 0;
}
