/*
 * memerr.c: one memory error per run, for tests/guard.rs to run under
 * LD_PRELOAD=librampart.so in each guard mode and check what rampart makes of it.
 *
 *   gcc -O1 -g -fno-builtin memerr.c -ldl -o memerr
 *   RAMPART_GUARD=all LD_PRELOAD=target/release/librampart.so ./memerr overflow1-write 13
 *
 * Usage: memerr CASE SIZE, SIZE being the size of the block the error is made on (ignored by
 * the cases that say so). Before the error the program prints "block 0x... size N" on stdout
 * (unbuffered) for the block concerned, so the test can compare the address rampart reports
 * with the one malloc returned; it writes nothing to stderr itself before the error, so the
 * first line there is rampart's report.
 *
 * Built statically against librampart.a (as tests/guard.rs also does, for own-handler-early),
 * rampart is the program's malloc without preloading.
 *
 * Exit status: 0 for the cases that do only valid things ("ok", "usable"); 3 when the error
 * was made and the program survived it (after "memerr: NOT DETECTED: ..." on stderr), so the
 * test can tell "not detected" from "died differently"; 42 from the program's own SIGSEGV
 * handler ("own-handler"); 2 for a usage or set-up error.
 *
 * Accesses to the blocks go through volatile pointers and the allocator's functions through
 * volatile function pointers, and the program is built with -fno-builtin, so the compiler
 * neither warns about nor removes the deliberate misuse.
 *
 * Offsets of the errors, which tests/guard.rs expects in the reports (S = SIZE):
 *   overflow1-write, overflow1-read, overflow8-write: S (the first byte past the block);
 *   redzone: S + 1; underflow-write: -1; uaf-read, uaf-write, uaf-write-reuse: S - 1 (the last
 *   byte of the block: past the free list's link word in the first 8 bytes, so the default
 *   mode's free list survives the write); zero-read, zero-write: 0 of a 0-byte block;
 *   the interior frees: 16 (8 for blocks under 32 bytes); invalid-free-unaligned: 1.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

static void *(*volatile do_malloc)(size_t) = malloc;
static void *(*volatile do_calloc)(size_t, size_t) = calloc;
static void *(*volatile do_realloc)(void *, size_t) = realloc;
static void (*volatile do_free)(void *) = free;
static size_t (*volatile do_usable)(void *) = malloc_usable_size;
static int (*volatile do_posix_memalign)(void **, size_t, size_t) = posix_memalign;

/* Where reads go, so they are not optimised away. */
static volatile unsigned char sink;

/* The blocks of uaf-write-reuse and double-free-delayed. */
static void *many[1000];

static int undetected(const char *what)
{
    fprintf(stderr, "memerr: NOT DETECTED: %s; the program goes on\n", what);
    return 3;
}

static void show(const void *p, size_t size)
{
    printf("block %p size %zu\n", p, size);
}

/* A block of `size` bytes, every byte written (so a guard mode's lazily mapped page is
 * touched and the block is in use the ordinary way). */
static unsigned char *block(size_t size)
{
    unsigned char *p = do_malloc(size);
    if (!p && size) {
        fprintf(stderr, "memerr: malloc(%zu) failed\n", size);
        exit(2);
    }
    memset(p, 0x11, size);
    return p;
}

/* A pointer into the middle of a block of `size` bytes, 16-byte aligned relative to the
 * block's start where the block is large enough for one (so it passes a mere alignment
 * test). */
static size_t interior_offset(size_t size)
{
    return size >= 32 ? 16 : 8;
}

static void *lookup(const char *name)
{
    void *f = dlsym(RTLD_DEFAULT, name);
    if (!f) {
        fprintf(stderr, "memerr: %s not found (is librampart.so preloaded?)\n", name);
        exit(2);
    }
    return f;
}

/* ---- own-handler ------------------------------------------------------------------------- */

static volatile char *own_page;

static void own_handler(int sig, siginfo_t *info, void *ctx)
{
    (void)sig;
    (void)ctx;
    if (info->si_addr != (void *)own_page) {
        static const char bad[] = "own handler: wrong si_addr\n";
        (void)!write(2, bad, sizeof bad - 1);
        _exit(43);
    }
    static const char msg[] = "own handler\n";
    (void)!write(1, msg, sizeof msg - 1);
    _exit(42);
}

static int install_own_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = own_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSEGV, &sa, NULL);
}

static int early_handler_installed = -1;

/* Case own-handler-early: the handler goes in from a constructor of the highest priority,
 * before any other of the program's (in a static link, before librampart's own start-up
 * code, which then installs its handler over it and must pass on the faults that are not
 * its own; preloaded, the library's start-up runs first either way). glibc passes the
 * arguments to constructors. */
__attribute__((constructor(101))) static void early(int argc, char **argv, char **envp)
{
    (void)envp;
    if (argc == 3 && !strcmp(argv[1], "own-handler-early"))
        early_handler_installed = install_own_handler();
}

/* The program's own SIGSEGV handler gets the faults in its own PROT_NONE mapping, whatever
 * rampart installed: the handler goes in (here, or already from the constructor above), then
 * the program allocates (so an allocator that installs its handler lazily, at its first
 * guarded block, does so after the program's and must pass on the faults that are not its
 * own), keeps one block live, and touches its own page. */
static int own_handler_case(int early_case)
{
    if (early_case ? early_handler_installed != 0 : install_own_handler() != 0) {
        perror("sigaction");
        return 2;
    }
    for (int i = 0; i < 10; i++)
        do_free(block(100));
    unsigned char *live = block(100);
    own_page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (own_page == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    /* Whose handler is in place now: "own", or "another" (the allocator installed its own
     * over it, and must pass this fault on). */
    struct sigaction cur;
    sigaction(SIGSEGV, NULL, &cur);
    printf("SIGSEGV handler: %s\n",
           (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == own_handler ? "own" : "another");
    printf("own PROT_NONE page at %p; a live block at %p\n", (void *)own_page, (void *)live);
    sink = own_page[0];
    do_free(live);
    return undetected("the read of a PROT_NONE page did not fault");
}

/* ---- the valid cases --------------------------------------------------------------------- */

/* Valid use of blocks of `size` bytes, all of what malloc_usable_size grants written: any
 * report, or a fault, is a false alarm. */
static int ok_case(size_t size)
{
    unsigned char *p = block(size);
    size_t usable = do_usable(p);
    if (usable < size) {
        fprintf(stderr, "memerr: malloc_usable_size %zu < %zu\n", usable, size);
        return 2;
    }
    memset(p, 'x', usable);
    unsigned char *q = do_realloc(p, 2 * size + 1);
    for (size_t i = 0; i < size; i++)
        if (q[i] != 'x') {
            fprintf(stderr, "memerr: realloc lost byte %zu\n", i);
            return 2;
        }
    memset(q, 'y', 2 * size + 1);
    q = do_realloc(q, size / 2 + 1);
    q[size / 2] = 'z';
    do_free(q);
    unsigned char *c = do_calloc(1, size);
    for (size_t i = 0; i < size; i++)
        if (c[i]) {
            fprintf(stderr, "memerr: calloc byte %zu not zero\n", i);
            return 2;
        }
    do_free(c);
    void *a = NULL;
    if (do_posix_memalign(&a, 64, size) != 0 || ((uintptr_t)a & 63)) {
        fprintf(stderr, "memerr: posix_memalign(64, %zu) failed\n", size);
        return 2;
    }
    memset(a, 'a', size);
    do_free(a);
    do_free(do_malloc(0));
    do_free(NULL);
    /* Many blocks freed and allocated again, some freed in another order than taken. */
    for (int i = 0; i < 100; i++)
        many[i] = block(size);
    for (int i = 0; i < 100; i += 2)
        do_free(many[i]);
    for (int i = 99; i > 0; i -= 2)
        do_free(many[i]);
    printf("memerr: ok\n");
    return 0;
}

/* ---- the errors -------------------------------------------------------------------------- */

static volatile int stop_workers;

static void *churn_worker(void *arg)
{
    size_t size = (size_t)arg;
    while (!stop_workers) {
        unsigned char *p = block(size);
        memset(p, 1, size);
        do_free(p);
    }
    return NULL;
}

static int fork_threads(size_t size)
{
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, churn_worker, (void *)size);
    for (int i = 0; i < 20; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20); /* a deadlocked child dies of SIGALRM instead of hanging the test */
            for (int k = 0; k < 100; k++) {
                unsigned char *p = block(size);
                memset(p, 2, size);
                do_free(p);
            }
            _exit(0);
        }
        int status;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "memerr: fork child %d ended with status %#x\n", i, status);
            return 5;
        }
    }
    stop_workers = 1;
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: memerr CASE SIZE\n");
        return 2;
    }
    const char *c = argv[1];
    errno = 0;
    char *end;
    size_t size = strtoull(argv[2], &end, 10);
    if (errno || *end || end == argv[2]) {
        fprintf(stderr, "memerr: bad size %s\n", argv[2]);
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("case %s size %zu\n", c, size);

    if (!strcmp(c, "ok"))
        return ok_case(size);
    if (!strcmp(c, "usable")) {
        unsigned char *p = block(size);
        printf("usable %zu block %p size %zu\n", do_usable(p), (void *)p, size);
        do_free(p);
        return 0;
    }
    if (!strcmp(c, "own-handler") || !strcmp(c, "own-handler-early"))
        return own_handler_case(!strcmp(c, "own-handler-early"));

    /* A SIGSEGV sent, not raised by a fault: it must still end the program (rampart's
       handler passes it on to the default action instead of swallowing it). */
    if (!strcmp(c, "raise")) {
        raise(SIGSEGV);
        return undetected("raise(SIGSEGV) returned: the signal was swallowed");
    }

    /* Blocks freed and allocated again (run with RAMPART_QUARANTINE=0, so guarded slots are
       reused at once): calloc must still hand out zeroes, malloc a writable block. */
    if (!strcmp(c, "calloc-reuse")) {
        for (int i = 0; i < 200; i++) {
            unsigned char *p = block(size);
            memset(p, 0xff, size);
            do_free(p);
            unsigned char *z = calloc(1, size);
            for (size_t k = 0; k < size; k++)
                if (z[k] != 0) {
                    fprintf(stderr, "memerr: calloc(%zu) byte %zu is %d after reuse\n", size, k,
                            z[k]);
                    return 4;
                }
            do_free(z);
        }
        return 0;
    }

    /* fork() while threads allocate: the child must be able to allocate (the guard pool's
       lock is taken around fork like the others). */
    if (!strcmp(c, "fork-threads"))
        return fork_threads(size);

    if (!strcmp(c, "exit-while-freeing")) {
        /* Threads allocate and free (blocks of 24 bytes to 2 KiB) while the main thread
         * exits: the exit-time checks read blocks that change state under them, and must
         * not take that for an error. */
        pthread_t t[3];
        for (int i = 0; i < 3; i++)
            pthread_create(&t[i], NULL, churn_worker, (void *)(size_t)(24 << (2 * i)));
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
        exit(0);
    }
    if (!strcmp(c, "zero-double-free")) {
        void *p = do_malloc(0);
        show(p, 0);
        do_free(p);
        do_free(p);
        return undetected("a double free of a zero-size block");
    }
    if (!strcmp(c, "zero-aligned")) {
        /* Zero-size blocks asked with an alignment, and freed the sized and aligned way. */
        void (*volatile fas)(void *, size_t, size_t) =
            (void (*)(void *, size_t, size_t))lookup("free_aligned_sized");
        void *p = aligned_alloc(64, 0), *q = NULL;
        if (!p || (uintptr_t)p % 64 || do_posix_memalign(&q, 256, 0) || (uintptr_t)q % 256) {
            fprintf(stderr, "memerr: a zero-size aligned block is not aligned\n");
            return 1;
        }
        fas(p, 64, 0);
        do_free(q);
        return 0;
    }

    /* Overflows off the end; the block is then freed, where a redzone is checked. */
    if (!strcmp(c, "overflow1-write") || !strcmp(c, "overflow1-read") ||
        !strcmp(c, "overflow8-write") || !strcmp(c, "redzone")) {
        volatile unsigned char *p = block(size);
        show((void *)p, size);
        if (!strcmp(c, "overflow1-write"))
            p[size] = 'A';
        else if (!strcmp(c, "overflow1-read"))
            sink = p[size];
        else if (!strcmp(c, "overflow8-write"))
            for (size_t i = 0; i < 8; i++)
                p[size + i] = 'A';
        else
            p[size + 1] = 'A';
        do_free((void *)p);
        return undetected("an access past the end of the block, then its free");
    }
    if (!strcmp(c, "zero-read") || !strcmp(c, "zero-write")) {
        /* SIZE ignored: the block is malloc(0). */
        volatile unsigned char *p = do_malloc(0);
        if (!p) {
            fprintf(stderr, "memerr: malloc(0) returned NULL\n");
            return 2;
        }
        show((void *)p, 0);
        if (!strcmp(c, "zero-read"))
            sink = p[0];
        else
            p[0] = 'A';
        do_free((void *)p);
        return undetected("an access to a 0-byte block, then its free");
    }
    if (!strcmp(c, "underflow-write")) {
        /* Live blocks of the same size, never freed, and as the victim one that has one of
         * them right before it (at the smallest distance between two of them): its p[-1]
         * is then the spacer's last byte, rather than whatever precedes a span or chunk,
         * which may be unmapped or a guard page. The hardened mode hands a span's blocks
         * out in random order, hence several. */
        enum { SPACERS = 64 };
        static unsigned char *live[SPACERS];
        int n = size > 65536 ? 2 : SPACERS;
        for (int i = 0; i < n; i++)
            live[i] = block(size);
        size_t stride = SIZE_MAX;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
                if (live[j] > live[i] && (size_t)(live[j] - live[i]) < stride)
                    stride = (size_t)(live[j] - live[i]);
        unsigned char *spacer = NULL;
        volatile unsigned char *p = NULL;
        for (int i = 0; i < n && !p; i++)
            for (int j = 0; j < n; j++)
                if (live[j] > live[i] && (size_t)(live[j] - live[i]) == stride) {
                    spacer = live[i];
                    p = live[j];
                    break;
                }
        printf("spacer %p\n", (void *)spacer);
        show((void *)p, size);
        p[-1] = 'A';
        do_free((void *)p);
        return undetected("a write before the start of the block, then its free");
    }

    /* Use after free: the last byte of the block. */
    if (!strcmp(c, "uaf-read") || !strcmp(c, "uaf-write") || !strcmp(c, "uaf-write-reuse")) {
        if (size == 0) {
            fprintf(stderr, "memerr: %s needs a size of at least 1\n", c);
            return 2;
        }
        volatile unsigned char *p = block(size);
        show((void *)p, size);
        do_free((void *)p);
        if (!strcmp(c, "uaf-read")) {
            sink = p[size - 1];
            return undetected("a read of a freed block");
        }
        p[size - 1] = 'A';
        if (!strcmp(c, "uaf-write"))
            return undetected("a write to a freed block");
        /* The freed block is handed out again (at once in the default mode, after a
         * quarantine elsewhere): where freed blocks are filled with a pattern, the reuse
         * finds the write. */
        int reused = -1;
        for (int i = 0; i < 1000; i++) {
            many[i] = do_malloc(size);
            if (many[i] == (void *)p && reused < 0)
                reused = i;
        }
        for (int i = 0; i < 1000; i++)
            do_free(many[i]);
        fprintf(stderr, "memerr: the block was handed out again by malloc number %d\n",
                reused);
        return undetected("a write to a freed block that was then reused");
    }

    if (!strcmp(c, "double-free")) {
        unsigned char *p = block(size);
        show(p, size);
        do_free(p);
        do_free(p);
        return undetected("an immediate double free");
    }
    if (!strcmp(c, "double-free-delayed")) {
        /* The 100 other blocks are allocated while p is live, so that they really are
         * other blocks (after free(p) the default mode would hand p itself out again). */
        unsigned char *p = block(size);
        for (int i = 0; i < 100; i++)
            many[i] = block(size);
        show(p, size);
        do_free(p);
        for (int i = 0; i < 100; i++)
            do_free(many[i]);
        do_free(p);
        return undetected("a double free with 100 other frees in between");
    }

    if (!strcmp(c, "invalid-free-wild")) {
        /* SIZE ignored. */
        char buf[64];
        memset(buf, 0, sizeof buf);
        printf("free(%p), a stack address\n", (void *)buf);
        do_free(buf);
        return undetected("free of a stack address");
    }
    if (!strcmp(c, "invalid-free-interior") || !strcmp(c, "invalid-free-unaligned") ||
        !strcmp(c, "realloc-interior") || !strcmp(c, "usable-size-interior")) {
        unsigned char *p = block(size);
        size_t off = strcmp(c, "invalid-free-unaligned") ? interior_offset(size) : 1;
        show(p, size);
        printf("the call gets %p, %zu bytes in\n", (void *)(p + off), off);
        if (!strcmp(c, "realloc-interior")) {
            do_realloc(p + off, 2 * size);
            return undetected("realloc of a pointer into the middle of a block");
        }
        if (!strcmp(c, "usable-size-interior")) {
            printf("malloc_usable_size %zu\n", do_usable(p + off));
            return undetected("malloc_usable_size of a pointer into the middle of a block");
        }
        do_free(p + off);
        return undetected("free of a pointer into the middle of a block");
    }
    if (!strcmp(c, "free-sized-mismatch")) {
        /* glibc 2.36 does not declare free_sized: the preloaded library's, by name. */
        void (*volatile fs)(void *, size_t) = (void (*)(void *, size_t))lookup("free_sized");
        unsigned char *p = block(size);
        show(p, size);
        /* Larger than the block itself, not only than the request: a block of a size
         * class may hold more than was asked for. */
        fs(p, do_usable(p) + 4096);
        return undetected("free_sized with a size 4096 bytes larger than the block");
    }
    if (!strcmp(c, "delete-sized-mismatch")) {
        /* operator new(size_t) and the sized operator delete(void *, size_t), by their
         * mangled names, from the preloaded library. */
        void *(*volatile nw)(size_t) = (void *(*)(size_t))lookup("_Znwm");
        void (*volatile dl)(void *, size_t) = (void (*)(void *, size_t))lookup("_ZdlPvm");
        unsigned char *p = nw(size);
        memset(p, 0x11, size);
        show(p, size);
        dl(p, do_usable(p) + 4096);
        return undetected("sized operator delete with a size 4096 bytes larger than the block");
    }
    if (!strcmp(c, "free-sized-smaller")) {
        /* A size smaller than the request: the block's size class (or pages) is not the
         * one half the size maps to, except for a tiny block, whose half is in its class. */
        void (*volatile fs)(void *, size_t) = (void (*)(void *, size_t))lookup("free_sized");
        unsigned char *p = block(size);
        show(p, size);
        fs(p, size / 2);
        return undetected("free_sized with half the size");
    }
    if (!strcmp(c, "delete-aligned-sized-mismatch")) {
        /* operator new(size_t, align_val_t) and operator delete(void *, size_t,
         * align_val_t) with half the size. */
        void *(*volatile nw)(size_t, size_t) =
            (void *(*)(size_t, size_t))lookup("_ZnwmSt11align_val_t");
        void (*volatile dl)(void *, size_t, size_t) =
            (void (*)(void *, size_t, size_t))lookup("_ZdlPvmSt11align_val_t");
        unsigned char *p = nw(size, 64);
        memset(p, 0x11, size);
        show(p, size);
        dl(p, size / 2, 64);
        return undetected("aligned sized operator delete with half the size");
    }
    fprintf(stderr, "memerr: unknown case %s\n", c);
    return 2;
}
