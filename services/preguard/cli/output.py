"""CLI output: aligned tables on a terminal, JSON lines when piped; errors on stderr."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import msgspec


class Output:
    def __init__(self, *, json_lines: bool, stream: TextIO | None = None) -> None:
        self._json = json_lines
        self._out = stream or sys.stdout
        self._rows: list[dict[str, Any]] = []

    def row(self, row: dict[str, Any], *, wide: bool = False) -> None:
        """JSON: one line at once. Table: buffered until flush() so columns align; `wide` prints now."""
        if self._json:
            self._out.write(msgspec.json.encode(row).decode() + "\n")
            self._out.flush()
        elif wide:
            self._out.write("  ".join(_cell(v) for v in row.values()) + "\n")
            self._out.flush()
        else:
            self._rows.append(row)

    def flush(self) -> None:
        if not self._rows:
            return
        keys = list(dict.fromkeys(k for r in self._rows for k in r))
        widths = {k: max(len(k), *(len(_cell(r.get(k, ""))) for r in self._rows)) for k in keys}
        self._out.write("  ".join(k.upper().ljust(widths[k]) for k in keys).rstrip() + "\n")
        for r in self._rows:
            self._out.write("  ".join(_cell(r.get(k, "")).ljust(widths[k]) for k in keys).rstrip() + "\n")
        self._rows.clear()
        self._out.flush()

    def error(self, text: str) -> None:
        print(text, file=sys.stderr)


def _cell(value: Any) -> str:
    # Values can come from containers (paths, names): never let them move the cursor on a terminal.
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))
