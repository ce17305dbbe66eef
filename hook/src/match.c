/* Matching: hash probes whose number depends on the path's depth or the prefix lengths in use, never
 * on the rule count; globs; the verdict with a kind's default, and its event. */
#define _GNU_SOURCE
#include <string.h>

#include "hook.h"

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
