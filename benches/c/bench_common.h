/*
 * bench_common.h: what the workload programs in benches/c/ share (header-only, included as
 * "bench_common.h" so that `gcc -O2 -pthread benches/c/NAME.c -o NAME` finds it beside the
 * program).
 *
 * - a fixed-seed PRNG (xorshift64) and a mixing function (splitmix64's finalizer);
 * - the block pattern: bench_fill(p, n, key) writes a pattern derived from the block's key
 *   and size, bench_check(p, n, key) verifies it and returns the block's contribution to
 *   the checksum. Every 8-byte word of the first 1 KiB is written, then one word per 4 KiB
 *   (so a large block has every page touched) and the last aligned word, and the bytes
 *   after the last whole word. A mismatch is reported on stderr and the program exits 1;
 * - the checksum: the sum (mod 2^64, so the order of the frees does not matter) of
 *   bench_mix(key, size) over every verified block, printed as `checksum <hex>`; it is the
 *   same under any allocator because every program allocates a fixed set of (key, size)
 *   pairs and frees each of them exactly once;
 * - bench_scale(argc, argv): the optional scale factor (default 1.0).
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline uint64_t bench_xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* A uniform-enough value in [0, n). */
static inline uint64_t bench_below(uint64_t *s, uint64_t n) { return bench_xorshift(s) % n; }

/* A value in [lo, hi]. */
static inline uint64_t bench_range(uint64_t *s, uint64_t lo, uint64_t hi) {
    return lo + bench_xorshift(s) % (hi - lo + 1);
}

static inline uint64_t bench_hash(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A PRNG seed from anything (xorshift must not start at 0). */
static inline uint64_t bench_seed(uint64_t x) { return bench_hash(x) | 1; }

static inline uint64_t bench_mix(uint64_t key, size_t n) {
    return bench_hash(key ^ bench_hash((uint64_t)n + 0x1234567ull));
}

static inline void bench_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("CORRUPTION: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
    exit(1);
}

static inline void *bench_nonnull(void *p, size_t n) {
    if (!p) {
        fprintf(stderr, "allocation of %zu bytes failed\n", n);
        exit(2);
    }
    return p;
}

static inline uint64_t bench_word(uint64_t key, size_t off) {
    return key * 0x9E3779B97F4A7C15ull + off * 0xD6E8FEB86659FD93ull + 0x5851F42D4C957F2Dull;
}

#define BENCH_DENSE 1024
#define BENCH_STRIDE 4096

/* Visit the pattern's positions of a block of n bytes: f(block, offset, word_or_byte). */
#define BENCH_VISIT(n, WORD, BYTE)                                                           \
    do {                                                                                     \
        size_t n_ = (n), whole_ = n_ & ~(size_t)7, off_;                                     \
        size_t dense_ = whole_ < BENCH_DENSE ? whole_ : BENCH_DENSE;                         \
        for (off_ = 0; off_ < dense_; off_ += 8) WORD(off_);                                 \
        for (off_ = BENCH_STRIDE; off_ + 8 <= whole_; off_ += BENCH_STRIDE) WORD(off_);      \
        if (whole_ > BENCH_DENSE) WORD(whole_ - 8);                                          \
        for (off_ = whole_; off_ < n_; off_++) BYTE(off_);                                   \
    } while (0)

static inline void bench_fill(void *p, size_t n, uint64_t key) {
    unsigned char *b = p;
#define W_(o) do { uint64_t v_ = bench_word(key, (o)); memcpy(b + (o), &v_, 8); } while (0)
#define B_(o) (b[(o)] = (unsigned char)bench_word(key, (o)))
    BENCH_VISIT(n, W_, B_);
#undef W_
#undef B_
}

/* Verifies the pattern of (key, n) at p; returns bench_mix(key, n). `who` names the
   program's place in the message. */
static inline uint64_t bench_check(const void *p, size_t n, uint64_t key, const char *who) {
    const unsigned char *b = p;
#define W_(o)                                                                                \
    do {                                                                                     \
        uint64_t v_;                                                                         \
        memcpy(&v_, b + (o), 8);                                                             \
        if (v_ != bench_word(key, (o)))                                                      \
            bench_die("%s: block %p (%zu bytes, key %llx): word at offset %zu is %016llx, "  \
                      "expected %016llx",                                                    \
                      who, p, n, (unsigned long long)key, (size_t)(o),                       \
                      (unsigned long long)v_, (unsigned long long)bench_word(key, (o)));     \
    } while (0)
#define B_(o)                                                                                \
    do {                                                                                     \
        if (b[(o)] != (unsigned char)bench_word(key, (o)))                                   \
            bench_die("%s: block %p (%zu bytes, key %llx): byte at offset %zu is %02x", who,  \
                      p, n, (unsigned long long)key, (size_t)(o), b[(o)]);                   \
    } while (0)
    BENCH_VISIT(n, W_, B_);
#undef W_
#undef B_
    return bench_mix(key, n);
}

/* Checks that p is aligned to `align` (a power of two). */
static inline void bench_check_align(const void *p, size_t align, const char *who) {
    if ((uintptr_t)p & (align - 1))
        bench_die("%s: block %p is not aligned to %zu", who, p, align);
}

/* The optional scale factor: argv[1], default 1.0; counts of work are multiplied by it. */
static inline double bench_scale(int argc, char **argv) {
    if (argc < 2) return 1.0;
    char *end;
    double s = strtod(argv[1], &end);
    if (end == argv[1] || *end || !(s > 0) || s > 1000) {
        fprintf(stderr, "usage: %s [scale]   (scale: a number in (0, 1000], default 1.0)\n",
                argv[0]);
        exit(2);
    }
    return s;
}

/* n * scale, at least 1. */
static inline long bench_scaled(long n, double scale) {
    double v = (double)n * scale;
    return v < 1 ? 1 : (long)v;
}

static inline void bench_print_checksum(uint64_t sum) {
    printf("checksum %016llx\n", (unsigned long long)sum);
}

/* A lock-protected bounded FIFO of blocks (pointer, size, key), used by the threaded
   programs to hand blocks to other threads. */
#include <pthread.h>

struct bench_item {
    void *p;
    size_t n;
    uint64_t key;
};

struct bench_queue {
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    struct bench_item *items;
    size_t cap, head, len;
};

static inline void bench_queue_init(struct bench_queue *q, size_t cap) {
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->not_full, NULL);
    q->items = bench_nonnull(malloc(cap * sizeof *q->items), cap * sizeof *q->items);
    q->cap = cap;
    q->head = q->len = 0;
}

static inline void bench_queue_destroy(struct bench_queue *q) {
    free(q->items);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
}

/* Non-blocking: 1 if pushed, 0 if the queue was full. */
static inline int bench_queue_try_push(struct bench_queue *q, struct bench_item it) {
    int ok = 0;
    pthread_mutex_lock(&q->lock);
    if (q->len < q->cap) {
        q->items[(q->head + q->len++) % q->cap] = it;
        ok = 1;
        pthread_cond_signal(&q->not_empty);
    }
    pthread_mutex_unlock(&q->lock);
    return ok;
}

/* Non-blocking: 1 if an item was taken, 0 if the queue was empty. */
static inline int bench_queue_try_pop(struct bench_queue *q, struct bench_item *out) {
    int ok = 0;
    pthread_mutex_lock(&q->lock);
    if (q->len) {
        *out = q->items[q->head];
        q->head = (q->head + 1) % q->cap;
        q->len--;
        ok = 1;
        pthread_cond_signal(&q->not_full);
    }
    pthread_mutex_unlock(&q->lock);
    return ok;
}

/* Blocking versions. */
static inline void bench_queue_push(struct bench_queue *q, struct bench_item it) {
    pthread_mutex_lock(&q->lock);
    while (q->len == q->cap) pthread_cond_wait(&q->not_full, &q->lock);
    q->items[(q->head + q->len++) % q->cap] = it;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->lock);
}

static inline struct bench_item bench_queue_pop(struct bench_queue *q) {
    pthread_mutex_lock(&q->lock);
    while (q->len == 0) pthread_cond_wait(&q->not_empty, &q->lock);
    struct bench_item it = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    pthread_cond_signal(&q->not_full);
    pthread_mutex_unlock(&q->lock);
    return it;
}

#endif
