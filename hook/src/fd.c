/* Descriptor bookkeeping: closing or replacing a number drops what the directory-descriptor cache
 * and the event pipe know about it. Nothing is judged here. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hook.h"

#define HOOK(fam, ret, name, params) HOOK_##fam(ret, name, params)
#define HOOK_FILE(ret, name, params)
#define HOOK_EXEC(ret, name, params)
#define HOOK_NET(ret, name, params)
#define HOOK_PATH(ret, name, params)
#define HOOK_FD(ret, name, params) static __attribute__((unused)) ret(*real_##name) params;
#include "hooks.def"

HOOK_EXPORT int close(int fd)
{
    hook_fd_closed(fd);
    return REAL(close)(fd);
}

HOOK_EXPORT int dup2(int old, int fd)
{
    hook_fd_closed(fd);
    return REAL(dup2)(old, fd);
}

HOOK_EXPORT int dup3(int old, int fd, int flags)
{
    hook_fd_closed(fd);
    return REAL(dup3)(old, fd, flags);
}

/* closedir and fclose close with libc's internal close, which no preload sees */
HOOK_EXPORT int closedir(DIR *dir)
{
    hook_fd_closed(dirfd(dir)); /* closedir(NULL) crashes in libc as it would without us */
    return REAL(closedir)(dir);
}

HOOK_EXPORT int fclose(FILE *stream)
{
    if (stream)
        hook_fd_closed(fileno(stream));
    return REAL(fclose)(stream);
}

#ifndef PREGUARD_MUSL
int close_range(unsigned int lo, unsigned int hi, int flags);
HOOK_EXPORT int close_range(unsigned int lo, unsigned int hi, int flags)
{
    hook_fds_closed(lo, hi);
    if (!REAL(close_range))
        return (int)hook_sys(SYS_close_range, lo, hi, flags, 0, 0, 0);
    return real_close_range(lo, hi, flags);
}

void closefrom(int lo);
HOOK_EXPORT void closefrom(int lo)
{
    hook_fds_closed(lo < 0 ? 0 : (unsigned)lo, ~0u);
    if (!REAL(closefrom)) {
        hook_sys(SYS_close_range, lo, ~0u, 0, 0, 0, 0);
        return;
    }
    real_closefrom(lo);
}
#endif

/* Resolved at start-up, not on first use: close may be called from a signal handler, where dlsym
 * must not run. (Resolving every symbol eagerly costs tens of microseconds per process start.) */
void hook_resolve_early(void)
{
    (void)REAL(close);
    (void)REAL(dup2);
    (void)REAL(dup3);
}
