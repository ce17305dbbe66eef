"""The engine going away and coming back: the probe reconnects, resyncs, and catches what it missed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from nats.aio.client import Client as NATS

from preguard.probe import Probe, ProbeSettings
from preguard.proto import Policy, ProcessRule, Selector, Subjects
from tests.probe.conftest import SCOPE_LABEL, PublishBundle, eventually, pid_of

pytestmark = pytest.mark.docker


class EngineProxy:
    """A unix socket in front of the real engine's, that can be cut and restored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def down(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._conns):
            writer.close()
        await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection("/var/run/docker.sock")
        self._conns |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[EngineProxy]:
    p = EngineProxy(tmp_path / "docker.sock")
    await p.up()
    yield p
    with contextlib.suppress(Exception):
        await p.down()


async def test_a_container_started_while_the_engine_was_unreachable_is_guarded_after_reconnect(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    probe_settings: ProbeSettings,
    publish_bundle: PublishBundle,
    proxy: EngineProxy,
) -> None:
    policy = Policy(name="p", selector=Selector(labels={SCOPE_LABEL: scope}), rules=[ProcessRule(name="nc")])
    await publish_bundle([policy], revision=1)
    via_proxy = aiodocker.Docker(url=f"unix://{proxy.path}")
    probe = Probe(nc, via_proxy, subjects, probe_settings)
    await probe.start()
    try:
        assert probe.docker_connected
        await proxy.down()  # the probe's event stream breaks; it retries
        await eventually(lambda: not probe.docker_connected)
        c = await container(glibc_image)  # started while the probe cannot see the engine
        root = Path(f"/proc/{pid_of(await c.show())}/root")
        assert not (root / ".preguard").exists()
        await proxy.up()
        await eventually(lambda: (root / "etc/ld.so.preload").exists(), within=10)
    finally:
        await probe.stop()
        await via_proxy.close()
