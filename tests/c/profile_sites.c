/* Allocation sites with known figures, for the heap profile tests (tests/profile.rs).
 *
 *   profile_sites leaks      two leaking functions (leak_small: 10 x 100 bytes; leak_zeroed:
 *                            5 x 3000 bytes), a cache kept to the end and then freed, heavy
 *                            short-lived allocation, threads that allocate and exit
 *   profile_sites estimate   two retained caches of 128 MiB each (keep_small: 1 Mi x 128
 *                            bytes; keep_large: 2048 x 64 KiB) and 1 M short-lived blocks
 *   profile_sites fork       leaks 1000 bytes in the parent (before the fork) and 2000 in
 *                            the child (after it, from child_leak); prints both pids
 *   profile_sites double     frees a (sampled, in exact mode) block twice: the run the
 *                            profile keeps for reuse must still be seen as freed
 *   profile_sites write PATH keeps a cache, writes the profile to PATH on request, and
 *                            raises SIGUSR2 (for RAMPART_PROFILE_SIGNAL=12)
 *
 * It prints nothing through stdio streams (whose buffers are allocations of their own). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int rampart_profile_write(const char *path) __attribute__((weak));

#define NOINLINE __attribute__((noinline, noipa))

void *volatile sink[4096];

NOINLINE void leak_small(void) {
    for (int i = 0; i < 10; i++) {
        char *p = malloc(100);
        memset(p, 'a', 100);
        sink[i] = p; /* overwritten below: the blocks stay allocated */
    }
}

NOINLINE void leak_zeroed(void) {
    for (int i = 0; i < 5; i++)
        sink[100 + i] = calloc(1, 3000);
}

static void *cache[1000];

NOINLINE void fill_cache(void) {
    for (int i = 0; i < 1000; i++)
        cache[i] = malloc(4000);
}

NOINLINE void churn(long n) {
    for (long i = 0; i < n; i++) {
        void *p = malloc(64 + (size_t)(i % 512));
        *(volatile char *)p = 1;
        free(p);
    }
}

NOINLINE void *thread_blocks(void *arg) {
    void **out = arg;
    for (int i = 0; i < 100; i++)
        out[i] = malloc(200);
    return NULL;
}

static void leaks(void) {
    leak_small();
    leak_zeroed();
    fill_cache();
    churn(200000);
    /* Four threads allocate and exit; every block is freed here. */
    static void *blocks[4][100];
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, thread_blocks, blocks[i]);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 100; j++)
            free(blocks[i][j]);
    for (int i = 0; i < 1000; i++)
        free(cache[i]);
    for (int i = 0; i < 4096; i++)
        sink[i] = NULL;
}

static void **small_cache, **large_cache;

NOINLINE void keep_small(void) {
    small_cache = malloc(sizeof(void *) << 20);
    for (long i = 0; i < 1L << 20; i++)
        small_cache[i] = malloc(128);
}

NOINLINE void keep_large(void) {
    large_cache = malloc(sizeof(void *) * 2048);
    for (long i = 0; i < 2048; i++)
        large_cache[i] = malloc(64 << 10);
}

NOINLINE void child_leak(void) {
    sink[0] = malloc(2000);
}

NOINLINE void parent_leak(void) {
    sink[1] = malloc(1000);
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    if (!strcmp(argv[1], "leaks")) {
        leaks();
        return 0;
    }
    if (!strcmp(argv[1], "double")) {
        char *p = malloc(100);
        free(p);
        free(p);
        return 0;
    }
    if (!strcmp(argv[1], "noleaks")) {
        churn(10000);
        return 0;
    }
    if (!strcmp(argv[1], "estimate")) {
        keep_small();
        keep_large();
        churn(1000000);
        return 0;
    }
    if (!strcmp(argv[1], "fork")) {
        parent_leak();
        pid_t pid = fork();
        if (pid == 0) {
            child_leak();
            exit(0);
        }
        int status;
        waitpid(pid, &status, 0);
        /* The pids, so that the test tells the two profiles apart by them (snprintf
         * into a stack buffer: no stdio stream, no allocation). */
        char line[64];
        int len = snprintf(line, sizeof line, "parent %d child %d\n", (int)getpid(), (int)pid);
        write(1, line, (size_t)len);
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
    }
    if (!strcmp(argv[1], "write") && argc > 2) {
        fill_cache();
        if (!rampart_profile_write || rampart_profile_write(argv[2]) != 0)
            return 3;
        raise(SIGUSR2);
        for (int i = 0; i < 1000; i++)
            free(cache[i]);
        return 0;
    }
    return 2;
}
