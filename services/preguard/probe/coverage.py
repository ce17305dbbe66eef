"""Which processes in a container run with the library loaded, and why the others do not.

The parsing functions take bytes and text; scan() reads /proc on the host (the probe runs in
the host PID namespace), grouping processes by PID namespace.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections import defaultdict

from preguard.proto import ProcessCoverage

LIBRARY_MARK = "/.preguard/libpreguard.so"
_PT_INTERP = 3

STARTED_BEFORE = "started_before_injection"
STATIC = "static_binary"
NO_INTERPRETER = "no_interpreter"
NO_LIBC = "no_libc"
NOT_LOADED = "library_not_loaded"


def maps_has_library(maps: str) -> bool:
    return LIBRARY_MARK in maps


def maps_has_libc(maps: str) -> bool:
    """glibc's libc.so.6, or musl's libc (its loader is the libc: ld-musl-*.so.1)."""
    for line in maps.splitlines():
        path = line.rsplit(" ", 1)[-1]
        base = path.rsplit("/", 1)[-1]
        if base.startswith(("libc.so", "libc-", "ld-musl-")):
            return True
    return False


def elf_interpreter(header: bytes) -> bool | None:
    """Whether an ELF file asks for a dynamic loader (PT_INTERP); None when it is not ELF.

    `header` holds the file's first bytes, enough to cover the program headers (4 KiB is).
    """
    if len(header) < 64 or header[:4] != b"\x7fELF":
        return None
    is64, little = header[4] == 2, header[5] == 1
    end = "<" if little else ">"
    if is64:
        phoff, phentsize, phnum = (
            struct.unpack_from(end + "Q", header, 32)[0],
            *struct.unpack_from(end + "HH", header, 54),
        )
    else:
        phoff, phentsize, phnum = (
            struct.unpack_from(end + "I", header, 28)[0],
            *struct.unpack_from(end + "HH", header, 42),
        )
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(header):
            return None  # program headers past what we read: cannot tell
        if struct.unpack_from(end + "I", header, off)[0] == _PT_INTERP:
            return True
    return False


def start_time(stat_text: str, ticks: int) -> float:
    """A process's start in seconds since boot (CLOCK_BOOTTIME), from /proc/<pid>/stat field 22."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return int(fields[19]) / ticks


def since_boot(unix_time: float) -> float:
    """A Unix time on the boot clock that process start times use (no whole-second btime rounding)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) - (time.time() - unix_time)


def classify(maps: str, header: bytes, started: float, injected: float | None) -> str | None:
    """None when the library is loaded, else the reason it is not."""
    if maps_has_library(maps):
        return None
    interp = elf_interpreter(header)
    if interp is False:
        return STATIC
    if interp is None:
        return NO_INTERPRETER
    if not maps_has_libc(maps):
        return NO_LIBC
    if injected is not None and started < injected:
        return STARTED_BEFORE
    return NOT_LOADED


def _read(path: str, limit: int = 1 << 20) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(limit)


def pids_by_namespace(proc: str = "/proc") -> dict[str, list[int]]:
    """Every host process, grouped by its PID namespace (`pid:[4026532...]`)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for entry in os.listdir(proc):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                groups[os.readlink(f"{proc}/{entry}/ns/pid")].append(int(entry))
    return groups


def scan(
    init_pid: int, injected: float | None, groups: dict[str, list[int]], proc: str = "/proc"
) -> tuple[int, list[ProcessCoverage]]:
    """Count covered processes of the container whose init is init_pid; list the others."""
    try:
        ns = os.readlink(f"{proc}/{init_pid}/ns/pid")
    except OSError:
        return 0, []
    ticks = os.sysconf("SC_CLK_TCK")
    injected = since_boot(injected) if injected is not None else None
    pids = sorted(groups.get(ns, []))
    if ns in _host_namespaces(proc):  # a --pid=host container: its processes are those in its root
        root = _root_of(init_pid, proc)
        pids = [p for p in pids if root is not None and _root_of(p, proc) == root]
    covered, uncovered = 0, []
    for pid in pids:
        try:
            maps = _read(f"{proc}/{pid}/maps", 8 << 20).decode(errors="replace")
            started = start_time(_read(f"{proc}/{pid}/stat").decode(errors="replace"), ticks)
            try:
                header = _read(f"{proc}/{pid}/exe", 4096)
            except OSError:
                header = b""  # kernel thread or exe gone
            exe = os.readlink(f"{proc}/{pid}/exe")
        except OSError:
            continue  # exited meanwhile
        reason = classify(maps, header, started, injected)
        if reason is None:
            covered += 1
        else:
            uncovered.append(ProcessCoverage(pid=pid, exe=exe, reason=reason))
    return covered, uncovered


def _host_namespaces(proc: str) -> set[str]:
    found = set()
    for pid in ("self", "1"):
        with contextlib.suppress(OSError):
            found.add(os.readlink(f"{proc}/{pid}/ns/pid"))
    return found


def _root_of(pid: int, proc: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"{proc}/{pid}/root")
    except OSError:
        return None
    return st.st_dev, st.st_ino
