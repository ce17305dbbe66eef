"""The event path: records in a container's pipe -> validated, attributed, enriched Events on NATS."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from preguard.proto import (
    FileRule,
    Kind,
    Outcome,
    Policy,
    ProbeStatus,
    ProcessRule,
    Selector,
    Severity,
    Subjects,
    decode_events,
)
from preguard.proto.abi import Record, encode_record
from tests.probe.conftest import SCOPE_LABEL, PublishBundle, StartProbe, eventually, pid_of

pytestmark = pytest.mark.docker


def policy(scope: str) -> Policy:
    return Policy(
        name="secrets",
        severity=Severity.HIGH,
        selector=Selector(labels={SCOPE_LABEL: scope}),
        rules=[ProcessRule(name="nc"), FileRule(path="/etc/shadow")],
    )


def record(rule_id: int = 1, target: str = "/etc/shadow", revision: int = 5, pid: int = 77) -> bytes:
    return encode_record(
        Record(
            version=1,
            time_ns=time.time_ns(),
            pid=pid,
            uid=0,
            kind=Kind.FILE,
            action=Outcome.BLOCKED,
            access="read",
            rule_id=rule_id,
            revision=revision,
            exe="/usr/bin/cat",
            target=target,
            truncated=False,
        )
    )


def write_pipe(info: dict[str, Any], data: bytes) -> None:
    """Write as a process in the container would (from the host, through its root)."""
    fd = os.open(Path(f"/proc/{pid_of(info)}/root/.preguard/events"), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


async def guarded(container: Any, image: str) -> dict[str, Any]:
    c = await container(image)
    info: dict[str, Any] = await c.show()
    root = Path(f"/proc/{pid_of(info)}/root")
    await eventually(lambda: (root / "etc/ld.so.preload").exists())
    return info


async def test_a_record_becomes_one_enriched_event_on_the_containers_subject(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([policy(scope)], revision=5)
    await start_probe()
    info = await guarded(container, glibc_image)
    cid = info["Id"][:12]
    sub = await nc.subscribe(subjects.events(host, cid))

    write_pipe(info, record(rule_id=1, pid=77))

    events = decode_events((await sub.next_msg(timeout=10)).data)
    assert len(events) == 1
    e = events[0]
    assert (e.host, e.container_id, e.container_name) == (host, cid, info["Name"].lstrip("/"))
    assert e.image == info["Config"]["Image"]
    assert (e.kind, e.action, e.access, e.target, e.exe) == (
        Kind.FILE,
        Outcome.BLOCKED,
        "read",
        "/etc/shadow",
        "/usr/bin/cat",
    )
    assert (e.policy, e.rule, e.severity, e.revision, e.pid) == ("secrets", 1, Severity.HIGH, 5, 77)


async def test_garbage_and_a_flood_in_one_container_leave_the_others_flowing(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([policy(scope)], revision=5)
    await start_probe(event_rate=0.001, event_burst=100.0)  # 100 admitted, however slow the machine
    noisy, quiet = await guarded(container, glibc_image), await guarded(container, glibc_image)
    quiet_sub = await nc.subscribe(subjects.events(host, quiet["Id"][:12]))
    noisy_sub = await nc.subscribe(subjects.events(host, noisy["Id"][:12]))
    status_sub = await nc.subscribe(subjects.status(host))

    write_pipe(noisy, os.urandom(3000) + b"PGRE" + b"\xff" * 200)  # garbage, a fake magic
    one = record(target="/etc/flood")
    for _ in range(20):  # 20 x 50 records: 1000 in a moment, the limit admits 100
        write_pipe(noisy, one * 50)
    write_pipe(quiet, record(target="/etc/quiet"))

    events = decode_events((await quiet_sub.next_msg(timeout=10)).data)
    assert [e.target for e in events] == ["/etc/quiet"]
    received = 0
    while received < 100:
        received += len(decode_events((await noisy_sub.next_msg(timeout=10)).data))
    assert received == 100
    with pytest.raises(asyncio.TimeoutError):  # nats-py's TimeoutError is asyncio's
        await noisy_sub.next_msg(timeout=0.3)
    noisy_id = noisy["Id"][:12]
    for _ in range(20):
        status = msgspec.json.decode((await status_sub.next_msg(timeout=10)).data, type=ProbeStatus)
        mine = next(c for c in status.containers if c.id == noisy_id)
        if mine.drops_probe >= 900:
            break
    assert mine.drops_probe >= 901  # 900 over the limit, and the garbage
    assert mine.events == 100


async def test_a_forged_container_field_in_the_record_cannot_move_the_event(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    # A record has no container field at all: attribution is by the pipe. An unknown rule id
    # (a process inventing one) still arrives, on its own container's subject, flagged.
    await publish_bundle([policy(scope)], revision=5)
    await start_probe()
    info = await guarded(container, glibc_image)
    sub = await nc.subscribe(subjects.events_all())
    write_pipe(info, record(rule_id=999))
    msg = await sub.next_msg(timeout=10)
    assert msg.subject == subjects.events(host, info["Id"][:12])
    (e,) = decode_events(msg.data)
    assert (e.policy, e.rule, e.severity) == ("", -1, Severity.CRITICAL)
    assert "999" in e.detail


async def test_a_restarted_probe_delivers_what_waited_in_the_pipe(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([policy(scope)], revision=5)
    first = await start_probe()
    info = await guarded(container, glibc_image)
    # something in the container holds the pipe open, as the library's processes do
    holder = os.open(f"/proc/{pid_of(info)}/root/.preguard/events", os.O_RDWR | os.O_NONBLOCK)
    try:
        await first.stop()
        write_pipe(info, record(target="/etc/while-away"))
        sub = await nc.subscribe(subjects.events(host, info["Id"][:12]))
        await start_probe()
        events = decode_events((await sub.next_msg(timeout=10)).data)
        assert [e.target for e in events] == ["/etc/while-away"]
    finally:
        os.close(holder)
