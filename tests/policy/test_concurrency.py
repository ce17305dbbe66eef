"""Two service instances writing the same policy at once: one consistent history, nothing overwritten."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client as NATS

from preguard.policy.service import CLIENT_HEADER, PolicyService
from preguard.policy.store import PolicyStore
from preguard.proto import FileRule, NameRequest, Policy, Stored, Subjects
from preguard.proto.api import PolicyHistory
from tests.policy.conftest import Api

WRITES = 24  # per writer; the store keeps 64 changes per policy, so all of them stay visible


def policy(description: str) -> Policy:
    return Policy(name="shared", description=description, rules=[FileRule(path="/etc/shadow")])


async def test_two_stores_racing_on_one_policy_keep_every_write_in_one_history(
    nats_url: str, subjects: Subjects
) -> None:
    conns = [await nats.connect(nats_url) for _ in range(2)]
    try:
        stores = [await PolicyStore.open(c.jetstream(), subjects.kv_policies()) for c in conns]
        writes = [
            s.put(policy(f"{i}-{n}"), client=f"writer-{i}")
            for n in range(WRITES)
            for i, s in enumerate(stores)
        ]
        changes = await asyncio.gather(*writes)
        history = await stores[0].history("shared")
    finally:
        for c in conns:
            await c.drain()
    assert len({c.revision for c in changes}) == 2 * WRITES  # nobody was told a revision twice
    assert [h.version for h in history] == list(range(1, 2 * WRITES + 1))  # no gap, no fork
    assert [h.revision for h in history] == sorted(c.revision for c in changes)
    by_revision = {c.revision: c for c in changes}
    assert all(h.policy == by_revision[h.revision].policy for h in history)  # what each writer wrote
    assert {h.client for h in history} == {"writer-0", "writer-1"}


async def test_two_services_behind_one_queue_group_answer_concurrent_puts_consistently(
    nats_url: str, nc: NATS, subjects: Subjects
) -> None:
    conns = [await nats.connect(nats_url) for _ in range(2)]
    services = [
        PolicyService(c, await PolicyStore.open(c.jetstream(), subjects.kv_policies()), subjects)
        for c in conns
    ]
    for s in services:
        await s.start()
    try:
        api = Api(nc, subjects)
        replies = await asyncio.gather(
            *(api.call("put", policy(str(n)), Stored, {CLIENT_HEADER: f"c{n}"}) for n in range(2 * WRITES))
        )
        history = await api.call("history", NameRequest(name="shared"), PolicyHistory)
        current = await api.raw("get", NameRequest(name="shared"))
    finally:
        for s in services:
            await s.stop()
        for c in conns:
            await c.drain()
    assert sorted(r.version for r in replies) == list(range(1, 2 * WRITES + 1))
    assert [h.revision for h in history.revisions] == sorted(r.revision for r in replies)
    latest = max(replies, key=lambda r: r.revision)
    assert current.headers["Preguard-Revision"] == str(latest.revision)
    assert history.revisions[-1].client == f"c{next(i for i, r in enumerate(replies) if r is latest)}"
