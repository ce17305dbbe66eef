"""Which instance owns which partition: leases in a KV bucket whose entries expire after lease_ttl.

Every tick an instance (1) writes `member.<instance>`, (2) renews each lease it holds with a
compare-and-set on the revision it last wrote (a failed renewal means the lease expired and may
already belong to another instance: the partition is dropped at once), (3) releases partitions
beyond its fair share ceil(partitions / live members), highest first, each only after its worker
has committed and stopped, and (4) takes free partitions, lowest first, with an atomic create.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable

import structlog
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyValueError
from nats.js.kv import KeyValue

from preguard.alert.streams import entries

log = structlog.get_logger()


class Leases:
    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        kv: KeyValue,
        instance: str,
        partitions: int,
        acquire: Callable[[int], Awaitable[None]],
        release: Callable[[int], Awaitable[None]],
    ) -> None:
        self._js, self._bucket = js, bucket
        self._kv, self.instance, self.partitions = kv, instance, partitions
        self._acquire, self._release = acquire, release
        self.held: dict[int, int] = {}  # partition -> revision of our last write

    async def tick(self) -> None:
        await self._kv.put(f"member.{self.instance}", b"")
        members = len(await entries(self._js, self._bucket, self._kv, "member.*"))
        quota = math.ceil(self.partitions / max(members, 1))
        for p, revision in list(self.held.items()):
            try:
                self.held[p] = await self._kv.update(f"part.{p}", self.instance.encode(), last=revision)
            except (
                KeyValueError,
                BadRequestError,
            ):  # expired (we were too slow) or taken: stop touching it now
                del self.held[p]
                log.warning("partition_lost", partition=p)
                await self._release(p)
        for p in sorted(self.held, reverse=True)[: max(len(self.held) - quota, 0)]:
            await self._release(p)
            revision = self.held.pop(p)
            with contextlib.suppress(KeyValueError, BadRequestError):  # already expired: nothing to hand over
                await self._kv.delete(f"part.{p}", last=revision)
            log.info("partition_released", partition=p, members=members)
        for p in range(self.partitions):
            if len(self.held) >= quota:
                break
            if p in self.held:
                continue
            try:
                self.held[p] = await self._kv.create(f"part.{p}", self.instance.encode())
            except (KeyValueError, BadRequestError):
                continue  # someone else's
            log.info("partition_acquired", partition=p, members=members)
            await self._acquire(p)

    async def leave(self) -> None:
        """Hand every partition back at once (the caller has stopped the workers)."""
        for p, revision in list(self.held.items()):
            with contextlib.suppress(KeyValueError, BadRequestError):
                await self._kv.delete(f"part.{p}", last=revision)
        self.held.clear()
        with contextlib.suppress(KeyValueError, BadRequestError):
            await self._kv.delete(f"member.{self.instance}")
