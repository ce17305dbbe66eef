/* Absolute canonical paths without a system call per component in the steady state: components known
 * not to be symlinks are cached, and the cache is dropped whenever a process of the container renames
 * or removes something (the shared fs_generation counter) or this process changes directory. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hook.h"

/* -- the "not a symlink" cache: a seqlock per slot, never waited on -------------------------------- */
#define SLOTS 512
#define SLOT_LEN 240
struct slot {
    uint32_t seq; /* odd while being written */
    uint16_t len;
    uint64_t generation;
    char path[SLOT_LEN];
};
static struct slot cache[SLOTS];

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = PREGUARD_HASH_OFFSET;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * PREGUARD_HASH_PRIME;
    return h;
}

static int cached(const char *path, size_t len, uint64_t generation)
{
    if (len >= SLOT_LEN)
        return 0;
    struct slot *s = &cache[hash(path, len) % SLOTS];
    uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
    if (seq & 1)
        return 0;
    int hit = s->generation == generation && s->len == len && !memcmp(s->path, path, len);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return hit && __atomic_load_n(&s->seq, __ATOMIC_RELAXED) == seq;
}

static void remember(const char *path, size_t len, uint64_t generation)
{
    if (len >= SLOT_LEN)
        return;
    struct slot *s = &cache[hash(path, len) % SLOTS];
    uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
    if ((seq & 1) || !__atomic_compare_exchange_n(&s->seq, &seq, seq + 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return; /* someone else is writing this slot: skip, it is only a cache */
    s->generation = generation;
    s->len = (uint16_t)len;
    memcpy(s->path, path, len);
    __atomic_store_n(&s->seq, seq + 2, __ATOMIC_RELEASE);
}

/* -- the working directory, cached the same way ------------------------------------------------- */
static struct {
    uint32_t seq;
    uint64_t tag;
    size_t len;
    char path[HOOK_PATH_MAX];
} cwd;
static uint64_t cwd_changes;

void hook_cwd_changed(void) { __atomic_fetch_add(&cwd_changes, 1, __ATOMIC_ACQ_REL); }

static int get_cwd(char *out)
{
    /* renames can move the directory we are in: the fs generation is part of the tag */
    uint64_t tag = hook_fs_generation() * 0x9e3779b97f4a7c15u + __atomic_load_n(&cwd_changes, __ATOMIC_ACQUIRE);
    uint32_t seq = __atomic_load_n(&cwd.seq, __ATOMIC_ACQUIRE);
    if (!(seq & 1) && cwd.tag == tag && cwd.len) {
        size_t len = cwd.len;
        if (len < HOOK_PATH_MAX) {
            memcpy(out, cwd.path, len + 1);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (__atomic_load_n(&cwd.seq, __ATOMIC_RELAXED) == seq)
                return (int)len;
        }
    }
    long n = hook_sys(SYS_getcwd, (long)out, HOOK_PATH_MAX, 0, 0, 0, 0);
    if (n <= 1 || out[0] != '/')
        return -ENOENT; /* unreachable (outside our root): nothing sensible to match */
    size_t len = (size_t)n - 1;
    seq = __atomic_load_n(&cwd.seq, __ATOMIC_RELAXED);
    if (!(seq & 1) && __atomic_compare_exchange_n(&cwd.seq, &seq, seq + 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        memcpy(cwd.path, out, len + 1);
        cwd.len = len;
        cwd.tag = tag;
        __atomic_store_n(&cwd.seq, seq + 2, __ATOMIC_RELEASE);
    }
    return (int)len;
}

/* -- directory descriptors: their paths cached per descriptor number --------------------------------
 * An entry holds while nothing closed or replaced that number (every close, dup2, dup3, close_range,
 * closefrom, closedir and fclose bumps the slot's epoch, lock-free, safe in signal handlers) and no
 * rename or removal moved the directory (the fs generation). */
#define FD_SLOTS 256
#define FD_LEN 232
static struct {
    uint32_t seq;
    int fd;
    uint64_t epoch; /* bumped on every close of a number in this slot */
    uint64_t epoch_at, generation, flush_at;
    uint16_t len;
    char path[FD_LEN];
} fds[FD_SLOTS];

static uint64_t fd_flushes; /* bumped to drop every entry at once */

void hook_caches_flush(void)
{
    __atomic_fetch_add(&fd_flushes, 1, __ATOMIC_ACQ_REL);
    hook_cwd_changed();
}

void hook_fd_closed(int fd)
{
    if (fd >= 0)
        __atomic_fetch_add(&fds[(unsigned)fd % FD_SLOTS].epoch, 1, __ATOMIC_ACQ_REL);
}

uint64_t hook_fd_epoch(int fd) { return __atomic_load_n(&fds[(unsigned)fd % FD_SLOTS].epoch, __ATOMIC_ACQUIRE); }

void hook_fds_closed(unsigned lo, unsigned hi)
{
    for (unsigned i = 0; i < FD_SLOTS && lo + i <= hi && lo + i >= lo; i++)
        __atomic_fetch_add(&fds[(lo + i) % FD_SLOTS].epoch, 1, __ATOMIC_ACQ_REL);
}

static int fd_path(int fd, char *out)
{
    if (fd < 0)
        return -EBADF;
    uint64_t generation = hook_fs_generation(), flush = __atomic_load_n(&fd_flushes, __ATOMIC_ACQUIRE);
    __typeof__(fds[0]) *s = &fds[(unsigned)fd % FD_SLOTS];
    uint64_t epoch = __atomic_load_n(&s->epoch, __ATOMIC_ACQUIRE);
    uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
    if (!(seq & 1) && s->fd == fd && s->epoch_at == epoch && s->generation == generation && s->flush_at == flush &&
        s->len) {
        size_t len = s->len < FD_LEN ? s->len : 0;
        memcpy(out, s->path, len);
        out[len] = 0;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (len && __atomic_load_n(&s->seq, __ATOMIC_RELAXED) == seq)
            return (int)len;
    }
    char link[32] = "/proc/self/fd/";
    char digits[12];
    int n = 0;
    unsigned v = (unsigned)fd;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    size_t at = strlen(link);
    while (n)
        link[at++] = digits[--n];
    link[at] = 0;
    long len = hook_sys(SYS_readlinkat, AT_FDCWD, (long)link, (long)out, HOOK_PATH_MAX - 1, 0, 0);
    if (len <= 0)
        return len < 0 ? -errno : -ENOENT;
    out[len] = 0;
    if (out[0] != '/')
        return -ENOTDIR; /* a pipe or socket: not a directory */
    seq = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
    if (len < FD_LEN && !(seq & 1) &&
        __atomic_compare_exchange_n(&s->seq, &seq, seq + 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        s->fd = fd;
        s->epoch_at = epoch; /* read before the readlink: a close since then invalidates */
        s->generation = generation;
        s->flush_at = flush;
        s->len = (uint16_t)len;
        memcpy(s->path, out, (size_t)len);
        __atomic_store_n(&s->seq, seq + 2, __ATOMIC_RELEASE);
    }
    return (int)len;
}

static int base(int dirfd, const char *path, char *out)
{
    if (path[0] == '/') {
        out[0] = '/';
        out[1] = 0;
        return 1;
    }
    return dirfd == AT_FDCWD ? get_cwd(out) : fd_path(dirfd, out);
}

static size_t pop(char *out, size_t len)
{
    while (len > 1 && out[len - 1] != '/')
        len--;
    if (len > 1)
        len--; /* the slash, unless it is the root */
    out[len] = 0;
    return len;
}

static int walk(int dirfd, const char *path, int follow, int resolve, char *out)
{
    size_t plen = strnlen(path, HOOK_PATH_MAX);
    if (plen >= HOOK_PATH_MAX)
        return -ENAMETOOLONG;
    int b = base(dirfd, path, out);
    if (b < 0)
        return b;
    size_t len = (size_t)b;
    char rem[HOOK_PATH_MAX], link[HOOK_PATH_MAX];
    memcpy(rem, path, plen + 1);
    char *r = rem;
    int links = 0;
    uint64_t generation = resolve ? hook_fs_generation() : 0;
    while (*r) {
        while (*r == '/')
            r++;
        if (!*r)
            break;
        const char *c = r;
        while (*r && *r != '/')
            r++;
        size_t clen = (size_t)(r - c);
        const char *q = r;
        while (*q == '/')
            q++;
        int last = !*q, trailing_slash = last && q != r;
        if (clen == 1 && c[0] == '.')
            continue;
        if (clen == 2 && c[0] == '.' && c[1] == '.') {
            len = pop(out, len);
            continue;
        }
        if (len + 1 + clen >= HOOK_PATH_MAX)
            return -ENAMETOOLONG;
        if (len > 1)
            out[len++] = '/';
        memcpy(out + len, c, clen);
        len += clen;
        out[len] = 0;
        if (!resolve || (last && !follow && !trailing_slash) || cached(out, len, generation))
            continue;
        long n = hook_sys(SYS_readlinkat, AT_FDCWD, (long)out, (long)link, sizeof link - 1, 0, 0);
        if (n < 0) {
            if (errno == EINVAL)
                remember(out, len, generation); /* exists, not a symlink */
            else
                resolve = 0; /* missing: the rest can only be taken as written */
            continue;
        }
        if (++links > 40)
            return -ELOOP;
        size_t rest = strlen(r);
        if ((size_t)n + 1 + rest >= HOOK_PATH_MAX)
            return -ENAMETOOLONG;
        memmove(rem + n + 1, r, rest + 1);
        memcpy(rem, link, (size_t)n);
        rem[n] = rest ? '/' : 0;
        r = rem;
        if (link[0] == '/') {
            out[0] = '/';
            out[1] = 0;
            len = 1;
        } else {
            len = pop(out, len);
        }
    }
    return (int)len;
}

int hook_canon(int dirfd, const char *path, int follow, char *out)
{
    int saved = errno;
    int n = walk(dirfd, path, follow, 1, out);
    errno = saved;
    return n;
}

int hook_lexical(int dirfd, const char *path, char *out)
{
    int saved = errno;
    int n = walk(dirfd, path, 0, 0, out);
    errno = saved;
    return n;
}

static int under(const char *canon, size_t len, const char *dir, size_t dlen)
{
    return len >= dlen && !memcmp(canon, dir, dlen) && (len == dlen || canon[dlen] == '/' || dlen == 1);
}

int hook_is_protected(const char *canon, size_t len)
{
    static const char preload[] = "/etc/ld.so.preload";
    if (len == sizeof preload - 1 && !memcmp(canon, preload, len))
        return 1;
    char scratch[HOOK_PATH_MAX];
    const char *dir;
    size_t dlen = hook_directory(&dir, scratch);
    return dlen > 1 && under(canon, len, dir, dlen);
}
