/* The fast-path loop for callgrind: N malloc(SIZE)+free pairs through the PLT, the pointer
   kept volatile so the compiler cannot drop the pair. Usage: pairs SIZE N */
#include <stdlib.h>

int main(int argc, char **argv) {
    size_t size = argc > 1 ? (size_t)atol(argv[1]) : 64;
    long n = argc > 2 ? atol(argv[2]) : 1000000;
    for (long i = 0; i < n; i++) {
        void *volatile p = malloc(size);
        free(p);
    }
    return 0;
}
