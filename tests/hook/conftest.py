"""Fixtures for the hook: the built library and test programs, and a directory standing in for /.preguard."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from preguard.proto import Policy
from preguard.proto.abi import (
    LIBRARY,
    PIPE,
    Control,
    ControlState,
    Record,
    RecordReader,
    init_directory,
    install_rules,
)
from preguard.proto.rulesfile import CompiledRules, compile_rules

HOOK = Path(__file__).resolve().parents[2] / "hook"
BUILD = HOOK / "build"


@pytest.fixture(scope="session")
def hook_build() -> Path:
    """`make` the libraries and the C test programs once per session."""
    subprocess.run(["make", "-s", "-C", str(HOOK), "all", "programs"], check=True, capture_output=True)
    return BUILD


def policy(*rules: dict[str, Any], name: str = "p", defaults: dict[str, str] | None = None) -> Policy:
    doc: dict[str, Any] = {"name": name, "rules": list(rules)}
    if defaults:
        doc["defaults"] = defaults
    return msgspec.convert(doc, Policy)


class Guard:
    """A directory like a container's /.preguard: library, rules, control file and event pipe.

    The test holds the pipe open read-write, so it is the reader and the pipe never reports EOF.
    """

    def __init__(self, root: Path, lib: Path) -> None:
        self.dir = root
        root.mkdir(parents=True, exist_ok=True)
        self.lib = root / LIBRARY
        self.lib.write_bytes(lib.read_bytes())
        init_directory(root)
        self._fd = os.open(root / PIPE, os.O_RDWR | os.O_NONBLOCK)
        self.reader = RecordReader()
        self.revision = 0
        self.compiled: CompiledRules | None = None

    def close(self) -> None:
        os.close(self._fd)

    def install(self, *policies: Policy) -> CompiledRules:
        self.revision += 1
        self.compiled = compile_rules(list(policies), self.revision)
        install_rules(self.dir, self.compiled)
        return self.compiled

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "LD_PRELOAD": str(self.lib), **(extra or {})}

    def run(
        self, argv: Sequence[str | Path], *, hooked: bool = True, cwd: Path | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        env = self.env(kw.pop("env", None)) if hooked else {**os.environ, **kw.pop("env", {})}
        return subprocess.run(
            [str(a) for a in argv],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            **kw,
        )

    def events(self) -> list[Record]:
        """Every record written so far (the writers have exited: nothing is in flight)."""
        out: list[Record] = []
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return out
            out.extend(self.reader.feed(data))

    def control(self) -> ControlState:
        return Control.read(self.dir / "control")


# Both glibc builds: the one linking libdl.so.2 (glibc before 2.34) and the one taking dlsym from
# libc.so.6 (what this host's glibc gets from the probe).
@pytest.fixture(params=["libpreguard-glibc.so", "libpreguard-glibc-2.34.so"], ids=["libdl", "dl-in-libc"])
def guard(hook_build: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Guard]:
    g = Guard(tmp_path / "pg", hook_build / request.param)
    yield g
    g.close()


@pytest.fixture
def calls(hook_build: Path) -> Path:
    return hook_build / "tests/calls"
