"""Which libc a container's programs use: the loader in its root, and glibc's version."""

from __future__ import annotations

import re

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
    """From the file names in the library directories: musl's or glibc's dynamic loader."""
    if any(n.startswith("ld-musl-") and n.endswith(".so.1") for n in names):
        return "musl"
    if any(n.startswith(("ld-linux", "ld64.so")) for n in names):
        return "glibc"
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
