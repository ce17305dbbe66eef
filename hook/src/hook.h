/* Shared declarations of the preload library: state, checks, and the helpers every family uses. */
#ifndef PREGUARD_HOOK_H
#define PREGUARD_HOOK_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "preguard/abi.h"

#define HOOK_EXPORT __attribute__((visibility("default")))
#define HOOK_PATH_MAX 4096

enum { HOOK_ALLOW = 0, HOOK_DENY = 1 };

/* -- init.c: lifecycle, the recursion guard, symbol resolution ---------------------------------- */
void hook_init(void);
int hook_enter(void); /* 0: the library itself is in the dynamic loader: pass straight through */
void hook_leave(void);
typedef void (*hook_fn)(void);
hook_fn hook_resolve(const char *name, hook_fn self); /* dlsym(RTLD_NEXT); exits on ourselves */
/* The library's canonical directory (length; 0: none), pointed to by *dir: the published copy, or
 * scratch (HOOK_PATH_MAX) while it is not published yet. */
size_t hook_directory(const char **dir, char *scratch);

/* Resolves a real_* pointer on first use, so hooked calls that arrive before the constructor work. */
#define REAL(name)                                                                                                     \
    __extension__({                                                                                                    \
        if (!real_##name)                                                                                              \
            real_##name = (__typeof__(real_##name))hook_resolve(#name, (hook_fn) & name);                              \
        real_##name;                                                                                                   \
    })

/* -- rules.c: the mapped rules and matching ------------------------------------------------------ */
struct hook_rules {
    const unsigned char *base;
    size_t size;
    const struct preguard_rules_header *hdr;
    const uint32_t *buckets;
    const struct preguard_rule_entry *entries;
    const char *strings;
    uint64_t generation;
};

struct hook_match {
    int action; /* PREGUARD_ACT_*, 0: nothing matched */
    uint32_t rule_id;
    uint8_t bits;        /* the winning entry's bits */
    const char *subject; /* what matched (for the event's target) */
    size_t subject_len;
};

extern struct preguard_control *hook_control; /* NULL until the control file is mapped */
const struct hook_rules *hook_rules(void);    /* current rules (NULL: none); reloads on a new generation */
int hook_control_writable(void);              /* 0: mapped read-only, counters are not ours to touch */
uint64_t hook_fs_generation(void);
void hook_fs_changed(void); /* a rename or removal: cached path facts are stale */
int hook_wants(const struct hook_rules *r, int has_flag, int default_slot);
void hook_match_path(const struct hook_rules *r, int exact, int glob, const char *path, size_t len, int bits,
                     struct hook_match *m);
void hook_match_name(const struct hook_rules *r, const char *name, size_t len, struct hook_match *m);
void hook_match_net(const struct hook_rules *r, int v6, const unsigned char *addr, int port, int proto_bits,
                    struct hook_match *m);
/* Applies the kind's default, emits the event; returns HOOK_DENY for a block. */
int hook_conclude(const struct hook_rules *r, struct hook_match *m, int default_slot, int kind, int access,
                  const char *fallback, size_t fallback_len);
int hook_glob(const char *p, size_t plen, const char *s, size_t slen); /* 1, 0, -1: out of budget */

/* -- path.c: absolute, canonical paths ----------------------------------------------------------- */
/* Canonical absolute path of `path` relative to dirfd into out (HOOK_PATH_MAX): `.`, `..`, `//` and
 * symlinks resolved (the final one only when follow). Returns the length or -errno. */
int hook_canon(int dirfd, const char *path, int follow, char *out);
/* The same with only lexical processing: no symlink is read. */
int hook_lexical(int dirfd, const char *path, char *out);
void hook_cwd_changed(void);
void hook_fd_closed(int fd); /* a descriptor number was closed or replaced */
/* Drops the working directory and descriptor caches: called before exec, because a vfork child
 * shares our memory but has its own directory and descriptors, and its entries must not outlive it. */
void hook_caches_flush(void);
void hook_fds_closed(unsigned lo, unsigned hi);
uint64_t hook_fd_epoch(int fd);                       /* moves whenever the number is closed or replaced through libc */
int hook_is_protected(const char *canon, size_t len); /* the library's own files, /etc/ld.so.preload */

/* -- emit.c: event records ------------------------------------------------------------------------ */
void hook_emit(int kind, int outcome, int access, uint32_t rule_id, uint64_t revision, const char *target,
               size_t target_len);

/* -- file.c: judging a path operation (exec.c and net.c use it too) ------------------------------- */
int hook_judge_file(int dirfd, const char *path, int bits, int follow); /* 0, or -1 with errno set */
void hook_resolve_early(void);
int hook_open_bits(int flags);
/* exec.c, net.c: judging an exec or a destination; 0, or -1 with errno set */
int hook_judge_exec(int dirfd, const char *path, char *const argv[], int follow);
struct sockaddr;
int hook_judge_net(int fd, const struct sockaddr *addr, unsigned len, int access, int flags);
void hook_resolve_exec(const char *self); /* self: the file name we were loaded as */

/* Judges under the guard: 0 to go on (errno as it was), -1 when blocked (errno set). */
#define JUDGE(expr)                                                                                                    \
    __extension__({                                                                                                    \
        hook_init();                                                                                                   \
        int saved_ = errno, rc_ = (expr);                                                                              \
        hook_leave();                                                                                                  \
        if (!rc_)                                                                                                      \
            errno = saved_;                                                                                            \
        rc_;                                                                                                           \
    })

/* -- env.c: keeping LD_PRELOAD across exec -------------------------------------------------------- */
extern char hook_preload_entry[]; /* "LD_PRELOAD=<value that named us>", or empty */
extern size_t hook_preload_len;
void hook_preload_init(const char *self);
size_t hook_env_count(char *const envp[]);
char *const *hook_with_preload(char *const envp[], char **out, size_t count, char *joined, size_t room);
/* Declares `name`: envp, or the copy that keeps LD_PRELOAD (stack only). */
#define KEEP_PRELOAD(name, envp)                                                                                       \
    size_t name##_n = hook_preload_len ? hook_env_count(envp) : 0;                                                     \
    char *name##_copy[name##_n + 2];                                                                                   \
    char name##_joined[hook_preload_len ? HOOK_PATH_MAX : 1];                                                          \
    char *const *name = hook_preload_len && (envp)                                                                     \
                            ? hook_with_preload((envp), name##_copy, name##_n, name##_joined, sizeof name##_joined)    \
                            : (envp)

/* raw system calls: never through the hooks, never touching another library's state */
long hook_sys(long nr, long a, long b, long c, long d, long e, long f);
#define SYS3(nr, a, b, c) hook_sys((nr), (long)(a), (long)(b), (long)(c), 0, 0, 0)

#endif
