/*
 * fork.c: fork() from a process whose other threads are allocating and freeing all the
 * time. rampart's pthread_atfork handlers must take every global lock before the fork and
 * release or reset it after, so the child can allocate; a lock left held shows up as a
 * child that hangs.
 *
 *   gcc -O2 -fno-builtin fork.c -lpthread -o fork
 *   LD_PRELOAD=target/release/librampart.so ./fork
 *
 * Eight worker threads allocate blocks of random sizes (16 B .. 256 KiB, now and then
 * 2 MiB or 6 MiB), fill them with a pattern, and swap them through a shared mailbox, so most
 * blocks are checked and freed by a thread other than the one that allocated them. Meanwhile
 * the main thread forks FORKS times. Each child allocates and frees several sizes, frees a
 * few blocks it finds in the mailbox (allocated by threads that do not exist in the child),
 * starts a thread that allocates too, and _exit(0)s. The parent waits for each child and
 * requires status 0.
 *
 * Watchdogs: a child that has not finished in CHILD_ALARM seconds dies of SIGALRM (which the
 * parent reports as a deadlock), and the whole program dies of SIGALRM after PARENT_ALARM
 * seconds. Both are far above the program's normal run time (about a second); they only
 * turn a hang into a failure.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WORKERS 8
#define FORKS 100
#define SLOTS 256
#define CHILD_ALARM 60
#define PARENT_ALARM 240

/* A block in the mailbox: its size and a seed in the first words, a pattern after. */
struct block {
    size_t size;
    uint64_t seed;
};

static _Atomic(struct block *) mailbox[SLOTS];
static atomic_int stop;
static atomic_long corrupt;

static uint64_t next_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static unsigned char pattern_byte(uint64_t seed, size_t i)
{
    return (unsigned char)((seed >> ((i % 8) * 8)) + i / 8);
}

static struct block *make_block(size_t size, uint64_t seed)
{
    struct block *b = malloc(size);
    if (!b)
        return NULL;
    b->size = size;
    b->seed = seed;
    unsigned char *bytes = (unsigned char *)b;
    /* The whole block for small ones; the first and last 4 KiB of big ones. */
    for (size_t i = sizeof *b; i < size; i++) {
        if (size > 16384 && i == 4096)
            i = size - 4096;
        bytes[i] = pattern_byte(seed, i);
    }
    return b;
}

/* Checks a block's pattern and frees it; counts damage. */
static void check_and_free(struct block *b)
{
    const unsigned char *bytes = (const unsigned char *)b;
    size_t size = b->size;
    for (size_t i = sizeof *b; i < size; i++) {
        if (size > 16384 && i == 4096)
            i = size - 4096;
        if (bytes[i] != pattern_byte(b->seed, i)) {
            atomic_fetch_add(&corrupt, 1);
            break;
        }
    }
    free(b);
}

static size_t random_size(uint64_t *rng)
{
    uint64_t r = next_rand(rng);
    switch (r % 64) {
    case 0:
        return 2 << 20; /* a large run */
    case 1:
        return 6 << 20; /* a huge mapping */
    default:
        if (r % 8 == 2)
            return 16384 + (size_t)(r >> 20) % (256 << 10);
        return sizeof(struct block) + (size_t)(r >> 20) % 2048;
    }
}

static void *worker(void *arg)
{
    uint64_t rng = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
    struct block *local[16] = {0};
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        size_t size = random_size(&rng);
        struct block *b = make_block(size, next_rand(&rng));
        if (!b) {
            atomic_fetch_add(&corrupt, 1000000); /* out of memory: should not happen */
            continue;
        }
        uint64_t r = next_rand(&rng);
        if (r % 4 == 0) {
            /* Keep it a while (freed later by this thread). */
            size_t k = (r >> 8) % 16;
            if (local[k])
                check_and_free(local[k]);
            local[k] = b;
        } else {
            /* Hand it off: whatever was in the slot came from another thread. */
            struct block *old = atomic_exchange(&mailbox[(r >> 8) % SLOTS], b);
            if (old)
                check_and_free(old);
        }
    }
    for (int k = 0; k < 16; k++)
        if (local[k])
            check_and_free(local[k]);
    return NULL;
}

/* Writes a block: all of it up to 64 KiB, else its first and last pages (enough to show
 * it is mapped and writable, without a page fault per page of every big block). */
static void touch(void *p, size_t n)
{
    if (n <= 65536) {
        memset(p, 0x5a, n);
    } else {
        memset(p, 0x5a, 4096);
        memset((char *)p + n - 4096, 0x5a, 4096);
    }
}

static void *child_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100; i++) {
        void *p = malloc((size_t)(i * 97 + 1));
        if (!p)
            return (void *)1;
        memset(p, i, (size_t)(i * 97 + 1));
        free(p);
    }
    void *big = malloc(8 << 20);
    if (!big)
        return (void *)1;
    touch(big, 8 << 20);
    free(big);
    return NULL;
}

/* The child's work; returns its exit status. */
static int child(int n)
{
    alarm(CHILD_ALARM);
    static const size_t sizes[] = {1, 16, 100, 1000, 4096, 20000, 40000, 300000, 3 << 20,
                                   10 << 20};
    for (int round = 0; round < 2; round++) {
        void *p[sizeof sizes / sizeof sizes[0]];
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            p[i] = malloc(sizes[i]);
            if (!p[i])
                return 10;
            touch(p[i], sizes[i]);
        }
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
            free(p[i]);
    }
    void *c = calloc(1000, 1000);
    void *r = realloc(NULL, 100);
    r = realloc(r, 100000);
    void *a = aligned_alloc(65536, 100);
    if (!c || !r || !a)
        return 11;
    free(c);
    free(r);
    free(a);
    /* Blocks of the parent's worker threads (whose heaps have no thread in the child). */
    for (int k = 0; k < 8; k++) {
        struct block *b = atomic_exchange(&mailbox[(n * 8 + k) % SLOTS], NULL);
        if (b)
            check_and_free(b);
    }
    if (atomic_load(&corrupt))
        return 12;
    /* A new thread in the child. */
    pthread_t t;
    void *res = (void *)1;
    if (pthread_create(&t, NULL, child_thread, NULL) != 0)
        return 13;
    pthread_join(t, &res);
    if (res != NULL)
        return 14;
    return 0;
}

int main(void)
{
    alarm(PARENT_ALARM);
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t threads[WORKERS];
    for (intptr_t i = 0; i < WORKERS; i++)
        if (pthread_create(&threads[i], NULL, worker, (void *)i) != 0) {
            fprintf(stderr, "fork: pthread_create failed\n");
            return 1;
        }
    int failures = 0;
    for (int n = 0; n < FORKS; n++) {
        /* Let the workers get going between forks. */
        for (int k = 0; k < 200; k++) {
            void *p = malloc((size_t)(k * 13 + 1));
            free(p);
        }
        usleep(1000);
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            failures++;
            break;
        }
        if (pid == 0)
            _exit(child(n));
        int status = 0;
        if (waitpid(pid, &status, 0) != pid) {
            perror("waitpid");
            failures++;
            continue;
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            continue;
        failures++;
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM)
            fprintf(stderr, "fork: child %d hung for %d s (deadlock after fork?)\n", n,
                    CHILD_ALARM);
        else if (WIFSIGNALED(status))
            fprintf(stderr, "fork: child %d died of signal %d\n", n, WTERMSIG(status));
        else
            fprintf(stderr, "fork: child %d exited with status %d\n", n, WEXITSTATUS(status));
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(threads[i], NULL);
    for (int s = 0; s < SLOTS; s++) {
        struct block *b = atomic_exchange(&mailbox[s], NULL);
        if (b)
            check_and_free(b);
    }
    long bad = atomic_load(&corrupt);
    if (bad) {
        fprintf(stderr, "fork: %ld damaged blocks or failed allocations in the parent\n", bad);
        failures++;
    }
    printf("fork: %d forks, %d failed\n", FORKS, failures);
    return failures ? 1 : 0;
}
