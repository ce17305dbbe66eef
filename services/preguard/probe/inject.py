"""Putting the library, rules, control file and pipe into a container, and taking them out.

Every path goes through RootFS (resolved inside the container, links never followed where we
write); the abi helpers that take paths get `/proc/self/fd/N` of a descriptor we opened safely.
"""

from __future__ import annotations

import functools
import os
import stat
import struct
import tempfile
from pathlib import Path

import msgspec

from preguard.probe.rootfs import RootFS, add_line, remove_line
from preguard.proto import abi
from preguard.proto.rulesfile import CompiledRules

LIB_DIR = Path(__file__).parent / "_lib"
DIR = abi.DIR_NAME
LINE = f"{abi.DIR_NAME}/{abi.LIBRARY}"
PRELOAD = "/etc/ld.so.preload"
_LIBRARY, _RULES, _CONTROL, _PIPE = (f"{DIR}/{n}" for n in (abi.LIBRARY, abi.RULES, abi.CONTROL, abi.PIPE))

Identity = tuple[int, int, int]  # inode, size, mtime_ns: what we wrote, to notice a change


class Installed(msgspec.Struct, kw_only=True):
    """What the probe last wrote into one container, to tell tampering from its own writes."""

    library: Identity | None = None
    rules: Identity | None = None
    injected_at: float | None = None  # Unix time the preload line (or volume) went live


def _identity(st: os.stat_result | None) -> Identity | None:
    return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)


@functools.cache
def library_bytes(build: str) -> bytes:
    """The build for a libc (an abi.LIBRARY_BUILDS key, see abi.library_build); FileNotFoundError when it was not built (no musl-gcc), and
    ValueError when the file is not a whole ELF object (caught mid-copy by a rebuild, say)."""
    data = (LIB_DIR / abi.LIBRARY_BUILDS[build]).read_bytes()
    if not complete_elf(data):
        raise ValueError(f"{abi.LIBRARY_BUILDS[build]} is not a complete ELF shared object")
    return data


def complete_elf(data: bytes) -> bool:
    """A 64-bit ELF whose section header table (written last by the linker) is all there."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    shoff: int = struct.unpack_from("<Q", data, 40)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 58)
    return bool(shoff > 0 and shoff + shentsize * shnum <= len(data))


@functools.cache
def _fresh_control() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        abi.Control.create(Path(tmp, "control"))
        return Path(tmp, "control").read_bytes()


def install(root: RootFS, build: str, installed: Installed) -> None:
    """The directory, library (an abi.LIBRARY_BUILDS key), control file and pipe; unchanged files are
    left as they are."""
    root.ensure_dir(DIR)
    data = library_bytes(build)
    if root.read(_LIBRARY, limit=len(data) + 1) != data:
        installed.library = _identity(root.write_atomic(_LIBRARY, data, 0o755))
    else:
        installed.library = _identity(root.lstat(_LIBRARY))
    if read_control(root) is None:
        root.write_atomic(_CONTROL, _fresh_control(), 0o666)
    st = root.lstat(_PIPE)
    if st is not None and not stat.S_ISFIFO(st.st_mode):
        root.remove_tree(_PIPE)
        st = None
    if st is None:
        with root.directory(DIR) as dfd:
            os.mkfifo(abi.PIPE, 0o622, dir_fd=dfd)
    fd = open_pipe(root)
    try:
        os.fchmod(fd, 0o622)  # mkfifo's mode passes the umask; others must write, not read
    finally:
        os.close(fd)


def open_pipe(root: RootFS) -> int:
    """The event pipe's read end, non-blocking; OSError when it is missing or not a FIFO."""
    fd = root.open(_PIPE, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{_PIPE} is not a FIFO")
    return fd


def open_control(root: RootFS) -> tuple[int, int]:
    """A read-write descriptor of the control file and its inode."""
    fd = root.open(_CONTROL, os.O_RDWR | os.O_NOFOLLOW)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(f"{_CONTROL} is not a file")
    return fd, st.st_ino


def install_rules(root: RootFS, compiled: CompiledRules, installed: Installed, controls: list[int]) -> None:
    """Rules file (atomic), then the generation bump that makes running processes reload, in every
    control file processes may have mapped (a replaced one is still mapped by older processes)."""
    installed.rules = _identity(root.write_atomic(_RULES, compiled.data, 0o644))
    for fd in controls:
        abi.Control.publish(f"/proc/self/fd/{fd}", compiled.revision)


def read_control(root: RootFS) -> abi.ControlState | None:
    try:
        fd = root.open(_CONTROL, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return abi.Control.read(f"/proc/self/fd/{fd}")
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def preload_text(root: RootFS) -> str:
    data = root.read(PRELOAD, limit=1 << 16)
    return "" if data is None else data.decode(errors="replace")


def has_line(text: str) -> bool:
    return any(x.strip() == LINE for x in text.splitlines())


def add_preload(root: RootFS) -> bool:
    """Our line in /etc/ld.so.preload; True when it was not there before."""
    text = preload_text(root)
    if has_line(text) and text.splitlines()[0].strip() == LINE:
        return False
    root.write_atomic(PRELOAD, add_line(text, LINE).encode(), 0o644)
    return True


def remove_preload(root: RootFS) -> None:
    text = preload_text(root)
    if not has_line(text):
        return
    rest = remove_line(text, LINE)
    if rest:
        root.write_atomic(PRELOAD, rest.encode(), 0o644)
    else:
        with root.directory("/etc") as dfd:
            os.unlink("ld.so.preload", dir_fd=dfd)


def uninstall(root: RootFS, empty: CompiledRules, *, keep_library: bool) -> None:
    """Unselected: no rule enforced, the preload line out first, then our files (unless a volume
    for LD_PRELOAD needs the library to stay, or new processes would warn on every start)."""
    if read_control(root) is not None:  # running processes stop enforcing at their next call
        fd, _ = open_control(root)
        try:
            install_rules(root, empty, Installed(), [fd])
        finally:
            os.close(fd)
    remove_preload(root)
    if not keep_library:
        root.remove_tree(DIR)


def tampered(root: RootFS, installed: Installed, *, preload: bool) -> list[str]:
    """What differs from what we wrote: the preload line, the directory, our files, the pipe.
    Only a path found missing or different counts; other errors are raised, never reported."""
    problems = []
    if preload:
        text = root.read(PRELOAD, limit=1 << 16, strict=True)
        if not has_line("" if text is None else text.decode(errors="replace")):
            problems.append(PRELOAD)
    dir_st = root.lstat(DIR, strict=True)
    if dir_st is None or not stat.S_ISDIR(dir_st.st_mode):
        return [*problems, DIR]
    if installed.library is not None and _identity(root.lstat(_LIBRARY, strict=True)) != installed.library:
        problems.append(_LIBRARY)
    if installed.rules is not None and _identity(root.lstat(_RULES, strict=True)) != installed.rules:
        problems.append(_RULES)
    if root.lstat(_CONTROL, strict=True) is None or read_control(root) is None:
        problems.append(_CONTROL)
    pipe = root.lstat(_PIPE, strict=True)
    if pipe is None or not stat.S_ISFIFO(pipe.st_mode):
        problems.append(_PIPE)
    return problems


def pipe_inode(root: RootFS) -> int | None:
    st = root.lstat(_PIPE, strict=True)
    return None if st is None else st.st_ino
