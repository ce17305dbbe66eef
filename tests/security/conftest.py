"""Security fixtures: a nats-server that refuses anonymous clients and enforces preguard's roles."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from preguard.auth import Generated, Role, generate
from preguard.natsserver import NatsServerError, run_nats_server
from preguard.proto import Subjects
from preguard.runtime import Settings, nats_options
from tests.conftest import need
from tests.probe.conftest import (  # noqa: F401 (the probe's fixtures: a probe scoped to the test's containers)
    container,
    host,
    probe_settings,
    publish_bundle,
    scope,
    start_probe,
)

HOSTS = ("host-a", "host-b")


class SecureBus:
    def __init__(self, url: str, auth: Generated, subjects: Subjects, log: Path) -> None:
        self.url, self.auth, self.subjects, self.log = url, auth, subjects, log

    def settings(self, role: Role, on: str = "") -> Settings:
        return Settings(nats_url=self.url, creds=str(self.auth.path(role, on)), prefix=self.subjects.prefix)

    def violations(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if " Violation - " in line]


class Client:
    """A connection as one role; every error the server reports lands in `errors`."""

    def __init__(self, nc: NATS, errors: asyncio.Queue[str]) -> None:
        self.nc, self.errors = nc, errors

    def pending(self) -> list[str]:
        """Errors received and not yet consumed by refused()."""
        out = []
        while not self.errors.empty():
            out.append(self.errors.get_nowait())
        return out

    async def refused(self, what: str) -> str:
        """The server's permission violation naming `what` (a subject); earlier errors are skipped.

        nats-py lowercases the server's -ERR text, so the comparison ignores case."""
        while True:
            error = await asyncio.wait_for(self.errors.get(), timeout=10)
            if "permissions violation" in error.lower() and what.lower() in error.lower():
                return error


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture(scope="module")
def secure_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBus]:
    tmp = tmp_path_factory.mktemp("securebus")
    subjects = Subjects(prefix=f"s{uuid.uuid4().hex[:8]}")
    auth = generate(tmp / "auth", subjects, list(HOSTS))
    log = tmp / "nats.log"
    try:
        with run_nats_server(tmp / "js", config=auth.config, log_file=log) as url:
            yield SecureBus(url, auth, subjects, log)
    except NatsServerError as exc:
        need("nats-server", str(exc))


@pytest.fixture
async def connect_as(secure_bus: SecureBus) -> AsyncIterator[Connect]:
    made: list[NATS] = []

    async def connect(role: Role, on: str = "") -> Client:
        errors: asyncio.Queue[str] = asyncio.Queue()

        async def error_cb(exc: Exception) -> None:
            errors.put_nowait(str(exc))

        options = nats_options(secure_bus.settings(role, on))
        nc = await nats.connect(secure_bus.url, error_cb=error_cb, max_reconnect_attempts=2, **options)
        made.append(nc)
        return Client(nc, errors)

    yield connect
    for nc in made:
        await nc.close()
