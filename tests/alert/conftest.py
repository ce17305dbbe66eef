"""Alert tests: an event factory, short-window settings, a started service, an alert collector."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import structlog
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js.errors import NotFoundError

from preguard.alert.service import AlertService
from preguard.alert.settings import AlertSettings
from preguard.alert.streams import lease_bucket, state_bucket, work_stream
from preguard.proto import Alert, Event, Kind, Outcome, Severity, Subjects, decode

_pids = itertools.count(100)


def make_event(**changes: object) -> Event:
    """An event as a probe publishes it; keyword arguments replace fields."""
    now = datetime.now(UTC)
    event = Event(
        host="host-a",
        container_id="c0ffee000001",
        container_name="web-1",
        image="nginx:1.25",
        time=now,
        time_ns=int(now.timestamp() * 1e9),
        pid=next(_pids),
        uid=0,
        exe="/bin/sh",
        kind=Kind.PROCESS,
        target="/bin/sh",
        access="exec",
        action=Outcome.BLOCKED,
        policy="web-lockdown",
        rule=0,
        severity=Severity.HIGH,
    )
    if "time" in changes and "time_ns" not in changes:
        when = changes["time"]
        assert isinstance(when, datetime)
        changes["time_ns"] = int(when.timestamp() * 1e9)
    return msgspec.structs.replace(event, **changes)


@pytest.fixture
def settings() -> AlertSettings:
    return AlertSettings(
        window=30.0,
        update_interval=0.5,
        grace=0.5,
        partitions=4,
        lease_ttl=1.5,
        tick=0.05,
        health_misses=3,
    ).named()


@pytest.fixture
async def make_service(
    nc: NATS, subjects: Subjects, settings: AlertSettings
) -> AsyncIterator[Callable[..., Awaitable[AlertService]]]:
    """Start services (each with its own instance name); all are stopped after the test, and the
    streams and buckets they made are deleted (the session's server is shared by every test)."""
    started: list[AlertService] = []
    used: set[Subjects] = {subjects}

    async def make(client: NATS | None = None, on: Subjects | None = None, **changes: object) -> AlertService:
        config = msgspec.structs.replace(settings, instance="", **changes).named()
        service = AlertService(client or nc, on or subjects, config)
        await service.start()
        started.append(service)
        used.add(on or subjects)
        return service

    yield make
    for service in started:
        await service.stop()
    js = nc.jetstream()
    for s in used:
        names = [s.stream_events(), work_stream(s), s.stream_alerts()]
        for name in [*names, f"KV_{state_bucket(s)}", f"KV_{lease_bucket(s)}"]:
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)


async def next_alert(sub: Subscription, timeout: float = 5.0) -> Alert:
    return decode((await sub.next_msg(timeout=timeout)).data, Alert)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll state that changes on a timer (lease rounds), with a deadline."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (nothing to wait on: leases move on a timer)
            await asyncio.sleep(0.05)


@pytest.fixture(autouse=True)
def no_failed_loops() -> Iterator[list[MutableMapping[str, Any]]]:
    """A partition or health loop that failed and restarted is a bug even when the test passes."""
    with structlog.testing.capture_logs() as logs:
        yield logs
    assert [e for e in logs if e["event"] == "loop_failed"] == []
