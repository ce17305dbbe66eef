"""The alert service: partition workers under KV leases, probe health, and the alert query API."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from preguard.alert.health import HealthTracker, HostHealth
from preguard.alert.leases import Leases
from preguard.alert.query import query
from preguard.alert.settings import AlertSettings
from preguard.alert.streams import ensure_streams, entries, lease_bucket, state_bucket
from preguard.alert.worker import PartitionWorker, publish_alerts
from preguard.proto import (
    AlertList,
    AlertQuery,
    FieldError,
    ProbeStatus,
    Refused,
    Subjects,
    decode,
    decode_status,
    encode,
    token,
)

log = structlog.get_logger()
_host_health = msgspec.json.Decoder(HostHealth)
_encode = msgspec.json.Encoder().encode
HEALTH_PARTITION = 0  # whoever owns partition 0 watches the probes, so exactly one instance does


class AlertService:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        settings: AlertSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nc, self._subjects, self._settings = nc, subjects, settings.named()
        self._js = nc.jetstream()
        self._clock = clock
        self._subs: list[Subscription] = []
        self._tasks = asyncio.TaskGroup()
        self._workers: dict[int, tuple[PartitionWorker, asyncio.Task[None]]] = {}
        self._health: tuple[asyncio.Event, asyncio.Task[None]] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._state: KeyValue | None = None
        self._leases: Leases | None = None
        self._stopped = False
        self._leaving = asyncio.Event()
        self._all_tasks: set[asyncio.Task[None]] = set()

    @property
    def partitions(self) -> list[int]:
        """The partitions this instance works on now."""
        return sorted(self._workers)

    @property
    def events(self) -> int:
        return sum(w.events for w, _ in self._workers.values())

    async def start(self) -> None:
        """Returns once the streams exist, the first lease round is done and the API listens."""
        self._state, leases_kv = await ensure_streams(self._js, self._subjects, self._settings)
        self._leases = Leases(
            self._js,
            lease_bucket(self._subjects),
            leases_kv,
            self._settings.instance,
            self._settings.partitions,
            self._acquire,
            self._release,
        )
        await self._tasks.__aenter__()
        query_subject = self._subjects.api_alerts("query")
        self._subs.append(await self._nc.subscribe(query_subject, queue="alert", cb=self._on_query))
        await self._leases.tick()
        self._lease_task = self._spawn(self._lease_loop())
        await self._nc.flush()
        log.info("alert_service_started", instance=self._settings.instance, partitions=self.partitions)

    async def stop(self, timeout: float = 10.0) -> None:
        """Workers commit their batch and stop, leases are handed back, the API drains."""
        if self._stopped:
            return
        self._stopped = True
        try:
            async with asyncio.timeout(timeout):
                self._leaving.set()  # not cancel(): nats-py's wait_for can swallow a cancellation
                if self._lease_task is not None:
                    await self._lease_task
                for worker, _ in self._workers.values():
                    worker.stop()  # all at once: each finishes its batch in parallel
                for p in list(self._workers):
                    await self._release(p)
                if self._leases is not None:
                    await self._leases.leave()
                for sub in self._subs:
                    await sub.drain()  # type: ignore[no-untyped-call]
        finally:  # whatever did not finish in time is cancelled; its batch replays on the next start
            for task in self._all_tasks:
                task.cancel()
            await self._tasks.__aexit__(None, None, None)
        log.info("alert_service_stopped", instance=self._settings.instance)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._tasks.create_task(coro)
        self._all_tasks.add(task)
        task.add_done_callback(self._all_tasks.discard)
        return task

    # -- partitions ---------------------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        assert self._leases is not None
        while not self._leaving.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.lease_ttl / 3):
                    await self._leaving.wait()
                    return
            try:
                await self._leases.tick()
            except Exception as exc:  # NATS unreachable for a moment: keep what we hold, try again
                log.warning("lease_round_failed", error=str(exc))

    async def _acquire(self, partition: int) -> None:
        assert self._state is not None
        worker = PartitionWorker(
            self._nc, self._state, self._subjects, self._settings, partition, clock=self._clock
        )
        task = self._spawn(self._supervise(f"partition {partition}", worker.run, lambda: worker.stopping))
        self._workers[partition] = (worker, task)
        if partition == HEALTH_PARTITION:
            stop = asyncio.Event()
            health = self._spawn(self._supervise("health", lambda: self._watch_probes(stop), stop.is_set))
            self._health = (stop, health)

    async def _release(self, partition: int) -> None:
        worker, task = self._workers.pop(partition)
        worker.stop()
        if partition == HEALTH_PARTITION and self._health is not None:
            stop, health = self._health
            self._health = None
            stop.set()
            await health
        await task

    async def _supervise(
        self, what: str, run: Callable[[], Awaitable[None]], stopping: Callable[[], bool]
    ) -> None:
        """Restart a failed loop from its persisted state (a partition's unacknowledged batch replays)."""
        while not stopping():
            try:
                await run()
                return
            except Exception:  # any failure: the replay is exact, so starting over is always safe
                log.exception("loop_failed", loop=what)
            await asyncio.sleep(1.0)

    # -- probe health ---------------------------------------------------------------------------------
    async def _watch_probes(self, stop: asyncio.Event) -> None:
        assert self._state is not None
        tracker = HealthTracker(misses=self._settings.health_misses, clock=self._clock)
        for entry in await entries(self._js, state_bucket(self._subjects), self._state, "health.*"):
            if entry.value:
                tracker.restore(_host_health.decode(entry.value))
        queue: asyncio.Queue[ProbeStatus] = asyncio.Queue()

        async def on_status(msg: Msg) -> None:
            try:
                queue.put_nowait(decode_status(self._subjects, msg.subject, msg.data))
            except msgspec.DecodeError as exc:
                log.warning("status_refused", subject=msg.subject, error=str(exc))

        sub = await self._nc.subscribe(self._subjects.status_all(), cb=on_status)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.tick):
                        tracker.heartbeat(await queue.get())
                while not queue.empty():
                    tracker.heartbeat(queue.get_nowait())
                tracker.check()
                alerts, changes = tracker.take()
                await publish_alerts(self._js, self._subjects, alerts)
                for host, state in changes.items():
                    await self._state.put(f"health.{token(host)}", _encode(state))
        finally:
            await sub.unsubscribe()

    # -- query API ----------------------------------------------------------------------------------
    async def _on_query(self, msg: Msg) -> None:
        try:
            q = decode(msg.data or b"{}", AlertQuery)
        except msgspec.DecodeError as exc:
            error = FieldError(field="$", error=str(exc))
            await msg.respond(encode(Refused(error="invalid query", details=[error])))
            return
        alerts = await query(self._js, self._subjects, q)
        await msg.respond(encode(AlertList(alerts=alerts)))
        log.info("alerts_queried", count=len(alerts), host=q.host, policy=q.policy)
