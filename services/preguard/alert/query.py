"""The alert history query: filters over the alerts stream, one entry per alert id (its latest state)."""

from __future__ import annotations

import uuid

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from preguard.proto import Alert, AlertQuery, Subjects, decode, token

MAX_LIMIT = 500  # a reply of 500 alerts stays under NATS' default 1 MiB max_payload
FETCH = 1000


def filter_subjects(subjects: Subjects, q: AlertQuery) -> list[str]:
    """Severity and host are subject tokens, so the server filters those before we read anything."""
    host = token(q.host) if q.host else "*"  # Subjects.alerts() would sanitise a wildcard away
    severities = sorted({token(s) for s in q.severity}) or ["*"]
    return [f"{subjects.prefix}.alerts.{s}.{host}" for s in severities]


def matches(q: AlertQuery, a: Alert) -> bool:
    if q.container and q.container not in (a.container_id, a.container_name):
        return False
    if q.policy and a.policy != q.policy:
        return False
    # the subject token is sanitised (web.1 -> web_1); the field is exact
    return not (q.host and a.host != q.host)


async def query(js: JetStreamContext, subjects: Subjects, q: AlertQuery) -> list[Alert]:
    """Scan the stream (from `since`, by publish time), fold by id, newest last_seen first, at most limit."""
    stream = subjects.stream_alerts()
    config = ConsumerConfig(
        name=f"query-{uuid.uuid4().hex[:12]}",
        filter_subjects=filter_subjects(subjects, q),
        deliver_policy=DeliverPolicy.BY_START_TIME if q.since else DeliverPolicy.ALL,
        opt_start_time=q.since,
        ack_policy=AckPolicy.NONE,
        mem_storage=True,
        inactive_threshold=10.0,
    )
    info = await js.add_consumer(stream, config)
    latest: dict[str, Alert] = {}
    try:
        if info.num_pending:
            psub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
            try:
                pending = info.num_pending
                while pending > 0:
                    msgs = await psub.fetch(FETCH, timeout=5.0)
                    for msg in msgs:
                        try:
                            alert = decode(msg.data, Alert)
                        except msgspec.DecodeError:
                            continue  # not ours to judge here; the publisher logged it
                        latest[alert.id] = alert
                    pending = msgs[-1].metadata.num_pending
            finally:
                await psub.unsubscribe()
    finally:
        await js.delete_consumer(stream, info.name)
    found = [a for a in latest.values() if matches(q, a)]
    found.sort(key=lambda a: a.last_seen, reverse=True)
    return found[: max(0, min(q.limit, MAX_LIMIT))]
