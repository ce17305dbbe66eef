"""Stand-ins for services that have not landed yet, on the real subjects with the real messages."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from preguard.proto import (
    Alert,
    AlertList,
    AlertQuery,
    ContainerStatus,
    Event,
    Kind,
    Outcome,
    PolicyBundle,
    ProbeStatus,
    Severity,
    Subjects,
    decode,
    encode,
)


class StandInProbe:
    """Heartbeats for one container, whose applied revision follows the bundles the policy service sends."""

    def __init__(self, nc: NATS, subjects: Subjects, host: str, name: str) -> None:
        self.nc, self.subjects, self.host, self.name = nc, subjects, host, name
        self.container = ContainerStatus(id=uuid.uuid4().hex[:12], name=name, image="preguard-test-glibc:1")
        self.revision = 0
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subjects.policy(self.host), cb=self._on_bundle)
        await self.nc.flush()
        self._task = asyncio.create_task(self._beat())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sub:
            await self._sub.unsubscribe()

    async def _on_bundle(self, msg: Msg) -> None:
        self.revision = max(self.revision, decode(msg.data, PolicyBundle).revision)

    async def _beat(self) -> None:
        while True:
            guarded = self.revision > 0
            container = ContainerStatus(
                id=self.container.id, name=self.name, image=self.container.image, libc="glibc",
                guarded=guarded, revision=self.revision, covered=1 if guarded else 0,
                policies=["web-lock"] if guarded else [],
            )  # fmt: skip
            status = ProbeStatus(
                host=self.host, time=datetime.now(UTC), interval=0.3, revision=self.revision,
                containers=[container],
            )  # fmt: skip
            await self.nc.publish(self.subjects.status(self.host), encode(status))
            await asyncio.sleep(0.3)  # heartbeat period


class StandInAlerts:
    """Publishes folded alerts for triggered events and answers the alert query from them."""

    def __init__(self, nc: NATS, subjects: Subjects, host: str, container: ContainerStatus) -> None:
        self.nc, self.subjects, self.host, self.container = nc, subjects, host, container
        self.alerts: dict[str, Alert] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subjects.api_alerts("query"), cb=self._on_query)
        await self.nc.flush()

    async def stop(self) -> None:
        if self._sub:
            await self._sub.unsubscribe()

    async def _on_query(self, msg: Msg) -> None:
        q = decode(msg.data, AlertQuery)
        await msg.respond(encode(AlertList(alerts=list(self.alerts.values())[: q.limit])))

    async def trigger(self, target: str) -> None:
        now = datetime.now(UTC)
        old = self.alerts.get(target)
        event = Event(
            host=self.host, container_id=self.container.id, container_name=self.container.name,
            image=self.container.image, time=now, time_ns=0, pid=99, uid=0, exe="/bin/cat",
            kind=Kind.FILE, target=target, access="read", action=Outcome.BLOCKED, policy="web-lock",
            rule=0, severity=Severity.HIGH,
        )  # fmt: skip
        alert = Alert(
            id=old.id if old else uuid.uuid4().hex[:16], host=self.host,
            container_id=self.container.id, container_name=self.container.name,
            image=self.container.image, policy="web-lock", rule=0, kind=Kind.FILE, target=target,
            action="blocked", severity=Severity.HIGH, count=(old.count if old else 0) + 1,
            first_seen=old.first_seen if old else now, last_seen=now, sample=event,
            state="update" if old else "new",
        )  # fmt: skip
        self.alerts[target] = alert
        await self.nc.publish(self.subjects.alerts(alert.severity, self.host), encode(alert))
        await self.nc.flush()
