/*
 * dlopen_tls.c: dlopen a library with thread-local variables (tests/c/tls_lib.c) under a
 * preloaded rampart, touch its TLS from several threads, dlclose it; several rounds.
 *
 *   gcc -O2 -shared -fPIC tls_lib.c -o libtls_lib.so
 *   gcc -O2 -fno-builtin dlopen_tls.c -lpthread -ldl -o dlopen_tls
 *   LD_PRELOAD=target/release/librampart.so ./dlopen_tls ./libtls_lib.so
 *
 * glibc allocates a dlopened module's TLS block for each thread with malloc on first access
 * and frees it when the thread exits (or at dlclose), and grows each thread's DTV with
 * realloc when modules are added: all of it goes through rampart here. Each round starts
 * THREADS threads that use the TLS and check that their copies are private; one long-lived
 * thread touches the TLS of every round's fresh copy of the module, so its DTV sees modules
 * come and go. A watchdog alarm turns a hang into a failure.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define ROUNDS 50
#define THREADS 8
#define WATCHDOG_S 120

typedef long (*touch_fn)(unsigned long, int);
typedef int (*check_fn)(unsigned long);

static touch_fn touch;
static check_fn check;
static int failures;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void fail(const char *what, long id)
{
    pthread_mutex_lock(&lock);
    failures++;
    fprintf(stderr, "dlopen_tls: %s (thread %ld)\n", what, id);
    pthread_mutex_unlock(&lock);
}

static void *user(void *arg)
{
    long id = (long)(intptr_t)arg;
    unsigned long value = (unsigned long)id + 1;
    long got = 0;
    for (int k = 1; k <= 50; k++) {
        got = touch(value, 10);
        if (got != (long)(value * 10 * (unsigned long)k)) {
            fail("the thread's TLS counter was disturbed", id);
            return NULL;
        }
        if (!check(value)) {
            fail("the thread's TLS buffer was disturbed", id);
            return NULL;
        }
        /* Some allocation between the TLS uses, from this thread's heap. */
        free(malloc((size_t)(k * 37)));
    }
    return NULL;
}

/* The long-lived thread: waits for each round's module and touches its TLS. */
static pthread_barrier_t round_start, round_done;
static void *veteran(void *arg)
{
    (void)arg;
    for (int r = 0; r < ROUNDS; r++) {
        pthread_barrier_wait(&round_start);
        if (touch(1000, 1) != 1000 || !check(1000))
            fail("the long-lived thread's TLS of a fresh module is wrong", -1);
        pthread_barrier_wait(&round_done);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    alarm(WATCHDOG_S);
    if (argc != 2) {
        fprintf(stderr, "usage: dlopen_tls PATH-TO-libtls_lib.so\n");
        return 2;
    }
    pthread_barrier_init(&round_start, NULL, 2);
    pthread_barrier_init(&round_done, NULL, 2);
    pthread_t old;
    if (pthread_create(&old, NULL, veteran, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    for (int r = 0; r < ROUNDS; r++) {
        void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            fprintf(stderr, "dlopen_tls: dlopen: %s\n", dlerror());
            return 1;
        }
        touch = (touch_fn)dlsym(lib, "tls_touch");
        check = (check_fn)dlsym(lib, "tls_check");
        if (!touch || !check) {
            fprintf(stderr, "dlopen_tls: dlsym: %s\n", dlerror());
            return 1;
        }
        /* The main thread's copy too. */
        if (touch(7, 3) != 21 || !check(7))
            fail("the main thread's TLS is wrong", 0);
        pthread_barrier_wait(&round_start);
        pthread_t t[THREADS];
        for (long i = 0; i < THREADS; i++)
            if (pthread_create(&t[i], NULL, user, (void *)(intptr_t)(i + 1)) != 0) {
                perror("pthread_create");
                return 1;
            }
        for (int i = 0; i < THREADS; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_wait(&round_done);
        if (dlclose(lib) != 0) {
            fprintf(stderr, "dlopen_tls: dlclose: %s\n", dlerror());
            return 1;
        }
    }
    pthread_join(old, NULL);
    printf("dlopen_tls: %d rounds of %d threads, %d failures\n", ROUNDS, THREADS, failures);
    return failures ? 1 : 0;
}
