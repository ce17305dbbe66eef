"""Which libc a container's programs use: the loader in its root, and glibc's version."""

from __future__ import annotations

import re
import struct

import msgspec

from preguard.probe.rootfs import RootFS

LIB_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64")
_ARCH_DIRS = ("x86_64-linux-gnu", "aarch64-linux-gnu", "i386-linux-gnu", "arm-linux-gnueabihf")
_RELEASE = re.compile(rb"GNU C Library [^\n\x00]{0,80}?version (\d+)\.(\d+)")
_SYMVER = re.compile(rb"GLIBC_(\d+)\.(\d+)")
_FILE_VERSION = re.compile(r"^libc-(\d+)\.(\d+)\.so$")


class Libc(msgspec.Struct, frozen=True, kw_only=True):
    family: str  # glibc | musl | none
    version: tuple[int, int] | None = None  # glibc only


def loader_family(names: list[str]) -> str:
    """From the file names in the library directories: musl's or glibc's dynamic loader.

    glibc wins when both are there (a Debian image with musl-tools installed): its programs read
    /etc/ld.so.preload and are guarded; the few musl programs show up as uncovered processes.
    """
    if any(n.startswith(("ld-linux", "ld64.so")) for n in names):
        return "glibc"
    if any(n.startswith("ld-musl-") and n.endswith(".so.1") for n in names):
        return "musl"
    return "none"


def glibc_version(data: bytes) -> tuple[int, int] | None:
    """glibc's version from its libc.so.6 bytes: the release banner, else the newest symbol version."""
    if m := _RELEASE.search(data):
        return int(m.group(1)), int(m.group(2))
    versions = [(int(a), int(b)) for a, b in _SYMVER.findall(data)]
    return max(versions) if versions else None


def detect(root: RootFS) -> Libc:
    names = [n for d in LIB_DIRS for n in root.listdir(d)]
    family = loader_family(names)
    if family != "glibc":
        return Libc(family=family)
    dirs = [d for base in LIB_DIRS for d in (base, *(f"{base}/{a}" for a in _ARCH_DIRS))]
    for d in dirs:
        for name in root.listdir(d):
            if m := _FILE_VERSION.match(name):  # glibc before 2.34 names the file libc-2.31.so
                return Libc(family=family, version=(int(m.group(1)), int(m.group(2))))
    for d in dirs:
        data = root.read(f"{d}/libc.so.6", limit=16 << 20)
        if data is not None:
            return Libc(family=family, version=glibc_version(data))
    return Libc(family=family)


def needed_libraries(elf: bytes) -> list[str]:
    """The DT_NEEDED names of a 64-bit little-endian ELF shared object (our own library build)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return []
    shoff, shentsize, shnum = struct.unpack_from("<Q", elf, 40)[0], *struct.unpack_from("<HH", elf, 58)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for _name, kind, _flags, _addr, offset, size, link, *_ in sections:
        if kind != 6:  # SHT_DYNAMIC; its sh_link is the string table
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", elf, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = elf.index(b"\0", strtab + value)
                names.append(elf[strtab + value : end].decode())
    return names


def missing_libraries(root: RootFS, family: str, needed: list[str]) -> list[str]:
    """The needed libraries the container cannot provide (musl's libc.so is its loader itself)."""
    dirs = [d for base in LIB_DIRS for d in (base, *(f"{base}/{a}" for a in _ARCH_DIRS))]
    missing = []
    for name in needed:
        if family == "musl" and name == "libc.so":
            continue
        if not any(root.exists(f"{d}/{name}") for d in dirs):
            missing.append(name)
    return missing
