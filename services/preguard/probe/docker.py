"""Container discovery: list at start, then follow the engine's event stream; resync on reconnect."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import aiodocker
import aiohttp
import structlog
from aiodocker.events import DockerEvents

from preguard.probe.selection import ContainerInfo, from_inspect

log = structlog.get_logger()

WATCHED = ["start", "restart", "die", "destroy", "rename"]
GONE = {"die", "destroy"}


class Watcher:
    """Calls on_running(info) for every running container and on_gone(id) when one stops.

    Both are idempotent in the caller, so replaying events after a reconnect (we ask the engine
    for events since just before the resync) is safe, and none between the list and the stream
    is lost.
    """

    def __init__(
        self,
        docker: aiodocker.Docker,
        on_running: Callable[[ContainerInfo], Awaitable[None]],
        on_gone: Callable[[str], Awaitable[None]],
        on_resync: Callable[[set[str]], Awaitable[None]],
        label: str = "",
    ) -> None:
        self._docker = docker
        self._label = label  # "key" or "key=value": the engine filters, we inspect no other container
        self._on_running, self._on_gone, self._on_resync = on_running, on_gone, on_resync
        self.synced = asyncio.Event()
        self.connected = False

    async def inspect(self, cid: str) -> ContainerInfo | None:
        """The container's facts, or None when it is gone or not running."""
        try:
            container = await self._docker.containers.get(cid)
        except aiodocker.exceptions.DockerError as exc:
            if exc.status == 404:
                return None
            raise
        data = container._container  # aiodocker keeps the inspect document here
        if not (data.get("State") or {}).get("Running"):
            return None
        return from_inspect(data)

    async def resync(self) -> None:
        params = {"filters": json.dumps({"label": [self._label]})} if self._label else {}
        running = await self._docker.containers.list(**params)
        ids = {c.id for c in running}
        await self._on_resync(ids)
        for cid in ids:
            await self._running(cid)

    async def run(self) -> None:
        backoff = 0.2
        while True:
            since = int(time.time()) - 1
            try:
                await self.resync()
                self.connected = True
                self.synced.set()
                backoff = 0.2
                await self._follow(since)
                log.warning("docker_events_ended")
            except (aiodocker.exceptions.DockerError, aiohttp.ClientError, OSError) as exc:
                log.warning("docker_unreachable", error=str(exc))
            self.connected = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _follow(self, since: int) -> None:
        wanted = {"type": ["container"], "event": WATCHED}
        if self._label:
            wanted["label"] = [self._label]
        filters = json.dumps(wanted)
        events = DockerEvents(self._docker)  # type: ignore[no-untyped-call]  # one stream per connection attempt
        subscriber = events.subscribe(create_task=False)  # type: ignore[no-untyped-call]
        task = asyncio.ensure_future(events.run(filters=filters, since=str(since)))
        try:
            while (event := await subscriber.get()) is not None:
                await self._handle(event)
            await task  # raises what ended the stream, if anything did
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _handle(self, event: dict[str, object]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        actor = event.get("Actor") or {}
        cid = str(event.get("id") or (actor.get("ID") if isinstance(actor, dict) else "") or "")
        if not cid:
            return
        if action in GONE:
            await self._on_gone(cid)
        else:  # start, restart, rename: (re)read the facts
            await self._running(cid)

    async def _running(self, cid: str) -> None:
        try:
            info = await self.inspect(cid)
        except aiodocker.exceptions.DockerError as exc:
            if exc.status >= 900:  # aiodocker's "cannot connect": resync from scratch, with backoff
                raise
            log.warning("container_inspect_failed", container_id=cid[:12], error=str(exc))
            return
        if info is None:
            await self._on_gone(cid)
        else:
            await self._on_running(info)
