/* Every spelling of opening a file or changing a path: open/openat and their 64-bit and fortified
 * variants, creat, fopen/freopen, truncate, rename, link, symlink, unlink, rmdir, mkdir, chmod. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hook.h"

#define HOOK(fam, ret, name, params) HOOK_##fam(ret, name, params)
#define HOOK_FILE(ret, name, params) static __attribute__((unused)) ret(*real_##name) params;
#define HOOK_EXEC(ret, name, params)
#define HOOK_NET(ret, name, params)
#include "hooks.def"

/* glibc declares the fortified entry points only under _FORTIFY_SOURCE */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

#define READ PREGUARD_BIT_READ
#define WRITE PREGUARD_BIT_WRITE

int hook_judge_file(int dirfd, const char *path, int bits, int follow)
{
    const struct hook_rules *r = hook_rules();
    int wants = hook_wants(r, PREGUARD_RULES_HAS_FILE, PREGUARD_DEFAULT_FILE);
    if (!path || (!wants && !(bits & WRITE)) || (!path[0] && dirfd == AT_FDCWD))
        return 0; /* an empty path fails with ENOENT by itself */
    char canon[HOOK_PATH_MAX], lexical[HOOK_PATH_MAX];
    int n = hook_canon(dirfd, path, follow, canon);
    if (n < 0) {
        if (n == -ENAMETOOLONG && wants) {
            errno = ENAMETOOLONG; /* cannot be judged, so cannot be allowed */
            return -1;
        }
        return 0; /* the call fails by itself (a bad dirfd, a missing directory) */
    }
    if ((bits & WRITE) && hook_is_protected(canon, (size_t)n)) {
        hook_emit(PREGUARD_KIND_TAMPER, PREGUARD_OUTCOME_BLOCKED, PREGUARD_ACCESS_WRITE, PREGUARD_NO_RULE,
                  r ? r->hdr->revision : 0, canon, (size_t)n);
        errno = EACCES;
        return -1;
    }
    if (!wants)
        return 0;
    struct hook_match m = {0};
    hook_match_path(r, PREGUARD_T_FILE_EXACT, PREGUARD_T_FILE_GLOB, canon, (size_t)n, bits, &m);
    /* the path as written too, so a rule on /bin/x holds where /bin is a link to /usr/bin (an absolute
     * path that is already canonical is its own lexical form) */
    int canonical = path[0] == '/' && !strcmp(path, canon);
    int l = canonical ? -1 : hook_lexical(dirfd, path, lexical);
    if (l > 0 && (l != n || memcmp(lexical, canon, (size_t)n)))
        hook_match_path(r, PREGUARD_T_FILE_EXACT, PREGUARD_T_FILE_GLOB, lexical, (size_t)l, bits, &m);
    int access = (bits & WRITE) && (!m.action || (m.bits & WRITE)) ? PREGUARD_ACCESS_WRITE : PREGUARD_ACCESS_READ;
    if (hook_conclude(r, &m, PREGUARD_DEFAULT_FILE, PREGUARD_KIND_FILE, access, canon, (size_t)n) == HOOK_DENY) {
        errno = EACCES;
        return -1;
    }
    return 0;
}

/* -- open ---------------------------------------------------------------------------------------- */
enum which { W_OPEN, W_OPENAT, W_OPEN64, W_OPENAT64, W_OPEN_2, W_OPEN64_2, W_OPENAT_2, W_OPENAT64_2 };

static int call(enum which w, int dirfd, const char *path, int flags, mode_t mode)
{
    switch (w) {
    case W_OPENAT:
        return REAL(openat)(dirfd, path, flags, mode);
#ifndef PREGUARD_MUSL
    case W_OPEN64:
        return REAL(open64)(path, flags, mode);
    case W_OPENAT64:
        return REAL(openat64)(dirfd, path, flags, mode);
    case W_OPEN_2:
        return REAL(__open_2)(path, flags);
    case W_OPEN64_2:
        return REAL(__open64_2)(path, flags);
    case W_OPENAT_2:
        return REAL(__openat_2)(dirfd, path, flags);
    case W_OPENAT64_2:
        return REAL(__openat64_2)(dirfd, path, flags);
#endif
    default:
        return REAL(open)(path, flags, mode);
    }
}

int hook_open_bits(int flags)
{
    int acc = flags & O_ACCMODE, bits = 0;
    if (acc == O_RDONLY || acc == O_RDWR)
        bits |= READ;
    if (acc == O_WRONLY || acc == O_RDWR || (flags & (O_CREAT | O_TRUNC)))
        bits |= WRITE;
    return bits;
}

static int opened(enum which w, int dirfd, const char *path, int flags, mode_t mode)
{
    if (!hook_enter())
        return call(w, dirfd, path, flags, mode);
    hook_init();
    int saved = errno, bits = hook_open_bits(flags);
    const struct hook_rules *r = hook_rules();
    if (!path || (!hook_wants(r, PREGUARD_RULES_HAS_FILE, PREGUARD_DEFAULT_FILE) && !(bits & WRITE))) {
        hook_leave();
        errno = saved;
        return call(w, dirfd, path, flags, mode);
    }
    int follow = !(flags & O_NOFOLLOW) && !((flags & O_CREAT) && (flags & O_EXCL));
    /* Judge the path with its final component as written and let the kernel tell whether that is a
     * symlink (O_NOFOLLOW fails with ELOOP): a readlink per open costs more than the open. O_PATH
     * with O_NOFOLLOW would open the link itself, so it resolves first. */
    int probe = follow && !(flags & O_PATH);
    if (hook_judge_file(dirfd, path, bits, follow && !probe) < 0) {
        hook_leave();
        return -1;
    }
    errno = saved;
    int fd = call(w, dirfd, path, probe ? flags | O_NOFOLLOW : flags, mode);
    if (probe && fd < 0 && errno == ELOOP) {
        if (hook_judge_file(dirfd, path, bits, 1) < 0) {
            hook_leave();
            return -1;
        }
        errno = saved;
        fd = call(w, dirfd, path, flags, mode);
    }
    hook_leave();
    return fd;
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, unsigned) : 0;
}

HOOK_EXPORT int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return opened(W_OPEN, AT_FDCWD, path, flags, mode);
}

HOOK_EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return opened(W_OPENAT, dirfd, path, flags, mode);
}

HOOK_EXPORT int creat(const char *path, mode_t mode)
{
    return opened(W_OPEN, AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

#ifndef PREGUARD_MUSL
HOOK_EXPORT int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return opened(W_OPEN64, AT_FDCWD, path, flags, mode);
}

HOOK_EXPORT int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return opened(W_OPENAT64, dirfd, path, flags, mode);
}

HOOK_EXPORT int __open_2(const char *path, int flags) { return opened(W_OPEN_2, AT_FDCWD, path, flags, 0); }
HOOK_EXPORT int __open64_2(const char *path, int flags) { return opened(W_OPEN64_2, AT_FDCWD, path, flags, 0); }
HOOK_EXPORT int __openat_2(int dirfd, const char *path, int flags) { return opened(W_OPENAT_2, dirfd, path, flags, 0); }
HOOK_EXPORT int __openat64_2(int dirfd, const char *path, int flags)
{
    return opened(W_OPENAT64_2, dirfd, path, flags, 0);
}

HOOK_EXPORT int creat64(const char *path, mode_t mode)
{
    return opened(W_OPEN64, AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}
#endif

/* -- stdio ---------------------------------------------------------------------------------------- */
static int stdio_bits(const char *mode, int *excl)
{
    int bits = 0;
    *excl = 0;
    for (const char *c = mode; c && *c; c++) {
        if (*c == 'r')
            bits |= READ;
        else if (*c == 'w' || *c == 'a')
            bits |= WRITE;
        else if (*c == '+')
            bits |= READ | WRITE;
        else if (*c == 'x')
            *excl = 1;
        else if (*c == ',')
            break; /* ",ccs=" */
    }
    return bits ? bits : READ;
}

/* Judge under the guard; returns 0 to go on (errno restored) or -1 with errno set. */
#define JUDGE(expr)                                                                                                    \
    __extension__({                                                                                                    \
        hook_init();                                                                                                   \
        int saved_ = errno, rc_ = (expr);                                                                              \
        hook_leave();                                                                                                  \
        if (!rc_)                                                                                                      \
            errno = saved_;                                                                                            \
        rc_;                                                                                                           \
    })

static int judge_stdio(const char *path, const char *mode)
{
    int excl, bits = stdio_bits(mode, &excl);
    return hook_judge_file(AT_FDCWD, path, bits, !excl);
}

HOOK_EXPORT FILE *fopen(const char *path, const char *mode)
{
    if (hook_enter() && JUDGE(judge_stdio(path, mode)))
        return NULL;
    return REAL(fopen)(path, mode);
}

HOOK_EXPORT FILE *freopen(const char *path, const char *mode, FILE *stream)
{
    if (hook_enter() && JUDGE(path ? judge_stdio(path, mode) : 0))
        return NULL;
    return REAL(freopen)(path, mode, stream);
}

#ifndef PREGUARD_MUSL
HOOK_EXPORT FILE *fopen64(const char *path, const char *mode)
{
    if (hook_enter() && JUDGE(judge_stdio(path, mode)))
        return NULL;
    return REAL(fopen64)(path, mode);
}

HOOK_EXPORT FILE *freopen64(const char *path, const char *mode, FILE *stream)
{
    if (hook_enter() && JUDGE(path ? judge_stdio(path, mode) : 0))
        return NULL;
    return REAL(freopen64)(path, mode, stream);
}
#endif

/* -- path operations ------------------------------------------------------------------------------ */
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

/* the working directory is cached for relative paths: moving it drops the cache */
HOOK_EXPORT int chdir(const char *path)
{
    int rc = REAL(chdir)(path);
    hook_cwd_changed();
    return rc;
}

HOOK_EXPORT int fchdir(int fd)
{
    int rc = REAL(fchdir)(fd);
    hook_cwd_changed();
    return rc;
}

/* -- descriptors: closing or replacing a number drops what the directory cache knows about it ------ */
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
