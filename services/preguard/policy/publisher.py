"""Each known host's PolicyBundle, retained in a stream (last per subject), published in revision order.

Ordering holds across instances: a bundle goes out only when its revision is above the retained
one, and names the retained message's sequence (`Nats-Expected-Last-Subject-Sequence`), so a
bundle computed from an older view than one another instance already published is never written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import cast

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import errors as js_errors
from nats.js.api import Header, StorageType, StreamConfig

from preguard.policy.bundles import bundle
from preguard.policy.store import PolicyStore, stop_if_cancelled
from preguard.proto import Policy, PolicyBundle, Subjects, encode

log = structlog.get_logger()

BATCH = 16  # hosts published at once
_ENVELOPE = 1024  # room for the bundle's own fields and headers under max_payload
_bundle = msgspec.json.Decoder(PolicyBundle)


class _Retained(msgspec.Struct, frozen=True):
    seq: int  # stream sequence of the host's retained bundle; 0: none yet
    revision: int  # its revision; -1: none yet


_NONE = _Retained(0, -1)


async def ensure_bundle_stream(nc: NATS, subjects: Subjects) -> None:
    """Create the bundles stream if missing; the probe does the same, so an existing one is fine."""
    js = nc.jetstream()
    config = StreamConfig(
        name=subjects.stream_bundles(),
        subjects=[subjects.policy_all()],
        max_msgs_per_subject=1,
        storage=StorageType.FILE,
        allow_direct=True,  # probes read their own bundle by a direct get (docs/security.md)
    )
    try:
        await js.add_stream(config)
    except js_errors.BadRequestError:  # exists with another config (another writer's defaults)
        info = await js.stream_info(config.name or "")
        if subjects.policy_all() not in (info.config.subjects or []):
            raise
        log.info(
            "bundle_stream_reused", stream=config.name, max_msgs_per_subject=info.config.max_msgs_per_subject
        )


class Publisher:
    """Known hosts, and the loop that brings each one's retained bundle up to the store's revision."""

    def __init__(self, nc: NATS, store: PolicyStore, subjects: Subjects) -> None:
        self._nc, self._js, self._store, self._subjects = nc, nc.jetstream(), store, subjects
        self._stream = subjects.stream_bundles()
        self._retained: dict[str, _Retained | None] = {}  # by host; None: not read yet
        self._dirty: set[str] = set()
        self._new: dict[str, None] = {}  # hosts seen for the first time go first, in arrival order
        self._wake = asyncio.Event()

    @property
    def hosts(self) -> list[str]:
        return sorted(self._retained)

    def learn(self, host: str) -> None:
        """A host seen in a heartbeat; a new one gets its bundle at once."""
        if host not in self._retained:
            self._retained[host] = None
            self._dirty.add(host)
            self._new[host] = None
            self._wake.set()

    def changed(self) -> None:
        """The store moved: every host's bundle carries the new revision."""
        self._dirty.update(self._retained)
        self._wake.set()

    async def recover(self) -> None:
        """Hosts that already have a retained bundle (from before a restart), with its revision."""
        info = await self._js.stream_info(self._stream, subjects_filter=self._subjects.policy_all())
        for subject in info.state.subjects or {}:
            try:
                msg = await self._js.get_last_msg(self._stream, subject)
                retained = _bundle.decode(msg.data or b"")
            except (js_errors.NotFoundError, msgspec.DecodeError):
                continue
            self._retained.setdefault(retained.host, _Retained(msg.seq or 0, retained.revision))
            self._dirty.add(retained.host)
        self._wake.set()

    async def run(self) -> None:
        while True:
            stop_if_cancelled()
            await self._wake.wait()
            self._wake.clear()
            if not self._store.loaded:
                continue  # never from a half-read store: its revision would lie
            revision, policies, now = self._store.revision, self._store.policies(), datetime.now(UTC)
            while self._dirty and self._store.revision == revision:
                stop_if_cancelled()
                batch = self._next_batch()
                results = await asyncio.gather(
                    *(self._publish(h, revision, policies, now) for h in batch), return_exceptions=True
                )
                failed = [(h, r) for h, r in zip(batch, results, strict=True) if isinstance(r, BaseException)]
                if failed:
                    await self._failed(failed, revision)
                    break
            if self._dirty:
                self._wake.set()

    def _next_batch(self) -> list[str]:
        """Up to BATCH hosts (distinct subjects, so publishing them together keeps each in order)."""
        new = list(self._new)[:BATCH]
        for host in new:
            del self._new[host]
        batch = [h for h in new if h in self._dirty]
        self._dirty.difference_update(batch)
        while len(batch) < BATCH and self._dirty:
            batch.append(self._dirty.pop())
        return batch

    async def _failed(self, failed: list[tuple[str, BaseException]], revision: int) -> None:
        for host, exc in failed:
            if not isinstance(exc, nats.errors.Error | TimeoutError):
                raise exc  # a bug: let the service's TaskGroup report it
            log.warning("bundle_publish_failed", host=host, revision=revision, error=repr(exc))
            self._dirty.add(host)
        await asyncio.sleep(0.5)  # NATS away: retry, without spinning
        if any(isinstance(exc, js_errors.NoStreamResponseError) for _, exc in failed):
            await self._recreate()  # the stream was deleted
        self._wake.set()

    async def _publish(self, host: str, revision: int, policies: Mapping[str, Policy], now: datetime) -> None:
        subject = self._subjects.policy(host)
        retained = self._retained.get(host) or await self._read(subject)
        for _ in range(8):
            if retained.revision >= revision:
                self._retained[host] = retained
                return  # idempotent, and never an older revision after a newer one
            chosen = bundle(host, revision, policies, now)
            raws = [self._store.encoded(p) for p in chosen.policies]  # JSON in place of each Policy
            data = encode(msgspec.structs.replace(chosen, policies=cast(list[Policy], raws)))
            if len(data) > self._nc.max_payload - _ENVELOPE:
                log.error("bundle_too_large", host=host, revision=revision, size=len(data))
                return
            headers = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(retained.seq)}
            try:
                ack = await self._js.publish(subject, data, stream=self._stream, headers=headers)
            except js_errors.APIError as exc:
                if exc.err_code not in (10071, 10164):
                    raise
                retained = await self._read(subject)  # another instance published: look again
                continue
            self._retained[host] = _Retained(ack.seq, revision)
            log.info("bundle_published", host=host, revision=revision, size=len(data))
            return
        log.warning("bundle_publish_contended", host=host, revision=revision)

    async def _recreate(self) -> None:
        try:
            await ensure_bundle_stream(self._nc, self._subjects)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("bundle_stream_unavailable", error=repr(exc))
            return
        self._retained = dict.fromkeys(self._retained)  # what was retained is gone with the stream
        self._dirty.update(self._retained)

    async def _read(self, subject: str) -> _Retained:
        try:
            msg = await self._js.get_last_msg(self._stream, subject)
        except js_errors.NotFoundError:
            return _NONE
        try:
            return _Retained(msg.seq or 0, _bundle.decode(msg.data or b"").revision)
        except msgspec.DecodeError:
            return _Retained(msg.seq or 0, -1)  # not a bundle: ours replaces it
