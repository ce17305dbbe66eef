"""The Python view of the hook's binary formats: cffi from the same header, checked against the C compiler."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cffi
import pytest

from preguard.proto import Kind, Outcome
from preguard.proto.abi import (
    ABI_VERSION,
    CDEF,
    GLIBC_DL_IN_LIBC,
    GLIBC_NEEDS,
    GLIBC_REQUIRED,
    LIBRARY_BUILDS,
    NO_RULE,
    RECORD_HEADER,
    RECORD_MAX,
    Control,
    Record,
    RecordReader,
    encode_record,
    glibc_version_ok,
    header_path,
    init_directory,
    install_rules,
)
from preguard.proto.rulesfile import compile_rules, entry_hash, glob_key, normalize_path
from tests.hook.conftest import HOOK, policy

RECORD = Record(
    version=ABI_VERSION,
    time_ns=1_700_000_000_000_000_000,
    pid=42,
    uid=1000,
    kind=Kind.FILE,
    action=Outcome.BLOCKED,
    access="read",
    rule_id=3,
    revision=7,
    exe="/usr/bin/cat",
    target="/etc/shadow",
    truncated=False,
)


def build_api_module(tmp_path: Path, cdef: str) -> None:
    """An API-mode cffi build of `cdef` against abi.h: the C compiler checks every field's size and offset."""
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    name = f"_pgabi_{abs(hash(cdef)) % 10**8}"
    ffi.set_source(name, '#include "preguard/abi.h"', include_dirs=[str(HOOK / "include")])
    ffi.compile(tmpdir=str(tmp_path), verbose=False)
    sys.path.insert(0, str(tmp_path))
    try:
        module = __import__(name)
    finally:
        sys.path.remove(str(tmp_path))
    for struct in re.findall(r"struct (\w+) \{", cdef):
        module.ffi.sizeof(f"struct {struct}")  # cffi checks a struct's layout when it is first used


def test_the_cdef_block_matches_the_compiled_header(tmp_path: Path) -> None:
    build_api_module(tmp_path, CDEF)


def test_a_drifted_cdef_is_caught_by_the_api_build(tmp_path: Path) -> None:
    drifted = CDEF.replace("uint16_t exe_len;", "uint32_t exe_len;", 1)
    assert drifted != CDEF
    with pytest.raises(Exception, match="exe_len"):
        build_api_module(tmp_path, drifted)


def test_header_is_found_beside_the_module_or_in_the_checkout() -> None:
    assert header_path().name == "abi.h" and "cdef-begin" in header_path().read_text()
    assert RECORD_HEADER == 48 and RECORD_MAX == 4096


def test_records_round_trip_and_garbage_is_skipped_and_counted() -> None:
    data = encode_record(RECORD)
    reader = RecordReader()
    got = reader.feed(b"\x00junk" + data[:7])
    got += reader.feed(data[7:] + b"PGRE" + b"\xff" * 60 + data)
    assert got == [RECORD, RECORD]
    assert reader.valid == 2 and reader.invalid >= 2


@pytest.mark.parametrize(
    ("offset", "value"),
    [
        (4, b"\x09\x00"),
        (6, b"\xff\xff"),
        (40, b"\x09"),
        (41, b"\x00"),
        (42, b"\x77"),
        (43, b"\x02"),
        (44, b"\xff\x00"),
    ],
)
def test_malformed_records_are_refused(offset: int, value: bytes) -> None:
    data = bytearray(encode_record(RECORD))
    data[offset : offset + len(value)] = value
    reader = RecordReader()
    assert reader.feed(bytes(data) + encode_record(RECORD)) == [RECORD]
    assert reader.invalid >= 1


def test_invalid_utf8_is_replaced_and_tamper_has_no_rule() -> None:
    raw = bytearray(encode_record(RECORD))
    raw[-1] = 0xFF
    [rec] = RecordReader().feed(bytes(raw))
    assert rec.target.endswith("\ufffd")
    tamper = encode_record(
        Record(**{**{f: getattr(RECORD, f) for f in Record.__struct_fields__}, "rule_id": NO_RULE})
    )
    assert RecordReader().feed(tamper)[0].rule_id == NO_RULE


def test_glibc_floor_is_what_the_built_library_needs(hook_build: Path) -> None:
    out = subprocess.run(
        ["readelf", "-V", str(hook_build / "libpreguard-glibc.so")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    needs = out.split("Version needs", 1)[1]
    assert sorted(set(re.findall(r"Name: (GLIBC_[0-9.]+)", needs))) == sorted(GLIBC_NEEDS)
    versions = {
        tuple(int(x) for x in v.split(".")) for v in re.findall(r"Name: GLIBC_(\d+\.\d+(?:\.\d+)?)", needs)
    }
    assert max(v[:2] for v in versions) == GLIBC_REQUIRED
    assert glibc_version_ok((2, 36)) and glibc_version_ok(GLIBC_REQUIRED) and not glibc_version_ok((2, 16))


def test_the_glibc_2_34_build_maps_no_libdl(hook_build: Path) -> None:
    """dlsym and dladdr come from libc.so.6 (GLIBC_2.34): no libdl.so.2 to find and map at every
    exec, and a loader older than 2.34 refuses the file rather than missing a symbol later."""
    from preguard.probe.libc import needed_libraries

    new = hook_build / LIBRARY_BUILDS["glibc-2.34"]
    assert needed_libraries(new.read_bytes()) == ["libc.so.6"]
    assert "libdl.so.2" in needed_libraries((hook_build / LIBRARY_BUILDS["glibc"]).read_bytes())
    out = subprocess.run(["readelf", "-V", str(new)], capture_output=True, text=True, check=True).stdout
    needs = set(re.findall(r"Name: (GLIBC_[0-9.]+)", out.split("Version needs", 1)[1]))
    assert needs == {*GLIBC_NEEDS, "GLIBC_2.34"}
    assert GLIBC_DL_IN_LIBC == (2, 34)


def test_install_rules_is_atomic_and_bumps_the_generation(tmp_path: Path) -> None:
    init_directory(tmp_path)
    assert (tmp_path / "events").stat().st_mode & 0o777 == 0o622
    assert (tmp_path / "control").stat().st_mode & 0o777 == 0o666
    install_rules(tmp_path, compile_rules([policy({"kind": "process", "name": "nc"})], 5))
    install_rules(tmp_path, compile_rules([], 6))
    state = Control.read(tmp_path / "control")
    assert (state.generation, state.revision, state.drops) == (2, 6, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["control", "events", "rules.bin"]


def test_compiled_rules_name_their_origins() -> None:
    a = policy(
        {"kind": "file", "path": "/etc/shadow"},
        {"kind": "network", "cidr": "10.0.0.0/8", "ports": "22,80-90"},
        name="a",
    )
    b = policy({"kind": "process", "path": "/usr/bin/*"}, name="b", defaults={"network": "deny"})
    compiled = compile_rules([a, b], 9)
    assert [(o.policy, o.rule) for o in compiled.origins] == [("a", 0), ("a", 1), ("b", 0), ("b", -1)]
    assert compiled.origin(99) is None and compiled.revision == 9


def test_keys_and_hashes_follow_the_header() -> None:
    assert (
        glob_key("/var/www/**") == "/var/www/"
        and glob_key("*.key") == ""
        and glob_key("/etc/*.d/x") == "/etc/"
    )
    assert normalize_path("//etc/./x/../shadow/") == "/etc/shadow"
    # FNV-1a 64 of the key, then the type mixed in: the C side computes the same in one pass
    assert entry_hash(1, b"") == ((0xCBF29CE484222325 ^ 1) * 0x100000001B3) & (2**64 - 1)
