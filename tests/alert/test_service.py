"""The alert service against a real nats-server: events in, alerts out, exactly once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from preguard.proto import Alert, Kind, Severity, Subjects, encode

from tests.alert.conftest import make_event, next_alert

MakeService = Callable[..., Any]


async def test_one_event_gives_one_alert_with_every_contract_field(
    nc: NATS, subjects: Subjects, make_service: MakeService
) -> None:
    await make_service()
    sub = await nc.subscribe(subjects.alerts_all())
    event = make_event()
    await nc.jetstream().publish(subjects.events(event.host, event.container_id), encode(event))
    msg = await sub.next_msg(timeout=5)
    assert msg.subject == subjects.alerts("high", "host-a")
    alert = await next_alert_from(msg.data)
    assert alert.state == "new"
    assert (alert.host, alert.container_id, alert.container_name, alert.image) == (
        "host-a",
        "c0ffee000001",
        "web-1",
        "nginx:1.25",
    )
    assert (alert.policy, alert.rule, alert.kind, alert.target, alert.action) == (
        "web-lockdown",
        0,
        Kind.PROCESS,
        "/bin/sh",
        "blocked",
    )
    assert alert.severity == Severity.HIGH
    assert alert.count == 1
    assert alert.first_seen == alert.last_seen == event.time
    assert alert.sample == event
    assert alert.id and alert.title and alert.detail


async def next_alert_from(data: bytes) -> Alert:
    from preguard.proto import decode

    return decode(data, Alert)
