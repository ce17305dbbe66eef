"""Builds hook/ (libpreguard.so for glibc, and for musl when musl-gcc exists) into the package."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

LIB_DIR = Path("services/preguard/probe/_lib")


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name not in ("wheel",):
            return
        root = Path(self.root)
        out = root / LIB_DIR
        out.mkdir(parents=True, exist_ok=True)
        # `make install` builds every libc flavour it can and copies them to LIBDIR; a missing
        # musl-gcc only skips the musl build (the probe then reports musl containers as not coverable).
        subprocess.run(["make", "-C", str(root / "hook"), "install", f"LIBDIR={out}"], check=True)
        if shutil.which("musl-gcc") is None:
            self.app.display_warning("musl-gcc not found: the musl build of libpreguard is skipped")
        if version == "editable":
            # dev-mode-dirs puts services/ on the path: the libraries are found where make put them,
            # and abi.py finds the header in hook/ beside it.
            return
        header = root / "hook/include/preguard/abi.h"
        # The proto package reads the hook's ABI through cffi from this very header.
        build_data["force_include"][str(header)] = "preguard/proto/abi.h"
        for lib in sorted(out.glob("*.so")):
            build_data["force_include"][str(lib)] = f"preguard/probe/_lib/{lib.name}"
