/* Event records: built on the stack, written to the container's pipe in one non-blocking write.
 *
 * The pipe's descriptor is ours only as long as fstat says it is still the same FIFO: a program that
 * closed it (closefrom, a loop over close) or dup2'd something over it gets a fresh open from us, never
 * an event in its own file. SIGPIPE is blocked around the write and a signal we caused is consumed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hook.h"

#define HIGH_FD 500 /* above what programs usually use, so a close loop over low numbers misses it */

static int pipe_fd = -1;
static uint64_t pipe_dev, pipe_ino, pipe_epoch;
static uint32_t pipe_pid; /* the process whose descriptor table holds pipe_fd (a vfork child shares
                           * our memory but not our descriptors) */

static void count(int drop)
{
    struct preguard_control *c = __atomic_load_n(&hook_control, __ATOMIC_ACQUIRE);
    if (!c)
        return;
    if (hook_control_writable())
        __atomic_fetch_add(drop ? &c->drops : &c->events, 1, __ATOMIC_RELAXED);
}

static int ours(int fd, uint32_t pid)
{
    /* Opened by this process and nothing closed or replaced the number through libc since: still
     * ours, no system call needed. Otherwise fstat decides (an inline close is the one case the
     * epoch cannot see, and the descriptor sits high, where programs rarely land). */
    if (fd < 0)
        return 0;
    if (__atomic_load_n(&pipe_pid, __ATOMIC_ACQUIRE) == pid &&
        hook_fd_epoch(fd) == __atomic_load_n(&pipe_epoch, __ATOMIC_ACQUIRE))
        return 1;
    struct stat st;
    if (SYS3(SYS_fstat, fd, &st, 0) != 0 || !S_ISFIFO(st.st_mode) ||
        (uint64_t)st.st_dev != __atomic_load_n(&pipe_dev, __ATOMIC_RELAXED) ||
        (uint64_t)st.st_ino != __atomic_load_n(&pipe_ino, __ATOMIC_RELAXED))
        return 0;
    /* a forked child inherited it: trust it from now on in this process */
    __atomic_store_n(&pipe_epoch, hook_fd_epoch(fd), __ATOMIC_RELEASE);
    __atomic_store_n(&pipe_pid, pid, __ATOMIC_RELEASE);
    return 1;
}

static void close_own(int fd)
{
    hook_fd_closed(fd); /* the number's epoch moves as for any close */
    SYS3(SYS_close, fd, 0, 0);
}

static int open_pipe(uint32_t pid)
{
    char path[HOOK_PATH_MAX];
    const char *dir;
    size_t len = hook_directory(&dir, path);
    if (!len || len + sizeof "/events" > sizeof path)
        return -1;
    if (dir != path)
        memcpy(path, dir, len);
    memcpy(path + len, "/events", sizeof "/events");
    long fd = SYS3(SYS_openat, AT_FDCWD, path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -1; /* ENXIO: nobody reads; the event is a drop */
    struct stat st;
    if (SYS3(SYS_fstat, fd, &st, 0) != 0 || !S_ISFIFO(st.st_mode)) {
        close_own((int)fd);
        return -1;
    }
    long high = SYS3(SYS_fcntl, fd, F_DUPFD_CLOEXEC, HIGH_FD);
    if (high >= 0) {
        close_own((int)fd);
        fd = high;
    }
    __atomic_store_n(&pipe_epoch, hook_fd_epoch((int)fd), __ATOMIC_RELEASE);
    __atomic_store_n(&pipe_pid, pid, __ATOMIC_RELEASE);
    __atomic_store_n(&pipe_dev, (uint64_t)st.st_dev, __ATOMIC_RELAXED);
    __atomic_store_n(&pipe_ino, (uint64_t)st.st_ino, __ATOMIC_RELAXED);
    int expected = -1;
    if (!__atomic_compare_exchange_n(&pipe_fd, &expected, (int)fd, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        if (ours(expected, pid)) {
            close_own((int)fd);
            return expected;
        }
        __atomic_store_n(&pipe_fd, (int)fd, __ATOMIC_RELEASE);
    }
    return (int)fd;
}

static long write_quietly(int fd, const void *buf, size_t len)
{
    /* a reader that went away must cost a drop, never a SIGPIPE */
    uint64_t set = 1ULL << (SIGPIPE - 1), old = 0, before = 0;
    hook_sys(SYS_rt_sigprocmask, SIG_BLOCK, (long)&set, (long)&old, 8, 0, 0);
    if (old & set) /* the program blocks SIGPIPE itself: leave one it already had pending */
        hook_sys(SYS_rt_sigpending, (long)&before, 8, 0, 0, 0, 0);
    long n = SYS3(SYS_write, fd, buf, len);
    int err = n < 0 ? errno : 0;
    if (err == EPIPE && !(before & set)) {
        struct timespec zero = {0, 0};
        hook_sys(SYS_rt_sigtimedwait, (long)&set, 0, (long)&zero, 8, 0, 0);
    }
    hook_sys(SYS_rt_sigprocmask, SIG_SETMASK, (long)&old, 0, 8, 0, 0);
    errno = err;
    return n;
}

/* /proc/self/exe, read at the first event instead of at start-up (most processes never emit one). It
 * changes only at exec, which replaces this memory anyway. Writes it to out (PREGUARD_EXE_MAX). */
static char exe[PREGUARD_EXE_MAX];
static size_t exe_len;
static int exe_state; /* 0: not yet, 1: being published, 2: ready */

static size_t exe_name(char *out)
{
    if (__atomic_load_n(&exe_state, __ATOMIC_ACQUIRE) == 2) {
        memcpy(out, exe, exe_len);
        return exe_len;
    }
    long n = hook_sys(SYS_readlinkat, AT_FDCWD, (long)"/proc/self/exe", (long)out, PREGUARD_EXE_MAX, 0, 0);
    size_t len = n > 0 ? (size_t)n : 0;
    int expected = 0;
    if (len && __atomic_compare_exchange_n(&exe_state, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
        memcpy(exe, out, len);
        exe_len = len;
        __atomic_store_n(&exe_state, 2, __ATOMIC_RELEASE);
    }
    return len;
}

void hook_emit(int kind, int outcome, int access, uint32_t rule_id, uint64_t revision, const char *target,
               size_t target_len)
{
    int saved = errno;
    union {
        struct preguard_record rec;
        unsigned char bytes[PREGUARD_RECORD_MAX];
    } u;
    struct preguard_record *rec = &u.rec;
    size_t hdr = sizeof *rec, exe_len = exe_name((char *)u.bytes + sizeof *rec), flags = 0;
    if (exe_len > PREGUARD_EXE_MAX) {
        exe_len = PREGUARD_EXE_MAX;
        flags |= PREGUARD_FLAG_TRUNCATED;
    }
    if (target_len > PREGUARD_RECORD_MAX - hdr - exe_len) {
        target_len = PREGUARD_RECORD_MAX - hdr - exe_len;
        flags |= PREGUARD_FLAG_TRUNCATED;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    memset(rec, 0, hdr);
    rec->magic = PREGUARD_RECORD_MAGIC;
    rec->version = PREGUARD_ABI_VERSION;
    rec->size = (uint16_t)(hdr + exe_len + target_len);
    rec->time_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    rec->pid = (uint32_t)hook_sys(SYS_getpid, 0, 0, 0, 0, 0, 0);
    rec->uid = (uint32_t)hook_sys(SYS_geteuid, 0, 0, 0, 0, 0, 0);
    rec->rule_id = rule_id;
    rec->revision = revision;
    rec->kind = (uint8_t)kind;
    rec->outcome = (uint8_t)outcome;
    rec->access = (uint8_t)access;
    rec->flags = (uint8_t)flags;
    rec->exe_len = (uint16_t)exe_len;
    rec->target_len = (uint16_t)target_len;
    memcpy(u.bytes + hdr + exe_len, target, target_len);

    int fd = __atomic_load_n(&pipe_fd, __ATOMIC_ACQUIRE);
    if (!ours(fd, rec->pid)) {
        /* never close a descriptor that is no longer ours: the program owns that number now */
        __atomic_compare_exchange_n(&pipe_fd, &fd, -1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        fd = open_pipe(rec->pid);
    }
    long n = fd >= 0 ? write_quietly(fd, u.bytes, rec->size) : -1;
    if (n < 0 && errno == EPIPE) {
        /* the reader went away: let the next event open afresh (and find out whether one is back) */
        int expected = fd;
        if (__atomic_compare_exchange_n(&pipe_fd, &expected, -1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            close_own(fd);
    }
    count(n != (long)rec->size);
    errno = saved;
}
