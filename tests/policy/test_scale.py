"""A thousand policies: all listed, each host's bundle holding exactly the ones its globs match."""

from __future__ import annotations

import asyncio

import nats

from preguard.policy.service import PolicyService
from preguard.policy.store import PolicyStore
from preguard.proto import FileRule, Policy, PolicyList, Selector, Stored, Subjects
from tests.policy.conftest import Api, Hosts, next_bundle

COUNT = 1000


def policy(i: int) -> Policy:
    hosts = ["*"] if i % 10 == 0 else ["edge-*"] if i % 2 else ["core-1"]  # a tenth everywhere, rest split
    return Policy(name=f"p{i:04d}", rules=[FileRule(path=f"/srv/{i}/**")], selector=Selector(hosts=hosts))


async def test_a_thousand_policies_list_and_distribute_correctly(
    api: Api, hosts: Hosts, policy_service: PolicyService
) -> None:
    subs = {host: await hosts.join(host) for host in ("core-1", "edge-7", "other")}
    replies: list[Stored] = []
    for start in range(0, COUNT, 100):  # a hundred requests in flight at a time
        batch = (api.call("put", policy(i), Stored) for i in range(start, start + 100))
        replies.extend(await asyncio.gather(*batch))
    assert all(r.ok for r in replies)
    last = max(r.revision for r in replies)

    listed = await api.call("list", b"{}", PolicyList)
    assert listed.policies == [policy(i) for i in range(COUNT)]
    expected = {
        "core-1": [f"p{i:04d}" for i in range(COUNT) if i % 2 == 0],
        "edge-7": [f"p{i:04d}" for i in range(COUNT) if i % 2 == 1 or i % 10 == 0],
        "other": [f"p{i:04d}" for i in range(0, COUNT, 10)],
    }
    for host, sub in subs.items():
        bundle = await next_bundle(sub, last)
        assert bundle.revision == last
        assert [p.name for p in bundle.policies] == expected[host]


async def test_a_second_instance_loads_a_thousand_policies_at_start(
    nats_url: str, subjects: Subjects, api: Api, policy_service: PolicyService
) -> None:
    for start in range(0, COUNT, 100):
        await asyncio.gather(*(api.call("put", policy(i), Stored) for i in range(start, start + 100)))
    other_nc = await nats.connect(nats_url)
    try:
        store = await PolicyStore.open(other_nc.jetstream(), subjects.kv_policies())
        other = PolicyService(other_nc, store, subjects)
        await other.start()  # returns once loaded
        assert store.policies() == {p.name: p for p in map(policy, range(COUNT))}
        await other.stop()
    finally:
        await other_nc.drain()
