/*
 * shortlived: many small short-lived objects, as an interpreter or compiler makes them.
 * One thread, on purpose (the pattern is a single-threaded one: the allocator's fast path
 * and its reuse of just-freed blocks are what count). For each of many "compilation
 * units" it:
 *   1. lexes: pushes a stack of tokens (16 - 64 B);
 *   2. parses: builds a random expression tree of 500 - 4000 nodes (40 - 256 B: operators,
 *      literals, variables, `let` scopes), each node taking (checking and freeing) the
 *      token on top of the stack, so tokens die in LIFO order as nodes are born;
 *   3. evaluates the tree with a scope stack of variable bindings (24 - 96 B, pushed and
 *      popped LIFO) and a boxed 16-byte value for every intermediate result (freed as soon
 *      as it is used);
 *   4. folds constants: rebuilds the tree bottom-up into new nodes, freeing each old node
 *      once it has been copied (so old and new trees interleave in memory);
 *   5. evaluates the folded tree (the result must be the same) and frees it post-order.
 * Every node, token and binding carries a pattern checked before it is freed.
 *
 * Build: gcc -O2 -pthread benches/c/shortlived.c -o shortlived
 * Run:   ./shortlived [scale]        (scale 1.0: 3,000 units)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_common.h"

#define UNITS 3000L

enum { LIT, VAR, ADD, SUB, MUL, XOR, LET };

struct node {
    struct node *kid[2];
    uint64_t key, value;    /* value: a literal's value, a variable's scope depth, `let`'s */
    uint32_t kind, size;    /* size: bytes allocated, header included */
    unsigned char payload[];
};

struct token {
    struct token *next;
    uint32_t len;
    uint32_t pad;
    uint64_t key;
    unsigned char text[];   /* len bytes */
};

struct binding {
    struct binding *next;
    uint64_t key, value, size;
    unsigned char name[];   /* the rest of the block */
};

struct box {
    uint64_t value, tag;    /* tag = value ^ BOX_TAG */
};
#define BOX_TAG 0xB0CB0CB0CB0CB0Cull

static uint64_t rng, seq, checksum;
static struct token *tokens;
static struct binding *scope;
static size_t scope_len;

/* --- tokens ------------------------------------------------------------------------- */

static void lex(long count) {
    for (long i = 0; i < count; i++) {
        uint32_t len = (uint32_t)bench_range(&rng, 0, 64 - sizeof(struct token));
        struct token *t = bench_nonnull(malloc(sizeof *t + len), sizeof *t + len);
        t->len = len;
        t->key = ++seq;
        bench_fill(t->text, len, t->key);
        t->next = tokens;
        tokens = t;
    }
}

static uint64_t take_token(void) {
    struct token *t = tokens;
    if (!t) bench_die("shortlived: token stack empty");
    tokens = t->next;
    uint64_t key = t->key;
    checksum += bench_check(t->text, t->len, key, "shortlived: token");
    free(t);
    return key;
}

/* --- nodes -------------------------------------------------------------------------- */

static struct node *new_node(uint32_t kind, uint64_t value, struct node *a, struct node *b) {
    size_t size = bench_range(&rng, sizeof(struct node), 256);
    struct node *n = bench_nonnull(malloc(size), size);
    n->kid[0] = a;
    n->kid[1] = b;
    n->key = ++seq;
    n->value = value;
    n->kind = kind;
    n->size = (uint32_t)size;
    bench_fill(n->payload, size - sizeof *n, n->key);
    return n;
}

static void free_node(struct node *n) {
    checksum += bench_check(n->payload, n->size - sizeof *n, n->key, "shortlived: node");
    free(n);
}

/* A tree of `count` nodes (a variable refers to a binding of an enclosing `let` or to one of
   the unit's globals, by depth). */
static struct node *parse(long count) {
    uint64_t tok = take_token();
    if (count <= 1) {
        if (bench_below(&rng, 3) == 0) return new_node(VAR, bench_hash(tok) % 1024, NULL, NULL);
        return new_node(LIT, bench_hash(tok), NULL, NULL);
    }
    if (count == 2 || bench_below(&rng, 16) == 0)  /* a scope */
        return new_node(LET, bench_hash(tok), parse(count - 1), NULL);
    long left = 1 + (long)bench_below(&rng, (uint64_t)(count - 2));
    uint32_t op = ADD + (uint32_t)(bench_hash(tok) % 4);
    struct node *a = parse(left);
    struct node *b = parse(count - 1 - left);
    return new_node(op, 0, a, b);
}

/* --- evaluation ----------------------------------------------------------------------- */

static struct box *box(uint64_t v) {
    struct box *b = bench_nonnull(malloc(sizeof *b), sizeof *b);
    b->value = v;
    b->tag = v ^ BOX_TAG;
    return b;
}

static uint64_t unbox(struct box *b) {
    if ((b->value ^ b->tag) != BOX_TAG)
        bench_die("shortlived: box %p holds %016llx, tag %016llx", (void *)b,
                  (unsigned long long)b->value, (unsigned long long)b->tag);
    uint64_t v = b->value;
    free(b);
    return v;
}

static void push_binding(uint64_t value) {
    size_t size = bench_range(&rng, sizeof(struct binding), 96);
    struct binding *b = bench_nonnull(malloc(size), size);
    b->key = ++seq;
    b->value = value;
    b->size = size;
    bench_fill(b->name, size - sizeof *b, b->key);
    b->next = scope;
    scope = b;
    scope_len++;
}

static void pop_binding(void) {
    struct binding *b = scope;
    scope = b->next;
    scope_len--;
    checksum += bench_check(b->name, b->size - sizeof *b, b->key, "shortlived: binding");
    free(b);
}

static uint64_t lookup(uint64_t depth) {
    struct binding *b = scope;
    for (uint64_t d = depth % scope_len; d; d--) b = b->next;
    return b->value;
}

static struct box *eval(struct node *n) {
    switch (n->kind) {
    case LIT: return box(n->value);
    case VAR: return box(lookup(n->value));
    case LET: {
        push_binding(n->value);
        struct box *r = eval(n->kid[0]);
        pop_binding();
        return r;
    }
    default: {
        uint64_t a = unbox(eval(n->kid[0]));
        uint64_t b = unbox(eval(n->kid[1]));
        switch (n->kind) {
        case ADD: return box(a + b);
        case SUB: return box(a - b);
        case MUL: return box(a * b);
        default: return box(a ^ b);
        }
    }
    }
}

/* --- constant folding ----------------------------------------------------------------- */

static struct node *fold(struct node *n) {
    struct node *r;
    switch (n->kind) {
    case LIT:
    case VAR: r = new_node(n->kind, n->value, NULL, NULL); break;
    case LET: r = new_node(LET, n->value, fold(n->kid[0]), NULL); break;
    default: {
        struct node *a = fold(n->kid[0]), *b = fold(n->kid[1]);
        if (a->kind == LIT && b->kind == LIT) {
            uint64_t x = a->value, y = b->value;
            uint64_t v = n->kind == ADD ? x + y : n->kind == SUB ? x - y : n->kind == MUL ? x * y : x ^ y;
            free_node(a);
            free_node(b);
            r = new_node(LIT, v, NULL, NULL);
        } else {
            r = new_node(n->kind, 0, a, b);
        }
    }
    }
    free_node(n);
    return r;
}

static void free_tree(struct node *n) {
    if (n->kid[0]) free_tree(n->kid[0]);
    if (n->kid[1]) free_tree(n->kid[1]);
    free_node(n);
}

int main(int argc, char **argv) {
    long units = bench_scaled(UNITS, bench_scale(argc, argv));
    rng = bench_seed(0x5407711fed);
    long nodes = 0;
    for (long u = 0; u < units; u++) {
        long count = (long)bench_range(&rng, 500, 4000);
        size_t globals = bench_range(&rng, 16, 48);
        for (size_t g = 0; g < globals; g++) push_binding(bench_xorshift(&rng));
        lex(count);
        struct node *tree = parse(count);
        if (tokens) bench_die("shortlived: tokens left after parsing");
        uint64_t v1 = unbox(eval(tree));
        tree = fold(tree);
        uint64_t v2 = unbox(eval(tree));
        if (v1 != v2)
            bench_die("shortlived: unit %ld evaluates to %016llx before folding, %016llx after",
                      u, (unsigned long long)v1, (unsigned long long)v2);
        checksum += bench_hash(v1);
        free_tree(tree);
        while (scope) pop_binding();
        nodes += count;
    }
    printf("shortlived: %ld units, %ld nodes parsed\n", units, nodes);
    bench_print_checksum(checksum);
    return 0;
}
