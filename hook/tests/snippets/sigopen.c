/* `sigopen SECRET ALLOWED N`: a timer signal handler opens SECRET while the main loop opens ALLOWED
 * N times, so the handler often interrupts a hooked call being judged. Prints how often the handler
 * ran and how often its open succeeded: it must never succeed. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <unistd.h>

static const char *secret;
static volatile sig_atomic_t runs, leaks;

static void handler(int sig)
{
    (void)sig;
    runs++;
    int fd = open(secret, O_RDONLY);
    if (fd >= 0) {
        leaks++;
        close(fd);
    }
}

int main(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    secret = argv[1];
    struct sigaction sa = {.sa_handler = handler, .sa_flags = SA_RESTART};
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval every = {{0, 50}, {0, 50}};
    setitimer(ITIMER_REAL, &every, NULL);
    long n = atol(argv[3]);
    for (long i = 0; i < n || runs < 1000; i++) {
        int fd = open(argv[2], O_RDONLY);
        if (fd >= 0)
            close(fd);
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("runs %d leaks %d\n", (int)runs, (int)leaks);
    return 0;
}
