"""Console: overview page time with many hosts and containers; alert publish-to-browser-stream latency.

The console runs in this process (`preguard.console.serve`) against a nats-server started here;
heartbeats and alerts are published on the real subjects as probes and the alert service would.
The stream latency is measured from `nc.publish` of an Alert to its `data:` line read by an HTTP
client on `/alerts/stream`, with 20 streams open at once (20 operators watching).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import nats

from bench import Figure
from preguard.console import serve
from preguard.natsserver import run_nats_server
from preguard.proto import (
    Alert,
    ContainerStatus,
    Kind,
    ProbeStatus,
    ProcessCoverage,
    Severity,
    Subjects,
    encode,
)

HOSTS, CONTAINERS = 20, 50
PAGE_LOADS = 30
STREAMS = 20
ALERTS = 200
TARGET_PAGE_MS = 250.0
TARGET_STREAM_P99_MS = 50.0
TOKEN = "bench"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _status(h: int) -> ProbeStatus:
    containers = [
        ContainerStatus(
            id=f"{h:04d}{c:08d}",
            name=f"web-{h}-{c}",
            image="nginx:1.25",
            libc="glibc",
            guarded=True,
            policies=["web-lockdown"],
            revision=7,
            covered=5,
            uncovered=[ProcessCoverage(pid=1, exe="/usr/local/bin/app", reason="static_binary")],
        )
        for c in range(CONTAINERS)
    ]
    return ProbeStatus(host=f"host-{h}", time=datetime.now(UTC), interval=5.0, containers=containers)


def _alert(i: int) -> Alert:
    now = datetime.now(UTC)
    return Alert(
        id=f"bench-{i % 50}", host="host-0", container_id="000000000001", container_name="web-0-1",
        image="nginx:1.25", policy="web-lockdown", rule=0, kind=Kind.FILE, target="/etc/shadow",
        action="blocked", severity=Severity.HIGH, count=i + 1, first_seen=now, last_seen=now,
        detail=str(time.perf_counter_ns()),
    )  # fmt: skip


async def _signed_in(session: aiohttp.ClientSession, base: str) -> None:
    async with session.get(base + "/login") as r:
        m = _CSRF.search(await r.text())
    assert m is not None
    async with session.post(base + "/login", data={"token": TOKEN, "csrf": m.group(1)}) as r:
        assert r.status == 200, r.status  # redirected to the overview


async def _measure(url: str) -> list[Figure]:
    nc = await nats.connect(url)
    subjects = Subjects(prefix=f"b{uuid.uuid4().hex[:8]}")
    server = await serve(nc, subjects, port=0, token=TOKEN)
    try:
        for h in range(HOSTS):
            await nc.publish(subjects.status(f"host-{h}"), encode(_status(h)))
        await nc.flush()
        while len(server.console.hosts.all()) < HOSTS:  # noqa: ASYNC110 (console state: no event)
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            await _signed_in(session, server.url)
            page_ms = []
            for _ in range(PAGE_LOADS):
                t0 = time.perf_counter()
                async with session.get(server.url + "/") as r:
                    body = await r.read()
                page_ms.append((time.perf_counter() - t0) * 1000)
            latencies = await _stream_latencies(session, server.url, nc, subjects)
    finally:
        await server.stop()
        await nc.drain()
    page = statistics.median(page_ms)
    p99 = statistics.quantiles(latencies, n=100)[98]
    return [
        Figure(
            f"console: overview page, {HOSTS} hosts x {CONTAINERS} containers (median)",
            page, "ms", f"<= {TARGET_PAGE_MS:.0f} ms", page <= TARGET_PAGE_MS, f"{len(body) // 1024} KiB",
        ),
        Figure(
            "console: alert publish -> SSE data line (median)",
            statistics.median(latencies), "ms", "-", None, f"{STREAMS} streams open",
        ),
        Figure(
            "console: alert publish -> SSE data line (p99)",
            p99, "ms", f"<= {TARGET_STREAM_P99_MS:.0f} ms", p99 <= TARGET_STREAM_P99_MS,
            f"{ALERTS} alerts, {STREAMS} streams",
        ),
    ]  # fmt: skip


async def _stream_latencies(
    session: aiohttp.ClientSession, base: str, nc: nats.NATS, subjects: Subjects
) -> list[float]:
    """Open STREAMS streams; publish ALERTS alerts one at a time; time each on the first stream."""
    responses = [await session.get(base + "/alerts/stream") for _ in range(STREAMS)]
    try:
        for r in responses:
            assert r.status == 200, r.status
            while (line := await r.content.readline()).strip() != b": connected":
                assert line, "the event stream ended"
        first, latencies = responses[0], []
        for i in range(ALERTS):
            sent = time.perf_counter_ns()
            await nc.publish(subjects.alerts("high", "host-0"), encode(_alert(i)))
            while not (line := await first.content.readline()).startswith(b"data:"):
                assert line, "the event stream ended"
            latencies.append((time.perf_counter_ns() - sent) / 1e6)
            assert f'"count":{i + 1}'.encode() in line
        return latencies
    finally:
        for r in responses:
            r.close()


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp, run_nats_server(Path(tmp)) as url:
        return asyncio.run(_measure(url))
