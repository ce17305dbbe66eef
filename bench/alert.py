"""Alert service: events/s one instance aggregates, and publish-to-first-alert latency at 1,000 events/s.

Runs its own nats-server (JetStream on a temporary directory). Throughput: a backlog of events is
stored first, then one in-process instance is started and timed until it has folded all of them.
Latency: the service runs in a subprocess (as deployed); this process publishes 1,000 events/s,
one per message, of which every tenth opens a new alert, and times each new alert's arrival.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client as NATS

from bench import Figure
from preguard.alert.service import AlertService
from preguard.alert.settings import AlertSettings
from preguard.alert.streams import ensure_streams, work_stream
from preguard.natsserver import run_nats_server
from preguard.proto import Alert, Event, Kind, Outcome, Severity, Subjects, decode, encode

BACKLOG = 400_000  # events
PER_MESSAGE = 100
CONTAINERS = 100
KEYS_PER_CONTAINER = 10
RATE = 1000  # events/s for the latency run
LATENCY_SECONDS = 10


def _event(container: int, target: str) -> Event:
    now = datetime.now(UTC)
    return Event(
        host="bench-host",
        container_id=f"{container:012x}",
        container_name=f"web-{container}",
        image="nginx:1.25",
        time=now,
        time_ns=time.time_ns(),
        pid=1234,
        uid=0,
        exe="/bin/sh",
        kind=Kind.PROCESS,
        target=target,
        access="exec",
        action=Outcome.BLOCKED,
        policy="web-lockdown",
        rule=0,
        severity=Severity.HIGH,
    )


async def _throughput(url: str, per_message: int, total: int) -> float:
    subjects = Subjects(prefix=f"bt{per_message}")
    settings = AlertSettings(partitions=8).named()
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_streams(js, subjects, settings)
    batches = []
    for c in range(CONTAINERS):
        events = [_event(c, f"/bin/t{k}") for k in range(KEYS_PER_CONTAINER)]
        batches.append((subjects.events("bench-host", f"{c:012x}"), events))
    sent, acks = 0, []
    while sent < total:
        for subject, events in batches:
            chunk = [events[i % len(events)] for i in range(per_message)]
            acks.append(js.publish(subject, encode(chunk if per_message > 1 else chunk[0])))
            sent += per_message
            if len(acks) >= 1000:
                await asyncio.gather(*acks)
                acks = []
            if sent >= total:
                break
    await asyncio.gather(*acks)
    messages = total // per_message
    while (await js.stream_info(work_stream(subjects))).state.messages < messages:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # sourcing into the work stream runs inside the server
    service = AlertService(nc, subjects, settings)
    started = time.perf_counter()
    await service.start()
    while service.events < total:  # noqa: ASYNC110 (a counter: nothing to wait on)
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await service.stop()
    await nc.drain()
    return total / elapsed


async def _latency(url: str) -> list[float]:
    subjects = Subjects(prefix="blat")
    settings = AlertSettings(partitions=8)
    nc: NATS = await nats.connect(url)
    await ensure_streams(nc.jetstream(), subjects, settings.named())
    env = {**os.environ, "PREGUARD_NATS_URL": url, "PREGUARD_PREFIX": subjects.prefix}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "preguard.alert", env=env, stderr=subprocess.DEVNULL
    )
    sent: dict[str, float] = {}
    got: dict[str, float] = {}

    async def on_alert(msg: nats.aio.msg.Msg) -> None:
        alert = decode(msg.data, Alert)
        if alert.state == "new" and alert.kind == Kind.PROCESS:
            got.setdefault(alert.target, time.perf_counter())

    await nc.subscribe(subjects.alerts_all(), cb=on_alert)
    try:
        warm = _event(0, "/bin/warmup")  # the service is up once its first alert comes back
        while "/bin/warmup" not in got:
            await nc.publish(subjects.events(warm.host, warm.container_id), encode(warm))
            await asyncio.sleep(0.2)
        step, tick = 10, 10 / RATE  # 10 events per 10 ms
        start = time.perf_counter()
        for i in range(0, RATE * LATENCY_SECONDS, step):
            for j in range(i, i + step):
                container = j % CONTAINERS
                target = f"/bin/new{j}" if j % 10 == 0 else f"/bin/repeat{container}"
                event = _event(container, target)
                await nc.publish(subjects.events(event.host, event.container_id), encode(event))
                if j % 10 == 0:
                    sent[target] = time.perf_counter()
            await nc.flush()
            delay = start + (i + step) * tick / step - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        deadline = time.perf_counter() + 10
        while len([t for t in sent if t in got]) < len(sent) and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        await proc.wait()
        await nc.drain()
    return sorted((got[t] - sent[t]) * 1000 for t in sent if t in got)


def run() -> list[Figure]:
    # One server per measurement: a drained backlog of 400,000 events leaves the server busy
    # deleting and flushing for a while, which is not what the latency figure is about.
    with tempfile.TemporaryDirectory() as tmp, run_nats_server(Path(tmp)) as url:
        latencies = asyncio.run(_latency(url))
        load = os.getloadavg()[0]  # the tail is the machine's: other work delays any of 3 processes
    with tempfile.TemporaryDirectory() as tmp, run_nats_server(Path(tmp)) as url:
        batched = asyncio.run(_throughput(url, PER_MESSAGE, BACKLOG))
    with tempfile.TemporaryDirectory() as tmp, run_nats_server(Path(tmp)) as url:
        single = asyncio.run(_throughput(url, 1, 50_000))
    expected = RATE * LATENCY_SECONDS // 10
    p50 = statistics.median(latencies) if latencies else float("nan")
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    note = f"{len(latencies)}/{expected} new alerts seen, load average {load:.1f}"
    return [
        Figure(
            f"alert: events/s, one instance, {PER_MESSAGE} events per message",
            batched,
            "ev/s",
            ">= 50000",
            batched >= 50_000,
        ),
        Figure("alert: events/s, one instance, 1 event per message", single, "ev/s", "-", None),
        Figure("alert: publish to first alert p50 at 1000 ev/s", p50, "ms", "-", None, note),
        Figure(
            "alert: publish to first alert p99 at 1000 ev/s",
            p99,
            "ms",
            "<= 50",
            p99 <= 50 and len(latencies) == expected,
            note,
        ),
    ]


if __name__ == "__main__":
    for f in run():
        print(msgspec.json.encode(f.__dict__).decode())
