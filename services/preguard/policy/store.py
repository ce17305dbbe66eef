"""Policies in a JetStream KV bucket: compare-and-set writes, history, and a followed in-memory view.

The bucket's stream sequence is the global revision: every put or delete of any policy takes the
next one, it survives restarts with the store, and concurrent writers (several service instances)
are ordered by the server. A write names the sequence it read (`Nats-Expected-Last-Subject-
Sequence`), so a writer that lost a race re-reads and retries instead of overwriting silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js import errors as js_errors
from nats.js.api import Header
from nats.js.kv import KeyValue

from preguard.proto import Policy, decode_policy, encode
from preguard.proto.api import PolicyRevision

log = structlog.get_logger()

HISTORY = 64  # JetStream's maximum history per KV key
NOTIFY_EVERY = 0.05  # seconds: the longest a backlog of changes holds back the bundles
WRITE_ATTEMPTS = 32  # compare-and-set retries before a write gives up under contention
_KV_OP = "KV-Operation"
_DELETED = ("DEL", "PURGE")
_stored = msgspec.json.Decoder(PolicyRevision)


class NotFound(LookupError):
    pass


class Conflict(Exception):
    """The caller's expected revision is not the policy's current one."""

    def __init__(self, name: str, current: int, expected: int) -> None:
        self.current, self.expected = current, expected
        super().__init__(f"policy {name} is at revision {current}, not {expected}")


class Busy(Exception):
    """Compare-and-set lost too many races in a row."""


class PolicyStore:
    """One bucket: writes go straight to it; reads of the whole set come from a followed view."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, bucket: str) -> None:
        self._js, self._kv, self._bucket = js, kv, bucket
        self._stream = f"KV_{bucket}"
        self._view = _View()
        self.revision = 0  # global revision the view reflects
        self._loaded = asyncio.Event()
        self._advanced = asyncio.Condition()
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, *, replicas: int = 1) -> PolicyStore:
        """Bind to the bucket, creating it when missing (idempotent: same config, same bucket)."""
        try:
            kv = await js.key_value(bucket)
        except js_errors.BucketNotFoundError:
            kv = await js.create_key_value(bucket=bucket, history=HISTORY, replicas=replicas)
        if (kept := (await kv.status()).history) < HISTORY:  # made by someone else: say what it costs
            log.warning("policy_bucket_history_short", bucket=bucket, history=kept)
        return cls(js, kv, bucket)

    # -- the view -------------------------------------------------------------------------------
    def policies(self) -> dict[str, Policy]:
        """Live policies by name at `revision` (a fresh dict: callers may keep it)."""
        return {name: r.policy for name, r in self._view.current.items() if r.policy is not None}

    def current(self, name: str) -> PolicyRevision | None:
        return self._view.current.get(name)

    def encoded(self, policy: Policy) -> msgspec.Raw:
        """The policy's JSON, encoded once while it stays the current version (bundles, list)."""
        hit = self._view.json.get(policy.name)
        if hit is not None and hit[0] is policy:
            return hit[1]
        raw = msgspec.Raw(encode(policy))
        current = self._view.current.get(policy.name)
        if current is not None and current.policy is policy:  # an older snapshot's is not kept
            self._view.json[policy.name] = (policy, raw)
        return raw

    def size(self, name: str) -> int:
        """The live policy's stored record size, an upper bound on its encoded size; 0 if none."""
        return self._view.sizes.get(name, 0)

    @property
    def total_bytes(self) -> int:
        return self._view.total

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    async def sync(self, within: float = 5.0) -> None:
        """Wait until the view holds every write the server has acknowledged so far.

        Another instance may have taken the write: reading the stream's last sequence first gives
        read-your-writes across instances.
        """
        info = await self._js.stream_info(self._stream)
        last = info.state.last_seq
        try:
            async with asyncio.timeout(within), self._advanced:
                await self._advanced.wait_for(lambda: self.loaded and self.revision >= last)
        except TimeoutError:
            # Slow, not necessarily stuck (a busy machine): the watch finds a lost consumer itself.
            log.warning("policy_view_behind", revision=self.revision, last=last)
            raise

    async def follow(self, on_change: Callable[[], None]) -> None:
        """Keep the view current, forever; on_change runs after every change once loaded."""
        while True:
            stop_if_cancelled()
            try:
                await self._follow(on_change)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("policy_watch_failed", error=repr(exc))
                await asyncio.sleep(0.5)

    async def _follow(self, on_change: Callable[[], None]) -> None:
        # The load ends with the stream's last message, which is always among the last-per-key
        # ones delivered first. The watcher's own end-of-load marker alone is not enough: it can
        # come before messages still on their way to the client.
        target = (await self._js.stream_info(self._stream)).state.last_seq
        watcher = await self._kv.watchall()
        fresh: _View | None = _View()  # the initial load, swapped in whole once complete
        revision, marked, told, owed = 0, False, 0.0, False
        try:
            while True:
                stop_if_cancelled()
                if fresh is not None and marked and revision >= target:
                    self._view, fresh = fresh, None
                    await self._advance(revision)
                    self._loaded.set()
                    on_change()
                try:
                    entry = await watcher.updates(timeout=NOTIFY_EVERY if owed else 2.0)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    if owed:  # the backlog the server announced did not come: tell what we have
                        told, owed = time.monotonic(), False
                        on_change()
                    elif fresh is not None and marked:  # the last message is gone (deleted by hand)
                        log.warning("policy_load_short", revision=revision, target=target)
                        target = revision
                    elif (await self._js.stream_info(self._stream)).state.last_seq > self.revision:
                        log.warning("policy_watch_restarted", revision=self.revision)
                        return  # quiet but behind: the consumer was lost (server restart)
                    continue
                if entry is None:
                    marked = True
                    continue
                seq = entry.revision or 0
                if seq <= revision:
                    continue  # a redelivery after the consumer reset itself
                revision = seq
                value = entry.value or b""
                stored = None if entry.operation in _DELETED else _decode(entry.key, value, seq)
                (self._view if fresh is None else fresh).apply(entry.key, stored, len(value))
                if fresh is None:
                    await self._advance(seq)
                    # Coalesce a backlog: tell the publisher once caught up (or every NOTIFY_EVERY
                    # under a steady stream of writes), not once per change, which had it publish
                    # every intermediate revision while the watch fell further behind.
                    owed = True
                    if not entry.delta or time.monotonic() - told >= NOTIFY_EVERY:
                        told, owed = time.monotonic(), False
                        on_change()
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone: nothing to tidy then
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _advance(self, revision: int) -> None:
        async with self._advanced:
            self.revision = max(self.revision, revision)
            self._advanced.notify_all()

    # -- reads and writes against the bucket ----------------------------------------------------
    async def get(self, name: str) -> PolicyRevision:
        _, stored, deleted = await self._latest(name)
        if stored is None or deleted or stored.policy is None:
            raise NotFound(name)
        return stored

    async def history(self, name: str) -> list[PolicyRevision]:
        """Every change the bucket still keeps, oldest first, read message by message.

        (KeyValue.history() uses a watcher that can report "no keys" while the messages are still
        on their way to the client; reading the stream directly has no such race.)
        """
        subject, out, seq = f"$KV.{self._bucket}.{name}", [], 1
        while True:
            try:
                msg = await self._js.get_msg(self._stream, seq=seq, subject=subject, next=True)
            except js_errors.NotFoundError:
                break
            seq = (msg.seq or seq) + 1
            stored = _decode(name, msg.data or b"", msg.seq or 0)
            if (msg.headers or {}).get(_KV_OP) in _DELETED:
                base = stored or PolicyRevision(name=name, revision=0, version=0, time=msg.time or _now())
                stored = msgspec.structs.replace(base, revision=msg.seq or 0, deleted=True, policy=None)
            if stored is not None:
                out.append(stored)
        if not out:
            raise NotFound(name)
        return out

    async def put(self, policy: Policy, client: str, expected: int | None = None) -> PolicyRevision:
        return await self._write(policy.name, policy, client, expected)

    async def delete(self, name: str, client: str, expected: int | None = None) -> PolicyRevision:
        return await self._write(name, None, client, expected)

    async def _write(
        self, name: str, policy: Policy | None, client: str, expected: int | None
    ) -> PolicyRevision:
        # Writers in this process queue up per name; only other instances race the compare-and-set.
        lock = self._locks.setdefault(name, asyncio.Lock())
        try:
            async with lock:
                return await self._compare_and_set(name, policy, client, expected)
        finally:
            if not lock.locked() and self._locks.get(name) is lock:
                del self._locks[name]

    async def _compare_and_set(
        self, name: str, policy: Policy | None, client: str, expected: int | None
    ) -> PolicyRevision:
        for attempt in range(WRITE_ATTEMPTS):
            seq, stored, deleted = await self._latest(name)
            live = stored is not None and not deleted
            if policy is None and not live:
                raise NotFound(name)
            if expected is not None and (seq if live else 0) != expected:
                raise Conflict(name, seq if live else 0, expected)
            if live and policy is not None and stored is not None and stored.policy == policy:
                return stored  # unchanged: no new revision, no bundle churn; applying twice is a no-op
            change = PolicyRevision(
                name=name,
                revision=0,  # the stream sequence, known once written
                version=(stored.version if stored else 0) + 1,
                time=_now(),
                client=client,
                deleted=policy is None,
                policy=policy,
            )
            headers = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(seq)}
            if policy is None:
                headers[_KV_OP] = "DEL"  # a KV delete marker that still says who and when
            try:
                ack = await self._js.publish(
                    f"$KV.{self._bucket}.{name}", encode(change), stream=self._stream, headers=headers
                )
            except js_errors.APIError as exc:
                if exc.err_code in (10071, 10164):  # wrong last sequence: someone wrote first
                    await asyncio.sleep(random.uniform(0, 0.001 * attempt))  # let the winner's writes pass
                    continue
                raise
            return msgspec.structs.replace(change, revision=ack.seq)
        raise Busy(f"policy {name}: {WRITE_ATTEMPTS} concurrent writes in a row won the race")

    async def _latest(self, name: str) -> tuple[int, PolicyRevision | None, bool]:
        """(sequence, stored change, deleted) of the key's last message; (0, None, False) if none."""
        try:
            msg = await self._js.get_last_msg(self._stream, f"$KV.{self._bucket}.{name}")
        except js_errors.NotFoundError:
            return 0, None, False
        seq = msg.seq or 0
        deleted = (msg.headers or {}).get(_KV_OP) in _DELETED
        return seq, _decode(name, msg.data or b"", seq), deleted


def stop_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop.

    On Python 3.11, asyncio.wait_for (nats-py uses it everywhere) returns its result and drops a
    cancellation that arrives just as the result does; a loop would then run on, uncancellable.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _View:
    """Live policies by name, with their stored record sizes and the sum of those."""

    def __init__(self) -> None:
        self.current: dict[str, PolicyRevision] = {}
        self.sizes: dict[str, int] = {}
        self.total = 0
        self.json: dict[str, tuple[Policy, msgspec.Raw]] = {}  # encoded lazily, by policy object

    def apply(self, name: str, stored: PolicyRevision | None, size: int) -> None:
        self.current.pop(name, None)
        self.json.pop(name, None)
        self.total -= self.sizes.pop(name, 0)
        if stored is not None and stored.policy is not None:
            self.current[name], self.sizes[name] = stored, size
            self.total += size


def _decode(name: str, data: bytes, seq: int) -> PolicyRevision | None:
    """Our own record, or a bare policy someone put with `nats kv put`; None for anything else."""
    if not data:
        return None
    try:
        return msgspec.structs.replace(_stored.decode(data), revision=seq)
    except msgspec.DecodeError:
        pass
    try:
        policy = decode_policy(data)
    except ValueError:
        log.warning("policy_record_unreadable", policy=name, revision=seq)
        return None
    return PolicyRevision(name=name, revision=seq, version=0, time=_now(), client="unknown", policy=policy)


def _now() -> datetime:
    return datetime.now(UTC)
