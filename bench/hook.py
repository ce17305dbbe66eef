"""The hook's cost per call: open+close (absolute, relative, dirfd), execve and loopback connect, each
without the library, with it and no rules, 10 rules and 10,000 rules, and under `strace -f`.

Ratios are against the no-library baseline measured in the same run. Times are CPU time of the
benchmark process and its children (the machine is shared: other processes stretch wall-clock time);
every configuration runs several times, interleaved, and the best run counts. Under strace the
figure is wall-clock time against the baseline's wall-clock time. `hook/tests/snippets/bench.c`
times the loops in-process; this module only sets up directories and rules and reads the numbers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import msgspec

from bench import Figure
from preguard.proto import Policy
from preguard.proto.abi import LIBRARY, LIBRARY_BUILDS, PIPE, init_directory, install_rules, library_build
from preguard.proto.rulesfile import compile_rules

HOOK = Path(__file__).resolve().parents[1] / "hook"
# the build the probe would install on this host's glibc, and the one for glibc before 2.34
_GLIBC = tuple(int(x) for x in os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2])  # type: ignore[union-attr]
BUILD = HOOK / "build" / LIBRARY_BUILDS[library_build("glibc", (_GLIBC[0], _GLIBC[1]))]
LIBDL_BUILD = HOOK / "build" / LIBRARY_BUILDS["glibc"]
PROGRAM = HOOK / "build/tests/bench"
TARGET_FILE = "/etc/hostname"
REPEATS = 5
# op: (iterations, iterations under strace, target ratio at 10k rules)
OPS: dict[str, tuple[int, int, float]] = {
    "open": (60_000, 2_000, 1.10),
    "rel": (60_000, 2_000, 1.25),
    "at": (60_000, 2_000, 1.25),
    "exec": (300, 100, 1.05),
    "connect": (4_000, 300, 1.10),
}
LABELS = {
    "open": "open+close abs path",
    "rel": "open+close relative path",
    "at": "openat+close on a dirfd",
    "exec": "fork+execve+wait /usr/bin/true",
    "connect": "loopback TCP connect",
}


def rules(n: int) -> list[dict[str, Any]]:
    """n rules of every kind, none matching what the benchmark does."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        match i % 5:
            case 0:
                out.append({"kind": "file", "path": f"/srv/data/f{i}", "access": "read"})
            case 1:
                out.append({"kind": "file", "path": f"/srv/app{i}/**", "access": "write"})
            case 2:
                out.append({"kind": "process", "name": f"tool{i}"})
            case 3:
                out.append({"kind": "process", "path": f"/opt/bin{i}/*"})
            case _:
                out.append(
                    {"kind": "network", "cidr": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32"}
                )
    return out


def prepare(root: Path, n: int | None, build: Path = BUILD) -> Path | None:
    """A preguard directory with n rules (None: no library at all)."""
    if n is None:
        return None
    d = root / f"rules{n}-{build.stem}"
    d.mkdir()
    shutil.copy(build, d / LIBRARY)
    init_directory(d)
    policy = msgspec.convert({"name": "bench", "rules": rules(n)}, Policy)
    install_rules(d, compile_rules([policy], 1))
    return d


def measure(op: str, n: int, lib: Path | None, strace: bool = False) -> float:
    """ns per call: CPU time (other processes on a shared machine do not stretch it), or wall-clock
    time under strace, where the traced process spends its time waiting for the tracer."""
    env = {**os.environ}
    if lib is not None:
        env["LD_PRELOAD"] = str(lib / LIBRARY)
    argv = [str(PROGRAM), op, str(n)] + (["/usr/bin/true"] if op == "exec" else [TARGET_FILE])
    if strace:
        argv = ["strace", "-f", "-qq", "-o", "/dev/null", *argv]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=600)
    cpu, wall = (float(x) for x in out.stdout.split()[-2:])
    return wall if strace else cpu


def _wall(op: str, n: int) -> float:
    argv = [str(PROGRAM), op, str(n)] + (["/usr/bin/true"] if op == "exec" else [TARGET_FILE])
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=600)
    return float(out.stdout.split()[-1])


def drain(pipe: Path, stop: threading.Event) -> None:
    fd = os.open(pipe, os.O_RDWR | os.O_NONBLOCK)
    try:
        while not stop.is_set():
            try:
                os.read(fd, 1 << 16)
            except BlockingIOError:
                stop.wait(0.001)
    finally:
        os.close(fd)


def rule_hit(root: Path) -> float:
    """ns per blocked open with its event written while a reader drains the pipe."""
    d = root / "hit"
    d.mkdir()
    shutil.copy(BUILD, d / LIBRARY)
    init_directory(d)
    policy = msgspec.convert({"name": "bench", "rules": [{"kind": "file", "path": TARGET_FILE}]}, Policy)
    install_rules(d, compile_rules([policy], 1))
    stop = threading.Event()
    reader = threading.Thread(target=drain, args=(d / PIPE, stop))
    reader.start()
    try:
        return min(measure("hit", 20_000, d) for _ in range(REPEATS))
    finally:
        stop.set()
        reader.join()


def run() -> list[Figure]:
    subprocess.run(["make", "-s", "-C", str(HOOK), "all", "programs"], check=True, capture_output=True)
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="preguard-bench-") as tmp:
        root = Path(tmp)
        configs = {"no library": None, "no rules": 0, "10 rules": 10, "10k rules": 10_000}
        dirs = {name: prepare(root, n) for name, n in configs.items()}
        libdl = prepare(root, 10_000, LIBDL_BUILD) if LIBDL_BUILD != BUILD else None
        for op, (iterations, strace_iterations, target) in OPS.items():
            # exec also with the build for glibc before 2.34, which maps libdl.so.2 at every start
            runs = {**dirs, "10k rules, libdl build": libdl} if op == "exec" and libdl else dirs
            best = {name: float("inf") for name in runs}
            for _ in range(REPEATS):  # interleaved, so a busy moment hits every configuration alike
                for name, d in runs.items():
                    best[name] = min(best[name], measure(op, iterations, d))
            base = best["no library"]
            figures.append(Figure(f"hook: {LABELS[op]}, no library", base / 1000, "us", "baseline", None))
            for name in [n for n in best if n != "no library"]:
                ratio = best[name] / base
                is_target = name == "10k rules"
                figures.append(
                    Figure(
                        f"hook: {LABELS[op]}, {name} / no library",
                        ratio,
                        "x",
                        f"<= {target:.2f}x" if is_target else "",
                        ratio <= target if is_target else None,
                    )
                )
            traced = min(measure(op, strace_iterations, None, strace=True) for _ in range(2))
            wall_base = min(_wall(op, strace_iterations) for _ in range(2))
            figures.append(
                Figure(
                    f"hook: {LABELS[op]}, strace -f / no library",
                    traced / wall_base,
                    "x",
                    "",
                    None,
                    "wall clock",
                )
            )
        hit = rule_hit(root)
        figures.append(
            Figure(
                "hook: rule hit with event written (reader draining)", hit / 1000, "us", "< 2 us", hit < 2000
            )
        )
    return figures
