/* posix_spawn bound to its oldest symbol version (GLIBC_2.2.5), as programs built long ago are. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <sys/wait.h>

__asm__(".symver posix_spawn,posix_spawn@GLIBC_2.2.5");
extern char **environ;

int main(int argc, char **argv)
{
    pid_t pid;
    if (argc < 2)
        return 2;
    int rc = posix_spawn(&pid, argv[1], NULL, NULL, argv + 1, environ);
    if (rc) {
        printf("err %d\n", rc);
        return 1;
    }
    int status;
    waitpid(pid, &status, 0);
    return WEXITSTATUS(status);
}
