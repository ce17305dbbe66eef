"""A container's root filesystem, reached from the host through /proc/<pid>/root, safely.

Two dangers: a pid that is not (or no longer) a container's, whose root is the host's `/`
(the library would load into every host process), and symlinks planted by the container
(`/etc -> /` would make the probe write the host's files). The first is refused by comparing
the root directory with the host's; the second by resolving every path with openat2's
RESOLVE_IN_ROOT, so absolute links and `..` stay inside the container, and by never following
a link in a final component we write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_SYS_OPENAT2 = 437  # same number on every architecture (new syscalls share the table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_libc = ctypes.CDLL(None, use_errno=True)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class HostRootError(Exception):
    """The directory we were about to treat as a container's root is the host's own root."""


def _openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd: int = _libc.syscall(_SYS_OPENAT2, dirfd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def host_roots(proc: str = "/proc") -> set[tuple[int, int]]:
    """Our own root and the host init's: a container root must be neither."""
    roots = {_identity(os.stat("/"))}
    with contextlib.suppress(OSError):
        roots.add(_identity(os.stat(f"{proc}/1/root")))
    return roots


class RootFS:
    """One container's root, pinned by a directory descriptor opened once and checked once."""

    def __init__(self, pid: int, proc: str = "/proc") -> None:
        if pid <= 1 or pid == os.getpid():
            raise HostRootError(f"pid {pid} is not a container's process")
        self.pid = pid
        self.fd = os.open(f"{proc}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if _identity(os.fstat(self.fd)) in host_roots(proc):
                raise HostRootError(f"the root of pid {pid} is the host's root")
            with contextlib.suppress(OSError):
                ns = os.readlink(f"{proc}/{pid}/ns/mnt")
                if ns in (os.readlink("/proc/self/ns/mnt"), os.readlink(f"{proc}/1/ns/mnt")):
                    raise HostRootError(f"pid {pid} shares the host's mount namespace")
        except BaseException:
            os.close(self.fd)
            raise

    def alive(self, proc: str = "/proc") -> bool:
        """Whether the pid still runs with this root (a dying container's files vanish: no tamper)."""
        try:
            return _identity(os.stat(f"{proc}/{self.pid}/root")) == _identity(os.fstat(self.fd))
        except OSError:
            return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- reading --------------------------------------------------------------------------------
    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0) -> int:
        """A descriptor for a path inside the container, resolved as the container would."""
        return _openat2(self.fd, path, flags, mode)

    @contextlib.contextmanager
    def directory(self, path: str) -> Iterator[int]:
        fd = self.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            yield fd
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        try:
            fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return []
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def read(self, path: str, limit: int = 1 << 20, *, strict: bool = False) -> bytes | None:
        """A regular file's first `limit` bytes, or None (missing, not a file: never a FIFO's wait).

        strict: only a missing path gives None; any other error is raised (no false alarms)."""
        try:
            fd = self.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            if strict and not isinstance(exc, FileNotFoundError | NotADirectoryError):
                raise
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            chunks, left = [], limit
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        try:
            os.close(self.open(path, os.O_PATH))
        except OSError:
            return False
        return True

    def lstat(self, path: str, *, strict: bool = False) -> os.stat_result | None:
        parent, name = os.path.split(path.rstrip("/"))
        try:
            with self.directory(parent or "/") as dfd:
                return os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:
            if strict and not isinstance(exc, FileNotFoundError | NotADirectoryError):
                raise
            return None

    def fd_path(self, fd: int) -> Path:
        """A path for a descriptor, for APIs that take paths (the directory is already checked)."""
        return Path(f"/proc/self/fd/{fd}")

    # -- writing --------------------------------------------------------------------------------
    def write_atomic(self, path: str, data: bytes, mode: int = 0o644) -> os.stat_result:
        """Temp file and rename in the same directory: readers see the old or the new file, whole."""
        parent, name = os.path.split(path)
        with self.directory(parent) as dfd:
            tmp = f".{name}.preguard-{os.getpid()}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)

    def ensure_dir(self, path: str, mode: int = 0o755) -> None:
        """A real directory at path (a link or file there is removed first)."""
        parent, name = os.path.split(path.rstrip("/"))
        with self.directory(parent or "/") as dfd:
            st = _lstat_at(name, dfd)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dfd)
            if st is None or not stat.S_ISDIR(st.st_mode):
                os.mkdir(name, mode, dir_fd=dfd)

    def remove_tree(self, path: str) -> None:
        """Remove a directory we made (its entries are files, never subdirectories we follow)."""
        parent, name = os.path.split(path.rstrip("/"))
        with self.directory(parent or "/") as dfd:
            st = _lstat_at(name, dfd)
            if st is None:
                return
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dfd)
                return
            with self.directory(path) as inner:
                listfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=inner)
                try:
                    entries = os.listdir(listfd)
                finally:
                    os.close(listfd)
                for entry in entries:
                    try:
                        os.unlink(entry, dir_fd=inner)
                    except IsADirectoryError:
                        os.rmdir(entry, dir_fd=inner)  # only empty ones; anything else stays
                    except OSError as exc:
                        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                            raise
            os.rmdir(name, dir_fd=dfd)


def _lstat_at(name: str, dfd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


# -- /etc/ld.so.preload, as text --------------------------------------------------------------------
def add_line(text: str, line: str) -> str:
    """The file with our line first (glibc loads in order) and every other line kept."""
    others = [x for x in text.splitlines() if x.strip() != line]
    return "\n".join([line, *others]) + "\n"


def remove_line(text: str, line: str) -> str:
    """The file as it was before we added our line."""
    others = [x for x in text.splitlines() if x.strip() != line]
    return "\n".join(others) + "\n" if others else ""
