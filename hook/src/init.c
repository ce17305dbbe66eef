/* Lifecycle: lazy, thread-safe initialisation (we may run before our own constructor), the per-thread
 * recursion guard, symbol resolution, and where the library lives. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hook.h"

#if defined(__GLIBC__) && defined(__x86_64__) && !defined(PREGUARD_DL_IN_LIBC)
/* Bind the oldest versions so the library loads on glibc before 2.34, where dl* lived in libdl. The
 * PREGUARD_DL_IN_LIBC build binds libc.so.6's dlsym@GLIBC_2.34: it refuses to load on older glibc. */
__asm__(".symver dlsym,dlsym@GLIBC_2.2.5");
__asm__(".symver dladdr,dladdr@GLIBC_2.2.5");
#endif

/* the library's canonical directory, published once (dir_state 2) by the first call that needs it */
static char hook_dir[HOOK_PATH_MAX];
static size_t hook_dir_len;
static int dir_state; /* 0: not yet, 1: being published, 2: ready */
static const char *self_name; /* the file name we were loaded as (the loader's own copy) */

/* initial-exec: the library is loaded at start-up, so its TLS is static and reaching it never
 * allocates (global-dynamic TLS may call malloc, which a program may have interposed). */
static __thread int in_hook __attribute__((tls_model("initial-exec")));
static int init_state; /* 0: not started, 1: running, 2: done */

/* Our own system calls go straight to the kernel, not through libc's syscall(), which is hooked. */
long hook_sys(long nr, long a, long b, long c, long d, long e, long f)
{
    long ret;
#if defined(__x86_64__)
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = nr;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory");
    ret = x0;
#else
#error "hook_sys: add this architecture's system call sequence"
#endif
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}

/* The guard covers only the library's own calls into the dynamic loader (dlsym, dladdr: they may
 * call malloc, which a program may have interposed with something that opens files). Judging itself
 * calls no hooked function (raw system calls, stack buffers) and is reentrant, so a hooked call from
 * a signal handler that interrupts a hook is judged like any other, not waved through. */
int hook_enter(void) { return !in_hook; }

void hook_leave(void) {}

hook_fn hook_resolve(const char *name, hook_fn self)
{
    in_hook++;
    void *sym = dlsym(RTLD_NEXT, name);
    in_hook--;
    hook_fn p;
    memcpy(&p, &sym, sizeof p); /* ISO C has no cast between object and function pointers */
    if (p == self) {
        static const char msg[] = "preguard: a hooked symbol resolves to the library itself\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(127);
    }
    /* NULL is allowed: a libc older than the symbol (execveat, renameat2) lacks it, and then nobody
     * can call it either; the hook reports ENOSYS. */
    return p;
}

/* Not at start-up: most processes (every short-lived exec) never judge a path, and canonicalising
 * costs a system call per component. Only raw system calls: safe in a forked child or a signal
 * handler. A caller that finds it unpublished (another thread is copying it in) uses its own copy. */
size_t hook_directory(const char **dir, char *scratch)
{
    if (__atomic_load_n(&dir_state, __ATOMIC_ACQUIRE) == 2) {
        *dir = hook_dir;
        return hook_dir_len;
    }
    *dir = scratch;
    const char *name = __atomic_load_n(&self_name, __ATOMIC_ACQUIRE);
    if (!name || !strchr(name, '/'))
        return 0; /* loaded by bare name: no directory, no rules, nothing to protect */
    /* the directories resolved, the file name itself taken as it is: then cut it off */
    int len = hook_canon(AT_FDCWD, name, 0, scratch);
    char *slash = len > 0 ? strrchr(scratch, '/') : NULL;
    if (!slash)
        return 0;
    size_t n = slash == scratch ? 1 : (size_t)(slash - scratch);
    scratch[n] = 0;
    int expected = 0;
    if (__atomic_compare_exchange_n(&dir_state, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
        memcpy(hook_dir, scratch, n + 1);
        hook_dir_len = n;
        __atomic_store_n(&dir_state, 2, __ATOMIC_RELEASE);
    }
    return n;
}

/* A process that forks maps the rules once, before its first fork, and every child inherits them: a
 * fork+exec loop would otherwise map them afresh in each child (its exec is judged there). */
static void before_fork(void)
{
    int saved = errno;
    (void)hook_rules();
    errno = saved;
}

/* Start-up does only what cannot wait: the loader calls (dladdr, dlsym) are unsafe later, in a forked
 * child or a signal handler. The rules, the control file and /proc/self/exe are read at the first
 * call that needs them, so a process sees the rules of the generation current at that call. */
static void do_init(void)
{
    int saved = errno;
    Dl_info info;
    static const char anchor = 0; /* any object of ours: dladdr names the file it lives in */
    if (dladdr(&anchor, &info) && info.dli_fname)
        __atomic_store_n(&self_name, info.dli_fname, __ATOMIC_RELEASE);
    if (self_name && self_name[0] != '/' && strchr(self_name, '/')) {
        /* a relative name means the working directory at start-up, not wherever we are later */
        char scratch[HOOK_PATH_MAX];
        const char *dir;
        (void)hook_directory(&dir, scratch);
    }
    hook_resolve_early();
    hook_resolve_exec(self_name);
    pthread_atfork(before_fork, NULL, NULL);
    errno = saved;
}

void hook_init(void)
{
    if (__atomic_load_n(&init_state, __ATOMIC_ACQUIRE) == 2)
        return;
    int expected = 0;
    if (__atomic_compare_exchange_n(&init_state, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        in_hook++; /* what init calls (dladdr may malloc) passes straight through */
        do_init();
        in_hook--;
        __atomic_store_n(&init_state, 2, __ATOMIC_RELEASE);
        return;
    }
    /* Another thread is initialising. Wait, but not forever: it may be waiting for a loader lock
     * this thread holds (a constructor calling us); then carry on with what is ready. */
    for (int i = 0; i < 100000 && __atomic_load_n(&init_state, __ATOMIC_ACQUIRE) != 2; i++)
        hook_sys(SYS_sched_yield, 0, 0, 0, 0, 0, 0);
}

__attribute__((constructor)) static void hook_constructor(void) { hook_init(); }
