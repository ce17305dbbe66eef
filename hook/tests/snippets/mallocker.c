/* A program that interposes malloc with one that itself calls a hooked function (open), so the
 * library's own loader calls (dlsym, dladdr) re-enter the hooks through malloc. `mallocker PATH`
 * fopens PATH (stdio allocates) and prints whether that worked; it must neither hang nor crash. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static _Alignas(16) unsigned char arena[1 << 22];
static size_t used;
static int opens;

void *malloc(size_t n)
{
    int fd = open("/dev/null", O_RDONLY); /* a hooked call from inside malloc */
    if (fd >= 0) {
        opens++;
        close(fd);
    }
    n = (n + 15) & ~(size_t)15;
    if (used + n > sizeof arena)
        return NULL;
    void *p = arena + used;
    used += n;
    return p;
}

void free(void *p) { (void)p; }

void *calloc(size_t a, size_t b)
{
    void *p = malloc(a * b);
    if (p)
        memset(p, 0, a * b);
    return p;
}

void *realloc(void *old, size_t n)
{
    void *p = malloc(n);
    if (p && old)
        memcpy(p, old, n); /* bump allocator: the old block is at most as large as what follows it */
    return p;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    void *volatile block = malloc(16); /* malloc's own open runs under the library (volatile: gcc drops
                                        * an unused malloc/free pair) */
    free(block);
    FILE *f = fopen(argv[1], "r");
    printf("%s %s\n", f ? "ok" : errno == EACCES ? "denied" : "error", opens > 0 ? "malloc-opened" : "no-malloc");
    return 0;
}
