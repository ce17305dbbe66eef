"""Fixtures for the policy service: a store in a fresh bucket, a running service, API helpers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from preguard.policy.service import PolicyService
from preguard.policy.store import PolicyStore
from preguard.proto import ContainerStatus, PolicyBundle, ProbeStatus, Refused, Subjects, encode

T = TypeVar("T")


@pytest.fixture
async def store(nc: NATS, subjects: Subjects) -> PolicyStore:
    return await PolicyStore.open(nc.jetstream(), subjects.kv_policies())


@pytest.fixture
async def policy_service(nc: NATS, subjects: Subjects, store: PolicyStore) -> AsyncIterator[PolicyService]:
    service = PolicyService(nc, store, subjects)
    await service.start()
    yield service
    await service.stop()


class Api:
    """The policy API as a client sees it: raw requests, decoded replies."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self.nc, self.subjects = nc, subjects

    async def raw(
        self, verb: str, body: bytes | Any, headers: dict[str, str] | None = None, wait: float = 5.0
    ) -> Any:
        data = body if isinstance(body, bytes) else encode(body)
        return await self.nc.request(self.subjects.api_policy(verb), data, timeout=wait, headers=headers)

    async def call(
        self,
        verb: str,
        body: bytes | Any,
        reply: type[T],
        headers: dict[str, str] | None = None,
        wait: float = 5.0,
    ) -> T:
        msg = await self.raw(verb, body, headers, wait)
        if reply is not Refused and msg.data.startswith(b'{"ok":false'):  # would decode as an empty reply
            raise AssertionError(f"{verb} refused: {msg.data[:500]!r}")
        result: T = msgspec.json.decode(msg.data, type=reply)
        return result

    async def refused(self, verb: str, body: bytes | Any, headers: dict[str, str] | None = None) -> Refused:
        refused = await self.call(verb, body, Refused, headers)
        assert refused.ok is False
        return refused


@pytest.fixture
def api(nc: NATS, subjects: Subjects) -> Api:
    return Api(nc, subjects)


def status(host: str, *containers: ContainerStatus) -> ProbeStatus:
    return ProbeStatus(host=host, time=datetime.now(UTC), interval=1.0, containers=list(containers))


class Hosts:
    """Probe-like hosts: bundle subscriptions (unsubscribed after the test) and heartbeats."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self.nc, self.subjects = nc, subjects
        self.subs: list[Any] = []

    async def subscribe(self, host: str) -> Any:
        """As the probe reads its bundles: through the stream, from the retained one on.

        A core subscription would also see a bundle the stream refused (another instance had
        published that revision first); a stream consumer sees only what was kept.
        """
        sub = await self.nc.jetstream().subscribe(
            self.subjects.policy(host),
            stream=self.subjects.stream_bundles(),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            pending_msgs_limit=100_000,
        )
        self.subs.append(sub)
        return sub

    async def join(self, host: str, *containers: ContainerStatus) -> Any:
        """Subscribe to the host's bundles, send its first heartbeat, take the bundle a new host gets."""
        sub = await self.subscribe(host)
        await self.nc.publish(self.subjects.status(host), encode(status(host, *containers)))
        await next_bundle(sub)
        return sub


async def next_bundle(sub: Subscription, revision: int = 0) -> PolicyBundle:
    """The first bundle at or above `revision` (earlier ones may still be in flight)."""
    while True:
        bundle = msgspec.json.decode((await sub.next_msg(timeout=5)).data, type=PolicyBundle)
        if bundle.revision >= revision:
            return bundle


@pytest.fixture
async def hosts(nc: NATS, subjects: Subjects) -> AsyncIterator[Hosts]:
    made = Hosts(nc, subjects)
    yield made
    for sub in made.subs:  # a subscription with unread messages would hold up nc's drain
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
