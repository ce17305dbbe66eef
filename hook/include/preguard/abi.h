/* preguard's binary ABI: event records, the compiled rules file and the control file.
 *
 * The one definition of every byte the library shares with the probe. Python reads the block between
 * cdef-begin and cdef-end through cffi (preguard/proto/abi.py), so that block holds declarations and
 * `#define NAME <int>` only. Every field has a fixed width, every struct is laid out without implicit
 * padding, and the sizes are pinned by _Static_asserts below. All integers are little-endian (x86-64,
 * aarch64): the file is written and read on the same machine.
 *
 * Change rules: a layout change bumps PREGUARD_ABI_VERSION; readers refuse other versions.
 */
#ifndef PREGUARD_ABI_H
#define PREGUARD_ABI_H

#include <stdint.h>

/* cdef-begin */
#define PREGUARD_ABI_VERSION 1

#define PREGUARD_RECORD_MAGIC 0x45524750  /* "PGRE" in file order */
#define PREGUARD_RULES_MAGIC 0x4c524750   /* "PGRL" */
#define PREGUARD_CONTROL_MAGIC 0x43524750 /* "PGRC" */

#define PREGUARD_RECORD_MAX 4096 /* PIPE_BUF on Linux: one write of this size is atomic */
#define PREGUARD_EXE_MAX 1024    /* exe is cut to this many bytes; the target gets the rest */

/* record kinds */
#define PREGUARD_KIND_PROCESS 1
#define PREGUARD_KIND_FILE 2
#define PREGUARD_KIND_NETWORK 3
#define PREGUARD_KIND_TAMPER 4 /* a write to the library's own files or /etc/ld.so.preload */

/* record outcomes */
#define PREGUARD_OUTCOME_BLOCKED 1
#define PREGUARD_OUTCOME_AUDITED 2

/* record access codes */
#define PREGUARD_ACCESS_READ 1
#define PREGUARD_ACCESS_WRITE 2
#define PREGUARD_ACCESS_EXEC 3
#define PREGUARD_ACCESS_CONNECT 4
#define PREGUARD_ACCESS_SEND 5

#define PREGUARD_FLAG_TRUNCATED 1

#define PREGUARD_NO_RULE 4294967295 /* rule_id of an event no rule produced (tamper) */

/* One rule hit. Followed by exe_len bytes of exe then target_len bytes of target (no NULs);
 * size == sizeof(struct preguard_record) + exe_len + target_len <= PREGUARD_RECORD_MAX. */
struct preguard_record {
    uint32_t magic;
    uint16_t version;
    uint16_t size;
    uint64_t time_ns; /* CLOCK_REALTIME */
    uint32_t pid;
    uint32_t uid;
    uint32_t rule_id; /* index into the origins of the compiled rules; PREGUARD_NO_RULE for tamper */
    uint32_t reserved;
    uint64_t revision; /* revision of the rules that decided */
    uint8_t kind;
    uint8_t outcome;
    uint8_t access;
    uint8_t flags;
    uint16_t exe_len;
    uint16_t target_len;
};

/* rule actions in the rules file (0: no entry) */
#define PREGUARD_ACT_ALLOW 1
#define PREGUARD_ACT_AUDIT 2
#define PREGUARD_ACT_BLOCK 3

/* file access bits of a file entry; protocol bits of a network entry */
#define PREGUARD_BIT_READ 1
#define PREGUARD_BIT_WRITE 2
#define PREGUARD_BIT_TCP 1
#define PREGUARD_BIT_UDP 2

/* entry types: which table an entry belongs to and what its key is */
#define PREGUARD_T_FILE_EXACT 1 /* key: canonical absolute path */
#define PREGUARD_T_FILE_GLOB 2  /* key: the pattern's literal directory prefix (ends with /, or empty) */
#define PREGUARD_T_EXE_EXACT 3
#define PREGUARD_T_EXE_GLOB 4
#define PREGUARD_T_NAME_EXACT 5 /* key: base name */
#define PREGUARD_T_NAME_GLOB 6  /* key: empty; pattern on the base name */
#define PREGUARD_T_UNIX_EXACT 7
#define PREGUARD_T_UNIX_GLOB 8
#define PREGUARD_T_NET4 9  /* key: prefix length (1 byte) + masked address (4 bytes, network order) */
#define PREGUARD_T_NET6 10 /* key: prefix length (1 byte) + masked address (16 bytes) */

/* kind indexes of the per-kind defaults */
#define PREGUARD_DEFAULT_PROCESS 1
#define PREGUARD_DEFAULT_FILE 2
#define PREGUARD_DEFAULT_NETWORK 3

/* The rules file: header, bucket array, entries, strings. One hash table holds every entry: the
 * hash is FNV-1a 64 over the key bytes, then (h ^ type) * FNV prime, so a path's directory prefixes
 * hash in one pass over it. bucket = hash & (bucket_count - 1); a bucket holds entry index + 1 of
 * its chain's head (0: empty), an entry the next one the same way. */
struct preguard_rules_header {
    uint32_t magic;
    uint16_t version;
    uint16_t header_size;
    uint32_t file_size;
    uint32_t checksum; /* FNV-1a 32 over bytes [header_size, file_size) */
    uint64_t revision;
    uint32_t bucket_count; /* a power of two */
    uint32_t entry_count;
    uint32_t buckets_off; /* uint32_t[bucket_count] */
    uint32_t entries_off; /* struct preguard_rule_entry[entry_count] */
    uint32_t strings_off;
    uint32_t strings_size;
    uint8_t default_action[4]; /* by PREGUARD_DEFAULT_*: PREGUARD_ACT_BLOCK denies what no entry admits */
    uint32_t default_rule[4];  /* rule_id reported for a default deny */
    uint32_t flags;            /* PREGUARD_RULES_HAS_* */
    uint64_t net4_lens;        /* bit n: some IPv4 entry has prefix length n (0..32) */
    uint64_t net6_lens[3];     /* bit n of the 192-bit set: some IPv6 entry has prefix length n (0..128) */
};

#define PREGUARD_RULES_HAS_FILE 1
#define PREGUARD_RULES_HAS_EXE 2
#define PREGUARD_RULES_HAS_NAME_GLOB 4
#define PREGUARD_RULES_HAS_UNIX 8
#define PREGUARD_RULES_HAS_NET 16

struct preguard_rule_entry {
    uint64_t hash;
    uint32_t next;    /* next entry index + 1 in the chain, 0: end */
    uint32_t key_off; /* into the strings */
    uint32_t pat_off; /* the whole glob pattern, for *_GLOB entries */
    uint32_t rule_id;
    uint16_t key_len;
    uint16_t pat_len;
    uint16_t port_lo; /* network: inclusive port range */
    uint16_t port_hi;
    uint8_t type;
    uint8_t action;
    uint8_t bits; /* file: PREGUARD_BIT_READ|WRITE; network: PREGUARD_BIT_TCP|UDP */
    uint8_t reserved0;
    uint32_t reserved1;
};

/* The control file, mapped shared by every process of the container. The probe writes revision then
 * generation; the library only reads generation and adds to the counters atomically. */
struct preguard_control {
    uint32_t magic;
    uint16_t version;
    uint16_t size;
    uint64_t generation;          /* bumped after a new rules file is in place */
    uint64_t revision;            /* revision of the installed rules file */
    uint64_t drops;               /* records the library could not write (pipe full, no reader) */
    uint64_t rules_errors;        /* loads that found the rules file missing or corrupt */
    uint64_t fs_generation;       /* bumped by renames and removals: invalidates cached path facts */
    uint64_t loads;               /* rules loads done by processes */
    uint64_t loaded_revision;     /* the highest revision a process has loaded */
    uint64_t events;              /* records written */
    uint64_t verified_generation; /* the generation whose rules file a process checked in full */
    uint64_t verified_checksum;   /* and the checksum it found: later processes trust that file */
    uint64_t reserved[5];
};
/* cdef-end */

#define PREGUARD_HASH_OFFSET 0xcbf29ce484222325ULL
#define PREGUARD_HASH_PRIME 0x100000001b3ULL

#ifndef __cplusplus
_Static_assert(sizeof(struct preguard_record) == 48, "record header layout");
_Static_assert(sizeof(struct preguard_rules_header) == 104, "rules header layout");
_Static_assert(sizeof(struct preguard_rule_entry) == 40, "rule entry layout");
_Static_assert(sizeof(struct preguard_control) == 128, "control layout");
#endif

#endif
