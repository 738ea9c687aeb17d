/*
 * rss_return: does freed memory come back to the OS?
 *
 * 4 threads allocate 1 GiB in all, in 64-byte blocks (the blocks link to each other, so the
 * program keeps no pointer array of its own), then free all of it: each thread frees half
 * of its blocks itself and hands the other half to the next thread, which frees them (a
 * cross-thread free). The threads exit, the main thread calls malloc_trim(0).
 *
 * Prints, in KiB: the RSS before the allocations, the RSS with everything allocated, the
 * peak RSS (VmHWM), the RSS after the frees and after the trim, and the live bytes; then
 * the two ratios the operability issue sets bounds on:
 *   peak_over_live   = (peak - before) / live            (bound: <= 1.02)
 *   trimmed_over_before = after_trim / before            (bound: <= 1.05)
 *
 * Build: gcc -O2 -pthread rss_return.c -o rss_return
 * Run under any allocator: LD_PRELOAD=.../librampart.so ./rss_return
 */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define BLOCK 64
#define TOTAL (1024L * 1024 * 1024)
#define PER_THREAD (TOTAL / BLOCK / THREADS)

struct node { struct node *next; char pad[BLOCK - sizeof(struct node *)]; };

static struct node *mine[THREADS], *handed[THREADS];
static pthread_barrier_t allocated, handed_over;

/* A field of a /proc/self file of "Name:  value kB" lines. The RSS is read from smaps_rollup
   (the sum of every mapping's resident pages, exact), not from status's VmRSS, which the
   kernel keeps from per-CPU counters that may lag by tens of pages per CPU: differences of a
   hundred KiB between runs came from that, not from the allocators. VmHWM (the peak) comes
   from those counters too; its lag is negligible next to a GiB. */
static long proc_kib(const char *file, const char *field) {
    FILE *f = fopen(file, "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') { v = atol(line + n + 1); break; }
    if (f) fclose(f);
    return v;
}

static void *worker(void *arg) {
    long id = (long)arg;
    struct node *keep = NULL, *give = NULL;
    for (long i = 0; i < PER_THREAD; i++) {
        struct node *b = malloc(BLOCK);
        if (!b) { fprintf(stderr, "malloc failed after %ld blocks\n", i); exit(2); }
        if (i & 1) { b->next = give; give = b; } else { b->next = keep; keep = b; }
    }
    mine[id] = keep;
    handed[(id + 1) % THREADS] = give;
    pthread_barrier_wait(&allocated);   /* the main thread measures here */
    pthread_barrier_wait(&handed_over);
    for (struct node *b = mine[id], *n; b; b = n) { n = b->next; free(b); }
    for (struct node *b = handed[id], *n; b; b = n) { n = b->next; free(b); }  /* another thread's */
    return NULL;
}

/* The warm-up: a small version of the run (8 MiB per thread, the same cross-thread frees),
   so that thread stacks, each allocator's per-thread set-up and the code of its slow paths
   (paged in from the library on first use) count in the "before" figure. */
static struct node *warm_mine[THREADS], *warm_handed[THREADS];
static pthread_barrier_t warm_allocated;

static void *warm_up(void *arg) {
    long id = (long)arg;
    struct node *keep = NULL, *give = NULL;
    for (long i = 0; i < 8L * 1024 * 1024 / BLOCK; i++) {
        struct node *b = malloc(BLOCK);
        if (!b) exit(2);
        if (i & 1) { b->next = give; give = b; } else { b->next = keep; keep = b; }
    }
    warm_mine[id] = keep;
    warm_handed[(id + 1) % THREADS] = give;
    pthread_barrier_wait(&warm_allocated);
    for (struct node *b = warm_mine[id], *n; b; b = n) { n = b->next; free(b); }
    for (struct node *b = warm_handed[id], *n; b; b = n) { n = b->next; free(b); }
    return NULL;
}

int main(void) {
    pthread_t t[THREADS];
    pthread_barrier_init(&warm_allocated, NULL, THREADS);
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, warm_up, (void *)i);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    malloc_trim(0);
    /* The first read pages in the code that reads (stdio, the parsing: tens of KiB of libc
       text); the figure is taken by the second, so "before" counts what "after" counts. */
    proc_kib("/proc/self/smaps_rollup", "Rss");
    long before = proc_kib("/proc/self/smaps_rollup", "Rss");
    pthread_barrier_init(&allocated, NULL, THREADS + 1);
    pthread_barrier_init(&handed_over, NULL, THREADS + 1);
    for (long i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    pthread_barrier_wait(&allocated);
    long full = proc_kib("/proc/self/smaps_rollup", "Rss");
    pthread_barrier_wait(&handed_over);
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    long freed = proc_kib("/proc/self/smaps_rollup", "Rss");
    int trimmed = malloc_trim(0);
    long after = proc_kib("/proc/self/smaps_rollup", "Rss");
    long peak = proc_kib("/proc/self/status", "VmHWM");
    long live = TOTAL / 1024;
    printf("before %ld full %ld peak %ld freed %ld after_trim %ld live %ld (KiB) trim=%d\n",
           before, full, peak, freed, after, live, trimmed);
    printf("peak_over_live %.4f\n", (double)(peak - before) / live);
    printf("trimmed_over_before %.4f\n", (double)after / before);
    return 0;
}
