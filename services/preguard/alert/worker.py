"""One partition's loop: restore its windows, consume its slice of the work stream in order, commit.

A batch commits in this order: alerts published (JetStream, Msg-Id), window states written to the
state bucket, then the messages acknowledged. A crash anywhere before the acks replays the batch:
the consumer is recreated on every start, so replay is in stream order, and the
windows skip what they already counted (see aggregate.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from preguard.alert.aggregate import Aggregator, Window, key_name, key_of
from preguard.alert.pull import Puller
from preguard.alert.settings import AlertSettings
from preguard.alert.streams import entries, state_bucket, work_stream, work_subject
from preguard.proto import Alert, Subjects, decode_events, encode

log = structlog.get_logger()
PULL_EXPIRES = 5.0  # seconds a standing pull request lives before it is renewed
_window = msgspec.json.Decoder(Window)
_encode_window = msgspec.json.Encoder().encode


async def publish_alerts(js: JetStreamContext, subjects: Subjects, alerts: list[Alert]) -> None:
    """Publish in order and wait for every store acknowledgement; the stream drops a replay by Msg-Id."""
    if not alerts:
        return
    stream = subjects.stream_alerts()
    await asyncio.gather(
        *(
            js.publish(
                subjects.alerts(a.severity, a.host),
                encode(a),
                stream=stream,
                headers={"Nats-Msg-Id": f"{a.id}.{a.state}.{a.action}.{a.count}"},
            )
            for a in alerts
        )
    )
    for a in alerts:
        log.info("alert_published", id=a.id, state=a.state, kind=a.kind, host=a.host, count=a.count)


class PartitionWorker:
    def __init__(
        self,
        nc: NATS,
        state: KeyValue,
        subjects: Subjects,
        settings: AlertSettings,
        partition: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nc, self._js = nc, nc.jetstream()
        self._state, self._subjects, self._settings = state, subjects, settings
        self.partition = partition
        self._clock = clock
        self._stopping = asyncio.Event()
        self.events = 0  # folded since start, for the benchmark and logs

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Finish the batch in hand (published, persisted, acknowledged), then return from run()."""
        self._stopping.set()

    async def run(self) -> None:
        s = self._settings
        agg = Aggregator(
            window=s.window,
            update_interval=s.update_interval,
            grace=s.grace,
            attack_threshold=s.attack_threshold,
            clock=self._clock,
        )
        restored = await self._restore(agg)
        puller = await self._subscribe()
        log.info("partition_started", partition=self.partition, windows=restored)
        last_expire = last_commit = 0.0
        msgs: list[Msg] = []
        unacked: list[Msg] = []
        changes: dict[str, Window | None] = {}
        try:
            while not self._stopping.is_set():
                msgs = await puller.next(s.batch, s.tick)
                for i, msg in enumerate(msgs):
                    if i % 16 == 15:
                        await asyncio.sleep(0)  # big batches: let lease renewals and other partitions run
                    try:
                        events = decode_events(msg.data)
                    except msgspec.DecodeError as exc:  # from outside: skip it, never stall on it
                        log.warning("event_refused", subject=msg.subject, error=str(exc))
                        continue
                    agg.add(events, msg.metadata.sequence.stream)
                    self.events += len(events)
                unacked += msgs
                agg.flush()
                if (now := self._clock()) - last_expire >= s.tick:
                    agg.expire()
                    last_expire = now
                alerts, more = agg.take()
                changes.update(more)
                # Alerts go out at once, with their own windows' state. Everything else (counts
                # that only grew) is stored once per tick, and only then are the messages
                # acknowledged: a hot key costs one write per tick rather than one per message.
                if now - last_commit >= s.tick or len(unacked) >= s.batch:
                    await self._commit(alerts, changes, unacked)
                    changes, unacked, last_commit = {}, [], now
                elif alerts:
                    names = {key_name(key_of(a)) for a in alerts}
                    await self._commit(alerts, {n: changes.pop(n) for n in names if n in changes}, [])
            await self._commit([], changes, unacked)
        finally:
            await puller.stop()
            log.info("partition_stopped", partition=self.partition, events=self.events)

    async def _commit(self, alerts: list[Alert], changes: dict[str, Window | None], msgs: list[Msg]) -> None:
        """Publish, persist, then acknowledge: a crash before the end replays these messages."""
        await publish_alerts(self._js, self._subjects, alerts)
        if changes:
            prefix = f"p{self.partition}."
            await asyncio.gather(
                *(
                    self._state.put(prefix + name, _encode_window(w))
                    if w is not None
                    else self._state.delete(prefix + name)
                    for name, w in changes.items()
                )
            )
        for msg in msgs:
            await msg.ack()

    async def _restore(self, agg: Aggregator) -> int:
        found = await entries(self._js, state_bucket(self._subjects), self._state, f"p{self.partition}.*")
        for entry in found:
            if entry.value:
                agg.restore(_window.decode(entry.value))
        return len(found)

    async def _subscribe(self) -> Puller:
        """A fresh durable on every start, so that a replay comes strictly in stream order.

        The work stream has work-queue retention: what was acknowledged is gone, so "deliver all"
        starts at the oldest unacknowledged message, the consumer's ack floor. Messages delivered
        but unacknowledged by the previous owner come again, in order, and not after newer ones.
        """
        stream, durable = work_stream(self._subjects), f"alert-p{self.partition}"
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(stream, durable)
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=work_subject(self._subjects, self.partition),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=60.0,
            max_ack_pending=-1,
        )
        await self._js.add_consumer(stream, config)
        puller = Puller(self._nc, stream, durable, self._settings.batch, PULL_EXPIRES)
        await puller.start()
        return puller
