/* Lifecycle: lazy, thread-safe initialisation (we may run before our own constructor), the per-thread
 * recursion guard, symbol resolution, and where the library lives. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "hook.h"

#if defined(__GLIBC__) && defined(__x86_64__)
/* Bind the oldest versions so the library loads on glibc before 2.34, where dl* lived in libdl. */
__asm__(".symver dlsym,dlsym@GLIBC_2.2.5");
__asm__(".symver dladdr,dladdr@GLIBC_2.2.5");
#endif

char hook_dir[HOOK_PATH_MAX];
size_t hook_dir_len;
char hook_exe[PREGUARD_EXE_MAX];
size_t hook_exe_len;

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

static char self_name[HOOK_PATH_MAX]; /* the file name we were loaded as */

static void find_directory(void)
{
    Dl_info info;
    char raw[HOOK_PATH_MAX];
    static const char anchor = 0; /* any object of ours: dladdr names the file it lives in */
    if (!dladdr(&anchor, &info) || !info.dli_fname)
        return;
    size_t name_len = strnlen(info.dli_fname, sizeof self_name - 1);
    memcpy(self_name, info.dli_fname, name_len);
    self_name[name_len] = 0;
    size_t n = strnlen(info.dli_fname, sizeof raw - 1);
    memcpy(raw, info.dli_fname, n);
    raw[n] = 0;
    char *slash = strrchr(raw, '/');
    if (!slash)
        return; /* loaded by bare name: no directory, no rules, nothing to protect */
    *slash = 0;
    int len = hook_canon(AT_FDCWD, raw[0] ? raw : "/", 1, hook_dir);
    hook_dir_len = len > 0 ? (size_t)len : 0;
}

static void do_init(void)
{
    int saved = errno;
    find_directory();
    long n = hook_sys(SYS_readlinkat, AT_FDCWD, (long)"/proc/self/exe", (long)hook_exe, sizeof hook_exe, 0, 0);
    hook_exe_len = n > 0 ? (size_t)n : 0;
    hook_resolve_early();
    hook_resolve_exec(self_name);
    (void)hook_rules(); /* maps control and rules */
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
