"""The `preguard` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path

from preguard.cli.ops import add_commands, common_options
from preguard.proto import InvalidPolicy, load_policies
from preguard.proto.schema import SCHEMA_DIR, write_all

SERVICES = {
    "policy": "policy service",
    "probe": "probe for this host's Docker engine",
    "alert": "alert service",
    "console": "web console",
}


def _schema(args: argparse.Namespace) -> int:
    for path in write_all(Path(args.out)):
        print(path)
    return 0


def _check(args: argparse.Namespace) -> int:
    try:
        policies = load_policies(args.file)
    except InvalidPolicy as exc:
        for d in exc.details:
            print(f"{args.file}: {d.field}: {d.error}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    for p in policies:
        print(f"{p.name}: {len(p.rules)} rules, valid")
    return 0


def _up(args: argparse.Namespace) -> int:
    from preguard.cli.up import up

    return up(args)


def _service(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"preguard.{args.command}.__main__")
    result = module.main()
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return int(result or 0)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="preguard", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    add_commands(sub, common_options())
    for name, what in SERVICES.items():
        sub.add_parser(name, help=f"run the {what} (settings from PREGUARD_* variables)").set_defaults(
            func=_service
        )

    p = sub.add_parser("up", help="run everything on this machine (embedded NATS)")
    p.add_argument("--nats", help="use this NATS URL instead of starting one")
    p.add_argument("--host", help="this host's name on the bus")
    p.add_argument("--console-port", type=int, default=8080)
    p.add_argument("--data-dir", default=str(Path.home() / ".local/share/preguard"))
    p.add_argument("--nats-port", type=int, default=4222, help="port of the embedded NATS server")
    p.add_argument("--demo", action="store_true", help="also start two demo containers and a sample policy")
    p.set_defaults(func=_up)

    p = sub.add_parser("schema", help="write the JSON Schemas of the contract's messages")
    p.add_argument("--out", default=str(SCHEMA_DIR))
    p.set_defaults(func=_schema)

    p = sub.add_parser("check", help="validate policy files without a server")
    p.add_argument("file")
    p.set_defaults(func=_check)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
