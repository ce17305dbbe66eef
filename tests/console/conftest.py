"""Fixtures for the console: the real policy service, a console on a free port, a signed-in client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from preguard.console import ConsoleServer, serve
from preguard.policy.service import PolicyService
from preguard.policy.store import PolicyStore
from preguard.proto import Alert, ContainerStatus, Event, Kind, Outcome, ProbeStatus, Severity, Subjects

TOKEN = "console-test-token"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def policy_service(nc: NATS, subjects: Subjects) -> AsyncIterator[PolicyService]:
    store = await PolicyStore.open(nc.jetstream(), subjects.kv_policies())
    service = PolicyService(nc, store, subjects)
    await service.start()
    yield service
    await service.stop()


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
