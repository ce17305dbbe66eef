/* Opens argv[1] with the open system call made directly (x86-64 `syscall` instruction), never through
 * libc: what Go programs and hand-written assembly do. The library cannot see it. */
#include <stdio.h>

static long raw_open(const char *path)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "0"(2L), "D"(path), "S"(0L), "d"(0L) : "rcx", "r11", "memory");
    return ret;
}

int main(int argc, char **argv)
{
    long fd = argc > 1 ? raw_open(argv[1]) : -22;
    if (fd < 0) {
        printf("err %ld\n", -fd);
        return 1;
    }
    printf("ok\n");
    return 0;
}
