"""A pull consumer that keeps one long request open and hands over each message as it arrives.

nats-py's fetch(n) returns only when n messages came or its timeout passed, so a partition that
gets one event waits out the timeout; fetch(1) per message costs a request and a timer each. This
keeps a standing request for `batch` messages that expires after `expires` seconds, renewed as
soon as the server ends it (all delivered, or a 408/409 status), or when its idle heartbeats
stop (a reconnect or a server restart drops it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

_HEARTBEAT = "100"
_CONFLICT = "409"
# Bounds on what is in flight: a client that does not read fast enough (8 partitions x 256
# messages of 100 events is 120 MB) is cut off by the server as a slow consumer. A request brings
# at most REQUEST_BYTES (a bigger message would never be delivered: NATS' default max_payload is
# 1 MiB), and a new request waits until less than MAX_BYTES is queued.
MAX_BYTES = 2 << 20
HEARTBEAT = 1.0  # seconds; a request silent for two of these is taken as lost
REQUEST_BYTES = 4 << 20


class Puller:
    def __init__(self, nc: NATS, stream: str, consumer: str, batch: int, expires: float) -> None:
        self._nc, self._batch, self._expires = nc, batch, expires
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._left = 0
        self._heard = 0.0  # when the server last said anything about our request
        self._owed = False  # the request ended while we were behind: ask once the queue drains
        self._bytes = (
            0  # queued, not yet taken  # the request ended while a batch was queued: ask once it drains
        )

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        await self._ask()

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def next(self, limit: int, wait: float) -> list[Msg]:
        """What has arrived, up to `limit`; waits at most `wait` seconds for the first."""
        if self._owed and not self._behind():
            await self._ask()  # ended while we were behind: ask now that we caught up
        elif time.monotonic() - self._heard > 2 * HEARTBEAT + 0.5:
            await self._ask()  # the standing request was lost (a reconnect, a 409): ask again
        msgs: list[Msg] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                msgs.append(await self._queue.get())
        while msgs and len(msgs) < limit and not self._queue.empty():
            msgs.append(self._queue.get_nowait())
        self._bytes -= sum(len(m.data) for m in msgs)
        return msgs

    def _behind(self) -> bool:
        return self._queue.qsize() >= self._batch or self._bytes >= MAX_BYTES

    async def _ask(self) -> None:
        self._left, self._heard, self._owed = self._batch, time.monotonic(), False
        request = {
            "batch": self._batch,
            "expires": int(self._expires * 1e9),
            "max_bytes": REQUEST_BYTES,
            "idle_heartbeat": int(HEARTBEAT * 1e9),
        }
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)

    async def _ended(self) -> None:
        """The standing request is over: renew it unless a batch is already waiting (backpressure)."""
        if not self._behind():
            await self._ask()
        else:
            self._owed = True

    async def _on_msg(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        status = JetStreamContext.is_status_msg(msg)
        if status == _HEARTBEAT:
            return
        if status == _CONFLICT and "MaxBytes" not in (msg.headers or {}).get("Description", ""):
            return  # e.g. consumer deleted: asking again at once would spin; next() asks later
        if status:  # 408 expired, 409 max bytes reached: this request is over
            await self._ended()
            return
        self._queue.put_nowait(msg)
        self._bytes += len(msg.data)
        self._left -= 1
        if self._left <= 0:
            await self._ended()
