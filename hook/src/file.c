/* Opening files: open/openat with their 64-bit and fortified variants, creat, fopen/freopen, and the
 * judgement every path operation shares (hook_judge_file); chdir/fchdir for the working-directory
 * cache. Path operations are in paths.c, descriptor bookkeeping in fd.c. */
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
#define HOOK_PATH(ret, name, params)
#define HOOK_FD(ret, name, params)
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

/* freopen(NULL, mode, f) reopens f's own file in a new mode (a read-only file for writing): judged
 * on the file the stream has open. */
static int judge_reopen(const char *path, const char *mode, FILE *stream)
{
    if (path)
        return judge_stdio(path, mode);
    int excl, bits = stdio_bits(mode, &excl);
    return stream ? hook_judge_file(fileno(stream), "", bits, 1) : 0;
}

HOOK_EXPORT FILE *freopen(const char *path, const char *mode, FILE *stream)
{
    if (hook_enter() && JUDGE(judge_reopen(path, mode, stream)))
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
    if (hook_enter() && JUDGE(judge_reopen(path, mode, stream)))
        return NULL;
    return REAL(freopen64)(path, mode, stream);
}
#endif

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
