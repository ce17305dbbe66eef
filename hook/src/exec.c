/* Every way to run a program: the exec family, fexecve/execveat, posix_spawn(p) (both symbol
 * versions bind here), system and popen. glibc's own implementations call an internal exec that no
 * preload sees, so each is judged here before the real one runs. */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hook.h"

#define HOOK(fam, ret, name, params) HOOK_##fam(ret, name, params)
#define HOOK_EXEC(ret, name, params) static __attribute__((unused)) ret(*real_##name) params;
#define HOOK_FILE(ret, name, params)
#define HOOK_NET(ret, name, params)
#define HOOK_PATH(ret, name, params)
#define HOOK_FD(ret, name, params)
#include "hooks.def"

extern char **environ;

static void match_exe(const struct hook_rules *r, const char *p, size_t n, struct hook_match *m)
{
    hook_match_path(r, PREGUARD_T_EXE_EXACT, PREGUARD_T_EXE_GLOB, p, n, 0, m);
    const char *b = p + n;
    while (b > p && b[-1] != '/')
        b--;
    hook_match_name(r, b, n - (size_t)(b - p), m);
    if (m->subject == b) { /* a name rule matched: the event names the whole path */
        m->subject = p;
        m->subject_len = n;
    }
}

static int is_loader(const char *p, size_t n)
{
    const char *b = p + n;
    while (b > p && b[-1] != '/')
        b--;
    return !strncmp(b, "ld-", 3) ? strstr(b, ".so") != NULL : !strcmp(b, "ld.so");
}

/* What the kernel really runs for `path`, from its first bytes: an ELF shared object without an
 * interpreter is a dynamic loader under any name (a copy of ld.so); a script's `#!` line names its
 * interpreter (copied into `interp`). Returns 1 for a loader, 2 for a script, 0 otherwise. */
static int peek(const char *path, char *interp, size_t room)
{
    union {
        Elf64_Ehdr ehdr;
        unsigned char bytes[1024];
    } u;
    long fd = SYS3(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    long n = hook_sys(SYS_pread64, fd, (long)u.bytes, sizeof u.bytes, 0, 0, 0);
    SYS3(SYS_close, fd, 0, 0);
    if (n > 2 && u.bytes[0] == '#' && u.bytes[1] == '!') {
        long i = 2, k = 0;
        while (i < n && (u.bytes[i] == ' ' || u.bytes[i] == '\t'))
            i++;
        while (i < n && k + 1 < (long)room && u.bytes[i] != ' ' && u.bytes[i] != '\t' && u.bytes[i] != '\n')
            interp[k++] = (char)u.bytes[i++];
        interp[k] = 0;
        return k ? 2 : 0;
    }
    const Elf64_Ehdr *e = &u.ehdr;
    if (n < (long)sizeof *e || memcmp(e->e_ident, ELFMAG, SELFMAG) || e->e_ident[EI_CLASS] != ELFCLASS64 ||
        e->e_type != ET_DYN || e->e_phentsize != sizeof(Elf64_Phdr))
        return 0;
    for (unsigned i = 0; i < e->e_phnum; i++) {
        uint64_t at = e->e_phoff + (uint64_t)i * sizeof(Elf64_Phdr);
        if (at + sizeof(Elf64_Phdr) > (uint64_t)n)
            return 0; /* program headers beyond what we read: not judged as a loader */
        Elf64_Phdr ph;
        memcpy(&ph, u.bytes + at, sizeof ph);
        if (ph.p_type == PT_INTERP)
            return 0; /* an ordinary dynamic program or library */
    }
    return 1;
}

/* The program a dynamic loader is asked to run: its first argument that is not an option. */
static const char *loader_program(char *const argv[])
{
    static const char *const with_value[] = {
        "--library-path",         "--inhibit-rpath",     "--audit", "--preload", "--argv0",
        "--glibc-hwcaps-prepend", "--glibc-hwcaps-mask", NULL};
    if (!argv || !argv[0])
        return NULL;
    for (int i = 1; argv[i]; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--"))
            return argv[i + 1];
        if (strncmp(a, "--", 2))
            return a;
        for (int k = 0; with_value[k]; k++)
            if (!strcmp(a, with_value[k]) && !argv[++i])
                return NULL;
    }
    return NULL;
}

/* Judges running `path` (relative to dirfd); 0 to go on, -1 with errno EACCES when blocked. The
 * executable matches as written, with its directories resolved and fully resolved; through the
 * dynamic loader the program it would run is judged too. */
int hook_judge_exec(int dirfd, const char *path, char *const argv[], int follow)
{
    const struct hook_rules *r = hook_rules();
    if (!path || !hook_wants(r, PREGUARD_RULES_HAS_EXE, PREGUARD_DEFAULT_PROCESS))
        return 0;
    char resolved[HOOK_PATH_MAX], dirs[HOOK_PATH_MAX], written[HOOK_PATH_MAX];
    struct hook_match m = {0};
    int n = hook_canon(dirfd, path, follow, resolved);
    if (n < 0) {
        if (n != -ENAMETOOLONG)
            return 0; /* ENOENT and friends: exec fails by itself */
        errno = ENAMETOOLONG;
        return -1;
    }
    match_exe(r, resolved, (size_t)n, &m);
    int d = hook_canon(dirfd, path, 0, dirs);
    if (d > 0 && (d != n || memcmp(dirs, resolved, (size_t)n)))
        match_exe(r, dirs, (size_t)d, &m);
    int w = hook_lexical(dirfd, path, written);
    if (w > 0 && (w != d || memcmp(dirs, written, (size_t)w)))
        match_exe(r, written, (size_t)w, &m);
    /* `#!/bin/sh` runs /bin/sh, and `ld.so /bin/prog` (under any name) runs /bin/prog: those are
     * judged too, in buffers of their own (the event may name what matched above) */
    char interp[256], other[HOOK_PATH_MAX], other_written[HOOK_PATH_MAX];
    int kind = peek(resolved, interp, sizeof interp);
    const char *also = kind == 2 ? interp : is_loader(resolved, (size_t)n) || kind == 1 ? loader_program(argv) : NULL;
    if (also) {
        int p = hook_canon(AT_FDCWD, also, 1, other);
        if (p > 0)
            match_exe(r, other, (size_t)p, &m);
        int q = hook_lexical(AT_FDCWD, also, other_written);
        if (q > 0)
            match_exe(r, other_written, (size_t)q, &m);
    }
    if (hook_conclude(r, &m, PREGUARD_DEFAULT_PROCESS, PREGUARD_KIND_PROCESS, PREGUARD_ACCESS_EXEC, resolved,
                      (size_t)n) == HOOK_DENY) {
        errno = EACCES;
        return -1;
    }
    return 0;
}

/* Resolved at start-up: a forked child would otherwise look it up after every fork. */
void hook_resolve_exec(const char *self)
{
    (void)REAL(execve);
    hook_preload_init(self);
}

/* What execvp would run: the first executable candidate along PATH. */
static int search(const char *file, char *out)
{
    if (!file || !*file)
        return -1;
    size_t fl = strlen(file);
    if (strchr(file, '/')) {
        if (fl >= HOOK_PATH_MAX)
            return -1;
        memcpy(out, file, fl + 1);
        return 0;
    }
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/bin:/usr/bin";
    for (const char *p = path;;) {
        const char *e = strchr(p, ':');
        size_t dl = e ? (size_t)(e - p) : strlen(p);
        if (dl + 2 + fl < HOOK_PATH_MAX) {
            if (dl) {
                memcpy(out, p, dl);
                out[dl] = '/';
                memcpy(out + dl + 1, file, fl + 1);
            } else {
                memcpy(out, file, fl + 1); /* an empty entry is the working directory */
            }
            if (hook_sys(SYS_faccessat, AT_FDCWD, (long)out, X_OK, 0, 0, 0) == 0)
                return 0;
        }
        if (!e)
            return -1;
        p = e + 1;
    }
}

static int judge_search(const char *file, char *const argv[])
{
    char found[HOOK_PATH_MAX];
    return search(file, found) == 0 ? hook_judge_exec(AT_FDCWD, found, argv, 1) : 0;
}

HOOK_EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
    if (hook_enter() && JUDGE(hook_judge_exec(AT_FDCWD, path, argv, 1)))
        return -1;
    KEEP_PRELOAD(env, envp);
    hook_caches_flush();
    return REAL(execve)(path, argv, env);
}

HOOK_EXPORT int execv(const char *path, char *const argv[])
{
    if (hook_enter() && JUDGE(hook_judge_exec(AT_FDCWD, path, argv, 1)))
        return -1;
    KEEP_PRELOAD(env, environ);
    hook_caches_flush();
    return REAL(execve)(path, argv, env);
}

HOOK_EXPORT int execvp(const char *file, char *const argv[])
{
    if (hook_enter() && JUDGE(judge_search(file, argv)))
        return -1;
    KEEP_PRELOAD(env, environ);
    hook_caches_flush();
    return env == environ ? REAL(execvp)(file, argv) : REAL(execvpe)(file, argv, env);
}

HOOK_EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
    if (hook_enter() && JUDGE(judge_search(file, argv)))
        return -1;
    KEEP_PRELOAD(env, envp);
    hook_caches_flush();
    return REAL(execvpe)(file, argv, env);
}

/* execl and friends: gather the arguments, then judge as the vector form. */
#define GATHER(first, ap, argv, count)                                                                                 \
    size_t count = 1;                                                                                                  \
    va_start(ap, first);                                                                                               \
    while (va_arg(ap, char *))                                                                                         \
        count++;                                                                                                       \
    va_end(ap);                                                                                                        \
    char *argv[count + 1];                                                                                             \
    argv[0] = (char *)first;                                                                                           \
    va_start(ap, first);                                                                                               \
    for (size_t i_ = 1; i_ <= count; i_++)                                                                             \
        argv[i_] = va_arg(ap, char *);

HOOK_EXPORT int execl(const char *path, const char *arg, ...)
{
    va_list ap;
    GATHER(arg, ap, argv, count)
    va_end(ap);
    if (hook_enter() && JUDGE(hook_judge_exec(AT_FDCWD, path, argv, 1)))
        return -1;
    KEEP_PRELOAD(env, environ);
    hook_caches_flush();
    return REAL(execve)(path, argv, env);
}

HOOK_EXPORT int execlp(const char *file, const char *arg, ...)
{
    va_list ap;
    GATHER(arg, ap, argv, count)
    va_end(ap);
    if (hook_enter() && JUDGE(judge_search(file, argv)))
        return -1;
    KEEP_PRELOAD(env, environ);
    hook_caches_flush();
    return env == environ ? REAL(execvp)(file, argv) : REAL(execvpe)(file, argv, env);
}

HOOK_EXPORT int execle(const char *path, const char *arg, ...)
{
    va_list ap;
    GATHER(arg, ap, argv, count)
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    if (hook_enter() && JUDGE(hook_judge_exec(AT_FDCWD, path, argv, 1)))
        return -1;
    KEEP_PRELOAD(env, envp);
    hook_caches_flush();
    return REAL(execve)(path, argv, env);
}

HOOK_EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
    if (hook_enter() && JUDGE(hook_judge_exec(fd, "", argv, 1)))
        return -1;
    KEEP_PRELOAD(env, envp);
    hook_caches_flush();
    return REAL(fexecve)(fd, argv, env);
}

#ifndef PREGUARD_MUSL
HOOK_EXPORT int execveat(int dirfd, const char *path, char *const argv[], char *const envp[], int flags)
{
    if (hook_enter() && JUDGE(hook_judge_exec(dirfd, path, argv, !(flags & AT_SYMLINK_NOFOLLOW))))
        return -1;
    KEEP_PRELOAD(env, envp);
    hook_caches_flush();
    if (!REAL(execveat))
        return (int)hook_sys(SYS_execveat, dirfd, (long)path, (long)argv, (long)env, flags, 0);
    return real_execveat(dirfd, path, argv, env, flags);
}
#endif

HOOK_EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *actions,
                            const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    if (hook_enter()) {
        int saved = errno;
        if (JUDGE(hook_judge_exec(AT_FDCWD, path, argv, 1))) {
            errno = saved;
            return EACCES; /* posix_spawn reports the error number, errno stays */
        }
    }
    KEEP_PRELOAD(env, envp);
    return REAL(posix_spawn)(pid, path, actions, attr, argv, env);
}

HOOK_EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *actions,
                             const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
    if (hook_enter()) {
        int saved = errno;
        if (JUDGE(judge_search(file, argv))) {
            errno = saved;
            return EACCES;
        }
    }
    KEEP_PRELOAD(env, envp);
    return REAL(posix_spawnp)(pid, file, actions, attr, argv, env);
}

/* system and popen run /bin/sh -c: the shell is judged here, and what it runs is judged in the shell,
 * which loads the library like every process. */
static char *const shell_argv[] = {(char *)"sh", (char *)"-c", NULL};

HOOK_EXPORT int system(const char *command)
{
    if (command && hook_enter() && JUDGE(hook_judge_exec(AT_FDCWD, "/bin/sh", shell_argv, 1)))
        return -1;
    return REAL(system)(command);
}

HOOK_EXPORT FILE *popen(const char *command, const char *type)
{
    if (hook_enter() && JUDGE(hook_judge_exec(AT_FDCWD, "/bin/sh", shell_argv, 1)))
        return NULL;
    return REAL(popen)(command, type);
}
