/* Memory back while idle (tests/rss_return.rs): allocates about 270 MiB in blocks of 4 to
 * 64 KiB, writes them, frees them all, and then makes no allocator call: it sleeps 50 ms at
 * a time, for up to argv[1] ms (default 2000), reading its RSS from /proc/self/smaps_rollup (with a buffer on
 * the stack and raw read(2)) until it is back within 8 MiB of what it was before.
 * Prints "before K", "freed K", then "idle MS K" per reading (KiB), then "back MS" or
 * "not back". */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long rss_kib(void) {
    char buf[4096];
    int fd = open("/proc/self/smaps_rollup", O_RDONLY);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strstr(buf, "\nRss:");
    return p ? strtol(p + 5, NULL, 10) : -1;
}

#define N 8192
static void *blocks[N];

int main(int argc, char **argv) {
    int window = argc > 1 ? atoi(argv[1]) : 2000;
    char line[128];
    rss_kib(); /* page in the reading code first */
    long before = rss_kib();
    unsigned seed = 12345;
    size_t total = 0;
    for (int i = 0; i < N; i++) {
        seed = seed * 1103515245 + 12345;
        size_t size = 4096 + (seed >> 8) % (60 * 1024);
        blocks[i] = malloc(size);
        memset(blocks[i], 1, size);
        total += size;
    }
    for (int i = 0; i < N; i++)
        free(blocks[i]);
    long freed = rss_kib();
    int len = snprintf(line, sizeof line, "before %ld\nallocated %zu\nfreed %ld\n", before, total >> 10, freed);
    write(1, line, len);
    for (int ms = 50; ms <= window; ms += 50) {
        struct timespec t = {0, 50 * 1000 * 1000};
        nanosleep(&t, NULL);
        long now = rss_kib();
        len = snprintf(line, sizeof line, "idle %d %ld\n", ms, now);
        write(1, line, len);
        if (now <= before + 8192) {
            len = snprintf(line, sizeof line, "back %d\n", ms);
            write(1, line, len);
            return 0;
        }
    }
    write(1, "not back\n", 9);
    return 0;
}
