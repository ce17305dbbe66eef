"""Benchmarks: each module's run() returns Figures; `just bench` prints them in one table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One measured figure against its target. Ratios are against a baseline run in the same process."""

    name: str  # e.g. "hook: open+close abs path, 10k rules / no library"
    value: float
    unit: str  # "x" for a ratio, "ms", "us", "events/s"
    target: str  # human text, e.g. "<= 1.10x"
    ok: bool | None  # None when there is no target
    note: str = ""
