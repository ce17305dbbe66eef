"""The JetStream objects the alert service uses, created idempotently at start.

events   `<prefix>_events`: captures `<prefix>.events.>`; the probe creates it the same way, so an
         existing one (whoever made it, however configured) is used as it is.
work     `<prefix>_alertwork`: sources the events stream, rewriting each subject to
         `<prefix>.alertwork.<partition>.<host>.<container>` where partition is the server's
         `partition(N, host, container)` hash; work-queue retention, so it holds only the backlog.
alerts   `<prefix>_alerts`: `<prefix>.alerts.>`, age and size limits, duplicate window for Msg-Id.
state    KV `<prefix>_alerts_state`: open windows per partition and probe health.
leases   KV `<prefix>_alerts_leases`: which instance owns which partition, and who is alive.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from preguard.alert.settings import AlertSettings
from preguard.proto import Subjects

log = structlog.get_logger()

STREAM_IN_USE = 10058  # "stream name already in use with a different configuration"


def work_stream(subjects: Subjects) -> str:
    return f"{subjects.prefix.replace('.', '_')}_alertwork"


def work_subject(subjects: Subjects, partition: int | str) -> str:
    return f"{subjects.prefix}.alertwork.{partition}.>"


def state_bucket(subjects: Subjects) -> str:
    return f"{subjects.stream_alerts()}_state"


def lease_bucket(subjects: Subjects) -> str:
    return f"{subjects.stream_alerts()}_leases"


async def ensure_events(js: JetStreamContext, subjects: Subjects, settings: AlertSettings) -> None:
    """The probe's stream, created the probe's way if we come first; any existing one is kept."""
    config = StreamConfig(
        name=subjects.stream_events(),
        subjects=[subjects.events_all()],
        storage=StorageType.FILE,
        max_age=settings.events_max_age,
        max_bytes=settings.events_max_bytes,
    )
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != STREAM_IN_USE:
            raise


async def ensure_streams(
    js: JetStreamContext, subjects: Subjects, settings: AlertSettings
) -> tuple[KeyValue, KeyValue]:
    """Every stream and bucket; returns the (state, leases) buckets."""
    await ensure_events(js, subjects, settings)
    transform = SubjectTransform(
        src=f"{subjects.prefix}.events.*.*",
        dest=(
            f"{subjects.prefix}.alertwork.{{{{partition({settings.partitions},1,2)}}}}"
            ".{{wildcard(1)}}.{{wildcard(2)}}"
        ),
    )
    await _put_stream(
        js,
        StreamConfig(
            name=work_stream(subjects),
            sources=[StreamSource(name=subjects.stream_events(), subject_transforms=[transform])],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            max_age=settings.events_max_age,
            max_bytes=settings.events_max_bytes,
        ),
    )
    await _put_stream(
        js,
        StreamConfig(
            name=subjects.stream_alerts(),
            subjects=[subjects.alerts_all()],
            storage=StorageType.FILE,
            max_age=settings.alerts_max_age,
            max_bytes=settings.alerts_max_bytes,
            discard=DiscardPolicy.OLD,
            duplicate_window=600.0,  # Msg-Id: an alert republished after a crash is stored once
        ),
    )
    state = await _bucket(js, KeyValueConfig(bucket=state_bucket(subjects), ttl=settings.state_ttl))
    leases = await _bucket(js, KeyValueConfig(bucket=lease_bucket(subjects), ttl=settings.lease_ttl))
    return state, leases


async def _put_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Ours to configure: created, or updated when the settings changed."""
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != STREAM_IN_USE:
            raise
        await js.update_stream(config)
        log.warning("stream_updated", stream=config.name)


async def _bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    config.storage = StorageType.FILE
    try:
        return await js.create_key_value(config)
    except BadRequestError as exc:
        if exc.err_code != STREAM_IN_USE:
            raise
        return await js.key_value(config.bucket)


async def entries(js: JetStreamContext, bucket: str, kv: KeyValue, pattern: str) -> list[KeyValue.Entry]:
    """The live entries whose keys match a subject pattern.

    Not KeyValue.keys() (it filters by substring, client side) nor a watcher (it waits forever, or
    for its timeout, when an entry expires between its count and its delivery): the stream's
    subject list, then one get per key.
    """
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.{pattern}")
    keys = [subject.split(".", 2)[2] for subject in info.state.subjects or {}]
    found: list[KeyValue.Entry] = []
    for i in range(0, len(keys), 256):
        got = await asyncio.gather(*(kv.get(k) for k in keys[i : i + 256]), return_exceptions=True)
        for entry in got:
            if isinstance(entry, NotFoundError):
                continue  # deleted or expired since the listing
            if isinstance(entry, BaseException):
                raise entry
            found.append(entry)
    return found
