/*
 * static_link.c: a C program with rampart linked in statically as its malloc.
 *
 * Build and run (from the repository root):
 *
 *     cargo build --release -p rampart-ffi
 *     gcc -O2 -Wall -I ffi/include examples/c/static_link.c target/release/librampart.a \
 *         -lpthread -ldl -lm -o /tmp/static_link
 *     /tmp/static_link
 *
 * librampart.a defines malloc, free and the rest of the family, so every allocation of the
 * program, including those libc makes for it (stdio buffers, strdup, ...), is rampart's.
 * The program uses the ordinary names and the direct API of rampart.h, checks that both
 * reach the same allocator, and prints rampart's statistics.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rampart.h"

static int failures;

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "static_link: FAILED: %s\n", what);
        failures++;
    }
}

int main(void)
{
    /* The ordinary names. */
    char *s = strdup("hello from a statically linked rampart");
    check(s != NULL, "strdup");
    /* strdup allocates inside libc: rampart_usable_size would report an invalid free and
     * abort if that block were not rampart's. */
    check(rampart_usable_size(s) >= strlen(s) + 1, "rampart_usable_size of a strdup block");

    size_t n = 1000;
    int *v = malloc(n * sizeof *v);
    check(v != NULL, "malloc");
    for (size_t i = 0; i < n; i++)
        v[i] = (int)i;
    v = realloc(v, 100000 * sizeof *v);
    check(v != NULL && v[999] == 999, "realloc keeps the contents");

    /* The direct API: blocks move freely between the two sets of names. */
    double *d = rampart_calloc(4096, sizeof *d);
    check(d != NULL && d[0] == 0.0 && d[4095] == 0.0, "rampart_calloc zeroes");
    void *a = rampart_aligned_alloc(4096, 10000);
    check(a != NULL && (uintptr_t)a % 4096 == 0, "rampart_aligned_alloc(4096)");
    free(d);                  /* a rampart_calloc block freed with free */
    rampart_free(v);          /* a realloc block freed with rampart_free */
    rampart_free(a);
    v = rampart_realloc(NULL, 64);
    check(v != NULL, "rampart_realloc(NULL, 64)");
    check(rampart_realloc(v, 0) == NULL, "rampart_realloc(p, 0) frees");

    void *big = rampart_malloc(32u << 20);
    check(big != NULL, "rampart_malloc(32 MiB)");
    memset(big, 1, 32u << 20);
    rampart_free(big);
    size_t released = rampart_trim();

    printf("%s\nrampart_trim released %zu bytes\n", s, released);
    free(s);
    fflush(stdout);
    rampart_stats_print();
    if (failures) {
        fprintf(stderr, "static_link: %d check(s) failed\n", failures);
        return 1;
    }
    printf("static_link: ok\n");
    return 0;
}
