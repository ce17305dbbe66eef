/* posix_spawn and posix_spawnp bound to their oldest symbol version (GLIBC_2.2.5), as programs built
 * long ago are: `spawn_old spawn|spawnp PROGRAM args...`. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

__asm__(".symver posix_spawn,posix_spawn@GLIBC_2.2.5");
__asm__(".symver posix_spawnp,posix_spawnp@GLIBC_2.2.5");
extern char **environ;

int main(int argc, char **argv)
{
    pid_t pid;
    if (argc < 3)
        return 2;
    int rc = !strcmp(argv[1], "spawnp") ? posix_spawnp(&pid, argv[2], NULL, NULL, argv + 2, environ)
                                        : posix_spawn(&pid, argv[2], NULL, NULL, argv + 2, environ);
    if (rc) {
        printf("err %d\n", rc);
        return 1;
    }
    int status;
    waitpid(pid, &status, 0);
    return WEXITSTATUS(status);
}
