"""Probe fixtures: a probe confined to this test's containers (by label), bundles, exec helpers."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiodocker
import msgspec
import pytest
from nats.aio.client import Client as NATS

from preguard.probe import Probe, ProbeSettings
from preguard.probe.streams import ensure_streams
from preguard.proto import Policy, PolicyBundle, Subjects, encode
from tests.conftest import MakeContainer, need
from tests.support.images import build_image, remove_images

SCOPE_LABEL = "preguard.test"
LIBDL = "/usr/lib/x86_64-linux-gnu/libdl.so.2"


@pytest.fixture(scope="session")
def musl_image(docker_engine: None) -> Iterator[str]:
    """Our own tag: a concurrent session's teardown of the shared tag cannot remove it under us."""
    if shutil.which("musl-gcc") is None:
        need("musl-gcc", "install Debian's musl-tools")
    tag = build_image("musl", "preguard-test-probe-musl")
    yield tag
    remove_images([tag])


@pytest.fixture(scope="session")
def glibc_image(docker_engine: None) -> Iterator[str]:
    """The shared glibc image plus libdl.so.2, which the library's glibc build links (for glibc
    before 2.34, where dladdr lives there); the probe refuses images that lack it."""
    tag = build_image("glibc", "preguard-test-probe-glibc", extra={LIBDL: LIBDL})
    yield tag
    remove_images([tag])


@pytest.fixture
def scope() -> str:
    """Every container of a test carries this label; the probe of the test sees no other."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def host() -> str:
    return f"h{uuid.uuid4().hex[:8]}"


@pytest.fixture
def probe_settings(host: str, scope: str) -> ProbeSettings:
    return ProbeSettings(
        host=host,
        scope=f"{SCOPE_LABEL}={scope}",
        status_interval=0.5,
        tamper_interval=0.2,
        keeper="off",  # a test that wants one names its own socket
    )


StartProbe = Callable[..., Awaitable[Probe]]


@pytest.fixture
async def start_probe(
    nc: NATS, docker: aiodocker.Docker, subjects: Subjects, probe_settings: ProbeSettings
) -> AsyncIterator[StartProbe]:
    started: list[Probe] = []

    async def start(**overrides: Any) -> Probe:
        settings = msgspec.structs.replace(probe_settings, **overrides)
        probe = Probe(nc, docker, subjects, settings)
        await probe.start()
        started.append(probe)
        return probe

    yield start
    for probe in started:
        await probe.stop()


@pytest.fixture
def container(make_container: MakeContainer, scope: str) -> Callable[..., Awaitable[Any]]:
    """make_container with the test's scope label added."""

    async def make(image: str, cmd: list[str] | None = None, **kw: Any) -> Any:
        labels = {SCOPE_LABEL: scope, **kw.pop("labels", {})}
        return await make_container(image, cmd, labels=labels, **kw)

    return make


PublishBundle = Callable[..., Awaitable[PolicyBundle]]


@pytest.fixture
def publish_bundle(nc: NATS, subjects: Subjects, host: str) -> PublishBundle:
    async def publish(policies: list[Policy], revision: int) -> PolicyBundle:
        js = nc.jetstream()
        await ensure_streams(js, subjects)
        bundle = PolicyBundle(host=host, revision=revision, policies=policies)
        await js.publish(subjects.policy(host), encode(bundle))
        return bundle

    return publish


async def run_in(container: Any, *cmd: str, user: str = "") -> tuple[int, str]:
    """Run a command in the container (docker exec); its exit code and output."""
    execution = await container.exec(list(cmd), stdout=True, stderr=True, user=user)
    out: list[bytes] = []
    async with execution.start(detach=False) as stream:
        while (msg := await stream.read_out()) is not None:
            out.append(msg.data)
    for _ in range(100):
        info = await execution.inspect()
        if not info["Running"]:
            return int(info["ExitCode"]), b"".join(out).decode(errors="replace")
        await asyncio.sleep(0.02)
    raise AssertionError(f"{cmd} did not finish")


async def eventually(check: Callable[[], Any], within: float = 10.0) -> Any:
    """Poll-with-deadline for state outside the bus (files in containers, Docker)."""
    deadline = time.monotonic() + within
    while True:
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within}s: {check}")
        await asyncio.sleep(0.05)


def pid_of(info: dict[str, Any]) -> int:
    return int(info["State"]["Pid"])


def exe_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


async def sleeping(c: Any) -> None:
    """Until the container's init has exec'd sleep (Docker's start returns before that)."""
    pid = pid_of(await c.show())
    await eventually(lambda: exe_of(pid) == "/usr/bin/sleep")
