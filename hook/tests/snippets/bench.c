/* Times N iterations of one operation in-process: `bench <op> N [arg]`, prints CPU and wall ns per call.
 * open: open+close of an absolute path; rel: a relative path; at: openat on a directory descriptor;
 * exec: fork + execve of a small program + wait; connect: a loopback TCP connect, accepted and
 * closed; hit: open of a blocked path (the event is written). Times are CPU time, see now(). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* CPU time (user + system) of this process and its waited-for children: on a shared machine other
 * processes stretch wall-clock time, not this. */
static double now(void)
{
    struct rusage self, kids;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &kids);
    double us = 0;
    struct timeval *tv[] = {&self.ru_utime, &self.ru_stime, &kids.ru_utime, &kids.ru_stime};
    for (int i = 0; i < 4; i++)
        us += (double)tv[i]->tv_sec * 1e6 + (double)tv[i]->tv_usec;
    return us * 1000;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    const char *op = argv[1], *arg = argc > 3 ? argv[3] : "/etc/hostname";
    long n = atol(argv[2]);
    int dirfd = -1, listener = -1;
    struct sockaddr_in addr = {.sin_family = AF_INET};
    if (!strcmp(op, "at") || !strcmp(op, "rel")) {
        char d[4096];
        strncpy(d, arg, sizeof d - 1);
        d[sizeof d - 1] = 0;
        char *slash = strrchr(d, '/');
        *slash = 0;
        dirfd = open(d, O_RDONLY | O_DIRECTORY);
        if (!strcmp(op, "rel") && chdir(d) != 0)
            return 1;
        arg = strrchr(arg, '/') + 1;
    }
    if (!strcmp(op, "connect")) {
        listener = socket(AF_INET, SOCK_STREAM, 0);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bind(listener, (struct sockaddr *)&addr, sizeof addr);
        socklen_t len = sizeof addr;
        getsockname(listener, (struct sockaddr *)&addr, &len);
        listen(listener, 64);
    }
    char *const exec_argv[] = {(char *)arg, NULL};
    double t0 = now(), w0 = wall();
    for (long i = 0; i < n; i++) {
        if (!strcmp(op, "open") || !strcmp(op, "rel") || !strcmp(op, "hit")) {
            int fd = open(arg, O_RDONLY);
            if (fd >= 0)
                close(fd);
        } else if (!strcmp(op, "at")) {
            int fd = openat(dirfd, arg, O_RDONLY);
            if (fd >= 0)
                close(fd);
        } else if (!strcmp(op, "exec")) {
            pid_t pid = fork();
            if (pid == 0) {
                execve(arg, exec_argv, environ);
                _exit(127);
            }
            waitpid(pid, NULL, 0);
        } else if (!strcmp(op, "connect")) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            connect(s, (struct sockaddr *)&addr, sizeof addr);
            int a = accept(listener, NULL, NULL);
            close(a);
            close(s);
        }
    }
    /* CPU ns per call, then wall-clock ns per call (what counts under strace, where the process waits) */
    printf("%.1f %.1f\n", (now() - t0) / (double)n, (wall() - w0) / (double)n);
    return 0;
}
