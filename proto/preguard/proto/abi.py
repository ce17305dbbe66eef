"""The hook's binary formats seen from Python, read through cffi from the hook's own C header.

What lives in a protected container's directory (`/.preguard/`): the library, the compiled rules
file, the shared control file and the event pipe. This module decodes event records (validating
everything: the pipe is written by untrusted processes), reads the control file, installs new rules
atomically and states which glibc the library needs.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

import cffi
import msgspec

from preguard.proto.messages import Kind, Outcome

# -- the header ---------------------------------------------------------------------------------
_HERE = Path(__file__).resolve().parent
_HEADER_CANDIDATES = (
    _HERE / "abi.h",  # wheel: hatch_build.py force-includes the header here
    _HERE.parents[2] / "hook/include/preguard/abi.h",  # editable install / checkout
)


def header_path() -> Path:
    for path in _HEADER_CANDIDATES:
        if path.is_file():
            return path
    raise FileNotFoundError(f"preguard ABI header not found in {[str(p) for p in _HEADER_CANDIDATES]}")


def cdef_source(header: Path | None = None) -> str:
    """The declarations between `/* cdef-begin */` and `/* cdef-end */` of abi.h."""
    text = (header or header_path()).read_text()
    m = re.search(r"/\* cdef-begin \*/(.*?)/\* cdef-end \*/", text, re.S)
    if m is None:
        raise ValueError("abi.h has no cdef-begin/cdef-end block")
    return m.group(1)


CDEF = cdef_source()
ffi = cffi.FFI()
ffi.cdef(CDEF)
_CONSTS: dict[str, int] = {
    name: int(value, 0)
    for name, value in re.findall(r"#define\s+(PREGUARD_\w+)\s+(0x[0-9a-fA-F]+|\d+)", CDEF)
}


def const(name: str) -> int:
    """A `#define PREGUARD_<name>` of the header."""
    return _CONSTS[f"PREGUARD_{name}"]


ABI_VERSION = const("ABI_VERSION")
RECORD_MAX = const("RECORD_MAX")  # <= PIPE_BUF, so one record is one atomic write
RECORD_HEADER = ffi.sizeof("struct preguard_record")
CONTROL_SIZE = ffi.sizeof("struct preguard_control")
NO_RULE = -1  # Record.rule_id of an event no rule produced (tamper)

# -- where things live inside a container --------------------------------------------------------
DIR_NAME = "/.preguard"  # the library derives its directory from its own path (dladdr), never from env
LIBRARY = "libpreguard.so"  # DIR_NAME/LIBRARY is the line in /etc/ld.so.preload
RULES = "rules.bin"
CONTROL = "control"
PIPE = "events"
LIBRARY_BUILDS = {
    "glibc": "libpreguard-glibc.so",  # links libdl.so.2: loads on every glibc from GLIBC_REQUIRED on
    "glibc-2.34": "libpreguard-glibc-2.34.so",  # dlsym from libc.so.6: one object less at every exec
    "musl": "libpreguard-musl.so",
}
GLIBC_DL_IN_LIBC: tuple[int, int] = (2, 34)  # glibc moved dlsym and dladdr into libc.so.6 here


def library_build(family: str, version: tuple[int, int] | None) -> str:
    """The LIBRARY_BUILDS key for a container's libc: glibc from 2.34 on gets the build that maps no
    libdl.so.2; an older or unknown glibc the one that links it (the probe checks it is there)."""
    if family == "glibc" and version is not None and tuple(version) >= GLIBC_DL_IN_LIBC:
        return "glibc-2.34"
    return family


# Every GLIBC_x.y symbol version the glibc build needs, and the newest of them (a test reads them
# from the built ELF): a container whose glibc is older cannot load the library.
GLIBC_NEEDS: tuple[str, ...] = ("GLIBC_2.2.5", "GLIBC_2.3.2", "GLIBC_2.14", "GLIBC_2.17")
GLIBC_REQUIRED: tuple[int, int] = (2, 17)


def glibc_version_ok(version: tuple[int, int]) -> bool:
    """Whether a container's glibc is new enough to load the library."""
    return tuple(version) >= GLIBC_REQUIRED


# -- records --------------------------------------------------------------------------------------
_KINDS = {
    const("KIND_PROCESS"): Kind.PROCESS,
    const("KIND_FILE"): Kind.FILE,
    const("KIND_NETWORK"): Kind.NETWORK,
    const("KIND_TAMPER"): Kind.TAMPER,
}
_OUTCOMES = {const("OUTCOME_BLOCKED"): Outcome.BLOCKED, const("OUTCOME_AUDITED"): Outcome.AUDITED}
_ACCESS = {
    const("ACCESS_READ"): "read",
    const("ACCESS_WRITE"): "write",
    const("ACCESS_EXEC"): "exec",
    const("ACCESS_CONNECT"): "connect",
    const("ACCESS_SEND"): "send",
}
_MAGIC = const("RECORD_MAGIC").to_bytes(4, "little")

# The record header read with struct for speed, its layout checked here against cffi's view of abi.h.
_RECORD_FIELDS = (
    ("magic", "I"),
    ("version", "H"),
    ("size", "H"),
    ("time_ns", "Q"),
    ("pid", "I"),
    ("uid", "I"),
    ("rule_id", "I"),
    ("reserved", "I"),
    ("revision", "Q"),
    ("kind", "B"),
    ("outcome", "B"),
    ("access", "B"),
    ("flags", "B"),
    ("exe_len", "H"),
    ("target_len", "H"),
)
_RECORD = struct.Struct("<" + "".join(code for _, code in _RECORD_FIELDS))


def _check_record_layout() -> None:
    offset = 0
    for name, code in _RECORD_FIELDS:
        if ffi.offsetof("struct preguard_record", name) != offset:
            raise ImportError(f"abi.h and abi.py disagree on struct preguard_record.{name}")
        offset += struct.calcsize("<" + code)
    if _RECORD.size != RECORD_HEADER or len(_RECORD_FIELDS) != len(
        ffi.typeof("struct preguard_record").fields
    ):
        raise ImportError("abi.h and abi.py disagree on struct preguard_record")


_check_record_layout()


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """One decoded event record, as the library wrote it (attribute it by its pipe, not its fields)."""

    version: int
    time_ns: int
    pid: int
    uid: int
    kind: Kind
    action: Outcome
    access: str  # read | write (file), exec (process), connect | send (network)
    rule_id: int  # index into CompiledRules.origins; NO_RULE (-1) for tamper
    revision: int
    exe: str
    target: str
    truncated: bool


class RecordReader:
    """Turns bytes read from an event pipe into Records; skips and counts anything malformed.

    `valid` counts records returned, `invalid` counts rejected records and runs of garbage; after
    garbage the reader resynchronises on the next magic value.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.valid = 0
        self.invalid = 0

    def feed(self, data: bytes) -> list[Record]:
        self._buf += data
        out: list[Record] = []
        buf = self._buf
        pos = 0
        while True:
            start = buf.find(_MAGIC, pos)
            if start < 0:
                # keep a possible partial magic at the end; the rest is garbage
                keep = max(len(buf) - 3, pos)
                if keep > pos:
                    self.invalid += 1
                pos = keep
                break
            if start > pos:
                self.invalid += 1  # garbage before a magic
            if len(buf) - start < RECORD_HEADER:
                pos = start
                break
            size = int.from_bytes(buf[start + 6 : start + 8], "little")
            if not RECORD_HEADER <= size <= RECORD_MAX:
                self.invalid += 1
                pos = start + 1
                continue
            if len(buf) - start < size:
                pos = start
                break
            record = _decode(buf, start, size)
            if record is None:
                self.invalid += 1
                pos = start + 1
                continue
            self.valid += 1
            out.append(record)
            pos = start + size
        del buf[:pos]
        return out


def _decode(buf: bytearray, start: int, size: int) -> Record | None:
    (_, version, rsize, time_ns, pid, uid, rule_id, _, revision, kind_code, outcome_code, access_code, flags,
     exe_len, target_len) = _RECORD.unpack_from(buf, start)  # fmt: skip
    kind, outcome, access = _KINDS.get(kind_code), _OUTCOMES.get(outcome_code), _ACCESS.get(access_code)
    if (
        version != ABI_VERSION
        or kind is None
        or outcome is None
        or access is None
        or flags & ~const("FLAG_TRUNCATED")
        or RECORD_HEADER + exe_len + target_len != rsize
        or rsize != size
    ):
        return None
    exe_at = start + RECORD_HEADER
    target_at = exe_at + exe_len
    return Record(
        version=version,
        time_ns=time_ns,
        pid=pid,
        uid=uid,
        kind=kind,
        action=outcome,
        access=access,
        rule_id=NO_RULE if rule_id == const("NO_RULE") else rule_id,
        revision=revision,
        exe=buf[exe_at:target_at].decode("utf-8", "replace"),
        target=buf[target_at : start + size].decode("utf-8", "replace"),
        truncated=bool(flags & const("FLAG_TRUNCATED")),
    )


def encode_record(record: Record) -> bytes:
    """The bytes the library writes for a record (tests and tools; the library itself is C)."""
    exe, target = record.exe.encode(), record.target.encode()
    buf = bytearray(RECORD_HEADER + len(exe) + len(target))
    r: Any = ffi.from_buffer("struct preguard_record *", buf)
    r.magic, r.version, r.size = const("RECORD_MAGIC"), record.version, len(buf)
    r.time_ns, r.pid, r.uid, r.revision = record.time_ns, record.pid, record.uid, record.revision
    r.rule_id = const("NO_RULE") if record.rule_id == NO_RULE else record.rule_id
    r.kind = {v: k for k, v in _KINDS.items()}[record.kind]
    r.outcome = {v: k for k, v in _OUTCOMES.items()}[record.action]
    r.access = {v: k for k, v in _ACCESS.items()}[record.access]
    r.flags = const("FLAG_TRUNCATED") if record.truncated else 0
    r.exe_len, r.target_len = len(exe), len(target)
    buf[RECORD_HEADER:] = exe + target
    return bytes(buf)


# -- control file ---------------------------------------------------------------------------------
class ControlState(msgspec.Struct, frozen=True, kw_only=True):
    generation: int
    revision: int  # revision of the installed rules file
    drops: int  # records the library could not write
    rules_errors: int  # loads that found the rules file missing or corrupt (kept the last good rules)
    fs_generation: int
    loads: int
    loaded_revision: int  # highest revision some process has loaded
    events: int  # records written
    verified_generation: int = 0  # the generation whose rules file a process checked in full
    verified_checksum: int = 0


_CONTROL_FIELDS = tuple(f for f in ControlState.__struct_fields__)


class Control:
    """The control file: read its state, bump its generation."""

    @staticmethod
    def read(path: str | Path) -> ControlState:
        data = Path(path).read_bytes()[:CONTROL_SIZE]
        if len(data) < CONTROL_SIZE:
            raise ValueError(f"{path}: control file is {len(data)} bytes, expected {CONTROL_SIZE}")
        c: Any = ffi.from_buffer("struct preguard_control *", data)
        if c.magic != const("CONTROL_MAGIC") or c.version != ABI_VERSION:
            raise ValueError(f"{path}: not a preguard control file of ABI version {ABI_VERSION}")
        return ControlState(**{name: int(getattr(c, name)) for name in _CONTROL_FIELDS})

    @staticmethod
    def create(path: str | Path) -> None:
        """Write a fresh control file (mode 0666: every process of the container maps it shared)."""
        buf = bytearray(CONTROL_SIZE)
        c: Any = ffi.from_buffer("struct preguard_control *", buf)
        c.magic, c.version, c.size = const("CONTROL_MAGIC"), ABI_VERSION, CONTROL_SIZE
        tmp = Path(f"{path}.tmp{os.getpid()}")
        fd = _create_new(tmp, 0o666)
        try:
            os.write(fd, bytes(buf))
            os.fchmod(fd, 0o666)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)

    @staticmethod
    def publish(path: str | Path, revision: int) -> int:
        """Record the installed revision, then bump the generation (in place: processes map the file)."""
        fd = os.open(path, os.O_RDWR)
        try:
            with mmap.mmap(fd, CONTROL_SIZE) as m:
                c: Any = ffi.from_buffer("struct preguard_control *", m)
                c.revision = revision
                # libraries only read generation; the probe is its one writer
                c.generation = c.generation + 1
                generation = int(c.generation)
                ffi.release(c)
                m.flush()
        finally:
            os.close(fd)
        return generation


def _create_new(path: Path, mode: int) -> int:
    """A fresh temp file: never through a link planted at its name, never an old file reused.

    These helpers take paths, so `directory` must be one the caller trusts (a host path, or
    /proc/self/fd/N of a descriptor opened safely, as the probe does for containers).
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def init_directory(directory: Path) -> None:
    """Create the control file and the event pipe with the right modes when missing."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    control = directory / CONTROL
    try:
        Control.read(control)
    except (FileNotFoundError, ValueError):
        Control.create(control)
    pipe = directory / PIPE
    if pipe.exists() and not stat.S_ISFIFO(pipe.lstat().st_mode):
        pipe.unlink()
    if not pipe.exists():
        os.mkfifo(pipe, 0o622)
    # write-only for others: a process in the container must not drain the pipe to hide events
    os.chmod(pipe, 0o622)


def install_rules(directory: Path, compiled: Any) -> None:
    """Atomically replace the rules file, then bump the generation so running processes switch.

    `compiled` is a preguard.proto.rulesfile.CompiledRules (typed loosely to avoid an import cycle).
    """
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = directory / RULES
    tmp = directory / f".{RULES}.tmp{os.getpid()}"
    fd = _create_new(tmp, 0o644)
    try:
        os.write(fd, compiled.data)
        os.fchmod(fd, 0o644)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.rename(tmp, target)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    control = directory / CONTROL
    try:
        Control.read(control)
    except (FileNotFoundError, ValueError):
        Control.create(control)
    Control.publish(control, compiled.revision)
