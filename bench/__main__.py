"""`python -m bench [module ...]`: run every benchmark (or the named ones) and print one table."""

from __future__ import annotations

import importlib
import logging
import sys
import traceback

import structlog

from bench import Figure

MODULES = ["hook", "probe", "policy", "alert", "console"]


def main(argv: list[str]) -> int:
    # Services run in-process here: their info lines would bury the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    names = argv or MODULES
    figures: list[Figure] = []
    failed: list[str] = []
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"bench: {name}: no benchmark yet", file=sys.stderr)
                continue
            raise
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        try:
            figures.extend(module.run())
        except Exception:
            traceback.print_exc()
            failed.append(name)
    width = max((len(f.name) for f in figures), default=10)
    print(f"\n{'figure':<{width}}  {'measured':>14}  {'target':<14}  ok")
    for f in figures:
        ok = "-" if f.ok is None else ("yes" if f.ok else "NO")
        print(f"{f.name:<{width}}  {f.value:>12.3f} {f.unit:<2}  {f.target:<14}  {ok}  {f.note}")
    if failed:
        print(f"\nbench: failed to run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
