/* The rules: the shared control mapping, lock-free reload on a new generation, and matching by hash
 * probes whose number depends on the path's depth or the prefix lengths in use, never the rule count. */
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

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* vDSO: no system call */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static size_t join(char *out, const char *name)
{
    size_t n = strlen(name);
    if (hook_dir_len + 1 + n >= HOOK_PATH_MAX)
        return 0;
    memcpy(out, hook_dir, hook_dir_len);
    out[hook_dir_len] = '/';
    memcpy(out + hook_dir_len + 1, name, n + 1);
    return hook_dir_len + 1 + n;
}

static void map_control(void)
{
    char path[HOOK_PATH_MAX];
    if (!hook_dir_len || !join(path, "control"))
        return;
    uint64_t t = now_ns();
    if (t < __atomic_load_n(&control_retry_ns, __ATOMIC_RELAXED))
        return;
    __atomic_store_n(&control_retry_ns, t + 1000000000u, __ATOMIC_RELAXED); /* at most once a second */
    int prot = PROT_READ | PROT_WRITE;
    long fd = SYS3(SYS_openat, AT_FDCWD, path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        prot = PROT_READ; /* counters stay untouched, rules still reload */
        fd = SYS3(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0)
        return;
    struct stat st;
    void *m = MAP_FAILED;
    if (SYS3(SYS_fstat, fd, &st, 0) == 0 && st.st_size >= (off_t)sizeof(struct preguard_control))
        m = (void *)hook_sys(SYS_mmap, 0, sizeof(struct preguard_control), prot, MAP_SHARED, fd, 0);
    SYS3(SYS_close, fd, 0, 0);
    if (m == MAP_FAILED || (unsigned long)m > -4096UL)
        return;
    struct preguard_control *c = m;
    if (c->magic != PREGUARD_CONTROL_MAGIC || c->version != PREGUARD_ABI_VERSION) {
        SYS3(SYS_munmap, m, sizeof(struct preguard_control), 0);
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
    int saved = errno;
    struct hook_rules *fresh = load(gen);
    errno = saved;
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

/* -- matching ----------------------------------------------------------------------------------- */
#define PRIME PREGUARD_HASH_PRIME

/* `*` any run without /, `**` any run, `?` one character but /. Backtracks only at stars, within a
 * budget of steps: a pattern with several stars against a long path chosen to defeat it would
 * otherwise take exponential time. Returns 1, 0, or -1 when the budget ran out. */
static int glob_steps(const char *p, const char *pe, const char *s, const char *se, long *budget)
{
    while (p < pe) {
        if (--*budget < 0)
            return -1;
        if (*p == '*') {
            int any = p + 1 < pe && p[1] == '*';
            p += any ? 2 : 1;
            for (const char *t = s;; t++) {
                int r = glob_steps(p, pe, t, se, budget);
                if (r)
                    return r;
                if (t == se || (!any && *t == '/'))
                    return 0;
            }
        }
        if (s == se || (*p == '?' ? *s == '/' : *p != *s))
            return 0;
        p++;
        s++;
    }
    return s == se;
}

#define GLOB_BUDGET 100000

int hook_glob(const char *p, size_t plen, const char *s, size_t slen)
{
    long budget = GLOB_BUDGET;
    return glob_steps(p, p + plen, s, s + slen, &budget);
}

struct filter {
    int bits; /* 0: any */
    int port; /* -1: none */
};

static void consider(struct hook_match *m, const struct preguard_rule_entry *e, const char *subject, size_t len)
{
    if (e->action > m->action || (e->action == m->action && e->rule_id < m->rule_id)) {
        m->action = e->action;
        m->rule_id = e->rule_id;
        m->bits = e->bits;
        m->subject = subject;
        m->subject_len = len;
    }
}

static void probe(const struct hook_rules *r, uint64_t h, int type, const char *key, size_t klen, const char *subject,
                  size_t slen, struct filter f, struct hook_match *m)
{
    uint64_t hh = (h ^ (uint64_t)type) * PRIME;
    uint32_t idx = r->buckets[hh & (r->hdr->bucket_count - 1)];
    for (uint32_t guard = r->hdr->entry_count; idx && guard; guard--) {
        const struct preguard_rule_entry *e = &r->entries[idx - 1];
        idx = e->next;
        if (e->hash != hh || e->type != type || e->key_len != klen || memcmp(r->strings + e->key_off, key, klen))
            continue;
        if (f.bits && !(e->bits & f.bits))
            continue;
        if (f.port >= 0 && (f.port < e->port_lo || f.port > e->port_hi))
            continue;
        if (e->pat_len) {
            int hit = hook_glob(r->strings + e->pat_off, e->pat_len, subject, slen);
            /* out of budget: a block or audit entry counts as matching (fail closed), an allow entry
             * as not (a path made to exhaust it must not be admitted) */
            if (!hit || (hit < 0 && e->action == PREGUARD_ACT_ALLOW))
                continue;
        }
        consider(m, e, subject, slen);
    }
}

void hook_match_path(const struct hook_rules *r, int exact, int glob, const char *path, size_t len, int bits,
                     struct hook_match *m)
{
    struct filter f = {bits, -1};
    uint64_t h = PREGUARD_HASH_OFFSET;
    probe(r, h, glob, path, 0, path, len, f, m); /* patterns that start with a wildcard */
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)path[i]) * PRIME;
        if (path[i] == '/')
            probe(r, h, glob, path, i + 1, path, len, f, m);
    }
    probe(r, h, exact, path, len, path, len, f, m);
}

void hook_match_name(const struct hook_rules *r, const char *name, size_t len, struct hook_match *m)
{
    struct filter f = {0, -1};
    uint64_t h = PREGUARD_HASH_OFFSET;
    if (r->hdr->flags & PREGUARD_RULES_HAS_NAME_GLOB)
        probe(r, h, PREGUARD_T_NAME_GLOB, name, 0, name, len, f, m);
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * PRIME;
    probe(r, h, PREGUARD_T_NAME_EXACT, name, len, name, len, f, m);
}

void hook_match_net(const struct hook_rules *r, int v6, const unsigned char *addr, int port, int proto_bits,
                    struct hook_match *m)
{
    struct filter f = {proto_bits, port};
    int bytes = v6 ? 16 : 4, type = v6 ? PREGUARD_T_NET6 : PREGUARD_T_NET4;
    for (int len = bytes * 8; len >= 0; len--) {
        uint64_t word = v6 ? r->hdr->net6_lens[len / 64] : r->hdr->net4_lens;
        if (!(word >> (len % 64) & 1))
            continue;
        unsigned char key[17];
        key[0] = (unsigned char)len;
        for (int i = 0; i < bytes; i++) {
            int keep = len - 8 * i;
            unsigned char mask = keep >= 8 ? 0xff : keep <= 0 ? 0 : (unsigned char)(0xff << (8 - keep));
            key[1 + i] = addr[i] & mask;
        }
        uint64_t h = PREGUARD_HASH_OFFSET;
        for (int i = 0; i <= bytes; i++)
            h = (h ^ key[i]) * PRIME;
        probe(r, h, type, (const char *)key, (size_t)bytes + 1, NULL, 0, f, m);
    }
}

int hook_conclude(const struct hook_rules *r, struct hook_match *m, int default_slot, int kind, int access,
                  const char *fallback, size_t fallback_len)
{
    if (!m->action && r->hdr->default_action[default_slot] == PREGUARD_ACT_BLOCK) {
        m->action = PREGUARD_ACT_BLOCK;
        m->rule_id = r->hdr->default_rule[default_slot];
    }
    if (m->action != PREGUARD_ACT_BLOCK && m->action != PREGUARD_ACT_AUDIT)
        return HOOK_ALLOW;
    const char *target = m->subject ? m->subject : fallback;
    size_t len = m->subject ? m->subject_len : fallback_len;
    int outcome = m->action == PREGUARD_ACT_BLOCK ? PREGUARD_OUTCOME_BLOCKED : PREGUARD_OUTCOME_AUDITED;
    hook_emit(kind, outcome, access, m->rule_id, r->hdr->revision, target, len);
    return m->action == PREGUARD_ACT_BLOCK ? HOOK_DENY : HOOK_ALLOW;
}

int hook_control_writable(void) { return control_writable; }
