/* Reload under load: `threads N PATH` runs N threads opening PATH in a loop. Each line on stdin
 * ("flip") is sent after the rules changed; every thread's next open after it reads the new phase
 * must show the new verdict. Prints the count of calls and of late verdicts. A fork storm runs too:
 * every thread forks children that open PATH and report through their exit code. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *path;
static int phase; /* even: expect allowed, odd: expect denied */
static int stop;
static long calls, late, fork_bad, forks;

static int denied(void)
{
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    return errno == EACCES;
}

static void *loop(void *arg)
{
    long me = (long)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_ACQUIRE)) {
        int p = __atomic_load_n(&phase, __ATOMIC_ACQUIRE);
        int d = denied();
        __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
        if (d != (p & 1))
            __atomic_fetch_add(&late, 1, __ATOMIC_RELAXED);
        if (me % 2 == 0 && __atomic_load_n(&calls, __ATOMIC_RELAXED) % 64 == 0) {
            pid_t pid = fork();
            if (pid == 0)
                _exit(denied() == (p & 1) ? 0 : 1);
            int status = 0;
            waitpid(pid, &status, 0);
            __atomic_fetch_add(&forks, 1, __ATOMIC_RELAXED);
            /* the child may see a newer phase than p: only a wrong verdict for a settled phase counts */
            if (WEXITSTATUS(status) && __atomic_load_n(&phase, __ATOMIC_ACQUIRE) == p)
                __atomic_fetch_add(&fork_bad, 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    int n = atoi(argv[1]);
    path = argv[2];
    pthread_t t[64];
    for (long i = 0; i < n && i < 64; i++)
        pthread_create(&t[i], NULL, loop, (void *)i);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] == 'q')
            break;
        __atomic_fetch_add(&phase, 1, __ATOMIC_ACQ_REL);
        printf("phase %d\n", __atomic_load_n(&phase, __ATOMIC_ACQUIRE));
        fflush(stdout);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    for (long i = 0; i < n && i < 64; i++)
        pthread_join(t[i], NULL);
    printf("calls %ld late %ld forks %ld fork_bad %ld\n", calls, late, forks, fork_bad);
    return 0;
}
