"""Policy service: put-to-bundle-received latency with 1, 100 and 1,000 policies stored; API requests/s.

The service runs as its own process (`python -m preguard.policy`) against a nats-server started here;
the probe side is a JetStream consumer on one host's bundle subject, as the probe reads it. Every
stored policy selects the host, so with 1,000 policies each bundle carries all of them.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

from bench import Figure
from preguard.natsserver import run_nats_server
from preguard.proto import (
    FileRule,
    NameRequest,
    NetworkRule,
    Policy,
    PolicyBundle,
    ProbeStatus,
    ProcessRule,
    Stored,
    Subjects,
    encode,
)

HOST = "bench-host"
STORED = (1, 100, 1000)
PUTS = 200  # measured puts per size
THROUGHPUT_SECONDS = 3.0
IN_FLIGHT = 64
TARGET_P99_MS = 50.0


class _Revision(msgspec.Struct):
    """A bundle read only as far as its revision: when it arrived is what is measured here."""

    revision: int


def _policy(i: int, generation: int = 0) -> Policy:
    return Policy(
        name=f"bench-{i:04d}",
        description=f"generation {generation}",
        rules=[
            ProcessRule(name="nc"),
            ProcessRule(path="/bin/sh"),
            FileRule(path=f"/srv/app-{i}/**"),
            FileRule(path="/etc/shadow"),
            NetworkRule(cidr="127.0.0.2/32", ports="1-1024"),
        ],
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _wait_for_service(nc: NATS, subjects: Subjects) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await nc.request(subjects.api_policy("list"), b"{}", timeout=1)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _latency(nc: NATS, subjects: Subjects, stored: int) -> tuple[list[float], bytes]:
    """Milliseconds from sending a put to the host's consumer holding the bundle of its revision;
    and the last bundle as received."""
    for start in range(0, stored, 100):
        await asyncio.gather(
            *(
                nc.request(subjects.api_policy("put"), encode(_policy(i)), timeout=10)
                for i in range(start, min(stored, start + 100))
            )
        )
    js = nc.jetstream()
    sub = await js.subscribe(
        subjects.policy(HOST),
        stream=subjects.stream_bundles(),
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        pending_msgs_limit=100_000,
    )
    status = ProbeStatus(host=HOST, time=datetime.now(UTC), interval=1.0)
    await nc.publish(subjects.status(HOST), encode(status))
    bundles, revisions = msgspec.json.Decoder(PolicyBundle), msgspec.json.Decoder(_Revision)
    while len(bundles.decode((await sub.next_msg(timeout=10)).data).policies) < stored:
        pass  # the bundle a new host gets first may predate the last of the puts above
    samples = []
    for n in range(1, PUTS + 1):
        t0 = time.perf_counter()
        reply = await nc.request(subjects.api_policy("put"), encode(_policy(n % stored, n)), timeout=10)
        revision = msgspec.json.decode(reply.data, type=Stored).revision
        while revisions.decode(data := (await sub.next_msg(timeout=10)).data).revision < revision:
            pass
        samples.append((time.perf_counter() - t0) * 1000)
    await sub.unsubscribe()
    return samples, data


async def _first_heartbeat(nc: NATS, subjects: Subjects, count: int = 50) -> list[float]:
    """Milliseconds from a new host's first heartbeat to its consumer holding its bundle."""
    revisions = msgspec.json.Decoder(_Revision)
    samples = []
    for n in range(count):
        host = f"new-{n}"
        sub = await nc.jetstream().subscribe(
            subjects.policy(host),
            stream=subjects.stream_bundles(),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        t0 = time.perf_counter()
        await nc.publish(
            subjects.status(host), encode(ProbeStatus(host=host, time=datetime.now(UTC), interval=1.0))
        )
        revisions.decode((await sub.next_msg(timeout=10)).data)
        samples.append((time.perf_counter() - t0) * 1000)
        await sub.unsubscribe()
    return samples


def _decoding(data: bytes) -> Figure:
    """What a probe then pays to read a bundle of 1,000 policies (not part of the latency above)."""
    decoder = msgspec.json.Decoder(PolicyBundle)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        decoder.decode(data)
        times.append((time.perf_counter() - t0) * 1000)
    note = f"{len(data) // 1024} KiB of JSON, median of 20"
    return Figure("policy: bundle decode, 1000 policies", statistics.median(times), "ms", "", None, note)


async def _throughput(nc: NATS, subjects: Subjects, verb: str, body: Any) -> float:
    """Requests answered per second with IN_FLIGHT requests outstanding."""
    done = 0
    deadline = time.perf_counter() + THROUGHPUT_SECONDS
    data = body(0) if callable(body) else body

    async def worker(k: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < deadline:
            payload = body(k * 1_000_000 + n) if callable(body) else data
            await nc.request(subjects.api_policy(verb), payload, timeout=10)
            done += 1
            n += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(IN_FLIGHT)))
    return done / (time.perf_counter() - start)


async def _run(url: str) -> list[Figure]:
    figures: list[Figure] = []
    nc = await nats.connect(url)
    procs: list[asyncio.subprocess.Process] = []
    try:
        for stored in STORED:
            subjects = Subjects(prefix=f"b{uuid.uuid4().hex[:8]}")
            env = {
                **os.environ,
                "PREGUARD_NATS_URL": url,
                "PREGUARD_PREFIX": subjects.prefix,
                "PREGUARD_LOG_LEVEL": "warning",
            }
            service = [sys.executable, "-m", "preguard.policy"]
            procs.append(await asyncio.create_subprocess_exec(*service, env=env, stderr=subprocess.DEVNULL))
            await _wait_for_service(nc, subjects)
            samples, last = await _latency(nc, subjects, stored)
            p50, p99 = statistics.median(samples), _percentile(samples, 0.99)
            note = f"{PUTS} puts, every policy in the bundle"
            target = f"<= {TARGET_P99_MS:.0f} ms" if stored == 1000 else ""
            figures.append(Figure(f"policy: put -> bundle p50, {stored} stored", p50, "ms", "", None, note))
            figures.append(
                Figure(
                    f"policy: put -> bundle p99, {stored} stored",
                    p99,
                    "ms",
                    target,
                    p99 <= TARGET_P99_MS if target else None,
                    note,
                )
            )
            if stored == 1000:
                figures.append(_decoding(last))
                get = encode(NameRequest(name="bench-0001"))
                for verb, body in (
                    ("get", get),
                    ("put", lambda k: encode(_policy(k % 1000, k))),
                    ("list", b"{}"),
                ):
                    rate = await _throughput(nc, subjects, verb, body)
                    figures.append(
                        Figure(
                            f"policy: API {verb} requests/s, 1000 stored",
                            rate,
                            "/s",
                            "",
                            None,
                            f"{IN_FLIGHT} in flight, one instance",
                        )
                    )
                joins = await _first_heartbeat(nc, subjects)
                figures.append(
                    Figure(
                        "policy: first heartbeat -> bundle p99, 1000 stored",
                        _percentile(joins, 0.99),
                        "ms",
                        "<= 1000 ms",
                        _percentile(joins, 0.99) <= 1000,
                        f"{len(joins)} new hosts, one after another",
                    )
                )
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()
        await nc.drain()
    return figures


def run() -> list[Figure]:
    with (
        tempfile.TemporaryDirectory(prefix="preguard-bench-policy-") as tmp,
        run_nats_server(Path(tmp)) as url,
    ):
        return asyncio.run(_run(url))
