"""Bundles: per matching host, retained for late subscribers, in revision order, learned from heartbeats."""

from __future__ import annotations

import asyncio

import nats
import nats.js.errors
from nats.js.api import DeliverPolicy

from preguard.policy.service import PolicyService
from preguard.policy.store import PolicyStore
from preguard.proto import FileRule, NameRequest, Policy, PolicyBundle, Selector, Stored, encode
from tests.policy.conftest import Api, Hosts, next_bundle, status


def policy(name: str, hosts: list[str] | None = None) -> Policy:
    return Policy(name=name, rules=[FileRule(path="/etc/shadow")], selector=Selector(hosts=hosts or []))


async def test_a_new_host_gets_its_bundle_after_its_first_heartbeat(
    hosts: Hosts, api: Api, policy_service: PolicyService
) -> None:
    stored = await api.call("put", policy("web"), Stored)
    sub = await hosts.subscribe("web.1")
    await hosts.nc.publish(hosts.subjects.status("web.1"), encode(status("web.1")))
    bundle = await next_bundle(sub, stored.revision)  # the service's view may trail the put's reply
    assert bundle.host == "web.1"
    assert bundle.revision == stored.revision
    assert [p.name for p in bundle.policies] == ["web"]


async def test_a_policy_reaches_matching_hosts_only(
    hosts: Hosts, api: Api, policy_service: PolicyService
) -> None:
    subs = {host: await hosts.join(host) for host in ("web-1", "web-2", "db-1")}
    await api.call("put", policy("everywhere"), Stored)
    stored = await api.call("put", policy("web", hosts=["web-*"]), Stored)
    got = {host: await next_bundle(sub, stored.revision) for host, sub in subs.items()}
    assert {h: [p.name for p in b.policies] for h, b in got.items()} == {
        "web-1": ["everywhere", "web"],
        "web-2": ["everywhere", "web"],
        "db-1": ["everywhere"],
    }
    assert {b.revision for b in got.values()} == {stored.revision}  # every host is at the global revision
    deleted = await api.call("delete", NameRequest(name="web"), Stored)
    assert [p.name for p in (await next_bundle(subs["web-1"], deleted.revision)).policies] == ["everywhere"]


async def test_a_late_subscriber_gets_the_retained_bundle(
    nats_url: str, hosts: Hosts, api: Api, policy_service: PolicyService
) -> None:
    sub = await hosts.join("late")
    stored = await api.call("put", policy("web", hosts=["late"]), Stored)
    await next_bundle(sub, stored.revision)  # published: the service is done with it
    probe = await nats.connect(nats_url)  # a probe that starts only now, as the probe reads it
    try:
        sub = await probe.jetstream().subscribe(
            hosts.subjects.policy("late"),
            stream=hosts.subjects.stream_bundles(),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        bundle = await next_bundle(sub)
        assert bundle.revision == stored.revision
        assert [p.name for p in bundle.policies] == ["web"]
    finally:
        await probe.drain()


async def test_bundles_arrive_in_revision_order_and_end_at_the_last_write(
    hosts: Hosts, api: Api, policy_service: PolicyService
) -> None:
    sub = await hosts.join("h1")
    replies = await asyncio.gather(*(api.call("put", policy(f"p{i % 7}"), Stored) for i in range(60)))
    last = max(r.revision for r in replies)
    seen: list[PolicyBundle] = []
    while not seen or seen[-1].revision < last:
        seen.append(await next_bundle(sub))
    revisions = [b.revision for b in seen]
    assert revisions == sorted(set(revisions))  # strictly increasing: never an older after a newer
    assert sorted(p.name for p in seen[-1].policies) == [f"p{i}" for i in range(7)]


async def test_two_instances_publish_each_revision_once_in_order(
    nats_url: str, hosts: Hosts, api: Api, policy_service: PolicyService
) -> None:
    other_nc = await nats.connect(nats_url)
    other = PolicyService(
        other_nc, await PolicyStore.open(other_nc.jetstream(), hosts.subjects.kv_policies()), hosts.subjects
    )
    await other.start()
    try:
        sub = await hosts.join("shared")
        replies = [await api.call("put", policy(f"p{i}"), Stored) for i in range(20)]
        seen: list[PolicyBundle] = []
        while not seen or seen[-1].revision < replies[-1].revision:
            seen.append(await next_bundle(sub))
        revisions = [b.revision for b in seen]
        assert revisions == sorted(set(revisions))
        assert len(seen[-1].policies) == 20
    finally:
        await other.stop()
        await other_nc.drain()


async def test_a_flood_of_requests_does_not_hold_back_bundles(
    hosts: Hosts, api: Api, policy_service: PolicyService
) -> None:
    sub = await hosts.join("busy")
    for i in range(50):
        await api.call("put", policy(f"p{i}"), Stored)
    inbox = hosts.nc.new_inbox()
    for _ in range(5000):  # replies go to an inbox nobody reads
        await hosts.nc.publish(hosts.subjects.api_policy("list"), b"{}", reply=inbox)
    stored = await api.call("put", policy("urgent", hosts=["busy"]), Stored)
    bundle = await next_bundle(sub, stored.revision)
    assert "urgent" in [p.name for p in bundle.policies]


async def test_a_deleted_bundle_stream_is_made_again_and_refilled(
    hosts: Hosts, api: Api, policy_service: PolicyService
) -> None:
    await hosts.join("h1")
    for sub in hosts.subs:  # their consumers go with the stream
        await sub.unsubscribe()
    js = hosts.nc.jetstream()
    await js.delete_stream(hosts.subjects.stream_bundles())
    stored = await api.call("put", policy("web"), Stored)
    async with asyncio.timeout(10):  # polling NATS state for the stream, not waiting for a message
        while True:
            try:
                await js.stream_info(hosts.subjects.stream_bundles())
                break
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.05)
    bundle = await next_bundle(await hosts.subscribe("h1"), stored.revision)
    assert [p.name for p in bundle.policies] == ["web"]


async def test_every_one_of_many_hosts_gets_each_change(
    hosts: Hosts, api: Api, policy_service: PolicyService
) -> None:
    subs = {f"h{i:02d}": await hosts.join(f"h{i:02d}") for i in range(40)}
    stored = await api.call("put", policy("odd", hosts=["h?[13579]"]), Stored)
    for host, sub in subs.items():
        bundle = await next_bundle(sub, stored.revision)
        assert bundle.revision == stored.revision
        assert [p.name for p in bundle.policies] == (["odd"] if int(host[1:]) % 2 else [])
