"""Shared fixtures: a real nats-server, a real Docker engine, images built here, containers."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import nats
import pytest
from nats.aio.client import Client as NATS

from preguard.natsserver import NatsServerError, run_nats_server
from preguard.policy.service import PolicyService
from preguard.policy.store import PolicyStore
from preguard.proto import Subjects
from tests.support.images import build_image, remove_images

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(what: str, reason: str) -> None:
    """A missing dependency fails in CI and skips, with the reason, elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} is required in CI: {reason}", pytrace=False)
    pytest.skip(f"{what} not available: {reason}")


# -- NATS ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("PREGUARD_TEST_NATS_URL"):
        yield url
        return
    try:
        with run_nats_server(tmp_path_factory.mktemp("nats")) as url:
            yield url
    except NatsServerError as exc:
        need("nats-server", str(exc))


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url, max_reconnect_attempts=2, connect_timeout=2)
    yield client
    await client.drain()


@pytest.fixture
def subjects() -> Subjects:
    return Subjects(prefix=f"t{uuid.uuid4().hex[:8]}")  # tests share one server, never a subject


# -- services -------------------------------------------------------------------------------------
@pytest.fixture
async def policy_service(nc: NATS, subjects: Subjects) -> AsyncIterator[PolicyService]:
    store = await PolicyStore.open(nc.jetstream(), subjects.kv_policies())
    service = PolicyService(nc, store, subjects)
    await service.start()
    yield service
    await service.stop()


# -- Docker -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def docker_engine() -> None:
    if shutil.which("docker") is None:
        need("Docker", "no docker client on PATH")
    probe = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        need("Docker", f"`docker info` failed: {probe.stderr.strip()[:200]}")


@pytest.fixture(scope="session")
def glibc_image(docker_engine: None) -> Iterator[str]:
    tag = build_image("glibc", "preguard-test-glibc")
    yield tag
    remove_images([tag])


@pytest.fixture(scope="session")
def musl_image(docker_engine: None) -> Iterator[str]:
    if shutil.which("musl-gcc") is None:
        need("musl-gcc", "install Debian's musl-tools")
    tag = build_image("musl", "preguard-test-musl")
    yield tag
    remove_images([tag])


@pytest.fixture
async def docker(docker_engine: None) -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker()
    yield client
    await client.close()


MakeContainer = Callable[..., Awaitable[Any]]


@pytest.fixture
async def make_container(docker: aiodocker.Docker) -> AsyncIterator[MakeContainer]:
    """Start containers named preguard-test-<uuid8>; each is force-deleted after the test."""
    made: list[Any] = []

    async def make(
        image: str,
        cmd: list[str] | None = None,
        *,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        env: list[str] | None = None,
        host_config: dict[str, Any] | None = None,
    ) -> Any:
        config: dict[str, Any] = {
            "Image": image,
            "Cmd": cmd or ["/bin/sleep", "3600"],
            "Labels": labels or {},
            "Env": env or [],
            "HostConfig": {"NetworkMode": "none", **(host_config or {})},
        }
        container = await docker.containers.create(
            config, name=name or f"preguard-test-{uuid.uuid4().hex[:8]}"
        )
        made.append(container)
        await container.start()
        return container

    yield make
    for container in made:
        with contextlib.suppress(aiodocker.exceptions.DockerError):  # already gone
            await container.delete(force=True)


@pytest.fixture
def artifacts_dir() -> Path:
    path = Path(os.environ.get("PREGUARD_ARTIFACTS", Path(__file__).parent.parent / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
