"""What every service shares: settings from the environment, logging, the NATS connection, stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
import nats
import structlog
from nats.aio.client import Client as NATS

from preguard.proto import Subjects

log = structlog.get_logger()


S = TypeVar("S", bound=msgspec.Struct)


def from_environ(cls: type[S], environ: Mapping[str, str], prefix: str = "PREGUARD_") -> S:
    """A settings Struct from PREFIX<FIELD> variables: empty ones are unset, unknown ones ignored."""
    raw = {k[len(prefix) :].lower(): v for k, v in environ.items() if k.startswith(prefix) and v != ""}
    fields = set(cls.__struct_fields__)
    return msgspec.convert({k: v for k, v in raw.items() if k in fields}, cls, strict=False)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """PREGUARD_* environment variables; every service reads the same ones."""

    nats_url: str = "nats://127.0.0.1:4222"
    host: str = ""  # probe's host name; default the machine's
    prefix: str = "preguard"
    creds: str | None = None  # a preguard credential (JSON, see preguard.auth) or a NATS .creds file
    tls_ca: str | None = None  # CA of the server's certificate (PREGUARD_TLS_CA)
    tls_cert: str | None = None  # client certificate, when the server verifies clients ...
    tls_key: str | None = None  # ... and its key
    log_level: str = "info"
    inbox_prefix: str | None = None  # replies' subject prefix; default from the credential, else _INBOX

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        settings = from_environ(cls, environ)
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


def nats_options(settings: Settings) -> dict[str, Any]:
    """nats.connect() keywords for the credential and TLS files the settings name."""
    from preguard.auth import read_credential

    options: dict[str, Any] = {}
    tls_ca = settings.tls_ca
    if settings.creds:
        cred = read_credential(settings.creds)
        if cred is None:
            options["user_credentials"] = settings.creds  # a NATS .creds file (JWT and nkey seed)
        else:
            options.update(user=cred.user, password=cred.password)
            if cred.inbox_prefix:
                options["inbox_prefix"] = cred.inbox_prefix
            tls_ca = tls_ca or cred.tls_ca or None
    if settings.inbox_prefix:
        options["inbox_prefix"] = settings.inbox_prefix
    if tls_ca or settings.tls_cert or settings.nats_url.startswith("tls://"):
        import ssl

        tls = ssl.create_default_context(cafile=tls_ca)
        if settings.tls_cert:
            tls.load_cert_chain(settings.tls_cert, settings.tls_key)
        options["tls"] = tls
    return options


def operator_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings for the operator commands: without PREGUARD_CREDS, the operator credential that
    `preguard up` left under its data directory (PREGUARD_DATA_DIR, default ~/.local/share/preguard)
    is used when it exists, and its server URL when PREGUARD_NATS_URL is not set."""
    from pathlib import Path

    from preguard.auth import read_credential

    settings = Settings.from_env(environ)
    if settings.creds:
        return settings
    data = Path(environ.get("PREGUARD_DATA_DIR") or Path.home() / ".local/share/preguard")
    path = data / "auth" / "operator.json"
    try:
        cred = read_credential(path)
    except (OSError, msgspec.DecodeError):
        return settings
    if cred is None:
        return settings
    settings = msgspec.structs.replace(settings, creds=str(path))
    if cred.url and not environ.get("PREGUARD_NATS_URL"):
        settings = msgspec.structs.replace(settings, nats_url=cred.url)
    return settings


async def connect(settings: Settings, name: str, **options: Any) -> NATS:
    """A NATS connection that reconnects forever and logs what the client reports."""

    async def error_cb(exc: Exception) -> None:
        log.error("nats_error", error=str(exc), exc_info=exc)

    async def disconnected_cb() -> None:
        log.warning("nats_disconnected")

    async def reconnected_cb() -> None:
        log.info("nats_reconnected")

    return await nats.connect(
        settings.nats_url,
        name=name,
        **{**nats_options(settings), **options},
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
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
