/*
 * freemany: many blocks freed, spread over many chunks. 200,000 blocks (80 % of 8 - 608 B,
 * 20 % of 4 - 104 KiB: about 2 GiB live at the peak), each marked in its first and last
 * word; then every other one is checked and freed, then the rest. Only the marked words are
 * touched, so the run measures the allocator rather than page faults. An allocator whose free path
 * does work proportional to the whole heap (a purge sweep over every page run) turns this
 * quadratic; a bounded one runs it in about glibc's time.
 *
 * Build: gcc -O2 benches/c/freemany.c -o freemany
 * Run:   ./freemany [scale]        (scale 1.0: 200,000 blocks)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"

#define BLOCKS 200000L

static void mark(void *p, size_t n, uint64_t key) {
    uint64_t head = bench_word(key, 0), tail = bench_word(key, n);
    memcpy((char *)p + n - 8, &tail, 8);
    memcpy(p, &head, 8); /* last: the two words overlap below 16 bytes */
}

static uint64_t check(const void *p, size_t n, uint64_t key) {
    uint64_t head, tail;
    memcpy(&head, p, 8);
    memcpy(&tail, (const char *)p + n - 8, 8);
    if (head != bench_word(key, 0) || (n >= 16 && tail != bench_word(key, n)))
        bench_die("freemany: block %p (%zu bytes, key %llu) changed", p, n, (unsigned long long)key);
    return bench_mix(key, n);
}

int main(int argc, char **argv) {
    long n = bench_scaled(BLOCKS, bench_scale(argc, argv));
    void **p = calloc((size_t)n, sizeof *p);
    size_t *len = calloc((size_t)n, sizeof *len);
    if (!p || !len) bench_die("freemany: table");
    uint64_t rng = bench_seed(0xf4ee), sum = 0;
    for (long i = 0; i < n; i++) {
        uint64_t r = bench_below(&rng, 100);
        len[i] = r < 80 ? 8 + bench_below(&rng, 601) : 4096 + bench_below(&rng, 100 * 1024 + 1);
        p[i] = bench_nonnull(malloc(len[i]), len[i]);
        mark(p[i], len[i], (uint64_t)i);
    }
    for (int pass = 0; pass < 2; pass++)
        for (long i = pass; i < n; i += 2) {
            sum += check(p[i], len[i], (uint64_t)i);
            free(p[i]);
        }
    free(p);
    free(len);
    bench_print_checksum(sum);
    return 0;
}
