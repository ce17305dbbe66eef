/* libc's syscall(): a program that calls syscall(SYS_openat, ...) would get around every hook, so the
 * numbers that reach the same effects are judged here before the real syscall() runs. (Inline
 * `syscall` instructions cannot be seen by any preload library.) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hook.h"

#define WRITE PREGUARD_BIT_WRITE

static long (*real_syscall)(long, ...);

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#define RESOLVE_NO_SYMLINKS_ 0x04 /* linux/openat2.h, which old headers lack */

struct open_how_ {
    uint64_t flags, mode, resolve;
};

/* the second judgement only when the first allowed (one event per call) */
#define EITHER(x, y) ((x) < 0 ? -1 : (y))

/* 0 to go on, -1 with errno set when blocked. */
static int judge(long nr, long a, long b, long c, long d, long e, long f)
{
    switch (nr) {
#ifdef SYS_open
    case SYS_open:
        return hook_judge_file(AT_FDCWD, (const char *)a, hook_open_bits((int)b), !(b & O_NOFOLLOW));
    case SYS_creat:
        return hook_judge_file(AT_FDCWD, (const char *)a, WRITE, 1);
    case SYS_rename:
        return EITHER(hook_judge_file(AT_FDCWD, (const char *)a, WRITE, 0),
                      hook_judge_file(AT_FDCWD, (const char *)b, WRITE, 0));
    case SYS_link:
        return EITHER(hook_judge_file(AT_FDCWD, (const char *)a, PREGUARD_BIT_READ | WRITE, 0),
                      hook_judge_file(AT_FDCWD, (const char *)b, WRITE, 0));
    case SYS_symlink:
        return hook_judge_file(AT_FDCWD, (const char *)b, WRITE, 0);
    case SYS_unlink:
    case SYS_rmdir:
    case SYS_mkdir:
    case SYS_mknod:
        return hook_judge_file(AT_FDCWD, (const char *)a, WRITE, 0);
    case SYS_chmod:
    case SYS_truncate:
        return hook_judge_file(AT_FDCWD, (const char *)a, WRITE, 1);
#endif
    case SYS_openat:
        return hook_judge_file((int)a, (const char *)b, hook_open_bits((int)c), !(c & O_NOFOLLOW));
    case SYS_openat2: {
        const struct open_how_ *how = (const void *)c;
        if (!how)
            return 0;
        int flags = (int)how->flags;
        return hook_judge_file((int)a, (const char *)b, hook_open_bits(flags),
                               !(flags & O_NOFOLLOW) && !(how->resolve & RESOLVE_NO_SYMLINKS_));
    }
    case SYS_renameat:
    case SYS_renameat2:
        return EITHER(hook_judge_file((int)a, (const char *)b, WRITE, 0),
                      hook_judge_file((int)c, (const char *)d, WRITE, 0));
    case SYS_linkat:
        return EITHER(hook_judge_file((int)a, (const char *)b, PREGUARD_BIT_READ | WRITE, (e & AT_SYMLINK_FOLLOW) != 0),
                      hook_judge_file((int)c, (const char *)d, WRITE, 0));
    case SYS_symlinkat:
        return hook_judge_file((int)b, (const char *)c, WRITE, 0);
    case SYS_unlinkat:
    case SYS_mkdirat:
    case SYS_mknodat:
        return hook_judge_file((int)a, (const char *)b, WRITE, 0);
    case SYS_fchmodat:
        return hook_judge_file((int)a, (const char *)b, WRITE, 1);
    case SYS_fchmod:
        return hook_judge_file((int)a, "", WRITE, 1);
    case SYS_execve:
        return hook_judge_exec(AT_FDCWD, (const char *)a, (char *const *)b, 1);
    case SYS_execveat:
        return hook_judge_exec((int)a, (const char *)b, (char *const *)c, !(e & AT_SYMLINK_NOFOLLOW));
    case SYS_connect:
        return hook_judge_net((int)a, (const void *)b, (unsigned)c, PREGUARD_ACCESS_CONNECT, 0);
    case SYS_sendto:
        return e ? hook_judge_net((int)a, (const void *)e, (unsigned)f, PREGUARD_ACCESS_SEND, (int)d) : 0;
    default:
        return 0;
    }
}

HOOK_EXPORT long syscall(long nr, ...)
{
    va_list ap;
    va_start(ap, nr);
    long a = va_arg(ap, long), b = va_arg(ap, long), c = va_arg(ap, long);
    long d = va_arg(ap, long), e = va_arg(ap, long), f = va_arg(ap, long);
    va_end(ap);
    /* descriptors closed this way must still drop what the caches know about the numbers */
    if (nr == SYS_close)
        hook_fd_closed((int)a);
#ifdef SYS_dup2
    else if (nr == SYS_dup2)
        hook_fd_closed((int)b);
#endif
    else if (nr == SYS_dup3)
        hook_fd_closed((int)b);
    else if (nr == SYS_close_range)
        hook_fds_closed((unsigned)a, (unsigned)b);
    else if (nr == SYS_chdir || nr == SYS_fchdir)
        hook_cwd_changed();
    if (hook_enter()) {
        hook_init();
        int saved = errno;
        if (judge(nr, a, b, c, d, e, f) < 0)
            return -1;
        errno = saved;
    }
    if (nr == SYS_execve || nr == SYS_execveat)
        hook_caches_flush(); /* see exec.c: a vfork child's cache entries must not outlive it */
    if (!real_syscall) {
        hook_fn fn = hook_resolve("syscall", (hook_fn)&syscall);
        memcpy(&real_syscall, &fn, sizeof fn);
    }
    return real_syscall(nr, a, b, c, d, e, f);
}
