"""Probe benchmarks: policy propagation to 20 containers, event throughput, write-to-subscriber latency.

The probe runs as its own process (`python -m preguard.probe`), as in production, against a
nats-server started here and the local Docker engine; containers come from the test images.
Records are written into the containers' pipes from this process exactly as the library writes
them (one atomic write each); propagation uses the real library inside the containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import nats

from bench import Figure
from preguard.natsserver import run_nats_server
from preguard.probe.streams import ensure_streams
from preguard.proto import (
    FileRule,
    Kind,
    Outcome,
    Policy,
    PolicyBundle,
    Selector,
    Subjects,
    decode_events,
    encode,
)
from preguard.proto.abi import Record, encode_record
from tests.support.images import build_image, remove_images

LABEL = "preguard.bench"
LIBDL = "/usr/lib/x86_64-linux-gnu/libdl.so.2"
OPENER = r"""
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {  /* open argv[1] every millisecond until it is denied */
    for (;;) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) { puts("denied"); return 0; }
        close(fd);
        usleep(1000);
    }
}
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@contextlib.contextmanager
def probe_process(url: str, prefix: str, host: str, scope: str, **extra: str) -> Iterator[None]:
    env = {
        **os.environ,
        "PREGUARD_NATS_URL": url,
        "PREGUARD_PREFIX": prefix,
        "PREGUARD_HOST": host,
        "PREGUARD_SCOPE": f"{LABEL}={scope}",
        "PREGUARD_KEEPER": "off",
        **extra,
    }
    log = open(os.environ.get("PREGUARD_BENCH_PROBE_LOG", os.devnull), "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "preguard.probe"], env=env, stderr=log, start_new_session=True
    )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@contextlib.asynccontextmanager
async def containers(
    docker: aiodocker.Docker, image: str, scope: str, n: int, cmd: list[str]
) -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    try:
        for _ in range(n):
            c = await docker.containers.create(
                {"Image": image, "Cmd": cmd, "Labels": {LABEL: scope}, "HostConfig": {"NetworkMode": "none"}},
                name=f"preguard-bench-{uuid.uuid4().hex[:8]}",
            )
            made.append(c)
            await c.start()
        yield made
    finally:
        for c in made:
            with contextlib.suppress(aiodocker.exceptions.DockerError):
                await c.delete(force=True)


async def wait_injected(docker_containers: list[Any], within: float = 20.0) -> list[Path]:
    roots = []
    for c in docker_containers:
        roots.append(Path(f"/proc/{(await c.show())['State']['Pid']}/root"))
    deadline = time.monotonic() + within
    while not all((r / ".preguard/events").exists() and (r / "etc/ld.so.preload").exists() for r in roots):
        if time.monotonic() > deadline:
            raise RuntimeError("the probe did not inject every container")
        await asyncio.sleep(0.05)
    return roots


def record(target: str) -> bytes:
    return encode_record(
        Record(
            version=1,
            time_ns=time.time_ns(),
            pid=1,
            uid=0,
            kind=Kind.FILE,
            action=Outcome.BLOCKED,
            access="read",
            rule_id=0,
            revision=1,
            exe="/usr/bin/bench",
            target=target,
            truncated=False,
        )
    )


def policy(scope: str, path: str = "/etc/shadow") -> Policy:
    return Policy(name="bench", selector=Selector(labels={LABEL: scope}), rules=[FileRule(path=path)])


async def publish_bundle(
    nc: Any, subjects: Subjects, host: str, policies: list[Policy], revision: int
) -> int:
    now = time.time_ns()
    await nc.jetstream().publish(
        subjects.policy(host), encode(PolicyBundle(host=host, revision=revision, policies=policies))
    )
    return now


async def throughput(
    url: str, docker: aiodocker.Docker, image: str, n_containers: int = 4, total: int = 200_000
) -> list[Figure]:
    """Writers push records as fast as the pipes take them (blocking writes); the subscriber counts."""
    subjects, host, scope = Subjects(prefix=f"b{uuid.uuid4().hex[:8]}"), "bench", uuid.uuid4().hex[:8]
    nc = await nats.connect(url)
    await ensure_streams(nc.jetstream(), subjects)
    await publish_bundle(nc, subjects, host, [policy(scope)], 1)
    figures: list[Figure] = []
    per = total // n_containers // 64 * 64
    total = per * n_containers
    with probe_process(
        url, subjects.prefix, host, scope, PREGUARD_EVENT_RATE="1e9", PREGUARD_EVENT_BURST="1e9"
    ):
        async with containers(docker, image, scope, n_containers, ["/bin/sleep", "3600"]) as made:
            roots = await wait_injected(made)
            got = 0
            done = asyncio.Event()
            first_last: list[float] = []

            async def on_msg(msg: Any) -> None:
                nonlocal got
                got += len(decode_events(msg.data))
                if not first_last:
                    first_last.append(time.monotonic())
                if got >= total:
                    first_last.append(time.monotonic())
                    done.set()

            await nc.subscribe(subjects.events_all(), cb=on_msg)
            await nc.flush()
            blob = record("/etc/shadow") * 64

            def writer(root: Path) -> None:
                fd = os.open(root / ".preguard/events", os.O_WRONLY)  # blocking: the pipe paces us
                try:
                    for _ in range(per // 64):
                        os.write(fd, blob)
                finally:
                    os.close(fd)

            start = time.monotonic()
            threads = [threading.Thread(target=writer, args=(r,)) for r in roots]
            for t in threads:
                t.start()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    await done.wait()
            elapsed = (first_last[-1] if len(first_last) == 2 else time.monotonic()) - start
            for t in threads:
                t.join()
            rate = got / elapsed
            figures.append(
                Figure(
                    name=f"probe: events/s pipes->NATS ({n_containers} containers)",
                    value=rate,
                    unit="/s",
                    target=">= 50000, no loss",
                    ok=rate >= 50_000 and got >= total,
                    note=f"{got}/{total} received",
                )
            )
    await nc.drain()
    return figures


async def latency(
    url: str, docker: aiodocker.Docker, image: str, rate: int = 1000, seconds: float = 5.0
) -> list[Figure]:
    subjects, host, scope = Subjects(prefix=f"b{uuid.uuid4().hex[:8]}"), "bench", uuid.uuid4().hex[:8]
    nc = await nats.connect(url)
    await ensure_streams(nc.jetstream(), subjects)
    await publish_bundle(nc, subjects, host, [policy(scope)], 1)
    delays: list[float] = []
    with probe_process(url, subjects.prefix, host, scope):
        async with containers(docker, image, scope, 1, ["/bin/sleep", "3600"]) as made:
            (root,) = await wait_injected(made)

            count = int(rate * seconds)
            all_in = asyncio.Event()

            async def on_msg(msg: Any) -> None:
                now = time.time_ns()
                delays.extend((now - e.time_ns) / 1e6 for e in decode_events(msg.data))
                if len(delays) >= count:
                    all_in.set()

            await nc.subscribe(subjects.events_all(), cb=on_msg)
            await nc.flush()

            def writer() -> None:
                fd = os.open(root / ".preguard/events", os.O_WRONLY)
                try:
                    start = time.monotonic()
                    for i in range(count):
                        os.write(fd, record("/etc/shadow"))
                        pause = start + (i + 1) / rate - time.monotonic()
                        if pause > 0:
                            time.sleep(pause)
                finally:
                    os.close(fd)

            await asyncio.to_thread(writer)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await all_in.wait()
    await nc.drain()
    p50, p99 = statistics.median(delays), pct(delays, 99)
    note = f"{len(delays)}/{count} received"
    return [
        Figure(
            name=f"probe: write->subscriber p50 at {rate}/s",
            value=p50,
            unit="ms",
            target="-",
            ok=None,
            note=note,
        ),
        Figure(
            name=f"probe: write->subscriber p99 at {rate}/s",
            value=p99,
            unit="ms",
            target="<= 20",
            ok=p99 <= 20,
            note=note,
        ),
    ]


async def propagation(url: str, docker: aiodocker.Docker, image: str, n: int = 20) -> list[Figure]:
    """From publishing a bundle to the first denied open in each of n running containers."""
    subjects, host, scope = Subjects(prefix=f"b{uuid.uuid4().hex[:8]}"), "bench", uuid.uuid4().hex[:8]
    nc = await nats.connect(url)
    await ensure_streams(nc.jetstream(), subjects)
    await publish_bundle(nc, subjects, host, [policy(scope, "/etc/shadow")], 1)
    first: dict[str, int] = {}
    with probe_process(url, subjects.prefix, host, scope):
        async with containers(docker, image, scope, n, ["/bin/sleep", "3600"]) as made:
            await wait_injected(made)
            for c in made:  # started after injection, so they run with the library
                execution = await c.exec(["/usr/bin/opener", "/etc/hostname"])
                await execution.start(detach=True)
            await asyncio.sleep(1.0)  # every opener is polling under the first rules

            everyone = asyncio.Event()

            async def on_msg(msg: Any) -> None:
                for e in decode_events(msg.data):
                    if e.target == "/etc/hostname":
                        first.setdefault(e.container_id, e.time_ns)
                if len(first) >= n:
                    everyone.set()

            await nc.subscribe(subjects.events_all(), cb=on_msg)
            await nc.flush()
            published = await publish_bundle(nc, subjects, host, [policy(scope, "/etc/hostname")], 2)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await everyone.wait()
    await nc.drain()
    delays = [(t - published) / 1e6 for t in first.values()]
    if not delays:
        return [
            Figure(
                name=f"probe: propagation to {n} containers",
                value=float("nan"),
                unit="ms",
                target="<= 250",
                ok=False,
                note="no denied call seen",
            )
        ]
    note = f"{len(delays)}/{n} containers"
    p99 = pct(delays, 99)
    return [
        Figure(
            name=f"probe: propagation to {n} containers p50",
            value=statistics.median(delays),
            unit="ms",
            target="-",
            ok=None,
            note=note,
        ),
        Figure(
            name=f"probe: propagation to {n} containers p99",
            value=p99,
            unit="ms",
            target="<= 250",
            ok=p99 <= 250 and len(delays) == n,
            note=note,
        ),
    ]


def _wait_file(path: Path, deadline: float) -> None:
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.002)


async def start_to_guarded(url: str, docker: aiodocker.Docker, image: str, n: int = 10) -> list[Figure]:
    """From the engine's start call returning to the preload line in the container, one at a time."""
    subjects, host, scope = Subjects(prefix=f"b{uuid.uuid4().hex[:8]}"), "bench", uuid.uuid4().hex[:8]
    nc = await nats.connect(url)
    await ensure_streams(nc.jetstream(), subjects)
    await publish_bundle(nc, subjects, host, [policy(scope)], 1)
    delays: list[float] = []
    with probe_process(url, subjects.prefix, host, scope):
        async with containers(docker, image, scope, 1, ["/bin/sleep", "3600"]) as warm:
            await wait_injected(warm)  # the probe is up and following events
            made: list[Any] = []
            try:
                for _ in range(n):
                    c = await docker.containers.create(
                        {"Image": image, "Cmd": ["/bin/sleep", "3600"], "Labels": {LABEL: scope},
                         "HostConfig": {"NetworkMode": "none"}},
                        name=f"preguard-bench-{uuid.uuid4().hex[:8]}",
                    )  # fmt: skip
                    made.append(c)
                    await c.start()
                    started = time.monotonic()
                    preload = Path(f"/proc/{(await c.show())['State']['Pid']}/root/etc/ld.so.preload")
                    await asyncio.to_thread(_wait_file, preload, started + 10)
                    delays.append((time.monotonic() - started) * 1000)
            finally:
                for c in made:
                    with contextlib.suppress(aiodocker.exceptions.DockerError):
                        await c.delete(force=True)
    await nc.drain()
    p99 = pct(delays, 99)
    return [
        Figure(name="probe: container start -> guarded p50", value=statistics.median(delays), unit="ms", target="-", ok=None),
        Figure(name="probe: container start -> guarded p99", value=p99, unit="ms", target="<= 1000", ok=p99 <= 1000, note=f"{n} containers"),
    ]  # fmt: skip


def _image() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "opener.c")
        src.write_text(OPENER)
        subprocess.run(["gcc", "-O2", "-o", str(Path(tmp, "opener")), str(src)], check=True)
        extra = {"/usr/bin/opener": str(Path(tmp, "opener")), LIBDL: LIBDL}  # the library links libdl
        return build_image("glibc", "preguard-bench-glibc", extra=extra)


async def _run(url: str, image: str) -> list[Figure]:
    docker = aiodocker.Docker()
    try:
        figures = await propagation(url, docker, image)
        figures += await start_to_guarded(url, docker, image)
        figures += await throughput(url, docker, image)
        figures += await latency(url, docker, image)
    finally:
        await docker.close()
    return figures


def run() -> list[Figure]:
    image = _image()
    try:
        with tempfile.TemporaryDirectory() as store, run_nats_server(Path(store)) as url:
            return asyncio.run(_run(url, image))
    finally:
        remove_images([image])
