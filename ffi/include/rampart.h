/*
 * rampart.h: the direct C API of rampart, a memory allocator for Linux x86-64.
 *
 * librampart serves a C or C++ program's allocations in one of two ways:
 *
 *   Preload (no rebuild):
 *       LD_PRELOAD=/path/to/target/release/librampart.so ./program
 *     or the launcher, which does the same:
 *       target/release/rampart [--stats] ./program
 *     Every malloc, free, calloc, realloc, posix_memalign, ..., the __libc_* aliases and
 *     C++ operator new/delete of the process then go to rampart, the dynamic loader's and
 *     libc's own allocations included.
 *
 *   Static link:
 *       gcc program.c target/release/librampart.a -lpthread -ldl -lm -o program
 *     librampart.a defines the whole malloc family, so the program's malloc *is* rampart:
 *     glibc's malloc is not linked in. (Linking librampart.a without replacing malloc is not
 *     supported.)
 *
 *   A program may also link the shared library directly:
 *       gcc program.c -I ffi/include -L target/release -lrampart \
 *           -Wl,-rpath,"$PWD/target/release" -o program
 *     which puts librampart.so ahead of libc in the symbol search order, so it replaces
 *     malloc just as preloading does.
 *
 * Either way the ordinary names (malloc, free, ...) reach rampart and this header is not
 * needed for them. It declares rampart's own names: the same allocator under names no other
 * library defines (useful to be explicit, or to reach rampart-only calls such as
 * rampart_trim and rampart_stats_print). Blocks from rampart_malloc and from malloc are
 * interchangeable when rampart is the process's malloc.
 *
 * Runtime options are read from the environment at start-up; RAMPART_STATS=1 prints the
 * statistics table to stderr at exit, RAMPART_HEAPMAP=out.svg writes the heap map there at
 * exit. See README.md.
 */
#ifndef RAMPART_H
#define RAMPART_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* As malloc(3): size bytes, 16-byte aligned; NULL and errno = ENOMEM on failure.
 * rampart_malloc(0) returns a unique pointer that must be freed. */
void *rampart_malloc(size_t size);

/* As calloc(3): zeroed memory for n elements of size bytes; NULL and errno = ENOMEM on
 * overflow of n * size or exhaustion. */
void *rampart_calloc(size_t n, size_t size);

/* As realloc(3) in glibc: rampart_realloc(NULL, n) is rampart_malloc(n);
 * rampart_realloc(p, 0) frees p and returns NULL; on failure p is left intact and
 * errno = ENOMEM. */
void *rampart_realloc(void *p, size_t size);

/* As free(3): NULL is ignored; errno is preserved. A pointer rampart did not return is
 * reported ("rampart: invalid-free: ...") and the process aborts. */
void rampart_free(void *p);

/* As aligned_alloc(3): align must be a power of two (else NULL, errno = EINVAL). */
void *rampart_aligned_alloc(size_t align, size_t size);

/* As malloc_usable_size(3): bytes usable in the block (at least those asked for); 0 for
 * NULL. */
size_t rampart_usable_size(void *p);

/* Returns free memory to the operating system now; the number of bytes released. */
size_t rampart_trim(void);

/* Writes rampart's statistics table to stderr (the one RAMPART_STATS=1 prints at exit). */
void rampart_stats_print(void);

/* Writes the heap map to path (created or truncated, mode 0644): an SVG picture of every
 * 4 MiB chunk as 16 rows of 64 page squares, coloured by state (slab spans by size class,
 * large blocks, free pages still committed, free pages returned to the OS, the guard page
 * after each chunk), each run outlined, with a tooltip per run, the huge blocks as bars, a
 * legend and totals. The one RAMPART_HEAPMAP=path writes at exit (where "%p" in the path
 * becomes the process id). Allocates nothing; holds the page layer's lock while writing,
 * so other threads' page-level allocations wait meanwhile.
 * Returns 0 on success; -1 with errno set on failure (EINVAL for a NULL path, else the
 * error of open(2) or write(2)). */
int rampart_heapmap_write(const char *path);

/* Writes the heap profile to path (created or truncated, mode 0644) in rampart's raw format,
 * which "rampart profile FILE" turns into a table (--top), folded stacks (--folded), an SVG
 * flamegraph (--svg) and a pprof file (--pprof). The profile holds, per allocation stack,
 * the estimated bytes and blocks live now, at the peak, and allocated so far. Needs
 * RAMPART_PROFILE=heap or leaks in the environment at start-up (sampling is chosen then).
 * Allocates nothing. Returns 0 on success; -1 with errno set on failure (EINVAL for a NULL
 * path, ENOTSUP when profiling is off, else the error of open(2) or write(2)). */
int rampart_profile_write(const char *path);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* RAMPART_H */
