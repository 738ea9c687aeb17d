/*
 * buggy.c: two classic heap bugs, to try rampart's guard modes on (README, "Finding memory
 * errors").
 *
 *   gcc -g -O1 -rdynamic examples/c/buggy.c -o /tmp/buggy
 *   target/release/rampart --guard all /tmp/buggy overflow
 *   target/release/rampart --guard all /tmp/buggy use-after-free
 *
 * Without a guard mode the bugs show late, far from their cause, or not at all. On glibc
 * 2.36 the overflow writes over the heap's top chunk header, and the next malloc (printf's
 * buffer) aborts with "malloc(): corrupted top size"; the use after free reads a next link
 * that glibc has mangled (safe-linking) and dies of SIGSEGV in free_list, without a report.
 * In rampart's default mode the overflow lands in the next block and the program prints
 * its lines and exits 0; the use after free follows the freed block's free-list link into
 * free(), which rampart reports as a double-free (SIGABRT), without saying where.
 *
 * -rdynamic puts the program's functions in its dynamic symbol table, where the report's
 * symbolizer (dladdr) finds them; without it, frames show as module+offset for addr2line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct point {
    double x, y;
};

/* An off-by-one: fills n + 1 points of an array of n. */
struct point *make_path(int n)
{
    struct point *path = malloc(n * sizeof *path);
    for (int i = 0; i <= n; i++) {
        path[i].x = i;
        path[i].y = -i;
    }
    return path;
}

struct node {
    struct node *next;
    char name[24];
};

struct node *push(struct node *head, const char *name)
{
    struct node *n = malloc(sizeof *n);
    n->next = head;
    snprintf(n->name, sizeof n->name, "%s", name);
    return n;
}

/* Reads n->next after freeing n. */
void free_list(struct node *head)
{
    for (struct node *n = head; n != NULL; n = n->next)
        free(n);
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "overflow";
    if (strcmp(what, "overflow") == 0) {
        struct point *p = make_path(100);
        printf("path ends at (%g, %g)\n", p[99].x, p[99].y);
        free(p);
    } else if (strcmp(what, "use-after-free") == 0) {
        struct node *list = push(push(push(NULL, "alpha"), "beta"), "gamma");
        printf("list starts with %s\n", list->name);
        free_list(list);
    } else {
        fprintf(stderr, "usage: buggy overflow|use-after-free\n");
        return 2;
    }
    puts("done");
    return 0;
}
