/*
 * conformance.c: rampart's C API against glibc's documented malloc semantics.
 *
 * Written for this project. Every check prints a line when it fails (file:line, the
 * expression, and the values involved); the program ends with "N passed, M failed" and exits
 * with status 1 if anything failed.
 *
 * It is built two ways by tests/c_api.rs:
 *
 *   preloaded:  gcc -O2 -fno-builtin conformance.c -lpthread -ldl -o conformance
 *               LD_PRELOAD=target/release/librampart.so ./conformance
 *   static:     gcc -O2 -fno-builtin -DRAMPART_STATIC conformance.c \
 *                   target/release/librampart.a -lpthread -ldl -lm -o conformance-static
 *               ./conformance-static
 *
 * -fno-builtin keeps the compiler from folding malloc/free pairs or assuming results, so
 * every call reaches the allocator. Names glibc's headers do not declare (free_sized,
 * __libc_malloc, rampart_*, ...) are looked up with dlsym in the preloaded build (which finds
 * the preloaded library's definitions first) and referenced directly in the static build.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)

static int passed, failed;

#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (cond) {                                                                       \
            passed++;                                                                     \
        } else {                                                                          \
            failed++;                                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                          \
        }                                                                                 \
    } while (0)

static void section(const char *name)
{
    printf("== %s\n", name);
    fflush(stdout);
}

/* Sizes hidden from the optimiser. */
static volatile size_t v_size_max = SIZE_MAX;
static volatile size_t v_ptrdiff_max = PTRDIFF_MAX;

/* realloc and reallocarray for the calls that must fail and leave the block in place:
 * through a pointer, so the compiler does not warn that the block is used after them. */
static void *(*volatile v_realloc)(void *, size_t) = realloc;
static void *(*volatile v_reallocarray)(void *, size_t, size_t) = reallocarray;

/* ---- names glibc's headers do not declare ------------------------------------------- */

typedef void (*free_sized_fn)(void *, size_t);
typedef void (*free_aligned_sized_fn)(void *, size_t, size_t);
typedef void (*free_fn)(void *);
typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void *(*memalign_fn)(size_t, size_t);
typedef size_t (*usable_fn)(void *);
typedef size_t (*trim_fn)(void);
typedef void (*void_fn)(void);

#ifdef RAMPART_STATIC
extern void free_sized(void *, size_t);
extern void free_aligned_sized(void *, size_t, size_t);
extern void cfree(void *);
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);
extern void *rampart_malloc(size_t);
extern void rampart_free(void *);
extern size_t rampart_usable_size(void *);
extern size_t rampart_trim(void);
extern void rampart_stats_print(void);
#define RESOLVE(type, name) ((type)(void *)&name)
#else
#define RESOLVE(type, name) ((type)dlsym(RTLD_DEFAULT, #name))
#endif

static free_sized_fn p_free_sized;
static free_aligned_sized_fn p_free_aligned_sized;
static free_fn p_cfree, p_libc_free, p_rampart_free;
static malloc_fn p_libc_malloc, p_libc_valloc, p_libc_pvalloc, p_rampart_malloc;
static calloc_fn p_libc_calloc;
static realloc_fn p_libc_realloc;
static memalign_fn p_libc_memalign;
static usable_fn p_rampart_usable_size;
static trim_fn p_rampart_trim;
static void_fn p_rampart_stats_print;

static void resolve_all(void)
{
    p_free_sized = RESOLVE(free_sized_fn, free_sized);
    p_free_aligned_sized = RESOLVE(free_aligned_sized_fn, free_aligned_sized);
    p_cfree = RESOLVE(free_fn, cfree);
    p_libc_malloc = RESOLVE(malloc_fn, __libc_malloc);
    p_libc_free = RESOLVE(free_fn, __libc_free);
    p_libc_calloc = RESOLVE(calloc_fn, __libc_calloc);
    p_libc_realloc = RESOLVE(realloc_fn, __libc_realloc);
    p_libc_memalign = RESOLVE(memalign_fn, __libc_memalign);
    p_libc_valloc = RESOLVE(malloc_fn, __libc_valloc);
    p_libc_pvalloc = RESOLVE(malloc_fn, __libc_pvalloc);
    p_rampart_malloc = RESOLVE(malloc_fn, rampart_malloc);
    p_rampart_free = RESOLVE(free_fn, rampart_free);
    p_rampart_usable_size = RESOLVE(usable_fn, rampart_usable_size);
    p_rampart_trim = RESOLVE(trim_fn, rampart_trim);
    p_rampart_stats_print = RESOLVE(void_fn, rampart_stats_print);
}

/* ---- helpers -------------------------------------------------------------------------- */

static int all_bytes(const void *p, int byte, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)byte)
            return 0;
    return 1;
}

static void fill_pattern(void *p, size_t n, unsigned seed)
{
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(i * 31 + seed);
}

static int check_pattern(const void *p, size_t n, unsigned seed)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(i * 31 + seed))
            return 0;
    return 1;
}

/* The file name of the object (executable or shared library) that holds addr. */
static const char *object_of(const void *addr)
{
    Dl_info info;
    if (!addr || !dladdr(addr, &info) || !info.dli_fname)
        return "(none)";
    return info.dli_fname;
}

/* ---- 0. rampart serves the calls ------------------------------------------------------ */

/* A function of the program itself, for dladdr to name the program's own object. */
int main_marker_for_dladdr(void);
int main_marker_for_dladdr(void)
{
    return 0;
}

#ifndef RAMPART_STATIC
static const char *const family[] = {
    "malloc", "free", "calloc", "realloc", "reallocarray", "posix_memalign",
    "aligned_alloc", "memalign", "valloc", "pvalloc", "malloc_usable_size", "cfree",
    "__libc_malloc", "__libc_free", "__libc_calloc", "__libc_realloc", "__libc_memalign",
    "__libc_valloc", "__libc_pvalloc", "free_sized", "free_aligned_sized", "mallopt",
    "malloc_trim", "malloc_stats", "mallinfo", "mallinfo2", "malloc_info",
    "_Znwm", "_ZdlPv", "_Znam", "_ZdaPv",
};
#endif

static void test_served_by_rampart(void)
{
    section("rampart serves the calls");
    int missing = 0;
#define NEED(p)                                                                           \
    do {                                                                                  \
        CHECK(p != NULL, "symbol %s not found", #p);                                      \
        missing += p == NULL;                                                             \
    } while (0)
    NEED(p_free_sized);
    NEED(p_free_aligned_sized);
    NEED(p_cfree);
    NEED(p_libc_malloc);
    NEED(p_libc_free);
    NEED(p_libc_calloc);
    NEED(p_libc_realloc);
    NEED(p_libc_memalign);
    NEED(p_libc_valloc);
    NEED(p_libc_pvalloc);
    NEED(p_rampart_malloc);
    NEED(p_rampart_free);
    NEED(p_rampart_usable_size);
    NEED(p_rampart_trim);
    NEED(p_rampart_stats_print);
#undef NEED
    if (missing) {
        fprintf(stderr, "conformance: %d symbols missing, stopping\n", missing);
        printf("%d passed, %d failed\n", passed, failed);
        exit(1);
    }

    const char *rampart_obj = object_of((void *)p_rampart_stats_print);
    void *m = dlsym(RTLD_DEFAULT, "malloc");
#ifdef RAMPART_STATIC
    /* Statically linked: malloc is the program's own, and it is the malloc the dynamic
     * linker hands to libc (the executable exports it). */
    const char *self = object_of((void *)&main_marker_for_dladdr);
    CHECK(strcmp(rampart_obj, self) == 0, "rampart_stats_print is in %s, not the program %s",
          rampart_obj, self);
    CHECK(m == (void *)&malloc, "dlsym(malloc) = %p, the program's malloc = %p", m,
          (void *)&malloc);
    CHECK(strcmp(object_of((void *)&malloc), self) == 0, "malloc is in %s",
          object_of((void *)&malloc));
    void *f = dlsym(RTLD_DEFAULT, "free");
    CHECK(f == (void *)&free, "dlsym(free) = %p, the program's free = %p", f, (void *)&free);
    void *c = dlsym(RTLD_DEFAULT, "calloc");
    CHECK(c == (void *)&calloc, "dlsym(calloc) = %p, the program's = %p", c, (void *)&calloc);
    void *r = dlsym(RTLD_DEFAULT, "realloc");
    CHECK(r == (void *)&realloc, "dlsym(realloc) = %p, the program's = %p", r,
          (void *)&realloc);
#else
    /* Preloaded: every name of the family resolves into the library that defines
     * rampart_stats_print, and that library is librampart. */
    CHECK(strstr(rampart_obj, "librampart") != NULL, "rampart_stats_print is in %s",
          rampart_obj);
    printf("rampart is %s\n", rampart_obj);
    for (size_t i = 0; i < sizeof family / sizeof family[0]; i++) {
        void *sym = dlsym(RTLD_DEFAULT, family[i]);
        const char *obj = object_of(sym);
        CHECK(sym != NULL && strcmp(obj, rampart_obj) == 0, "%s resolves to %p in %s",
              family[i], sym, obj);
    }
    CHECK(m != NULL && strcmp(object_of(m), rampart_obj) == 0, "malloc is in %s",
          object_of(m));
#endif
    /* Blocks libc allocates for itself are rampart's: rampart_usable_size accepts them (it
     * would report an invalid free and abort on a block from another allocator). */
    char *s = strdup("allocated inside libc");
    CHECK(s && p_rampart_usable_size(s) >= 22, "rampart_usable_size(strdup) = %zu",
          s ? p_rampart_usable_size(s) : 0);
    free(s);
    char *line = NULL;
    size_t cap = 0;
    FILE *f2 = fmemopen("a line\n", 7, "r");
    CHECK(f2 && getline(&line, &cap, f2) == 7, "getline");
    CHECK(line && p_rampart_usable_size(line) >= cap, "rampart_usable_size(getline buffer)");
    free(line);
    if (f2)
        fclose(f2);
    /* rampart_malloc and malloc share one heap. */
    void *a = p_rampart_malloc(100);
    void *b = malloc(100);
    CHECK(a && b && malloc_usable_size(a) >= 100 && p_rampart_usable_size(b) >= 100,
          "usable sizes across the two sets of names");
    free(a);
    p_rampart_free(b);
}

/* ---- 1. malloc ------------------------------------------------------------------------ */

static void test_malloc_zero(void)
{
    section("malloc(0)");
    enum { N = 64 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        errno = 0;
        p[i] = malloc(0);
        CHECK(p[i] != NULL, "malloc(0) #%d returned NULL (errno %d)", i, errno);
    }
    int dup = 0;
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            if (p[i] && p[i] == p[j])
                dup++;
    CHECK(dup == 0, "%d pairs of malloc(0) results are equal", dup);
    for (int i = 0; i < N; i++)
        free(p[i]);
    void *c = calloc(0, 16);
    void *d = calloc(16, 0);
    CHECK(c != NULL && d != NULL && c != d, "calloc(0, 16) = %p, calloc(16, 0) = %p", c, d);
    free(c);
    free(d);
}

static const size_t many_sizes[] = {
    1, 2, 7, 8, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 96, 100, 127, 128, 129, 160,
    200, 255, 256, 257, 320, 384, 500, 512, 513, 640, 768, 1000, 1023, 1024, 1025, 1500,
    2000, 2047, 2048, 2049, 3000, 4095, 4096, 4097, 5000, 6000, 8191, 8192, 8193, 10000,
    12288, 16383, 16384, 16385, 20000, 24576, 32767, 32768, 32769, 40000, 65535, 65536,
    65537, 100000, 131072, 200000, 262144, 500000, 1048575, 1048576, 1048577, 2000000,
    4194303, 4194304, 4194305, 5000000, 8388608, 10000000, 33554432,
};
#define NSIZES (sizeof many_sizes / sizeof many_sizes[0])

static void test_alignment_and_usable_size(void)
{
    section("16-byte alignment and malloc_usable_size");
    /* Every size from 1 to 2048, then the list above, several blocks of each. */
    int misaligned = 0, short_usable = 0, null = 0;
    for (size_t n = 1; n <= 2048; n++) {
        void *p[4];
        for (int k = 0; k < 4; k++) {
            p[k] = malloc(n);
            if (!p[k]) {
                null++;
                continue;
            }
            if ((uintptr_t)p[k] % 16)
                misaligned++, fprintf(stderr, "  malloc(%zu) = %p\n", n, p[k]);
            if (malloc_usable_size(p[k]) < n)
                short_usable++, fprintf(stderr, "  malloc_usable_size(malloc(%zu)) = %zu\n",
                                        n, malloc_usable_size(p[k]));
            memset(p[k], 0x5a, n);
        }
        for (int k = 0; k < 4; k++)
            free(p[k]);
    }
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = many_sizes[i];
        void *p = malloc(n);
        if (!p) {
            null++;
            continue;
        }
        if ((uintptr_t)p % 16)
            misaligned++, fprintf(stderr, "  malloc(%zu) = %p\n", n, p);
        if (malloc_usable_size(p) < n)
            short_usable++, fprintf(stderr, "  malloc_usable_size(malloc(%zu)) = %zu\n", n,
                                    malloc_usable_size(p));
        memset(p, 0x5a, n);
        free(p);
    }
    CHECK(null == 0, "%d allocations returned NULL", null);
    CHECK(misaligned == 0, "%d blocks not 16-byte aligned", misaligned);
    CHECK(short_usable == 0, "%d blocks with malloc_usable_size below the request",
          short_usable);
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) = %zu",
          malloc_usable_size(NULL));
    /* Usable bytes really are usable. */
    char *p = malloc(100);
    size_t u = malloc_usable_size(p);
    memset(p, 0x77, u);
    char *q = malloc(100);
    memset(q, 0x11, malloc_usable_size(q));
    CHECK(all_bytes(p, 0x77, u), "writing all %zu usable bytes of one block disturbed it", u);
    free(p);
    free(q);
}

static void test_malloc_too_big(void)
{
    section("malloc of impossible sizes");
    const size_t sizes[] = {v_size_max, v_ptrdiff_max + 1, v_size_max - 4095,
                            v_size_max - 16, v_ptrdiff_max, (size_t)1 << 47};
    const char *names[] = {"SIZE_MAX", "PTRDIFF_MAX + 1", "SIZE_MAX - 4095", "SIZE_MAX - 16",
                           "PTRDIFF_MAX", "2^47 (beyond the address space)"};
    for (int i = 0; i < 6; i++) {
        errno = 0;
        void *p = malloc(sizes[i]);
        int e = errno;
        CHECK(p == NULL && e == ENOMEM, "malloc(%s) = %p, errno %d", names[i], p, e);
        free(p);
    }
    /* The allocator still works afterwards. */
    void *p = malloc(64);
    CHECK(p != NULL, "malloc(64) after the failures");
    free(p);
}

/* ---- 2. calloc ------------------------------------------------------------------------ */

static void test_calloc_overflow(void)
{
    section("calloc overflow");
    struct {
        size_t n, size;
    } cases[] = {
        {v_size_max, 2},
        {2, v_size_max},
        {(size_t)1 << 33, (size_t)1 << 33},
        {v_size_max / 2 + 1, 2},
        {(size_t)1 << 63, 2},
        {1, v_size_max},
        {v_ptrdiff_max / 8 + 1, 8},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        errno = 0;
        void *p = calloc(cases[i].n, cases[i].size);
        int e = errno;
        CHECK(p == NULL && e == ENOMEM, "calloc(%zu, %zu) = %p, errno %d", cases[i].n,
              cases[i].size, p, e);
        free(p);
    }
}

static void test_calloc_recycled(void)
{
    section("calloc zeroes recycled memory");
    const size_t sizes[] = {1,      16,      24,       100,      1000,     4096,
                            10000,  32768,   32769,    100000,   1 * MIB,  3 * MIB,
                            4 * MIB, 5 * MIB, 16 * MIB, 64 * MIB};
    enum { K = 8 };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        int k = n >= MIB ? 2 : K;
        void *p[K];
        /* Dirty blocks (whole usable size), free them, and calloc the same size again. */
        for (int j = 0; j < k; j++) {
            p[j] = malloc(n);
            CHECK(p[j] != NULL, "malloc(%zu)", n);
            if (p[j])
                memset(p[j], 0xab, malloc_usable_size(p[j]));
        }
        void *first = p[0];
        for (int j = k - 1; j >= 0; j--)
            free(p[j]);
        int reused = 0;
        for (int j = 0; j < k; j++) {
            p[j] = calloc(1, n);
            CHECK(p[j] != NULL, "calloc(1, %zu)", n);
            if (!p[j])
                continue;
            reused += p[j] == first;
            CHECK(all_bytes(p[j], 0, n), "calloc(1, %zu) = %p is not zero", n, p[j]);
        }
        for (int j = 0; j < k; j++)
            free(p[j]);
        /* calloc(n, size) form, of a block just freed. */
        void *q = malloc(n);
        if (q)
            memset(q, 0xcd, n);
        free(q);
        void *z = n % 8 == 0 ? calloc(n / 8, 8) : calloc(n, 1);
        CHECK(z && all_bytes(z, 0, n), "calloc of %zu bytes after a free is not zero", n);
        free(z);
        if (!reused && n < MIB)
            printf("  note: %zu B: no calloc got the dirtied block back\n", n);
    }
}

/* ---- 3. realloc ----------------------------------------------------------------------- */

static void test_realloc(void)
{
    section("realloc");
    /* realloc(NULL, n) is malloc(n). */
    void *p = realloc(NULL, 100);
    CHECK(p != NULL && (uintptr_t)p % 16 == 0 && malloc_usable_size(p) >= 100,
          "realloc(NULL, 100) = %p", p);
    free(p);
    p = realloc(NULL, 0);
    CHECK(p != NULL, "realloc(NULL, 0) = %p (glibc: as malloc(0))", p);
    free(p);

    /* realloc(p, 0) frees p and returns NULL. */
    p = malloc(100);
    errno = 12345;
    void *q = realloc(p, 0);
    CHECK(q == NULL, "realloc(p, 0) = %p", q);
    CHECK(errno == 12345, "realloc(p, 0) changed errno to %d", errno);

    /* Contents survive growth and shrinking through every kind of block. */
    const size_t steps[] = {1,     16,     100,     1000,    5000,    40000,    300000,
                            3 * MIB, 6 * MIB, 40 * MIB, 2 * MIB, 50000, 200, 10};
    size_t have = 1;
    p = malloc(1);
    fill_pattern(p, 1, 7);
    for (size_t i = 1; i < sizeof steps / sizeof steps[0]; i++) {
        size_t n = steps[i];
        size_t keep = have < n ? have : n;
        q = realloc(p, n);
        CHECK(q != NULL, "realloc(%zu -> %zu)", have, n);
        if (!q)
            break;
        CHECK((uintptr_t)q % 16 == 0 && malloc_usable_size(q) >= n,
              "realloc(%zu -> %zu) = %p, usable %zu", have, n, q, malloc_usable_size(q));
        CHECK(check_pattern(q, keep, 7), "realloc(%zu -> %zu) lost the first %zu bytes", have,
              n, keep);
        fill_pattern(q, n, 7);
        p = q;
        have = n;
    }
    free(p);

    /* A failed realloc leaves the block intact and sets ENOMEM. */
    const size_t olds[] = {100, 50000, 8 * MIB};
    const size_t huge[] = {v_size_max, v_ptrdiff_max + 1, v_size_max - 4095, (size_t)1 << 47};
    for (int i = 0; i < 3; i++) {
        size_t n = olds[i];
        p = malloc(n);
        fill_pattern(p, n, 3);
        for (int j = 0; j < 4; j++) {
            errno = 0;
            q = v_realloc(p, huge[j]);
            int e = errno;
            CHECK(q == NULL && e == ENOMEM, "realloc(%zu B block, %zu) = %p, errno %d", n,
                  huge[j], q, e);
            CHECK(check_pattern(p, n, 3), "a failed realloc damaged the %zu B block", n);
        }
        errno = 0;
        q = v_reallocarray(p, v_size_max / 2, 3);
        int e = errno;
        CHECK(q == NULL && e == ENOMEM, "reallocarray(p, SIZE_MAX / 2, 3) = %p, errno %d", q, e);
        errno = 0;
        q = v_reallocarray(p, (size_t)1 << 32, (size_t)1 << 32);
        e = errno;
        CHECK(q == NULL && e == ENOMEM, "reallocarray(p, 2^32, 2^32) = %p, errno %d", q, e);
        CHECK(check_pattern(p, n, 3), "a failed reallocarray damaged the %zu B block", n);
        q = reallocarray(p, 2, n);
        CHECK(q && check_pattern(q, n, 3), "reallocarray(p, 2, %zu) lost the contents", n);
        free(q ? q : p);
    }
    errno = 0;
    q = reallocarray(NULL, v_size_max, 2);
    CHECK(q == NULL && errno == ENOMEM, "reallocarray(NULL, SIZE_MAX, 2) = %p, errno %d", q,
          errno);
    q = reallocarray(NULL, 10, 10);
    CHECK(q && malloc_usable_size(q) >= 100, "reallocarray(NULL, 10, 10) = %p", q);
    free(q);
}

/* ---- 4. aligned allocation ------------------------------------------------------------ */

static void test_posix_memalign(void)
{
    section("posix_memalign");
    const size_t bad[] = {0, 1, 2, 3, 4, 12, 24, 48, 100, 4095, 4097, 3 * 4096,
                          (size_t)1 << 63 | 8, v_size_max};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *sentinel = (void *)0x1234;
        void *mp = sentinel;
        errno = 12345;
        int r = posix_memalign(&mp, bad[i], 64);
        CHECK(r == EINVAL, "posix_memalign(align %zu) returned %d", bad[i], r);
        CHECK(mp == sentinel, "posix_memalign(align %zu) changed *memptr to %p", bad[i], mp);
        CHECK(errno == 12345, "posix_memalign(align %zu) changed errno to %d", bad[i], errno);
    }
    /* sizeof(void *) itself is allowed, and so is every power of two above it. */
    for (size_t a = sizeof(void *); a <= 4 * MIB; a *= 2) {
        void *mp = NULL;
        int r = posix_memalign(&mp, a, 100);
        CHECK(r == 0 && mp && (uintptr_t)mp % a == 0, "posix_memalign(align %zu) = %d, %p", a,
              r, mp);
        if (mp)
            memset(mp, 1, 100);
        free(mp);
    }
    void *mp = (void *)0x1234;
    int r = posix_memalign(&mp, 64, v_size_max - 4096);
    CHECK(r == ENOMEM, "posix_memalign(64, SIZE_MAX - 4096) returned %d", r);
    CHECK(mp == (void *)0x1234, "failed posix_memalign changed *memptr to %p", mp);
    mp = NULL;
    r = posix_memalign(&mp, 64, 0);
    CHECK(r == 0 && mp != NULL, "posix_memalign(64, 0) = %d, %p", r, mp);
    free(mp);
}

/* Checks a block from an aligned allocator and frees it. */
static void check_aligned(const char *fn, void *p, size_t align, size_t size)
{
    CHECK(p != NULL, "%s(align %zu, size %zu) returned NULL (errno %d)", fn, align, size,
          errno);
    if (!p)
        return;
    CHECK((uintptr_t)p % align == 0, "%s(align %zu, size %zu) = %p", fn, align, size, p);
    CHECK(malloc_usable_size(p) >= size, "%s(align %zu, size %zu): usable %zu", fn, align,
          size, malloc_usable_size(p));
    size_t n = size ? size : 1;
    memset(p, 0xe7, n);
    unsigned char *b = p;
    CHECK(b[0] == 0xe7 && b[n - 1] == 0xe7, "%s block not writable", fn);
    free(p);
}

static void test_aligned_family(void)
{
    section("aligned_alloc, memalign, posix_memalign: 16 B .. 256 MiB");
    for (size_t a = 16; a <= 256 * MIB; a *= 2) {
        /* Up to 64 MiB, blocks of 1 B, 100 B and one alignment's worth; above, 1 B. */
        size_t sizes[3] = {1, 100, a};
        int nsizes = a <= 64 * MIB ? 3 : 1;
        for (int i = 0; i < nsizes; i++) {
            size_t n = sizes[i];
            errno = 0;
            check_aligned("aligned_alloc", aligned_alloc(a, n), a, n);
            errno = 0;
            check_aligned("memalign", memalign(a, n), a, n);
            void *mp = NULL;
            errno = 0;
            int r = posix_memalign(&mp, a, n);
            CHECK(r == 0, "posix_memalign(%zu, %zu) returned %d", a, n, r);
            check_aligned("posix_memalign", mp, a, n);
            check_aligned("__libc_memalign", p_libc_memalign(a, n), a, n);
        }
    }
    /* Several live blocks of one alignment are distinct and all aligned. */
    void *live[32];
    for (int i = 0; i < 32; i++) {
        live[i] = aligned_alloc(4096, 4096);
        CHECK(live[i] && (uintptr_t)live[i] % 4096 == 0, "aligned_alloc(4096) #%d = %p", i,
              live[i]);
        if (live[i])
            memset(live[i], i, 4096);
    }
    for (int i = 0; i < 32; i++) {
        CHECK(live[i] && all_bytes(live[i], i, 4096), "aligned block %d overlaps another", i);
        free(live[i]);
    }
    /* aligned_alloc: an alignment that is not a power of two is EINVAL (C23, glibc 2.38). */
    errno = 0;
    void *p = aligned_alloc(24, 48);
    CHECK(p == NULL && errno == EINVAL, "aligned_alloc(24, 48) = %p, errno %d", p, errno);
    free(p);
    /* memalign: glibc rounds an alignment that is not a power of two up to one. */
    p = memalign(24, 100);
    CHECK(p && (uintptr_t)p % 32 == 0, "memalign(24, 100) = %p (want 32-byte aligned)", p);
    free(p);
    p = memalign(1, 100);
    CHECK(p && (uintptr_t)p % 16 == 0, "memalign(1, 100) = %p", p);
    free(p);
    errno = 0;
    p = memalign(64, v_size_max - 100);
    CHECK(p == NULL && errno == ENOMEM, "memalign(64, SIZE_MAX - 100) = %p, errno %d", p,
          errno);
    errno = 0;
    p = aligned_alloc(64, v_size_max - 100);
    CHECK(p == NULL && errno == ENOMEM, "aligned_alloc(64, SIZE_MAX - 100) = %p, errno %d", p,
          errno);
}

static void test_valloc_pvalloc(void)
{
    section("valloc, pvalloc");
    long page = sysconf(_SC_PAGESIZE);
    const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 10000, 65536, MIB + 1, 5 * MIB + 3};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        size_t rounded = n ? (n + (size_t)page - 1) / (size_t)page * (size_t)page
                           : (size_t)page;
        void *v = valloc(n);
        CHECK(v && (uintptr_t)v % (size_t)page == 0, "valloc(%zu) = %p", n, v);
        if (v) {
            CHECK(malloc_usable_size(v) >= n, "valloc(%zu): usable %zu", n,
                  malloc_usable_size(v));
            memset(v, 0x3c, n ? n : 1);
        }
        free(v);
        void *pv = pvalloc(n);
        CHECK(pv && (uintptr_t)pv % (size_t)page == 0, "pvalloc(%zu) = %p", n, pv);
        if (pv) {
            CHECK(malloc_usable_size(pv) >= rounded, "pvalloc(%zu): usable %zu, want >= %zu",
                  n, malloc_usable_size(pv), rounded);
            /* pvalloc(0) included: rampart gives it a whole page, as its documentation
             * says (glibc 2.36 gives a page-aligned minimum block). */
            memset(pv, 0x3c, rounded);
        }
        free(pv);
        void *lv = p_libc_valloc(n);
        CHECK(lv && (uintptr_t)lv % (size_t)page == 0, "__libc_valloc(%zu) = %p", n, lv);
        free(lv);
        void *lp = p_libc_pvalloc(n);
        CHECK(lp && (uintptr_t)lp % (size_t)page == 0 && malloc_usable_size(lp) >= rounded,
              "__libc_pvalloc(%zu) = %p", n, lp);
        free(lp);
    }
    errno = 0;
    void *p = pvalloc(v_size_max - 10);
    CHECK(p == NULL && errno == ENOMEM, "pvalloc(SIZE_MAX - 10) = %p, errno %d", p, errno);
    errno = 0;
    p = valloc(v_size_max - 10);
    CHECK(p == NULL && errno == ENOMEM, "valloc(SIZE_MAX - 10) = %p, errno %d", p, errno);
}

/* ---- 5. errno preservation ------------------------------------------------------------ */

static void *free_on_other_thread(void *arg)
{
    void **blocks = arg;
    errno = 12345;
    int bad = 0;
    for (int i = 0; blocks[i]; i++) {
        free(blocks[i]);
        bad += errno != 12345;
    }
    return (void *)(intptr_t)bad;
}

static void test_errno_preserved(void)
{
    section("free and friends preserve errno");
#define KEEPS_ERRNO(stmt)                                                                 \
    do {                                                                                  \
        errno = 12345;                                                                    \
        stmt;                                                                             \
        CHECK(errno == 12345, "`%s` changed errno to %d", #stmt, errno);                  \
    } while (0)
    const size_t sizes[] = {1, 16, 100, 4096, 40000, MIB, 5 * MIB, 64 * MIB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *p = malloc(n);
        memset(p, 1, n);
        KEEPS_ERRNO(free(p));
        p = malloc(n);
        KEEPS_ERRNO(p = realloc(p, 0));
        p = malloc(n);
        KEEPS_ERRNO(p_cfree(p));
        p = malloc(n);
        KEEPS_ERRNO(p_libc_free(p));
        p = malloc(n);
        KEEPS_ERRNO(p_rampart_free(p));
        p = malloc(n);
        KEEPS_ERRNO(p_free_sized(p, n));
        p = aligned_alloc(64, n);
        KEEPS_ERRNO(p_free_aligned_sized(p, 64, n));
    }
    KEEPS_ERRNO(free(NULL));
    KEEPS_ERRNO(p_free_sized(NULL, 0));
    KEEPS_ERRNO(p_free_aligned_sized(NULL, 64, 0));
    KEEPS_ERRNO(p_cfree(NULL));
    /* Freeing enough to empty whole spans and chunks (pages go back to the OS). */
    enum { N = 20000 };
    void **many = malloc(N * sizeof *many);
    for (int i = 0; i < N; i++)
        many[i] = malloc(i % 7 == 0 ? 3000 : 200);
    errno = 12345;
    int changed = 0;
    for (int i = 0; i < N; i++) {
        free(many[i]);
        changed += errno != 12345;
    }
    CHECK(changed == 0, "%d of %d frees changed errno", changed, N);
    /* Frees from another thread (the remote path). */
    for (int i = 0; i < N - 1; i++)
        many[i] = malloc(i % 5 == 0 ? 50000 : 64);
    many[N - 1] = NULL;
    pthread_t t;
    void *bad = NULL;
    CHECK(pthread_create(&t, NULL, free_on_other_thread, many) == 0, "pthread_create");
    pthread_join(t, &bad);
    CHECK(bad == NULL, "%ld cross-thread frees changed errno", (long)(intptr_t)bad);
    free(many);
    /* A failing malloc sets errno, and a later success does not need to clear it, but a
     * trim must not change it either way. */
    KEEPS_ERRNO(malloc_trim(0));
#undef KEEPS_ERRNO
}

/* ---- 6. introspection ----------------------------------------------------------------- */

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static void test_mallinfo(void)
{
    section("mallinfo2, mallinfo");
    const size_t total = 10 * 1000 * 1000;
    const struct {
        const char *what;
        size_t block;
    } kinds[] = {
        {"small (1000 B blocks)", 1000},
        {"large (100000 B blocks)", 100000},
        {"huge (one 10 MB block)", total},
    };
    for (int k = 0; k < 3; k++) {
        size_t count = total / kinds[k].block;
        void **blocks = malloc(count * sizeof *blocks);
        struct mallinfo2 before = mallinfo2();
        for (size_t i = 0; i < count; i++) {
            blocks[i] = malloc(kinds[k].block);
            memset(blocks[i], 1, kinds[k].block);
        }
        struct mallinfo2 during = mallinfo2();
        struct mallinfo during_old = mallinfo();
        for (size_t i = 0; i < count; i++)
            free(blocks[i]);
        struct mallinfo2 after = mallinfo2();
        printf("  %s: uordblks %zu -> %zu -> %zu, arena %zu, hblkhd %zu, fordblks %zu\n",
               kinds[k].what, before.uordblks, during.uordblks, after.uordblks, during.arena,
               during.hblkhd, during.fordblks);
        CHECK(during.uordblks >= before.uordblks + total,
              "%s: uordblks grew from %zu to only %zu after allocating %zu bytes",
              kinds[k].what, before.uordblks, during.uordblks, total);
        CHECK(after.uordblks + total * 9 / 10 <= during.uordblks,
              "%s: uordblks only fell from %zu to %zu after freeing %zu bytes", kinds[k].what,
              during.uordblks, after.uordblks, total);
        CHECK(during.arena + during.hblkhd >= during.uordblks,
              "%s: arena %zu + hblkhd %zu < uordblks %zu", kinds[k].what, during.arena,
              during.hblkhd, during.uordblks);
        CHECK(during_old.uordblks > 0 && (size_t)during_old.uordblks >= total,
              "%s: mallinfo().uordblks = %d", kinds[k].what, during_old.uordblks);
        free(blocks);
    }
}
#pragma GCC diagnostic pop

static void test_trim_info_opt(void)
{
    section("malloc_trim, malloc_info, mallopt, malloc_stats");
    void *big[8];
    for (int i = 0; i < 8; i++) {
        big[i] = malloc(MIB);
        memset(big[i], 1, MIB);
    }
    for (int i = 0; i < 8; i++)
        free(big[i]);
    int r = malloc_trim(0);
    CHECK(r == 0 || r == 1, "malloc_trim(0) = %d", r);
    r = malloc_trim(MIB);
    CHECK(r == 0 || r == 1, "malloc_trim(1 MiB) = %d", r);
    size_t released = p_rampart_trim();
    printf("  rampart_trim released %zu bytes\n", released);

    FILE *f = tmpfile();
    CHECK(f != NULL, "tmpfile");
    if (f) {
        r = malloc_info(0, f);
        CHECK(r == 0, "malloc_info(0, f) = %d", r);
        rewind(f);
        char head[64] = {0};
        size_t got = fread(head, 1, sizeof head - 1, f);
        CHECK(got >= 7 && strncmp(head, "<malloc", 7) == 0,
              "malloc_info wrote %zu bytes starting \"%.20s\"", got, head);
        errno = 0;
        r = malloc_info(1, f);
        CHECK(r == -1 && errno == EINVAL, "malloc_info(1, f) = %d, errno %d", r, errno);
        fclose(f);
    }

    CHECK(mallopt(M_MXFAST, 64) == 1, "mallopt(M_MXFAST, 64) = %d", mallopt(M_MXFAST, 64));
    CHECK(mallopt(12345, 0) == 0, "mallopt(12345, 0) = %d", mallopt(12345, 0));
    CHECK(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1, "mallopt(M_MMAP_THRESHOLD) = %d",
          mallopt(M_MMAP_THRESHOLD, 1 << 20));

    /* malloc_stats writes to stderr; it must return and leave the heap usable. */
    fflush(stdout);
    malloc_stats();
    void *p = malloc(100);
    CHECK(p != NULL, "malloc after malloc_stats");
    free(p);
}

/* ---- 7. sized frees and the __libc_ names --------------------------------------------- */

static void test_sized_frees(void)
{
    section("free_sized, free_aligned_sized");
    const size_t sizes[] = {0, 1, 16, 17, 100, 1000, 4096, 32768, 32769, 100000, MIB,
                            5 * MIB, 20 * MIB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *p = malloc(n);
        CHECK(p != NULL, "malloc(%zu)", n);
        p_free_sized(p, n);
        p = calloc(1, n);
        p_free_sized(p, n);
        const size_t aligns[] = {16, 64, 4096, 65536, 2 * MIB, 8 * MIB};
        for (int j = 0; j < 6; j++) {
            p = aligned_alloc(aligns[j], n);
            CHECK(p != NULL, "aligned_alloc(%zu, %zu)", aligns[j], n);
            p_free_aligned_sized(p, aligns[j], n);
        }
    }
    p_free_sized(NULL, 10);
    p_free_aligned_sized(NULL, 64, 10);
    /* Interleaved with ordinary use: the heap is consistent afterwards. */
    void *keep[100];
    for (int i = 0; i < 100; i++) {
        keep[i] = malloc((size_t)i * 40 + 1);
        fill_pattern(keep[i], (size_t)i * 40 + 1, (unsigned)i);
    }
    for (int i = 0; i < 100; i += 2)
        p_free_sized(keep[i], (size_t)i * 40 + 1);
    for (int i = 1; i < 100; i += 2) {
        CHECK(check_pattern(keep[i], (size_t)i * 40 + 1, (unsigned)i), "block %d damaged", i);
        free(keep[i]);
    }
}

static void test_libc_names(void)
{
    section("__libc_malloc and friends");
    void *p = p_libc_malloc(100);
    CHECK(p && (uintptr_t)p % 16 == 0 && malloc_usable_size(p) >= 100,
          "__libc_malloc(100) = %p", p);
    memset(p, 2, 100);
    p_libc_free(p);
    p = p_libc_calloc(10, 100);
    CHECK(p && all_bytes(p, 0, 1000), "__libc_calloc(10, 100) = %p", p);
    fill_pattern(p, 1000, 9);
    p = p_libc_realloc(p, 100000);
    CHECK(p && check_pattern(p, 1000, 9), "__libc_realloc kept the contents");
    free(p); /* __libc_* blocks and the ordinary names mix */
    p = malloc(50);
    p_libc_free(p);
    errno = 0;
    p = p_libc_malloc(v_size_max);
    CHECK(p == NULL && errno == ENOMEM, "__libc_malloc(SIZE_MAX) = %p, errno %d", p, errno);
    errno = 0;
    p = p_libc_calloc(v_size_max, 2);
    CHECK(p == NULL && errno == ENOMEM, "__libc_calloc overflow = %p, errno %d", p, errno);
    p = p_libc_memalign(256, 10);
    CHECK(p && (uintptr_t)p % 256 == 0, "__libc_memalign(256, 10) = %p", p);
    p_libc_free(p);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
#ifdef RAMPART_STATIC
    printf("conformance: rampart linked statically\n");
#else
    printf("conformance: rampart preloaded (LD_PRELOAD=%s)\n",
           getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "(unset)");
#endif
    resolve_all();
    test_served_by_rampart();
    test_malloc_zero();
    test_alignment_and_usable_size();
    test_malloc_too_big();
    test_calloc_overflow();
    test_calloc_recycled();
    test_realloc();
    test_posix_memalign();
    test_aligned_family();
    test_valloc_pvalloc();
    /* Before any block is freed from another thread: such a block counts as in use until
     * its owner's heap collects it, which would blur the figures. */
    test_mallinfo();
    test_trim_info_opt();
    test_sized_frees();
    test_libc_names();
    test_errno_preserved();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
