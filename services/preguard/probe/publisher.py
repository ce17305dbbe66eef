"""Events to NATS: batched per container, held in a bounded buffer while NATS is unreachable."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from preguard.proto import Event, encode

log = structlog.get_logger()


class Publisher:
    """submit() never blocks and never raises: what does not fit is counted by `on_drop`."""

    def __init__(
        self,
        nc: NATS,
        *,
        capacity: int,
        batch: int,
        on_drop: Callable[[str, int], None],
    ) -> None:
        self._nc = nc
        self._capacity, self._batch = capacity, batch
        self._on_drop = on_drop  # (container key, count)
        self._queue: deque[tuple[str, str, list[Event]]] = deque()  # (key, subject, events)
        self._held = 0
        self._held_by: dict[str, int] = {}
        self._wake = asyncio.Event()
        self.published = 0

    @property
    def held(self) -> int:
        return self._held

    def submit(self, key: str, subject: str, events: list[Event]) -> None:
        # one container may fill a quarter of the buffer, so a flood leaves room for the others
        mine = self._held_by.get(key, 0)
        room = min(self._capacity - self._held, max(self._capacity // 4, 1) - mine)
        if room < len(events):
            self._on_drop(key, len(events) - max(room, 0))
            events = events[: max(room, 0)]
        if not events:
            return
        for i in range(0, len(events), self._batch):
            chunk = events[i : i + self._batch]
            self._queue.append((key, subject, chunk))
        self._held += len(events)
        self._held_by[key] = mine + len(events)
        self._wake.set()

    def _payloads(self, events: list[Event]) -> list[bytes]:
        """JSON messages under the server's max_payload (records can be 4 KiB each)."""
        payload = encode(events[0] if len(events) == 1 else events)
        if len(payload) <= self._nc.max_payload or len(events) == 1:
            return [payload]  # a single event always fits: 4 KiB of record, escaped, is far below
        half = len(events) // 2
        return self._payloads(events[:half]) + self._payloads(events[half:])

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                if not self._nc.is_connected:
                    await asyncio.sleep(0.05)  # the client reconnects on its own; we hold meanwhile
                    continue
                key, subject, events = self._queue[0]
                try:
                    for payload in self._payloads(events):
                        await self._nc.publish(subject, payload)
                except NatsError as exc:  # disconnected between the check and the write
                    log.warning("event_publish_failed", subject=subject, error=str(exc))
                    await asyncio.sleep(0.05)
                    continue
                self._queue.popleft()
                self._held -= len(events)
                left = self._held_by.get(key, 0) - len(events)
                if left > 0:
                    self._held_by[key] = left
                else:
                    self._held_by.pop(key, None)
                self.published += len(events)

    async def flush(self, within: float) -> None:
        """Publish what is held (on stop), as far as the time allows."""
        async with asyncio.timeout(within):
            while self._queue and self._nc.is_connected:
                self._wake.set()
                await asyncio.sleep(0.01)
            if self._nc.is_connected:
                await self._nc.flush()
