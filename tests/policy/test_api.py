"""Every API call against a real nats-server, good and bad."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from preguard.policy.service import CLIENT_HEADER, EXPECTED_HEADER, REVISION_HEADER, PolicyService
from preguard.proto import (
    AnyRule,
    ContainerStatus,
    FileRule,
    NameRequest,
    Policy,
    PolicyBundle,
    PolicyList,
    Selector,
    Stored,
    Subjects,
    encode,
)
from preguard.proto.api import PolicyHistory, PolicyPreview, Validated
from tests.policy.conftest import Api, status

SHADOW = FileRule(path="/etc/shadow")


def policy(name: str, **kw: object) -> Policy:
    return Policy(name=name, rules=[SHADOW], **kw)  # type: ignore[arg-type]


async def test_put_stores_and_get_returns_the_policy_with_its_revision(
    api: Api, policy_service: PolicyService
) -> None:
    web = policy("web", description="no secrets", selector=Selector(hosts=["h*"]))
    stored = await api.call("put", web, Stored)
    assert stored.ok
    assert stored.name == "web"
    assert stored.version == 1
    assert stored.revision > 0
    reply = await api.raw("get", NameRequest(name="web"))
    assert msgspec.json.decode(reply.data, type=Policy) == web
    assert reply.headers[REVISION_HEADER] == str(stored.revision)


async def test_put_of_an_existing_name_replaces_it_with_a_higher_revision(
    api: Api, policy_service: PolicyService
) -> None:
    first = await api.call("put", policy("web"), Stored)
    second = await api.call("put", policy("web", description="v2"), Stored)
    assert second.revision > first.revision
    assert second.version == 2
    got = msgspec.json.decode((await api.raw("get", NameRequest(name="web"))).data, type=Policy)
    assert got.description == "v2"


async def test_put_of_a_bad_policy_is_refused_naming_the_field(
    api: Api, policy_service: PolicyService
) -> None:
    bad = b'{"name": "web", "rules": [{"kind": "network", "cidr": "10.0.0.0/8", "ports": "70000"}]}'
    refused = await api.refused("put", bad)
    assert refused.error == "invalid policy"
    assert [(d.field, d.error) for d in refused.details] == [
        ("$.rules[0].ports", "port 70000 is outside 1-65535")
    ]
    typo = await api.refused(
        "put", b'{"name": "web", "rules": [{"kind": "file", "path": "/x", "acton": "block"}]}'
    )
    assert typo.details[0].field == "$.rules[0].acton"
    assert (await api.refused("put", b'{"name": "Web!"}')).details[0].field == "$.name"
    assert (await api.refused("put", b"not json")).details[0].field == "$"
    assert (await api.refused("get", NameRequest(name="web"))).error == "no such policy"  # nothing was stored


async def test_oversized_requests_are_refused_unread(api: Api, policy_service: PolicyService) -> None:
    big_put = b'{"name": "web", "description": "' + b"x" * 600_000 + b'"}'
    assert (await api.refused("put", big_put)).error == "request too large"
    big_get = encode({"name": "web", "pad": "x" * 5000})
    assert (await api.refused("get", big_get)).error == "request too large"


async def test_delete_removes_the_policy_and_a_missing_one_is_refused(
    api: Api, policy_service: PolicyService
) -> None:
    put = await api.call("put", policy("web"), Stored)
    deleted = await api.call("delete", NameRequest(name="web"), Stored)
    assert deleted.revision > put.revision
    assert deleted.version == 2
    assert (await api.refused("get", NameRequest(name="web"))).details[0].field == "$.name"
    again = await api.refused("delete", NameRequest(name="web"))
    assert again.error == "no such policy"
    assert again.details[0].field == "$.name"
    assert (await api.refused("delete", b"{}")).details[0].field == "$.name"
    assert (await api.refused("delete", NameRequest(name="../x"))).details[0].field == "$.name"


async def test_list_returns_every_live_policy_by_name(api: Api, policy_service: PolicyService) -> None:
    for name in ("zeta", "alpha", "mid"):
        await api.call("put", policy(name), Stored)
    await api.call("delete", NameRequest(name="mid"), Stored)
    listed = await api.call("list", b"{}", PolicyList)
    assert [p.name for p in listed.policies] == ["alpha", "zeta"]
    assert [p.name for p in (await api.call("list", b"", PolicyList)).policies] == ["alpha", "zeta"]


async def test_validate_checks_without_storing(api: Api, policy_service: PolicyService) -> None:
    valid = await api.call("validate", policy("web"), Validated)
    assert valid.ok
    assert valid.name == "web"
    assert valid.rules == 1
    assert (await api.call("list", b"{}", PolicyList)).policies == []
    refused = await api.refused("validate", b'{"name": "web", "rules": [{"kind": "process"}]}')
    assert refused.details[0].field == "$.rules[0]"


async def test_history_lists_every_change_with_its_client(api: Api, policy_service: PolicyService) -> None:
    a = await api.call("put", policy("web"), Stored, {CLIENT_HEADER: "alice@ci"})
    b = await api.call("put", policy("web", description="v2"), Stored)
    c = await api.call("delete", NameRequest(name="web"), Stored, {CLIENT_HEADER: "bob"})
    d = await api.call("put", policy("web", description="v3"), Stored, {CLIENT_HEADER: "alice@ci"})
    history = await api.call("history", NameRequest(name="web"), PolicyHistory)
    got = [
        (r.revision, r.version, r.client, r.deleted, r.policy and r.policy.description)
        for r in history.revisions
    ]
    assert got == [
        (a.revision, 1, "alice@ci", False, ""),
        (b.revision, 2, "anonymous", False, "v2"),
        (c.revision, 3, "bob", True, None),
        (d.revision, 4, "alice@ci", False, "v3"),
    ]
    assert all(r.time is not None for r in history.revisions)
    assert (await api.refused("history", NameRequest(name="never"))).error == "no such policy"


async def test_expected_revision_header_refuses_a_stale_write(
    api: Api, policy_service: PolicyService
) -> None:
    created = await api.call("put", policy("web"), Stored, {EXPECTED_HEADER: "0"})  # 0: must not exist
    conflict = await api.refused("put", policy("web"), {EXPECTED_HEADER: "0"})
    assert conflict.error == "conflict"
    assert conflict.details[0].field == EXPECTED_HEADER
    updated = await api.call(
        "put", policy("web", description="v2"), Stored, {EXPECTED_HEADER: str(created.revision)}
    )
    assert updated.version == 2
    stale = await api.refused("delete", NameRequest(name="web"), {EXPECTED_HEADER: str(created.revision)})
    assert stale.error == "conflict"
    assert (await api.refused("put", policy("web"), {EXPECTED_HEADER: "soon"})).error == "invalid request"


async def test_preview_selects_containers_from_the_probes_last_status(
    nc: NATS, subjects: Subjects, api: Api, policy_service: PolicyService
) -> None:
    web = ContainerStatus(
        id="a" * 12, name="web-1", image="docker.io/library/nginx:1", labels={"tier": "web"}
    )
    db = ContainerStatus(id="b" * 12, name="db-1", image="postgres:16", labels={"tier": "db"})
    for host in ("h1", "h2"):  # the bundle a new host gets says its heartbeat was taken in
        sub = await nc.subscribe(subjects.policy(host))
        await nc.publish(subjects.status(host), encode(status(host, web, db)))
        await sub.next_msg(timeout=5)
        await sub.unsubscribe()
    draft = policy("web", selector=Selector(hosts=["h1"], images=["nginx*"], labels={"tier": "web"}))
    preview = await api.call("preview", draft, PolicyPreview)
    assert preview.hosts == ["h1"]
    assert [(m.host, m.container_name, m.container_id) for m in preview.containers] == [
        ("h1", "web-1", "a" * 12)
    ]
    everything = await api.call("preview", policy("all"), PolicyPreview)
    assert everything.hosts == ["h1", "h2"]
    assert len(everything.containers) == 4
    await api.call("put", draft, Stored)
    stored = await api.call("preview", NameRequest(name="web"), PolicyPreview)
    assert stored.containers == preview.containers
    assert (await api.refused("preview", NameRequest(name="gone"))).error == "no such policy"
    assert (await api.refused("preview", b'{"name": "x", "rules": 3}')).details[0].field == "$.rules"


async def test_a_heartbeat_from_another_hosts_subject_is_ignored(
    nc: NATS, subjects: Subjects, api: Api, policy_service: PolicyService
) -> None:
    sub = await nc.subscribe(subjects.policy("honest"))
    await nc.publish(subjects.status("liar"), encode(status("victim")))
    await nc.publish(subjects.status("honest"), encode(status("honest")))
    bundle = msgspec.json.decode((await sub.next_msg(timeout=5)).data, type=PolicyBundle)
    assert bundle.host == "honest"
    assert (await api.call("preview", policy("all"), PolicyPreview)).hosts == ["honest"]


async def test_a_policy_that_would_overflow_a_hosts_bundle_is_refused(
    nc: NATS, subjects: Subjects, api: Api, policy_service: PolicyService
) -> None:
    sub = await nc.subscribe(subjects.policy("h1"))
    await nc.publish(subjects.status("h1"), encode(status("h1")))
    await sub.next_msg(timeout=5)
    await sub.unsubscribe()
    share = nc.max_payload * 2 // 5  # three of these cannot travel in one bundle
    rules: list[AnyRule] = [FileRule(path="/" + "x" * 3999) for _ in range(share // 4030)]
    await api.call("put", Policy(name="big-1", rules=rules), Stored)
    await api.call("put", Policy(name="big-2", rules=rules), Stored)
    await api.call("list", b"{}", PolicyList)  # the check counts what the service has seen: wait for it
    third = Policy(name="big-3", rules=rules)
    refused = await api.refused("validate", third)
    assert refused.error == "bundle too large"
    assert "host h1's bundle" in refused.details[0].error
    assert (await api.refused("put", third)).error == "bundle too large"
    elsewhere = Policy(name="big-3", rules=rules, selector=Selector(hosts=["other-*"]))
    assert (await api.call("put", elsewhere, Stored)).ok  # reaches no host that carries the others


async def test_each_handled_request_logs_one_line_with_its_keys(
    api: Api, policy_service: PolicyService
) -> None:
    with capture_logs(processors=[merge_contextvars]) as logs:  # as configure_logging() binds them
        stored = await api.call("put", policy("web"), Stored, {CLIENT_HEADER: "ci"})
        await api.refused("delete", NameRequest(name="nope"))
    events = [
        (e["event"], e.get("verb"), e.get("client"))
        for e in logs
        if e["event"].startswith(("policy_", "request_"))
    ]
    assert events == [("policy_stored", "put", "ci"), ("request_refused", "delete", "anonymous")]
    assert next(e for e in logs if e["event"] == "policy_stored")["revision"] == stored.revision


async def test_putting_an_identical_policy_again_changes_nothing(
    api: Api, policy_service: PolicyService
) -> None:
    first = await api.call("put", policy("web"), Stored)
    again = await api.call("put", policy("web"), Stored, {CLIENT_HEADER: "ci-rerun"})
    assert (again.revision, again.version) == (first.revision, first.version)
    history = await api.call("history", NameRequest(name="web"), PolicyHistory)
    assert [r.client for r in history.revisions] == ["anonymous"]
    changed = await api.call("put", policy("web", description="now different"), Stored)
    assert changed.version == 2


async def test_a_history_too_large_for_one_reply_leaves_out_the_oldest_bodies(
    nc: NATS, api: Api, policy_service: PolicyService
) -> None:
    rules: list[AnyRule] = [FileRule(path="/" + "x" * 3999) for _ in range(nc.max_payload * 2 // 5 // 4030)]
    for n in range(3):  # three versions of a big policy cannot travel in one message
        await api.call("put", Policy(name="big", description=str(n), rules=rules), Stored)
    history = await api.call("history", NameRequest(name="big"), PolicyHistory)
    assert [r.version for r in history.revisions] == [1, 2, 3]
    assert [r.policy is not None for r in history.revisions] == [False, True, True]
    assert history.revisions[-1].policy == Policy(name="big", description="2", rules=rules)
