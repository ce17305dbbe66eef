"""`preguard up`: everything on one machine: an embedded nats-server and one process per service."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from preguard.auth import Generated, Role, generate
from preguard.natsserver import NatsServer, NatsServerError, nats_server, port_in_use
from preguard.proto import Subjects
from preguard.runtime import Settings, nats_options

SERVICES = ("policy", "alert", "probe", "console")
READY_TIMEOUT = 30.0
MAX_RESTARTS_PER_MINUTE = 5


class UpError(Exception):
    """One sentence for the user; `up` exits 2 with it."""


def say(part: str, text: str) -> None:
    print(f"{part:<9} {text}", flush=True)


def up(args: argparse.Namespace) -> int:
    data = Path(args.data_dir).expanduser()
    try:
        data.mkdir(parents=True, exist_ok=True)
        _docker_reachable()
        if port_in_use(args.console_port):
            raise UpError(f"port {args.console_port} is in use: pass --console-port N")
        with _nats(args, data) as (url, auth, server):
            return asyncio.run(_run(args, url, data, auth, server))
    except UpError as exc:
        print(f"preguard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


@contextlib.contextmanager
def _nats(args: argparse.Namespace, data: Path) -> Iterator[tuple[str, Generated | None, NatsServer | None]]:
    """The server's URL, the credentials generated for it and the server (None, None: --nats)."""
    if args.nats:
        say("nats", f"using {args.nats}")
        yield args.nats, None, None
        return
    if port_in_use(args.nats_port):
        raise UpError(
            f"port {args.nats_port} is in use: pass --nats-port N, or --nats URL to use that server"
        )
    host = args.host or socket.gethostname()
    subjects = Subjects(prefix=os.environ.get("PREGUARD_PREFIX") or "preguard")
    url = f"nats://127.0.0.1:{args.nats_port}"
    auth = generate(data / "auth", subjects, [host], url=url)
    try:
        with nats_server(
            data / "jetstream", args.nats_port, config=auth.config, log_file=data / "nats.log"
        ) as server:
            url = server.url
            say("nats", f"started at {url} (JetStream data in {data / 'jetstream'})")
            say("auth", f"anonymous clients refused; one credential per service in {auth.directory}")
            say(
                "auth", f"operator (policy-writer) credential: {auth.path(Role.OPERATOR)} (the CLI's default)"
            )
            yield url, auth, server
    except NatsServerError as exc:
        raise UpError(str(exc)) from None


def _docker_reachable() -> None:
    sock = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not sock.startswith("unix://"):
        return  # a TCP engine: the probe reports it if it cannot reach it
    path = sock[len("unix://") :]
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(path)
    except OSError:
        raise UpError(f"no Docker engine answers at {path}: start dockerd (or set DOCKER_HOST)") from None


def _child_env(env: dict[str, str], name: str, host: str, auth: Generated | None) -> dict[str, str]:
    """Each service gets its own credential; the probe's lets it create no stream, so it does not try."""
    if auth is None:
        return env
    role = Role(name)
    child = {**env, "PREGUARD_CREDS": str(auth.path(role, host if role is Role.PROBE else ""))}
    if role is Role.PROBE:
        child["PREGUARD_CREATE_STREAMS"] = "false"
    return child


async def _connect_admin(url: str, auth: Generated | None) -> NATS:
    if auth is None:
        return await nats.connect(url, name="preguard-up", **nats_options(Settings.from_env()))
    options = nats_options(Settings(nats_url=url, creds=str(auth.path(Role.ADMIN))))
    nc = await nats.connect(url, name="preguard-up", **options)
    await _allow_direct(nc, Subjects(prefix=os.environ.get("PREGUARD_PREFIX") or "preguard"))
    return nc


async def _allow_direct(nc: NATS, subjects: Subjects) -> None:
    """A bundles stream from before preguard.auth lacks allow_direct, the only way probes may read."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(subjects.stream_bundles())
    except NotFoundError:
        return  # the policy service creates it with allow_direct
    if not info.config.allow_direct:
        info.config.allow_direct = True
        await js.update_stream(info.config)
        say("nats", f"stream {subjects.stream_bundles()}: direct get enabled for the probes")


async def _run(
    args: argparse.Namespace,
    url: str,
    data: Path,
    auth: Generated | None = None,
    server: NatsServer | None = None,
) -> int:
    host = args.host or socket.gethostname()
    token = os.environ.get("PREGUARD_CONSOLE_TOKEN") or secrets.token_urlsafe(18)
    env = {
        **os.environ,
        "PREGUARD_NATS_URL": url,
        "PREGUARD_HOST": host,
        "PREGUARD_CONSOLE_PORT": str(args.console_port),
        "PREGUARD_CONSOLE_TOKEN": token,
        "PREGUARD_DATA_DIR": str(data),
    }
    subjects = Subjects(prefix=env.get("PREGUARD_PREFIX", "preguard"))
    nc = await _connect_admin(url, auth)
    envs = {name: _child_env(env, name, host, auth) for name in SERVICES}
    children: dict[str, subprocess.Popen[bytes]] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for name in SERVICES:
            children[name] = _spawn(name, envs[name], data)
            await _ready(name, nc, subjects, host, args.console_port, children[name], data)
        if getattr(args, "demo", False):
            from preguard.cli.demo import start_demo

            for line in await start_demo(nc, subjects, host):
                say("demo", line)
        say("console", f"http://127.0.0.1:{args.console_port}/  sign-in token: {token}")
        say("ready", f"logs in {data}; Ctrl-C stops everything")
        watch = asyncio.create_task(_watch(children, envs, data, server))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([watch, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if watch.done():
            watch.result()  # raises the UpError that ended it
        watch.cancel()
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await _stop_children(children)
        await nc.close()
        if getattr(args, "demo", False):
            from preguard.cli.demo import stop_demo

            await stop_demo()
        say("stopped", "all parts")


def _spawn(name: str, env: dict[str, str], data: Path) -> subprocess.Popen[bytes]:
    with open(data / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", f"preguard.{name}"], env=env, stdout=log, stderr=log)


async def _ready(
    name: str,
    nc: NATS,
    subjects: Subjects,
    host: str,
    console_port: int,
    proc: subprocess.Popen[bytes],
    data: Path,
) -> None:
    """Waits until the service does its job on the bus (or listens); a dead child is one sentence."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    status = await nc.subscribe(subjects.status(host)) if name == "probe" else None
    try:
        while loop.time() < deadline:
            if proc.poll() is not None:
                raise UpError(
                    f"the {name} service exited with status {proc.returncode}: see {data / name}.log"
                )
            if await _answers(name, nc, subjects, console_port, status):
                say(name, "ready")
                return
            await asyncio.sleep(0.2)
        raise UpError(f"the {name} service did not become ready in {READY_TIMEOUT:g}s: see {data / name}.log")
    finally:
        if status is not None:
            await status.unsubscribe()


async def _answers(name: str, nc: NATS, subjects: Subjects, console_port: int, status: object) -> bool:
    try:
        if name == "policy":
            await nc.request(subjects.api_policy("list"), b"{}", timeout=0.5)
        elif name == "alert":
            await nc.request(subjects.api_alerts("query"), b"{}", timeout=0.5)
        elif name == "probe":
            await status.next_msg(timeout=0.5)  # type: ignore[attr-defined]
        else:
            return port_in_use(console_port)
    except Exception:  # no responders, timeouts: not ready yet
        return False
    return True


async def _watch(
    children: dict[str, subprocess.Popen[bytes]],
    envs: dict[str, dict[str, str]],
    data: Path,
    server: NatsServer | None = None,
) -> None:
    """Restarts the NATS server or a service that exits (the services reconnect, and enforcement in
    the containers never waits for either); gives up on a crash loop."""
    restarts: dict[str, list[float]] = {name: [] for name in [*children, "nats"]}
    loop = asyncio.get_running_loop()

    def count(name: str, status: int | None) -> None:
        now = loop.time()
        recent = restarts[name] = [t for t in restarts[name] if now - t < 60] + [now]
        if len(recent) > MAX_RESTARTS_PER_MINUTE:
            raise UpError(f"the {name} service keeps exiting (status {status}): see {data / name}.log")
        say(name, f"exited with status {status}; restarting")

    while True:
        await asyncio.sleep(0.5)
        if server is not None and (status := server.exited()) is not None:
            count("nats", status)
            try:
                await asyncio.to_thread(server.start)  # same port, same store: nothing is lost
            except NatsServerError as exc:
                raise UpError(f"the NATS server could not be started again: {exc}") from None
            say("nats", "ready")
        for name, proc in children.items():
            if proc.poll() is None:
                continue
            count(name, proc.returncode)
            children[name] = _spawn(name, envs[name], data)


async def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in reversed(children.values()):
        if proc.poll() is None:
            proc.terminate()
    for name, proc in children.items():
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            say(name, "did not stop in 10s; killed")
            proc.kill()
            proc.wait()
