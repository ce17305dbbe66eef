"""`preguard up`: everything on one machine, around an embedded nats-server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from preguard.natsserver import NatsServerError, port_in_use, run_nats_server
from preguard.runtime import wait_for_stop


def up(args: argparse.Namespace) -> int:
    if args.nats:
        url = args.nats
        print(f"nats      using {url}", flush=True)
        return _serve(url)
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    if port_in_use(args.nats_port):
        print(f"preguard: port {args.nats_port} is in use; pass --nats-port or --nats URL", file=sys.stderr)
        return 2
    try:
        with run_nats_server(data / "jetstream", args.nats_port, log_file=data / "nats.log") as url:
            print(f"nats      started at {url} (JetStream in {data / 'jetstream'})", flush=True)
            return _serve(url)
    except NatsServerError as exc:
        print(f"preguard: {exc}", file=sys.stderr)
        return 2


def _serve(url: str) -> int:
    print("services  policy, alert, probe and console are not wired into `up` yet", flush=True)
    print("ready     press Ctrl-C to stop", flush=True)
    asyncio.run(wait_for_stop())
    print("stopped", flush=True)
    return 0
