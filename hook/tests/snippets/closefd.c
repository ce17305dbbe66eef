/* A program that closes every descriptor and reuses the numbers must never receive event bytes:
 * `closefd BLOCKED OUT` opens BLOCKED (an event, the pipe is now open), closes all descriptors above
 * 2 the three usual ways, puts OUT on every number up to 1023, and opens BLOCKED again. OUT must stay
 * empty. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    int fd = open(argv[1], O_RDONLY);
    if (fd >= 0)
        close(fd);
    syscall(SYS_close_range, 3, ~0U, 0);
    for (int i = 3; i < 1024; i++)
        close(i);
    int out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (int i = 3; i < 1024; i++)
        if (i != out)
            dup2(out, i);
    for (int k = 0; k < 3; k++) {
        fd = open(argv[1], O_RDONLY);
        if (fd >= 0)
            close(fd);
    }
    printf("done\n");
    return 0;
}
