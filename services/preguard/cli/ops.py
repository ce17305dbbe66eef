"""Operator commands over NATS: apply, delete, policies, alerts, status."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from preguard.cli.output import Output
from preguard.proto import (
    Alert,
    AlertList,
    AlertQuery,
    InvalidPolicy,
    NameRequest,
    PolicyList,
    ProbeStatus,
    Refused,
    Subjects,
    decode,
    decode_status,
    encode,
    load_policies,
)
from preguard.runtime import Settings, nats_options, operator_settings

CLIENT_HEADER = "Preguard-Client"
EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2


class CommandError(Exception):
    """One sentence for the operator, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_UNREACHABLE) -> None:
        super().__init__(message)
        self.code = code


def client_id() -> str:
    return f"cli/{getpass.getuser()}@{socket.gethostname()}"


async def _connect(settings: Settings) -> NATS:
    async def quiet(exc: Exception) -> None:
        pass  # the one sentence below says it; nats-py would print a traceback per attempt

    try:
        # max_reconnect_attempts=1, not 0: nats-py 2.x retries an initial connect forever with 0.
        async with asyncio.timeout(8):
            return await nats.connect(
                settings.nats_url,
                name=client_id(),
                **nats_options(settings),  # credential (default: up's operator one), TLS
                connect_timeout=3,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                error_cb=quiet,
            )
    except Exception as exc:  # nats raises several unrelated types for an unreachable server
        reason = str(exc) or type(exc).__name__
        raise CommandError(f"cannot reach NATS at {settings.nats_url}: {reason}") from None


async def request(nc: NATS, subject: str, payload: bytes, wait: float = 5.0) -> bytes:
    try:
        msg = await nc.request(subject, payload, timeout=wait, headers={CLIENT_HEADER: client_id()})
    except NoRespondersError:
        raise CommandError(f"no service answers on {subject}: is the service running?") from None
    except NatsTimeout:
        raise CommandError(f"no answer on {subject} within {wait:g}s") from None
    return msg.data


def _refused(data: bytes) -> Refused | None:
    try:
        reply = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise CommandError("the service sent a reply that is not JSON") from None
    if isinstance(reply, dict) and reply.get("ok") is False:
        return decode(data, Refused)
    return None


def _report_refusal(out: Output, what: str, refused: Refused) -> None:
    out.error(f"{what}: {refused.error}")
    for d in refused.details:
        out.error(f"  {d.field}: {d.error}")


# -- commands ---------------------------------------------------------------------------------
async def apply(nc: NATS, subjects: Subjects, args: argparse.Namespace, out: Output) -> int:
    try:
        policies = load_policies(args.file)
    except InvalidPolicy as exc:
        for d in exc.details:
            out.error(f"{args.file}: {d.field}: {d.error}")
        return EXIT_REFUSED
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}", EXIT_REFUSED) from None
    code = EXIT_OK
    for policy in policies:
        if args.dry_run:
            data = await request(nc, subjects.api_policy("validate"), encode(policy))
            refused = _refused(data)
            if refused is None:
                preview = msgspec.json.decode(
                    await request(nc, subjects.api_policy("preview"), encode(policy))
                )
                out.row({"policy": policy.name, "result": "valid", "would_select": _selected(preview)})
        else:
            data = await request(nc, subjects.api_policy("put"), encode(policy))
            refused = _refused(data)
            if refused is None:
                stored = msgspec.json.decode(data)
                out.row({"policy": policy.name, "result": "applied", "revision": stored.get("revision")})
        if refused is not None:
            _report_refusal(out, policy.name, refused)
            code = EXIT_REFUSED
    return code


def _selected(preview: Any) -> str:
    """Preview replies list matches; shown compactly as host/container names."""
    items: Any = preview.get("containers", preview.get("matches")) if isinstance(preview, dict) else None
    items = items if isinstance(items, list) else []
    names = [
        f"{c.get('host', '?')}/{c.get('name', c.get('container_name', '?'))}"
        for c in items
        if isinstance(c, dict)
    ]
    return ", ".join(names) or "(none right now)"


async def delete(nc: NATS, subjects: Subjects, args: argparse.Namespace, out: Output) -> int:
    data = await request(nc, subjects.api_policy("delete"), encode(NameRequest(name=args.name)))
    if (refused := _refused(data)) is not None:
        _report_refusal(out, args.name, refused)
        return EXIT_REFUSED
    out.row({"policy": args.name, "result": "deleted", "revision": msgspec.json.decode(data).get("revision")})
    return EXIT_OK


async def policies(nc: NATS, subjects: Subjects, args: argparse.Namespace, out: Output) -> int:
    data = await request(nc, subjects.api_policy("list"), b"{}")
    if (refused := _refused(data)) is not None:
        _report_refusal(out, "list", refused)
        return EXIT_REFUSED
    for p in decode(data, PolicyList).policies:
        out.row(
            {
                "name": p.name,
                "severity": str(p.severity),
                "rules": len(p.rules),
                "hosts": ",".join(p.selector.hosts) or "*",
                "containers": ",".join(p.selector.containers) or "*",
                "description": p.description,
            }
        )
    return EXIT_OK


def _alert_row(a: Alert) -> dict[str, Any]:
    return {
        "last_seen": a.last_seen.isoformat(timespec="seconds"),
        "severity": str(a.severity),
        "host": a.host,
        "container": a.container_name,
        "policy": a.policy,
        "kind": str(a.kind),
        "action": a.action,
        "target": a.target,
        "count": a.count,
        "state": a.state,
    }


async def alerts(nc: NATS, subjects: Subjects, args: argparse.Namespace, out: Output) -> int:
    severity = [args.severity] if args.severity else []
    query = AlertQuery(severity=severity, host=args.host, limit=args.limit)
    if args.follow:
        queue: asyncio.Queue[Alert] = asyncio.Queue()

        async def on_alert(msg: Any) -> None:
            try:
                alert = decode(msg.data, Alert)
            except msgspec.DecodeError:
                return
            if (not severity or str(alert.severity) in severity) and (
                not args.host or alert.host == args.host
            ):
                queue.put_nowait(alert)

        await nc.subscribe(subjects.alerts_matching(args.severity, args.host), cb=on_alert)
    try:
        data = await request(nc, subjects.api_alerts("query"), encode(query))
        history = decode(data, AlertList).alerts
    except CommandError:
        if not args.follow:
            raise
        history = []  # following still works without the query API
    for a in history:
        out.row(_alert_row(a), wide=True)
    if not args.follow:
        return EXIT_OK
    while True:
        out.row(_alert_row(await queue.get()), wide=True)


async def status(nc: NATS, subjects: Subjects, args: argparse.Namespace, out: Output) -> int:
    """Listens for heartbeats for --wait seconds: one per host, newest kept."""
    seen: dict[str, ProbeStatus] = {}
    sub = await nc.subscribe(subjects.status_all())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.wait
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await sub.next_msg(timeout=left)
        except NatsTimeout:
            break
        try:
            st = decode_status(subjects, msg.subject, msg.data)
        except msgspec.DecodeError:
            continue
        seen[st.host] = st
    await sub.unsubscribe()
    if not seen:
        out.error(f"no probe heartbeat within {args.wait:g}s")
        return EXIT_REFUSED
    for st in seen.values():
        for c in st.containers or []:
            out.row(
                {
                    "host": st.host,
                    "container": c.name,
                    "image": c.image,
                    "libc": c.libc,
                    "guarded": "yes" if c.guarded else ("not coverable" if not c.coverable else "no"),
                    "revision": c.revision,
                    "uncovered": ", ".join(f"{p.pid}:{p.exe} ({p.reason})" for p in c.uncovered) or "-",
                    "reason": c.reason or "-",
                }
            )
        if not st.containers:
            out.row({"host": st.host, "container": "(none)"})
    return EXIT_OK


Command = Callable[[NATS, Subjects, argparse.Namespace, Output], Awaitable[int]]


def run(command: Command, args: argparse.Namespace) -> int:
    settings = operator_settings()
    if args.nats:
        settings = msgspec.structs.replace(settings, nats_url=args.nats)
    out = Output(json_lines=args.json or not sys.stdout.isatty())

    async def main() -> int:
        nc = await _connect(settings)
        try:
            return await command(nc, settings.subjects, args, out)
        finally:
            out.flush()
            await nc.close()

    try:
        return asyncio.run(main())
    except CommandError as exc:
        out.error(f"preguard: {exc}")
        return exc.code
    except KeyboardInterrupt:
        return EXIT_OK


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    def cmd(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, parents=[common])
        p.set_defaults(func=lambda args: run(func, args))
        return p

    p = cmd("apply", apply, "put the policies of a YAML or JSON file (several documents allowed)")
    p.add_argument("-f", "--file", required=True)
    p.add_argument("--dry-run", action="store_true", help="validate and show what would be selected")
    p = cmd("delete", delete, "delete a policy")
    p.add_argument("name")
    cmd("policies", policies, "list policies")
    p = cmd("alerts", alerts, "recent alerts; --follow for live ones")
    p.add_argument("--follow", "-F", action="store_true")
    p.add_argument("--severity", choices=["low", "medium", "high", "critical"])
    p.add_argument("--host")
    p.add_argument("--limit", type=int, default=50)
    p = cmd("status", status, "hosts, containers, guarded, coverage (from the probes' heartbeats)")
    p.add_argument("--wait", type=float, default=6.0, help="seconds to listen for heartbeats")


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats", help="NATS URL (default PREGUARD_NATS_URL or nats://127.0.0.1:4222)")
    common.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    return common


__all__: Sequence[str] = ["add_commands", "common_options", "run"]
