/*
 * shared_header.c: a C program that uses rampart.h against the shared library.
 *
 * Build and run (from the repository root), linking librampart.so directly; the rpath
 * lets the program find it at run time, and since librampart.so comes before libc in the
 * program's library list, it is also the program's malloc:
 *
 *     cargo build --release -p rampart-ffi
 *     gcc -O2 -Wall -I ffi/include examples/c/shared_header.c \
 *         -L target/release -lrampart -Wl,-rpath,"$PWD/target/release" -o /tmp/shared_header
 *     /tmp/shared_header
 *
 * Or without the rpath, finding the library through LD_LIBRARY_PATH at run time:
 *
 *     gcc -O2 -Wall -I ffi/include examples/c/shared_header.c \
 *         -L target/release -lrampart -o /tmp/shared_header
 *     LD_LIBRARY_PATH="$PWD/target/release" /tmp/shared_header
 *
 * (LD_PRELOAD of the full path alone does not satisfy the program's "librampart.so"
 * dependency: the library carries no SONAME to match it by.)
 *
 * The program builds a small table of strings with the direct API and the ordinary names
 * mixed, checks that malloc resolves to the library that defines rampart_malloc, and prints
 * rampart's statistics.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rampart.h"

static int failures;

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "shared_header: FAILED: %s\n", what);
        failures++;
    }
}

/* The file name of the shared object that defines the code at addr. */
static const char *object_of(void *addr)
{
    Dl_info info;
    if (!dladdr(addr, &info) || !info.dli_fname)
        return "?";
    return info.dli_fname;
}

int main(void)
{
    /* Which library serves malloc? The one that defines rampart_malloc. */
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    const char *malloc_lib = object_of(m);
    const char *rampart_lib = object_of((void *)rampart_stats_print);
    printf("malloc comes from %s\nrampart_malloc comes from %s\n", malloc_lib, rampart_lib);
    check(m != NULL && strcmp(malloc_lib, rampart_lib) == 0,
          "malloc resolves to librampart.so");

    enum { N = 1000 };
    char **table = rampart_calloc(N, sizeof *table);
    check(table != NULL, "rampart_calloc");
    for (int i = 0; i < N; i++) {
        char buf[64];
        int len = snprintf(buf, sizeof buf, "entry %d", i);
        table[i] = (i % 2) ? malloc((size_t)len + 1) : rampart_malloc((size_t)len + 1);
        check(table[i] != NULL, "allocating an entry");
        memcpy(table[i], buf, (size_t)len + 1);
        check(rampart_usable_size(table[i]) >= (size_t)len + 1, "rampart_usable_size");
    }
    table = rampart_realloc(table, 2 * N * sizeof *table);
    check(table != NULL && strcmp(table[N - 1], "entry 999") == 0, "rampart_realloc keeps data");
    for (int i = 0; i < N; i++) {
        if (i % 2)
            rampart_free(table[i]); /* malloc'd, freed with rampart_free */
        else
            free(table[i]); /* rampart_malloc'd, freed with free */
    }
    free(table);

    void *a = rampart_aligned_alloc(1 << 16, 1 << 20);
    check(a != NULL && (uintptr_t)a % (1 << 16) == 0, "rampart_aligned_alloc(64 KiB)");
    rampart_free(a);
    printf("rampart_trim released %zu bytes\n", rampart_trim());

    fflush(stdout);
    rampart_stats_print();
    if (failures) {
        fprintf(stderr, "shared_header: %d check(s) failed\n", failures);
        return 1;
    }
    printf("shared_header: ok\n");
    return 0;
}
