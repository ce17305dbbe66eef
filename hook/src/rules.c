/* The rules: the shared control mapping, validation, and reload on a new generation (one loader at a
 * time, the current rules swapped in with compare-and-swap). Matching is in match.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hook.h"

struct preguard_control *hook_control;
static uint64_t control_retry_ns; /* monotonic time of the next attempt to map a missing control */
static uint64_t local_fs_generation;
static int control_writable;

/* A fixed pool instead of malloc. A retired mapping is unmapped only when its slot comes round again,
 * POOL reloads later, so a thread still matching against it is not pulled from under. */
#define POOL 32
static struct hook_rules pool[POOL];
static unsigned pool_next;
static struct hook_rules *current;
static uint64_t failed_generation = UINT64_MAX;
static int loading;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* vDSO: no system call */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static size_t join(char *out, const char *name)
{
    const char *dir;
    size_t n = strlen(name), len = hook_directory(&dir, out);
    if (!len || len + 1 + n >= HOOK_PATH_MAX)
        return 0;
    if (dir != out)
        memcpy(out, dir, len);
    out[len] = '/';
    memcpy(out + len + 1, name, n + 1);
    return len + 1 + n;
}

static void map_control(void)
{
    char path[HOOK_PATH_MAX];
    if (!join(path, "control"))
        return;
    uint64_t t = now_ns();
    if (t < __atomic_load_n(&control_retry_ns, __ATOMIC_RELAXED))
        return;
    /* Only a failed attempt holds off the next one (at most once a second): the first mapping happens
     * at a hooked call, and a signal handler interrupting it must map the file too, not find it
     * "recently tried" and go unjudged. Racing mappers are settled by the compare-and-swap below. */
    uint64_t retry = t + 1000000000u;
    int prot = PROT_READ | PROT_WRITE;
    long fd = SYS3(SYS_openat, AT_FDCWD, path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        prot = PROT_READ; /* counters stay untouched, rules still reload */
        fd = SYS3(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
        __atomic_store_n(&control_retry_ns, retry, __ATOMIC_RELAXED);
        return;
    }
    struct stat st;
    void *m = MAP_FAILED;
    if (SYS3(SYS_fstat, fd, &st, 0) == 0 && st.st_size >= (off_t)sizeof(struct preguard_control))
        m = (void *)hook_sys(SYS_mmap, 0, sizeof(struct preguard_control), prot, MAP_SHARED, fd, 0);
    SYS3(SYS_close, fd, 0, 0);
    if (m == MAP_FAILED || (unsigned long)m > -4096UL) {
        __atomic_store_n(&control_retry_ns, retry, __ATOMIC_RELAXED);
        return;
    }
    struct preguard_control *c = m;
    if (c->magic != PREGUARD_CONTROL_MAGIC || c->version != PREGUARD_ABI_VERSION) {
        SYS3(SYS_munmap, m, sizeof(struct preguard_control), 0);
        __atomic_store_n(&control_retry_ns, retry, __ATOMIC_RELAXED);
        return;
    }
    control_writable = (prot & PROT_WRITE) != 0;
    struct preguard_control *expected = NULL;
    if (!__atomic_compare_exchange_n(&hook_control, &expected, c, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        SYS3(SYS_munmap, m, sizeof(struct preguard_control), 0);
}

static void count(uint64_t *field)
{
    /* a read-only mapping would fault on the add (the probe makes the file 0666) */
    if (control_writable)
        __atomic_fetch_add(field, 1, __ATOMIC_RELAXED);
}

static uint32_t fnv32(const unsigned char *p, size_t n)
{
    uint32_t h = 0x811c9dc5u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x01000193u;
    return h;
}

static int in_range(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

/* Everything is checked before use, so matching can trust offsets and lengths. The full check costs
 * a pass over the file, so the first process to make it for a generation says so in the control file
 * and later ones (every exec) check the header only: the file is replaced by rename, never in place. */
static int valid(const unsigned char *base, size_t size, uint64_t generation)
{
    const struct preguard_rules_header *h = (const void *)base;
    if (size < sizeof *h || h->magic != PREGUARD_RULES_MAGIC || h->version != PREGUARD_ABI_VERSION ||
        h->header_size != sizeof *h || h->file_size != size)
        return 0;
    struct preguard_control *c = hook_control;
    if (c && __atomic_load_n(&c->verified_generation, __ATOMIC_ACQUIRE) == generation &&
        __atomic_load_n(&c->verified_checksum, __ATOMIC_ACQUIRE) == h->checksum && generation)
        return 1;
    if (fnv32(base + sizeof *h, size - sizeof *h) != h->checksum)
        return 0;
    uint32_t nb = h->bucket_count, ne = h->entry_count;
    if (!nb || (nb & (nb - 1)) || (h->buckets_off & 3) || (h->entries_off & 7) ||
        !in_range(h->buckets_off, (uint64_t)nb * 4, size) ||
        !in_range(h->entries_off, (uint64_t)ne * sizeof(struct preguard_rule_entry), size) ||
        !in_range(h->strings_off, h->strings_size, size))
        return 0;
    const uint32_t *b = (const void *)(base + h->buckets_off);
    for (uint32_t i = 0; i < nb; i++)
        if (b[i] > ne)
            return 0;
    const struct preguard_rule_entry *e = (const void *)(base + h->entries_off);
    for (uint32_t i = 0; i < ne; i++) {
        if (e[i].next > ne || !e[i].type || e[i].type > PREGUARD_T_NET6 || !e[i].action ||
            e[i].action > PREGUARD_ACT_BLOCK || !in_range(e[i].key_off, e[i].key_len, h->strings_size) ||
            !in_range(e[i].pat_off, e[i].pat_len, h->strings_size))
            return 0;
    }
    for (int k = 1; k < 4; k++)
        if (h->default_action[k] != PREGUARD_ACT_ALLOW && h->default_action[k] != PREGUARD_ACT_BLOCK)
            return 0;
    if (c && control_writable) {
        /* checksum first: a reader that sees the generation must see its checksum */
        __atomic_store_n(&c->verified_checksum, h->checksum, __ATOMIC_RELEASE);
        __atomic_store_n(&c->verified_generation, generation, __ATOMIC_RELEASE);
    }
    return 1;
}

static struct hook_rules *load(uint64_t generation)
{
    char path[HOOK_PATH_MAX];
    if (!join(path, "rules.bin"))
        return NULL;
    long fd = SYS3(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    void *m = MAP_FAILED;
    if (SYS3(SYS_fstat, fd, &st, 0) == 0 && st.st_size > 0 && st.st_size < (1 << 30))
        m = (void *)hook_sys(SYS_mmap, 0, (long)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    SYS3(SYS_close, fd, 0, 0);
    if (m == MAP_FAILED || (unsigned long)m > -4096UL)
        return NULL;
    size_t size = (size_t)st.st_size;
    if (!valid(m, size, generation)) {
        SYS3(SYS_munmap, m, size, 0);
        return NULL;
    }
    /* every loader draws its own slot; one that holds the live rules is skipped (many threads racing
     * to load could otherwise wrap onto it) */
    struct hook_rules *r;
    do
        r = &pool[__atomic_fetch_add(&pool_next, 1, __ATOMIC_RELAXED) % POOL];
    while (r == __atomic_load_n(&current, __ATOMIC_ACQUIRE));
    if (r->base)
        SYS3(SYS_munmap, r->base, r->size, 0);
    const struct preguard_rules_header *h = m;
    r->base = m;
    r->size = size;
    r->hdr = h;
    r->buckets = (const void *)(r->base + h->buckets_off);
    r->entries = (const void *)(r->base + h->entries_off);
    r->strings = (const char *)(r->base + h->strings_off);
    r->generation = generation;
    return r;
}

/* Makes fresh the current rules (or records that generation gen failed); returns what is current. */
static struct hook_rules *publish(struct preguard_control *c, struct hook_rules *cur, struct hook_rules *fresh,
                                  uint64_t gen)
{
    if (!fresh) {
        /* keep the last good rules; count the failure once per generation and process */
        uint64_t seen = __atomic_exchange_n(&failed_generation, gen, __ATOMIC_RELAXED);
        if (seen != gen && gen != 0) /* generation 0: nothing installed yet, not an error */
            count(&c->rules_errors);
        return cur;
    }
    if (!__atomic_compare_exchange_n(&current, &cur, fresh, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return cur; /* another thread loaded it first; ours stays in the pool until its slot returns */
    count(&c->loads);
    if (!control_writable)
        return fresh;
    uint64_t rev = fresh->hdr->revision, old = __atomic_load_n(&c->loaded_revision, __ATOMIC_RELAXED);
    while (rev > old &&
           !__atomic_compare_exchange_n(&c->loaded_revision, &old, rev, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return fresh;
}

const struct hook_rules *hook_rules(void)
{
    struct preguard_control *c = __atomic_load_n(&hook_control, __ATOMIC_ACQUIRE);
    if (!c) {
        map_control();
        c = __atomic_load_n(&hook_control, __ATOMIC_ACQUIRE);
        if (!c)
            return NULL;
    }
    uint64_t gen = __atomic_load_n(&c->generation, __ATOMIC_ACQUIRE);
    struct hook_rules *cur = __atomic_load_n(&current, __ATOMIC_ACQUIRE);
    if ((cur && cur->generation == gen) || __atomic_load_n(&failed_generation, __ATOMIC_RELAXED) == gen)
        return cur;
    /* One loader at a time: the others wait for it, so they too see the new rules at this call. The
     * wait is bounded: a fork while another thread loaded leaves the flag set in the child. */
    int expected = 0, mine = __atomic_compare_exchange_n(&loading, &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
    for (int i = 0; !mine && i < 2000 && __atomic_load_n(&loading, __ATOMIC_ACQUIRE); i++) {
        hook_sys(SYS_sched_yield, 0, 0, 0, 0, 0, 0);
        cur = __atomic_load_n(&current, __ATOMIC_ACQUIRE);
        if (cur && cur->generation == gen)
            return cur;
    }
    if (!mine) { /* the other loader is done (or gone): what did it leave? */
        cur = __atomic_load_n(&current, __ATOMIC_ACQUIRE);
        if ((cur && cur->generation == gen) || __atomic_load_n(&failed_generation, __ATOMIC_RELAXED) == gen)
            return cur;
    }
    int saved = errno;
    struct hook_rules *fresh = load(gen);
    errno = saved;
    struct hook_rules *result = publish(c, cur, fresh, gen);
    if (mine) /* after publishing: a waiter that sees the flag drop finds the outcome */
        __atomic_store_n(&loading, 0, __ATOMIC_RELEASE);
    return result;
}

uint64_t hook_fs_generation(void)
{
    struct preguard_control *c = __atomic_load_n(&hook_control, __ATOMIC_ACQUIRE);
    uint64_t shared = c ? __atomic_load_n(&c->fs_generation, __ATOMIC_ACQUIRE) : 0;
    return shared + __atomic_load_n(&local_fs_generation, __ATOMIC_ACQUIRE);
}

void hook_fs_changed(void)
{
    __atomic_fetch_add(&local_fs_generation, 1, __ATOMIC_ACQ_REL);
    struct preguard_control *c = __atomic_load_n(&hook_control, __ATOMIC_ACQUIRE);
    if (c && control_writable)
        __atomic_fetch_add(&c->fs_generation, 1, __ATOMIC_ACQ_REL);
}

int hook_wants(const struct hook_rules *r, int has_flag, int default_slot)
{
    return r && ((r->hdr->flags & (uint32_t)has_flag) || r->hdr->default_action[default_slot] == PREGUARD_ACT_BLOCK);
}

int hook_control_writable(void) { return control_writable; }
