"""Fixtures for the console: the real policy service, a console on a free port, a signed-in client."""

from __future__ import annotations

import asyncio
import io
import re
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import pytest
from nats.aio.client import Client as NATS

from preguard.alert.service import AlertService
from preguard.alert.settings import AlertSettings
from preguard.console import ConsoleServer, serve
from preguard.probe import Probe, ProbeSettings
from preguard.proto import Alert, ContainerStatus, Event, Kind, Outcome, ProbeStatus, Severity, Subjects
from tests.conftest import MakeContainer

TOKEN = "console-test-token"
XSS = "<img src=x onerror=alert(1)>"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def alert_service(nc: NATS, subjects: Subjects) -> AsyncIterator[AlertService]:
    settings = AlertSettings(
        window=30.0, update_interval=0.3, grace=0.5, partitions=2, lease_ttl=1.5, tick=0.05
    )
    service = AlertService(nc, subjects, settings.named())
    await service.start()
    yield service
    await service.stop()


class Guarded:
    """A real container on the local Docker engine, and a real probe that sees only it (by label)."""

    def __init__(self, probe: Probe, container: Any, name: str) -> None:
        self.probe, self.container, self.name = probe, container, name

    async def run(self, *cmd: str) -> tuple[int, str]:
        """docker exec: the exit code and output of a command in the container."""
        execution = await self.container.exec(list(cmd), stdout=True, stderr=True)
        out: list[bytes] = []
        async with execution.start(detach=False) as stream:
            while (msg := await stream.read_out()) is not None:
                out.append(msg.data)
        deadline = time.monotonic() + 10
        while (info := await execution.inspect())["Running"]:  # Docker state: poll
            assert time.monotonic() < deadline, f"{cmd} did not finish"
            await asyncio.sleep(0.02)
        return int(info["ExitCode"]), b"".join(out).decode(errors="replace")

    async def blocked_read(self, path: str) -> None:
        """`cat PATH` in the container: the library denies the open and reports it through the pipe."""
        code, out = await self.run("/bin/cat", path)
        assert code != 0, out
        assert "Permission denied" in out


def _libdl_tar() -> bytes | None:
    """The glibc library links libdl.so.2 (for glibc < 2.34). The test image holds only what its
    programs need, which on Debian 12 leaves libdl out; real Debian images ship it."""
    lib = Path("/lib/x86_64-linux-gnu/libdl.so.2")
    if not lib.exists():
        return None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(lib.resolve()), arcname="libdl.so.2")
    return buf.getvalue()


@pytest.fixture
async def guarded(
    nc: NATS, docker: aiodocker.Docker, subjects: Subjects, make_container: MakeContainer, glibc_image: str
) -> AsyncIterator[Guarded]:
    scope = uuid.uuid4().hex[:8]
    settings = ProbeSettings(
        host=f"h{scope}", scope=f"preguard.test={scope}", status_interval=0.5, tamper_interval=0.5
    )
    name = f"preguard-test-{scope}"
    container = await make_container(glibc_image, name=name, labels={"preguard.test": scope})
    guarded = Guarded(Probe(nc, docker, subjects, settings), container, name)
    if (libdl := _libdl_tar()) is not None:
        await container.put_archive("/usr/lib/x86_64-linux-gnu", libdl)
    # files to be read later, made before any policy applies (and writing is not blocked anyway)
    code, out = await guarded.run("/bin/sh", "-c", f"echo secret > /etc/shadow && echo x > '/tmp/{XSS}'")
    assert code == 0, out
    await guarded.probe.start()
    yield guarded
    await guarded.probe.stop()


@pytest.fixture
async def console(nc: NATS, subjects: Subjects) -> AsyncIterator[ConsoleServer]:
    server = await serve(nc, subjects, port=0, token=TOKEN)
    yield server
    await server.stop()


class Client:
    """An HTTP client that signs in like a browser: cookie jar, CSRF token from each page's form."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base, self.csrf = session, base, ""

    async def get(self, path: str, **kw: object) -> tuple[int, str]:
        async with self.session.get(self.base + path, allow_redirects=False, **kw) as r:  # type: ignore[arg-type]
            text = await r.text()
            if m := _CSRF.search(text):
                self.csrf = m.group(1)
            return r.status, text

    async def post(
        self, path: str, data: dict[str, str], csrf: bool = True, **kw: object
    ) -> aiohttp.ClientResponse:
        form = {**data, "csrf": self.csrf} if csrf else data
        async with self.session.post(self.base + path, data=form, allow_redirects=False, **kw) as r:  # type: ignore[arg-type]
            await r.read()
            return r

    async def sign_in(self, token: str = TOKEN) -> aiohttp.ClientResponse:
        await self.get("/login")
        response = await self.post("/login", {"token": token})
        await self.get("/")  # a signed-in page: the session's CSRF token
        return response


@pytest.fixture
async def client(console: ConsoleServer) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield Client(session, console.url)


def container(name: str, cid: str = "c0ffee000001", **kw: object) -> ContainerStatus:
    return ContainerStatus(id=cid, name=name, image="img:1", libc="glibc", **kw)  # type: ignore[arg-type]


def heartbeat(host: str, *containers: ContainerStatus, revision: int = 0) -> ProbeStatus:
    return ProbeStatus(
        host=host, time=datetime.now(UTC), interval=1.0, revision=revision, containers=list(containers)
    )


def alert(target: str, count: int = 1, *, alert_id: str = "a1", severity: Severity = Severity.HIGH) -> Alert:
    now = datetime.now(UTC)
    sample = Event(
        host="h1", container_id="c0ffee000001", container_name="web-1", image="img:1", time=now,
        time_ns=0, pid=42, uid=0, exe="/bin/cat", kind=Kind.FILE, target=target, access="read",
        action=Outcome.BLOCKED, policy="lock", rule=0, severity=severity,
    )  # fmt: skip
    return Alert(
        id=alert_id, host="h1", container_id="c0ffee000001", container_name="web-1", image="img:1",
        policy="lock", rule=0, kind=Kind.FILE, target=target, action="blocked", severity=severity,
        count=count, first_seen=now, last_seen=now, sample=sample,
    )  # fmt: skip
