/* A library whose constructor opens a file: hooked calls that may arrive before preguard's own
 * constructor ran. The path comes from PREGUARD_TEST_CTOR_PATH. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((constructor)) static void early(void)
{
    const char *path = getenv("PREGUARD_TEST_CTOR_PATH");
    if (!path)
        return;
    int fd = open(path, O_RDONLY);
    printf("ctor %s\n", fd >= 0 ? "ok" : errno == EACCES ? "denied" : "error");
    fflush(stdout);
    if (fd >= 0)
        close(fd);
}
