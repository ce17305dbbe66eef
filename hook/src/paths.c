/* Path operations that write: truncate, rename, link, symlink, unlink, remove, rmdir, mkdir, mknod,
 * chmod, fchmod, and the mkstemp family (libc creates those through internal calls no preload sees). */
#define _GNU_SOURCE
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
#define HOOK_PATH(ret, name, params) static __attribute__((unused)) ret(*real_##name) params;
#define HOOK_FD(ret, name, params)
#include "hooks.def"

#define READ PREGUARD_BIT_READ
#define WRITE PREGUARD_BIT_WRITE

static int judge_two(int d1, const char *p1, int bits1, int follow1, int d2, const char *p2)
{
    return hook_judge_file(d1, p1, bits1, follow1) < 0 || hook_judge_file(d2, p2, WRITE, 0) < 0 ? -1 : 0;
}

/* A call that renames or removes: drop cached path facts before and after it. */
#define CHANGING(expr)                                                                                                 \
    __extension__({                                                                                                    \
        hook_fs_changed();                                                                                             \
        int rc2_ = (expr);                                                                                             \
        int e2_ = errno;                                                                                               \
        hook_fs_changed();                                                                                             \
        errno = e2_;                                                                                                   \
        rc2_;                                                                                                          \
    })

HOOK_EXPORT int truncate(const char *path, off_t len)
{
    if (hook_enter() && JUDGE(hook_judge_file(AT_FDCWD, path, WRITE, 1)))
        return -1;
    return REAL(truncate)(path, len);
}

HOOK_EXPORT int rename(const char *from, const char *to)
{
    if (hook_enter() && JUDGE(judge_two(AT_FDCWD, from, WRITE, 0, AT_FDCWD, to)))
        return -1;
    return CHANGING(REAL(rename)(from, to));
}

HOOK_EXPORT int renameat(int fd1, const char *from, int fd2, const char *to)
{
    if (hook_enter() && JUDGE(judge_two(fd1, from, WRITE, 0, fd2, to)))
        return -1;
    return CHANGING(REAL(renameat)(fd1, from, fd2, to));
}

/* A new name for a protected file would get around its rules: linking judges the source as read and
 * written. */
HOOK_EXPORT int link(const char *from, const char *to)
{
    if (hook_enter() && JUDGE(judge_two(AT_FDCWD, from, READ | WRITE, 0, AT_FDCWD, to)))
        return -1;
    return CHANGING(REAL(link)(from, to));
}

HOOK_EXPORT int linkat(int fd1, const char *from, int fd2, const char *to, int flags)
{
    if (hook_enter() && JUDGE(judge_two(fd1, from, READ | WRITE, (flags & AT_SYMLINK_FOLLOW) != 0, fd2, to)))
        return -1;
    return CHANGING(REAL(linkat)(fd1, from, fd2, to, flags));
}

HOOK_EXPORT int symlink(const char *target, const char *path)
{
    if (hook_enter() && JUDGE(hook_judge_file(AT_FDCWD, path, WRITE, 0)))
        return -1;
    return CHANGING(REAL(symlink)(target, path));
}

HOOK_EXPORT int symlinkat(const char *target, int dirfd, const char *path)
{
    if (hook_enter() && JUDGE(hook_judge_file(dirfd, path, WRITE, 0)))
        return -1;
    return CHANGING(REAL(symlinkat)(target, dirfd, path));
}

HOOK_EXPORT int unlink(const char *path)
{
    if (hook_enter() && JUDGE(hook_judge_file(AT_FDCWD, path, WRITE, 0)))
        return -1;
    return CHANGING(REAL(unlink)(path));
}

HOOK_EXPORT int unlinkat(int dirfd, const char *path, int flags)
{
    if (hook_enter() && JUDGE(hook_judge_file(dirfd, path, WRITE, 0)))
        return -1;
    return CHANGING(REAL(unlinkat)(dirfd, path, flags));
}

HOOK_EXPORT int rmdir(const char *path)
{
    if (hook_enter() && JUDGE(hook_judge_file(AT_FDCWD, path, WRITE, 0)))
        return -1;
    return CHANGING(REAL(rmdir)(path));
}

HOOK_EXPORT int mkdir(const char *path, mode_t mode)
{
    if (hook_enter() && JUDGE(hook_judge_file(AT_FDCWD, path, WRITE, 0)))
        return -1;
    return REAL(mkdir)(path, mode);
}

HOOK_EXPORT int mkdirat(int dirfd, const char *path, mode_t mode)
{
    if (hook_enter() && JUDGE(hook_judge_file(dirfd, path, WRITE, 0)))
        return -1;
    return REAL(mkdirat)(dirfd, path, mode);
}

HOOK_EXPORT int chmod(const char *path, mode_t mode)
{
    if (hook_enter() && JUDGE(hook_judge_file(AT_FDCWD, path, WRITE, 1)))
        return -1;
    return REAL(chmod)(path, mode);
}

HOOK_EXPORT int fchmodat(int dirfd, const char *path, mode_t mode, int flags)
{
    if (hook_enter() && JUDGE(hook_judge_file(dirfd, path, WRITE, !(flags & AT_SYMLINK_NOFOLLOW))))
        return -1;
    return REAL(fchmodat)(dirfd, path, mode, flags);
}

#ifndef PREGUARD_MUSL
HOOK_EXPORT int truncate64(const char *path, off64_t len)
{
    if (hook_enter() && JUDGE(hook_judge_file(AT_FDCWD, path, WRITE, 1)))
        return -1;
    return REAL(truncate64)(path, len);
}

int renameat2(int fd1, const char *from, int fd2, const char *to, unsigned int flags);
HOOK_EXPORT int renameat2(int fd1, const char *from, int fd2, const char *to, unsigned int flags)
{
    if (hook_enter() && JUDGE(judge_two(fd1, from, WRITE, 0, fd2, to)))
        return -1;
    if (!REAL(renameat2)) {
        errno = ENOSYS;
        return -1;
    }
    return CHANGING(real_renameat2(fd1, from, fd2, to, flags));
}
#endif

/* -- other ways libc creates, removes or changes a path through its internal calls ------------------ */
HOOK_EXPORT int remove(const char *path)
{
    if (hook_enter() && JUDGE(hook_judge_file(AT_FDCWD, path, WRITE, 0)))
        return -1;
    return CHANGING(REAL(remove)(path));
}

/* The template names the directory the file appears in: a rule on /var/www and everything below
 * covers the template /var/www/tXXXXXX. */
#define TEMPLATE_HOOK(ret, name, params, args, fail)                                                                   \
    HOOK_EXPORT ret name params                                                                                        \
    {                                                                                                                  \
        if (hook_enter() && JUDGE(hook_judge_file(AT_FDCWD, tmpl, WRITE, 0)))                                          \
            return fail;                                                                                               \
        return REAL(name) args;                                                                                        \
    }
TEMPLATE_HOOK(int, mkstemp, (char *tmpl), (tmpl), -1)
TEMPLATE_HOOK(int, mkostemp, (char *tmpl, int flags), (tmpl, flags), -1)
TEMPLATE_HOOK(int, mkstemps, (char *tmpl, int suffix), (tmpl, suffix), -1)
TEMPLATE_HOOK(int, mkostemps, (char *tmpl, int suffix, int flags), (tmpl, suffix, flags), -1)
TEMPLATE_HOOK(char *, mkdtemp, (char *tmpl), (tmpl), NULL)
#ifndef PREGUARD_MUSL
int mkstemp64(char *tmpl);
int mkostemp64(char *tmpl, int flags);
int mkstemps64(char *tmpl, int suffix);
int mkostemps64(char *tmpl, int suffix, int flags);
TEMPLATE_HOOK(int, mkstemp64, (char *tmpl), (tmpl), -1)
TEMPLATE_HOOK(int, mkostemp64, (char *tmpl, int flags), (tmpl, flags), -1)
TEMPLATE_HOOK(int, mkstemps64, (char *tmpl, int suffix), (tmpl, suffix), -1)
TEMPLATE_HOOK(int, mkostemps64, (char *tmpl, int suffix, int flags), (tmpl, suffix, flags), -1)
#endif

HOOK_EXPORT int mknod(const char *path, mode_t mode, dev_t dev)
{
    if (hook_enter() && JUDGE(hook_judge_file(AT_FDCWD, path, WRITE, 0)))
        return -1;
    return REAL(mknod)(path, mode, dev);
}

HOOK_EXPORT int mknodat(int dirfd, const char *path, mode_t mode, dev_t dev)
{
    if (hook_enter() && JUDGE(hook_judge_file(dirfd, path, WRITE, 0)))
        return -1;
    return REAL(mknodat)(dirfd, path, mode, dev);
}

#ifndef PREGUARD_MUSL
/* glibc before 2.33 inlined mknod into these */
int __xmknod(int ver, const char *path, mode_t mode, dev_t *dev);
int __xmknodat(int ver, int dirfd, const char *path, mode_t mode, dev_t *dev);
HOOK_EXPORT int __xmknod(int ver, const char *path, mode_t mode, dev_t *dev)
{
    if (hook_enter() && JUDGE(hook_judge_file(AT_FDCWD, path, WRITE, 0)))
        return -1;
    return REAL(__xmknod)(ver, path, mode, dev);
}

HOOK_EXPORT int __xmknodat(int ver, int dirfd, const char *path, mode_t mode, dev_t *dev)
{
    if (hook_enter() && JUDGE(hook_judge_file(dirfd, path, WRITE, 0)))
        return -1;
    return REAL(__xmknodat)(ver, dirfd, path, mode, dev);
}
#endif

/* A mode change needs no write access to the file, so a read-only descriptor would get around a
 * write rule: judge the path the descriptor names. */
HOOK_EXPORT int fchmod(int fd, mode_t mode)
{
    if (hook_enter() && JUDGE(hook_judge_file(fd, "", WRITE, 1)))
        return -1;
    return REAL(fchmod)(fd, mode);
}
