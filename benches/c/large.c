/*
 * large: large blocks, 64 KiB - 32 MiB, and realloc. 4 threads each repeat a random mix of:
 *   - a growth chain (50 %): malloc 64 - 256 KiB, then realloc up by 1.5x steps to a random
 *     target of 1 - 32 MiB, checking after every step that the contents survived and
 *     filling the new part; half the chains are then shrunk back (realloc down to 1/2 -
 *     1/16, checked again); the block stays alive in one of the thread's 2 slots until a
 *     later chain displaces it;
 *   - malloc of 64 KiB - 8 MiB, filled, checked, freed (25 %);
 *   - calloc of 64 KiB - 4 MiB, checked to be zero, freed (10 %);
 *   - posix_memalign of 64 KiB - 4 MiB at an alignment of 4 KiB - 2 MiB, checked, freed
 *     (15 %).
 * The pattern covers one word per 4 KiB page, so every page of every block is touched:
 * what counts is how the allocator maps, reuses, moves (mremap) and returns large blocks.
 *
 * Build: gcc -O2 -pthread benches/c/large.c -o large
 * Run:   ./large [scale]        (scale 1.0: 4 threads x 1,000 operations)
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"

#define THREADS 4
#define SLOTS 2
#define OPS 1000L
#define KiB ((size_t)1024)
#define MiB (1024 * KiB)

static long ops;

/* about log-uniform in [lo, hi], both powers of two: a random octave, then a uniform size in it */
static size_t random_size(uint64_t *rng, size_t lo, size_t hi) {
    int octaves = __builtin_ctzll(hi) - __builtin_ctzll(lo);
    size_t base = lo << bench_below(rng, (uint64_t)octaves);
    return base + bench_below(rng, base + 1);
}

static void check_zero(const unsigned char *p, size_t n) {
    for (size_t off = 0; off < n; off += 4096 - 8)
        if (p[off]) bench_die("large: calloc block %p (%zu bytes): byte %zu is %02x", (void *)p, n, off, p[off]);
    if (p[n - 1]) bench_die("large: calloc block %p (%zu bytes): last byte is %02x", (void *)p, n, p[n - 1]);
}

static void *worker(void *arg) {
    long id = (long)arg;
    uint64_t rng = bench_seed(0x1a26e + id), seq = 0, sum = 0;
    struct bench_item slot[SLOTS] = {{0}};
    for (long i = 0; i < ops; i++) {
        uint64_t key = ((uint64_t)(id + 1) << 40) | seq++;
        uint64_t what = bench_below(&rng, 100);
        if (what < 50) {
            size_t n = random_size(&rng, 64 * KiB, 256 * KiB);
            size_t target = random_size(&rng, 1 * MiB, 32 * MiB);
            unsigned char *p = bench_nonnull(malloc(n), n);
            bench_fill(p, n, key);
            while (n < target) {
                size_t m = n + n / 2 > target ? target : n + n / 2;
                p = bench_nonnull(realloc(p, m), m);
                bench_check(p, n, key, "large: block grown by realloc");
                bench_fill(p, m, key);
                n = m;
            }
            if (bench_below(&rng, 2)) {
                size_t m = n / bench_range(&rng, 2, 16);
                bench_fill(p, m, key);  /* the pattern of the shorter block, in place */
                p = bench_nonnull(realloc(p, m), m);
                bench_check(p, m, key, "large: block shrunk by realloc");
                n = m;
            }
            size_t j = bench_below(&rng, SLOTS);
            if (slot[j].p) {
                sum += bench_check(slot[j].p, slot[j].n, slot[j].key, "large: kept block");
                free(slot[j].p);
            }
            slot[j] = (struct bench_item){p, n, key};
        } else if (what < 75) {
            size_t n = random_size(&rng, 64 * KiB, 8 * MiB);
            void *p = bench_nonnull(malloc(n), n);
            bench_fill(p, n, key);
            sum += bench_check(p, n, key, "large: malloc block");
            free(p);
        } else if (what < 85) {
            size_t n = random_size(&rng, 64 * KiB, 4 * MiB);
            unsigned char *p = bench_nonnull(calloc(1, n), n);
            check_zero(p, n);
            bench_fill(p, n, key);
            sum += bench_check(p, n, key, "large: calloc block");
            free(p);
        } else {
            size_t n = random_size(&rng, 64 * KiB, 4 * MiB);
            size_t align = (size_t)4096 << bench_below(&rng, 10);   /* 4 KiB .. 2 MiB */
            void *p = NULL;
            int err = posix_memalign(&p, align, n);
            if (err) {
                fprintf(stderr, "posix_memalign(%zu, %zu) failed: %s\n", align, n, strerror(err));
                exit(2);
            }
            bench_check_align(p, align, "large: posix_memalign");
            bench_fill(p, n, key);
            sum += bench_check(p, n, key, "large: posix_memalign block");
            free(p);
        }
    }
    for (size_t j = 0; j < SLOTS; j++)
        if (slot[j].p) {
            sum += bench_check(slot[j].p, slot[j].n, slot[j].key, "large: kept block at exit");
            free(slot[j].p);
        }
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    ops = bench_scaled(OPS, bench_scale(argc, argv));
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)i)) bench_die("pthread_create failed");
    uint64_t checksum = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        checksum += (uint64_t)(uintptr_t)r;
    }
    printf("large: %d threads x %ld operations\n", THREADS, ops);
    bench_print_checksum(checksum);
    return 0;
}
