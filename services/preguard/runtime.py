"""What every service shares: settings from the environment, logging, the NATS connection, stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any

import msgspec
import nats
import structlog
from nats.aio.client import Client as NATS

from preguard.proto import Subjects

log = structlog.get_logger()


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """PREGUARD_* environment variables; every service reads the same ones."""

    nats_url: str = "nats://127.0.0.1:4222"
    host: str = ""  # probe's host name; default the machine's
    prefix: str = "preguard"
    creds: str | None = None  # NATS credentials file
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        raw = {
            key[len("PREGUARD_") :].lower(): value
            for key, value in environ.items()
            if key.startswith("PREGUARD_") and value != ""
        }
        fields = set(cls.__struct_fields__)
        settings = msgspec.convert({k: v for k, v in raw.items() if k in fields}, cls, strict=False)
        if not settings.host:
            settings = msgspec.structs.replace(settings, host=socket.gethostname())
        return settings

    @property
    def subjects(self) -> Subjects:
        return Subjects(prefix=self.prefix)


def configure_logging(level: str = "info") -> None:
    """Key-value JSON lines (console rendering on a TTY); called in __main__ only."""
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if sys.stderr.isatty() else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


async def connect(settings: Settings, name: str, **options: Any) -> NATS:
    """A NATS connection that reconnects forever and logs what the client reports."""

    async def error_cb(exc: Exception) -> None:
        log.error("nats_error", error=str(exc), exc_info=exc)

    async def disconnected_cb() -> None:
        log.warning("nats_disconnected")

    async def reconnected_cb() -> None:
        log.info("nats_reconnected")

    tls = None
    if settings.tls_ca or settings.tls_cert:
        import ssl

        tls = ssl.create_default_context(cafile=settings.tls_ca)
        if settings.tls_cert:
            tls.load_cert_chain(settings.tls_cert, settings.tls_key)
    return await nats.connect(
        settings.nats_url,
        name=name,
        user_credentials=settings.creds,
        tls=tls,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        **options,
    )


async def wait_for_stop() -> None:
    """Returns on SIGINT or SIGTERM; the one place a service handles signals."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
