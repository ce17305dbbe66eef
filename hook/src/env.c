/* Keeping LD_PRELOAD across exec. Where the library came in through LD_PRELOAD (musl containers:
 * their loader ignores /etc/ld.so.preload), a program must not shed it by exec'ing with a cleaned
 * environment: the exec calls put our entry back. Loaded through /etc/ld.so.preload, there is
 * nothing to keep. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hook.h"

char hook_preload_entry[HOOK_PATH_MAX + 16]; /* "LD_PRELOAD=<value that named us>", or empty */
size_t hook_preload_len;

void hook_preload_init(const char *self)
{
    const char *value = getenv("LD_PRELOAD");
    size_t n = value ? strlen(value) : 0;
    if (!self || !*self || !value || !strstr(value, self) || n + 12 > sizeof hook_preload_entry)
        return;
    memcpy(hook_preload_entry, "LD_PRELOAD=", 11);
    memcpy(hook_preload_entry + 11, value, n + 1);
    hook_preload_len = 11 + n;
}

static int keeps_us(const char *entry)
{
    return !strncmp(entry, "LD_PRELOAD=", 11) && strstr(entry, hook_preload_entry + 11);
}

/* envp, or a copy in `out` (room for count + 2 pointers) whose LD_PRELOAD names us again; `joined`
 * holds a combined entry when the program set an LD_PRELOAD of its own. */
char *const *hook_with_preload(char *const envp[], char **out, size_t count, char *joined, size_t room)
{
    size_t k = 0, mine = SIZE_MAX;
    for (size_t i = 0; i < count; i++) {
        if (keeps_us(envp[i]))
            return envp;
        if (!strncmp(envp[i], "LD_PRELOAD=", 11))
            mine = i;
        out[k++] = envp[i];
    }
    if (mine != SIZE_MAX && hook_preload_len + 1 + strlen(envp[mine] + 11) < room) {
        /* ours first, then theirs */
        memcpy(joined, hook_preload_entry, hook_preload_len);
        joined[hook_preload_len] = ' ';
        strcpy(joined + hook_preload_len + 1, envp[mine] + 11);
        out[mine] = joined;
    } else {
        out[k++] = hook_preload_entry;
    }
    out[k] = NULL;
    return out;
}

size_t hook_env_count(char *const envp[])
{
    size_t n = 0;
    while (envp && envp[n])
        n++;
    return n;
}
