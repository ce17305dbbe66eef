"""Compiles the policies selected for one container into the hook's rules file (layout: abi.h).

Every rule becomes one or more entries of a single hash table keyed so that the library finds
candidates with a fixed number of probes whatever the rule count: an exact path or name, the
literal directory prefix of a glob (probed once per directory level of the path looked up), or a
network prefix (probed once per prefix length in use).
"""

from __future__ import annotations

import ipaddress
import posixpath
from collections.abc import Sequence
from typing import Any

import msgspec

from preguard.proto.abi import ABI_VERSION, const, ffi
from preguard.proto.messages import (
    Access,
    Action,
    AnyRule,
    FileRule,
    Mode,
    NetworkRule,
    Policy,
    ProcessRule,
    Protocol,
    Severity,
)
from preguard.proto.policy import parse_ports

_M64 = (1 << 64) - 1
_OFFSET = 0xCBF29CE484222325
_PRIME = 0x100000001B3
_HEADER = ffi.sizeof("struct preguard_rules_header")
_ENTRY = ffi.sizeof("struct preguard_rule_entry")
_ACT = {Action.ALLOW: const("ACT_ALLOW"), Action.AUDIT: const("ACT_AUDIT"), Action.BLOCK: const("ACT_BLOCK")}
_ACCESS_BITS = {
    Access.READ: const("BIT_READ"),
    Access.WRITE: const("BIT_WRITE"),
    Access.ANY: const("BIT_READ") | const("BIT_WRITE"),
}
_PROTO_BITS = {Protocol.TCP: const("BIT_TCP"), Protocol.UDP: const("BIT_UDP"), None: 3}


class RuleOrigin(msgspec.Struct, frozen=True, kw_only=True):
    """Where a rule id comes from: the policy, the rule's index in it (-1: a kind's default deny)."""

    policy: str
    rule: int
    severity: Severity


class CompiledRules(msgspec.Struct, frozen=True, kw_only=True):
    data: bytes
    revision: int
    origins: list[RuleOrigin]  # a Record's rule_id indexes this list

    def origin(self, rule_id: int) -> RuleOrigin | None:
        return self.origins[rule_id] if 0 <= rule_id < len(self.origins) else None


def fnv1a64(data: bytes, h: int = _OFFSET) -> int:
    for b in data:
        h = ((h ^ b) * _PRIME) & _M64
    return h


def entry_hash(type_: int, key: bytes) -> int:
    """The table hash of an entry: FNV-1a 64 of the key, then the type mixed in (as the C side does)."""
    return ((fnv1a64(key) ^ type_) * _PRIME) & _M64


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def normalize_path(path: str) -> str:
    """Lexically canonical absolute path: no `.`, `..`, `//` or trailing slash (as the library does)."""
    norm = posixpath.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("/") else norm


def glob_key(pattern: str) -> str:
    """The literal directory prefix of a glob: up to and including the last / before a wildcard."""
    first = min(i for i in (pattern.find("*"), pattern.find("?")) if i >= 0)
    return pattern[: pattern.rfind("/", 0, first) + 1]


class _Entry(msgspec.Struct, frozen=True):
    type: int
    key: bytes
    pattern: bytes
    rule_id: int
    action: int
    bits: int = 0
    port_lo: int = 0
    port_hi: int = 0


def _path_entries(exact: int, glob: int, pattern: str) -> list[tuple[int, bytes, bytes]]:
    if is_glob(pattern):
        squashed = "/" + "/".join(p for p in pattern.split("/") if p) if pattern.startswith("/") else pattern
        return [(glob, glob_key(squashed).encode(), squashed.encode())]
    return [(exact, normalize_path(pattern).encode(), b"")]


def _rule_entries(rule: AnyRule, rule_id: int) -> list[_Entry]:
    act = _ACT[rule.action]
    if isinstance(rule, ProcessRule):
        if rule.path is not None:
            keys = _path_entries(const("T_EXE_EXACT"), const("T_EXE_GLOB"), rule.path)
        elif rule.name is not None and is_glob(rule.name):
            keys = [(const("T_NAME_GLOB"), b"", rule.name.encode())]
        else:
            keys = [(const("T_NAME_EXACT"), (rule.name or "").encode(), b"")]
        return [_Entry(t, k, p, rule_id, act) for t, k, p in keys]
    if isinstance(rule, FileRule):
        keys = _path_entries(const("T_FILE_EXACT"), const("T_FILE_GLOB"), rule.path)
        return [_Entry(t, k, p, rule_id, act, _ACCESS_BITS[rule.access]) for t, k, p in keys]
    assert isinstance(rule, NetworkRule)
    if rule.unix is not None:
        keys = _path_entries(const("T_UNIX_EXACT"), const("T_UNIX_GLOB"), rule.unix)
        return [_Entry(t, k, p, rule_id, act) for t, k, p in keys]
    net: Any = ipaddress.ip_network(rule.cidr or "0.0.0.0/0", strict=False)
    if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        # the library judges an IPv4-mapped address as the IPv4 address it carries
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    type_ = const("T_NET4") if net.version == 4 else const("T_NET6")
    key = bytes([net.prefixlen]) + net.network_address.packed
    bits = _PROTO_BITS[rule.protocol]
    return [_Entry(type_, key, b"", rule_id, act, bits, lo, hi) for lo, hi in parse_ports(rule.ports)]


_FLAG_OF_TYPE = {
    const("T_FILE_EXACT"): const("RULES_HAS_FILE"),
    const("T_FILE_GLOB"): const("RULES_HAS_FILE"),
    const("T_EXE_EXACT"): const("RULES_HAS_EXE"),
    const("T_EXE_GLOB"): const("RULES_HAS_EXE"),
    const("T_NAME_EXACT"): const("RULES_HAS_EXE"),
    const("T_NAME_GLOB"): const("RULES_HAS_EXE") | const("RULES_HAS_NAME_GLOB"),
    const("T_UNIX_EXACT"): const("RULES_HAS_UNIX"),
    const("T_UNIX_GLOB"): const("RULES_HAS_UNIX"),
    const("T_NET4"): const("RULES_HAS_NET"),
    const("T_NET6"): const("RULES_HAS_NET"),
}


def compile_rules(policies: Sequence[Policy], revision: int) -> CompiledRules:
    """Merge the policies selected for one container into one rules file.

    Where policies disagree the library takes the strongest action among the matching entries
    (block beats audit beats allow); a kind whose default is `deny` in any policy blocks what no
    entry of that kind admits, reported under the first such policy's default origin (rule -1).
    """
    origins: list[RuleOrigin] = []
    entries: list[_Entry] = []
    for policy in policies:
        for index, rule in enumerate(policy.rules):
            rule_id = len(origins)
            origins.append(RuleOrigin(policy=policy.name, rule=index, severity=policy.severity))
            entries.extend(_rule_entries(rule, rule_id))
    default_action = [0, const("ACT_ALLOW"), const("ACT_ALLOW"), const("ACT_ALLOW")]
    default_rule = [0, 0, 0, 0]
    for slot, kind in ((1, "process"), (2, "file"), (3, "network")):
        for policy in policies:
            if getattr(policy.defaults, kind) == Mode.DENY:
                default_action[slot] = const("ACT_BLOCK")
                default_rule[slot] = len(origins)
                origins.append(RuleOrigin(policy=policy.name, rule=-1, severity=policy.severity))
                break
    return CompiledRules(
        data=_layout(entries, default_action, default_rule, revision), revision=revision, origins=origins
    )


def _layout(
    entries: list[_Entry], default_action: list[int], default_rule: list[int], revision: int
) -> bytes:
    buckets = 1
    while buckets < 2 * len(entries):
        buckets *= 2
    strings = bytearray()
    interned: dict[bytes, int] = {}

    def intern(s: bytes) -> int:
        if s not in interned:
            interned[s] = len(strings)
            strings.extend(s)
        return interned[s]

    heads = [0] * buckets
    raw = ffi.new("struct preguard_rule_entry[]", max(len(entries), 1))
    flags = 0
    net4 = 0
    net6 = 0
    for i, e in enumerate(entries):
        h = entry_hash(e.type, e.key)
        r = raw[i]
        r.hash, r.key_off, r.key_len = h, intern(e.key), len(e.key)
        r.pat_off, r.pat_len = (intern(e.pattern), len(e.pattern)) if e.pattern else (0, 0)
        r.rule_id, r.type, r.action, r.bits = e.rule_id, e.type, e.action, e.bits
        r.port_lo, r.port_hi = e.port_lo, e.port_hi
        slot = h & (buckets - 1)
        r.next, heads[slot] = heads[slot], i + 1
        flags |= _FLAG_OF_TYPE[e.type]
        if e.type == const("T_NET4"):
            net4 |= 1 << e.key[0]
        elif e.type == const("T_NET6"):
            net6 |= 1 << e.key[0]
    buckets_off = _HEADER
    entries_off = (buckets_off + 4 * buckets + 7) & ~7
    strings_off = entries_off + _ENTRY * len(entries)
    size = strings_off + len(strings)
    out = bytearray(size)
    out[buckets_off : buckets_off + 4 * buckets] = b"".join(x.to_bytes(4, "little") for x in heads)
    out[entries_off:strings_off] = bytes(ffi.buffer(raw, _ENTRY * len(entries)))
    out[strings_off:] = strings
    hdr: Any = ffi.from_buffer("struct preguard_rules_header *", out)
    hdr.magic, hdr.version, hdr.header_size, hdr.file_size = const("RULES_MAGIC"), ABI_VERSION, _HEADER, size
    hdr.revision, hdr.bucket_count, hdr.entry_count = revision, buckets, len(entries)
    hdr.buckets_off, hdr.entries_off = buckets_off, entries_off
    hdr.strings_off, hdr.strings_size = strings_off, len(strings)
    for k in range(4):
        hdr.default_action[k], hdr.default_rule[k] = default_action[k], default_rule[k]
    hdr.flags, hdr.net4_lens = flags, net4
    for k in range(3):
        hdr.net6_lens[k] = (net6 >> (64 * k)) & _M64
    ffi.release(hdr)
    out[12:16] = fnv1a32(bytes(out[_HEADER:])).to_bytes(4, "little")
    return bytes(out)
