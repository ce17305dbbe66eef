/* Reload under load: `threads N PATH` runs N threads opening PATH in a loop; even threads also fork
 * children that open it. Commands on stdin:
 *   p  unsettle (the rules are about to change), answers "prepared"
 *   f  next phase: odd phases expect PATH denied, even ones allowed; answers "phase N" once every
 *      thread made 20 calls in it
 *   w  answers "waited" once every thread made 20 more calls
 *   q  prints "calls C late L forks F fork_bad B" and exits
 * A call counts as late when it started and ended in a settled phase and its verdict is not that
 * phase's: the rules were in place before the phase began, so the first call must already see them. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX 64
static const char *path;
static int n;
static int phase, settled, stop;
static long calls, late, fork_bad, forks;
static long done[MAX]; /* settled calls per thread */

static int denied(void)
{
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    return errno == EACCES;
}

static int state(void)
{
    return __atomic_load_n(&phase, __ATOMIC_SEQ_CST) * 2 + __atomic_load_n(&settled, __ATOMIC_SEQ_CST);
}

static void *loop(void *arg)
{
    long me = (long)arg, mine = 0;
    while (!__atomic_load_n(&stop, __ATOMIC_SEQ_CST)) {
        int before = state();
        int d = denied();
        int after = state();
        __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
        if (before != after || !(before & 1))
            continue;
        if (d != ((before >> 1) & 1))
            __atomic_fetch_add(&late, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&done[me], __atomic_load_n(&done[me], __ATOMIC_RELAXED) + 1, __ATOMIC_SEQ_CST);
        if (me % 2 == 0 && ++mine % 16 == 0) {
            pid_t pid = fork();
            if (pid == 0)
                _exit(denied() == ((before >> 1) & 1) ? 0 : 1);
            int status = 0;
            waitpid(pid, &status, 0);
            __atomic_fetch_add(&forks, 1, __ATOMIC_RELAXED);
            if (WEXITSTATUS(status) && state() == before)
                __atomic_fetch_add(&fork_bad, 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

static void wait_calls(void)
{
    long base[MAX];
    for (int i = 0; i < n; i++)
        base[i] = __atomic_load_n(&done[i], __ATOMIC_SEQ_CST);
    for (int i = 0; i < n; i++)
        while (__atomic_load_n(&done[i], __ATOMIC_SEQ_CST) < base[i] + 20)
            usleep(100);
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    n = atoi(argv[1]);
    if (n < 1 || n > MAX)
        return 2;
    path = argv[2];
    pthread_t t[MAX];
    for (long i = 0; i < n; i++)
        pthread_create(&t[i], NULL, loop, (void *)i);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin) && line[0] != 'q') {
        if (line[0] == 'p') {
            __atomic_store_n(&settled, 0, __ATOMIC_SEQ_CST);
            printf("prepared\n");
        } else if (line[0] == 'f') {
            __atomic_fetch_add(&phase, 1, __ATOMIC_SEQ_CST);
            __atomic_store_n(&settled, 1, __ATOMIC_SEQ_CST);
            wait_calls();
            printf("phase %d\n", __atomic_load_n(&phase, __ATOMIC_SEQ_CST));
        } else if (line[0] == 'w') {
            wait_calls();
            printf("waited\n");
        }
        fflush(stdout);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_SEQ_CST);
    for (long i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    printf("calls %ld late %ld forks %ld fork_bad %ld\n", calls, late, forks, fork_bad);
    return 0;
}
