/* A small threaded program for tests/options.rs: it allocates from two threads, so rampart
   sets up several heaps (options are read once however many times set-up runs). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static void *work(void *arg) {
    for (int i = 0; i < 1000; i++) free(memset(malloc(64 + i), 1, 64 + i));
    return arg;
}

int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, work, NULL);
    work(NULL);
    pthread_join(t, NULL);
    return 0;
}
