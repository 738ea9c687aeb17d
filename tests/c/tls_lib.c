/*
 * tls_lib.c: a shared library with thread-local variables, for tests/c/dlopen_tls.c.
 *
 *   gcc -O2 -shared -fPIC tls_lib.c -o libtls_lib.so
 *
 * Loaded with dlopen after start-up, its TLS cannot go in the static TLS block, so glibc
 * allocates each thread's copy with malloc on the thread's first access (__tls_get_addr)
 * and frees it at thread exit or dlclose: with rampart preloaded, those are rampart's
 * malloc and free. The over-aligned variable makes glibc ask for more than malloc's
 * alignment.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static __thread unsigned long counter;
static __thread char buffer[3000] = {1}; /* initialized: copied from the TLS image */
static __thread double aligned_value __attribute__((aligned(256)));

/* Adds `value` to the thread's counter `times` times, fills its buffer, and returns the
 * counter; -1 if the thread's copies are not where they should be. */
long tls_touch(unsigned long value, int times)
{
    if (buffer[0] != 1 && buffer[0] != (char)(value & 0x7f))
        return -1;
    if ((uintptr_t)&aligned_value % 256 != 0)
        return -1;
    for (int i = 0; i < times; i++)
        counter += value;
    memset(buffer, (int)(value & 0x7f), sizeof buffer);
    aligned_value = (double)counter;
    return (long)counter;
}

/* Whether the thread's buffer holds what tls_touch(value, ...) wrote. */
int tls_check(unsigned long value)
{
    for (size_t i = 0; i < sizeof buffer; i++)
        if (buffer[i] != (char)(value & 0x7f))
            return 0;
    return aligned_value == (double)counter;
}
