"""A probe's credential lets it read only its own bundle: a direct get and a core subscription, no
stream consumer. A core subscription misses what is published while the connection is down, so the
probe reads the retained bundle again after every reconnect. Here the connection is cut by a proxy
while a new bundle is published."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlparse

import aiodocker
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from preguard.probe import Probe, ProbeSettings
from preguard.proto import ProbeStatus, Subjects, decode
from tests.probe.conftest import PublishBundle

pytestmark = pytest.mark.docker


class Proxy:
    """TCP between the probe and nats-server; cut() drops every connection and refuses new ones."""

    def __init__(self, target: str) -> None:
        url = urlparse(target)
        self.host, self.target_port = url.hostname or "127.0.0.1", url.port or 4222
        self.accepting = True
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.accepting = False
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        self.server.close()
        await self.server.wait_closed()


async def test_a_bundle_published_while_the_probe_was_disconnected_is_applied_after_it_reconnects(
    nats_url: str, nc: NATS, subjects: Subjects, host: str, probe_settings: ProbeSettings,
    publish_bundle: PublishBundle, docker: aiodocker.Docker,
) -> None:  # fmt: skip
    proxy = Proxy(nats_url)
    url = await proxy.start()
    down, back = asyncio.Event(), asyncio.Event()

    async def on_down() -> None:
        down.set()

    async def on_back() -> None:
        back.set()

    probe_nc = await nats.connect(
        url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        disconnected_cb=on_down,
        reconnected_cb=on_back,
    )
    await publish_bundle([], revision=1)
    settings = msgspec.structs.replace(probe_settings, status_interval=0.3)
    probe = Probe(probe_nc, docker, subjects, settings)
    await probe.start()
    status = await nc.subscribe(subjects.status(host))
    try:
        assert probe.bundle is not None and probe.bundle.revision == 1
        proxy.cut()
        await asyncio.wait_for(down.wait(), 10)
        await publish_bundle([], revision=2)  # the probe's core subscription cannot see this one
        assert probe.bundle.revision == 1
        proxy.accepting = True
        await asyncio.wait_for(back.wait(), 10)
        async with asyncio.timeout(15):  # heartbeats at revision 1 keep coming without the re-read
            while decode((await status.next_msg(timeout=10)).data, ProbeStatus).revision < 2:
                pass
        assert probe.bundle.revision == 2
    finally:
        await status.unsubscribe()
        await probe.stop()
        await probe_nc.close()
        await proxy.close()
