/*
 * bad_input.c: one misuse of the malloc API per run, chosen by the first argument, for
 * tests/c_api.rs to run under LD_PRELOAD=librampart.so and expect a report and SIGABRT.
 *
 *   gcc -O2 -fno-builtin bad_input.c -o bad_input
 *   LD_PRELOAD=target/release/librampart.so ./bad_input free-stack
 *
 * The program writes nothing to stderr itself before the misuse, so the first line there is
 * rampart's report. If the misuse goes unnoticed it says so on stderr and exits with status
 * 3 (4 if the heap was visibly corrupted), so the test can tell "not detected" from "crashed
 * differently". Case "ok" does only valid things and exits 0 (the control).
 *
 * Calls go through volatile function pointers so the compiler neither warns about nor
 * removes the deliberate misuse.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void (*volatile do_free)(void *) = free;
static void *(*volatile do_realloc)(void *, size_t) = realloc;
static size_t (*volatile do_usable)(void *) = malloc_usable_size;
static void *(*volatile do_malloc)(size_t) = malloc;

static char global_buffer[4096];

static int undetected(const char *what)
{
    fprintf(stderr, "bad_input: NOT DETECTED: %s returned normally\n", what);
    return 3;
}

/* Frees p twice in a row, then shows what the allocator hands out next. */
static int double_free(size_t size)
{
    char *p = do_malloc(size);
    memset(p, 1, size);
    printf("double free of a %zu B block at %p\n", size, (void *)p);
    fflush(stdout);
    do_free(p);
    do_free(p);
    /* Not detected: does the heap now hand out one block twice? */
    char *a = do_malloc(size);
    char *b = do_malloc(size);
    fprintf(stderr, "bad_input: NOT DETECTED: double free of %p; the next two mallocs of %zu "
                    "B returned %p and %p%s\n",
            (void *)p, size, (void *)a, (void *)b,
            a == b ? " (THE SAME BLOCK TWICE: the free list is corrupted)" : "");
    return a == b ? 4 : 3;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: bad_input CASE\n");
        return 2;
    }
    const char *c = argv[1];
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("case %s\n", c);

    if (!strcmp(c, "ok")) {
        /* The control: everything valid, so the harness sees a clean exit. */
        void *p = do_malloc(100);
        p = do_realloc(p, 100000);
        printf("usable %zu\n", do_usable(p));
        do_free(p);
        do_free(NULL);
        return 0;
    }
    if (!strcmp(c, "free-stack")) {
        char buf[64];
        memset(buf, 0, sizeof buf);
        printf("free(%p), a stack address\n", (void *)buf);
        do_free(buf);
        return undetected("free of a stack pointer");
    }
    if (!strcmp(c, "free-global")) {
        printf("free(%p), a global array\n", (void *)global_buffer);
        do_free(global_buffer);
        return undetected("free of a global");
    }
    if (!strcmp(c, "free-mmap")) {
        char *m = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                       0);
        if (m == MAP_FAILED) {
            perror("mmap");
            return 2;
        }
        printf("free(%p), a private mmap\n", (void *)(m + 4096));
        do_free(m + 4096);
        return undetected("free of a pointer into a private mmap");
    }
    if (!strcmp(c, "free-interior-small")) {
        char *p = do_malloc(100);
        printf("free(%p), 8 bytes into a 100 B block at %p\n", (void *)(p + 8), (void *)p);
        do_free(p + 8);
        return undetected("free of an interior pointer of a small block");
    }
    if (!strcmp(c, "free-interior-small-16")) {
        /* 48 bytes in: a 16-byte aligned address inside the block, never a block start of
         * the block's size class (the 100 B request is served from a class above 48). */
        char *p = do_malloc(100);
        printf("free(%p), 48 bytes into a 100 B block at %p\n", (void *)(p + 48), (void *)p);
        do_free(p + 48);
        return undetected("free of an aligned interior pointer of a small block");
    }
    if (!strcmp(c, "free-interior-large")) {
        char *p = do_malloc(200000);
        printf("free(%p), 8192 bytes into a 200000 B block at %p\n", (void *)(p + 8192),
               (void *)p);
        do_free(p + 8192);
        return undetected("free of an interior pointer of a large block");
    }
    if (!strcmp(c, "free-interior-huge")) {
        char *p = do_malloc(16 << 20);
        printf("free(%p), 1 MiB into a 16 MiB block at %p\n", (void *)(p + (1 << 20)),
               (void *)p);
        do_free(p + (1 << 20));
        return undetected("free of an interior pointer of a huge block");
    }
    if (!strcmp(c, "realloc-interior")) {
        char *p = do_malloc(100);
        printf("realloc(%p, 200), 16 bytes into a 100 B block at %p\n", (void *)(p + 16),
               (void *)p);
        do_realloc(p + 16, 200);
        return undetected("realloc of an interior pointer");
    }
    if (!strcmp(c, "realloc-interior-large")) {
        char *p = do_malloc(200000);
        printf("realloc(%p, 300000), 4096 bytes into a 200000 B block at %p\n",
               (void *)(p + 4096), (void *)p);
        do_realloc(p + 4096, 300000);
        return undetected("realloc of an interior pointer of a large block");
    }
    if (!strcmp(c, "usable-wild")) {
        void *wild = (void *)(uintptr_t)0x100000000000ull;
        printf("malloc_usable_size(%p), an address nothing is mapped at\n", wild);
        do_usable(wild);
        return undetected("malloc_usable_size of a wild pointer");
    }
    if (!strcmp(c, "usable-global")) {
        printf("malloc_usable_size(%p), a global array\n", (void *)global_buffer);
        do_usable(global_buffer);
        return undetected("malloc_usable_size of a global");
    }
    if (!strcmp(c, "double-free-small"))
        return double_free(64);
    if (!strcmp(c, "double-free-large"))
        return double_free(200000);
    if (!strcmp(c, "double-free-huge"))
        return double_free(16 << 20);
    fprintf(stderr, "bad_input: unknown case %s\n", c);
    return 2;
}
