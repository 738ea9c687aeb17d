/*
 * fragment: fragmentation under a large, churning live set. 4 threads each keep 2048
 * blocks alive; every block has a random size (log-uniform, 16 B up to the phase's bound)
 * and a random lifetime in rounds (70 % 1 - 2, 25 % 3 - 20, 5 % 20 - 200). Each round a
 * thread checks and frees the blocks whose time is up and allocates new ones in their
 * slots. The size bound moves through phases of 100 rounds: 64 KiB, then 8 KiB, then 1 KiB,
 * so the live set swings between tens of MB and a few MB while the long-lived blocks of
 * one phase stay pinned among the blocks of the next: an allocator that cannot reuse or
 * return the holes keeps its RSS near the peak. The run ends in a 1 KiB phase.
 *
 * Prints the live bytes at the end (all threads' blocks still allocated, the same under
 * any allocator), the sum of the threads' peaks of live bytes, and the RSS at that point
 * (VmRSS, allocator-dependent; rss_over_live = RSS / live bytes shows the fragmentation).
 *
 * Build: gcc -O2 -pthread benches/c/fragment.c -o fragment
 * Run:   ./fragment [scale]        (scale 1.0: 4 threads x 12,000 rounds)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"

#define THREADS 4
#define SLOTS 2048
#define PHASE 100
#define ROUNDS 12000L

static const size_t phase_bound[3] = {65536, 8192, 1024};

struct slot {
    void *p;
    size_t n;
    uint64_t key;
    long death;
};

struct job {
    long id;
    uint64_t live, peak, sum;
};

static long rounds;
static pthread_barrier_t done, measured;

/* log-uniform in [16, hi] */
static size_t random_size(uint64_t *rng, size_t hi) {
    int bits_hi = 63 - __builtin_clzll(hi);     /* hi is a power of two */
    int bits = 4 + (int)bench_below(rng, (uint64_t)(bits_hi - 4));   /* 2^bits .. 2^(bits+1) */
    size_t lo = (size_t)1 << bits;
    return lo + bench_below(rng, lo + 1);
}

static long random_lifetime(uint64_t *rng) {
    uint64_t r = bench_below(rng, 100);
    if (r < 70) return (long)bench_range(rng, 1, 2);
    if (r < 95) return (long)bench_range(rng, 3, 20);
    return (long)bench_range(rng, 20, 200);
}

static void *worker(void *arg) {
    struct job *job = arg;
    uint64_t rng = bench_seed(0xf7a6 + job->id), seq = 0, sum = 0, live = 0, peak = 0;
    struct slot *slot = bench_nonnull(calloc(SLOTS, sizeof *slot), SLOTS * sizeof *slot);
    for (long round = 0; round < rounds; round++) {
        size_t hi = phase_bound[(round / PHASE) % 3];
        for (size_t j = 0; j < SLOTS; j++) {
            struct slot *s = &slot[j];
            if (s->p && s->death > round) continue;
            if (s->p) {
                sum += bench_check(s->p, s->n, s->key, "fragment: expired block");
                free(s->p);
                live -= s->n;
            }
            s->n = random_size(&rng, hi);
            s->key = ((uint64_t)(job->id + 1) << 40) | seq++;
            s->death = round + random_lifetime(&rng);
            s->p = bench_nonnull(malloc(s->n), s->n);
            bench_fill(s->p, s->n, s->key);
            live += s->n;
        }
        if (live > peak) peak = live;
    }
    job->live = live;
    job->peak = peak;
    pthread_barrier_wait(&done);        /* the main thread measures the RSS here */
    pthread_barrier_wait(&measured);
    for (size_t j = 0; j < SLOTS; j++) {
        sum += bench_check(slot[j].p, slot[j].n, slot[j].key, "fragment: block at the end");
        free(slot[j].p);
    }
    free(slot);
    job->sum = sum;
    return NULL;
}

static long status_kib(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') {
            v = atol(line + n + 1);
            break;
        }
    if (f) fclose(f);
    return v;
}

int main(int argc, char **argv) {
    double scale = bench_scale(argc, argv);
    /* whole cycles of the three phases, ending in the 1 KiB one */
    long cycles = (bench_scaled(ROUNDS, scale) + 3 * PHASE - 1) / (3 * PHASE);
    rounds = cycles * 3 * PHASE;
    pthread_barrier_init(&done, NULL, THREADS + 1);
    pthread_barrier_init(&measured, NULL, THREADS + 1);
    pthread_t t[THREADS];
    struct job job[THREADS];
    for (long i = 0; i < THREADS; i++) {
        job[i] = (struct job){.id = i};
        if (pthread_create(&t[i], NULL, worker, &job[i])) bench_die("pthread_create failed");
    }
    pthread_barrier_wait(&done);
    long rss = status_kib("VmRSS");
    pthread_barrier_wait(&measured);
    uint64_t live = 0, peak = 0, checksum = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        live += job[i].live;
        peak += job[i].peak;
        checksum += job[i].sum;
    }
    printf("fragment: %d threads x %ld rounds of %d slots\n", THREADS, rounds, SLOTS);
    printf("live_bytes %llu\n", (unsigned long long)live);
    printf("peak_live_bytes %llu (sum of the threads' peaks)\n", (unsigned long long)peak);
    printf("rss_kib %ld\n", rss);
    printf("rss_over_live %.2f\n", rss * 1024.0 / (double)live);
    bench_print_checksum(checksum);
    return 0;
}
