"""The console service: NATS subscriptions for heartbeats and live alerts, and the web server."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec
import nats.errors
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from preguard.console.app import Console, make_app
from preguard.console.bus import Bus
from preguard.console.security import new_token
from preguard.proto import Alert, Subjects, decode, decode_status
from preguard.runtime import from_environ

log = structlog.get_logger()


class ConsoleSettings(msgspec.Struct, frozen=True, kw_only=True):
    """PREGUARD_CONSOLE_* environment variables (the NATS ones are the shared runtime Settings)."""

    console_host: str = "127.0.0.1"
    console_port: int = 8080
    console_token: str = ""  # sign-in token; when empty one is generated and logged at start
    console_secure_cookie: bool = False  # mark the session cookie Secure (served over TLS)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ConsoleSettings:
        return from_environ(cls, environ)  # its fields are console_*: PREGUARD_CONSOLE_*


class ConsoleServer:
    """Serves the console on host:port; owns its subscriptions and web server, not the connection."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str = "",
        secure_cookie: bool = False,
    ) -> None:
        self._nc, self._subjects, self._host, self._port = nc, subjects, host, port
        self.generated_token = not token
        self.console = Console(bus=Bus(nc, subjects), token=token or new_token(), secure_cookie=secure_cookie)
        self._subs: list[Subscription] = []
        self._runner: web.AppRunner | None = None

    @property
    def token(self) -> str:
        return self.console.token

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        """Returns once the subscriptions are registered and the port is listening."""
        self._subs.append(await self._nc.subscribe(self._subjects.status_all(), cb=self._on_status))
        self._subs.append(await self._nc.subscribe(self._subjects.alerts_all(), cb=self._on_alert))
        await self._nc.flush()
        self._runner = web.AppRunner(make_app(self.console), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        if self._port == 0:  # an ephemeral port (tests): learn which one
            self._port = int(self._runner.addresses[0][1])
        log.info("console_started", url=self.url, token_generated=self.generated_token)
        if self.generated_token:
            # Nobody configured a token: this log line is how the operator learns the one we made.
            log.warning("console_token_generated", token=self.token, url=self.url)

    async def stop(self, timeout: float = 5.0) -> None:
        self.console.close_streams()
        async with asyncio.timeout(timeout):  # sub.drain() alone waits forever on a stuck handler
            for sub in self._subs:
                with contextlib.suppress(nats.errors.ConnectionClosedError):  # the caller closed it first
                    await sub.unsubscribe()
            self._subs.clear()
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
        log.info("console_stopped")

    async def _on_status(self, msg: Msg) -> None:
        try:
            status = decode_status(self._subjects, msg.subject, msg.data)
        except msgspec.DecodeError as exc:
            log.warning("status_refused", subject=msg.subject, error=str(exc))
            return
        self.console.hosts.update(status, datetime.now(UTC))

    async def _on_alert(self, msg: Msg) -> None:
        try:
            alert = decode(msg.data, Alert)
        except msgspec.DecodeError as exc:
            log.warning("alert_refused", subject=msg.subject, error=str(exc))
            return
        self.console.publish(alert)


async def serve(
    nc: NATS,
    subjects: Subjects,
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str = "",
    secure_cookie: bool = False,
) -> ConsoleServer:
    """A started console (for `preguard up`); call `await server.stop()` before draining `nc`."""
    server = ConsoleServer(nc, subjects, host, port, token, secure_cookie)
    await server.start()
    return server
