"""Fixtures for the policy service: a store in a fresh bucket, a running service, API helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import pytest
from nats.aio.client import Client as NATS

from preguard.policy.service import PolicyService
from preguard.policy.store import PolicyStore
from preguard.proto import ContainerStatus, ProbeStatus, Refused, Subjects, encode

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

    async def raw(self, verb: str, body: bytes | Any, headers: dict[str, str] | None = None) -> Any:
        data = body if isinstance(body, bytes) else encode(body)
        return await self.nc.request(self.subjects.api_policy(verb), data, timeout=5, headers=headers)

    async def call(
        self, verb: str, body: bytes | Any, reply: type[T], headers: dict[str, str] | None = None
    ) -> T:
        msg = await self.raw(verb, body, headers)
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
