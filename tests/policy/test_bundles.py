"""Selection without I/O: host globs for bundles, the full selector for preview."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from preguard.policy.bundles import bundle, host_matches, preview, selects
from preguard.proto import ContainerStatus, Policy, ProbeStatus, Selector

NOW = datetime(2026, 1, 1, tzinfo=UTC)
WEB = ContainerStatus(
    id="a" * 12, name="/web-1", image="docker.io/library/nginx:1.25", labels={"tier": "web"}
)


def with_selector(**kw: object) -> Policy:
    return Policy(name="p", selector=Selector(**kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hosts", "host", "expected"),
    [
        ([], "anything", True),
        (["*"], "web.example", True),
        (["web-?"], "web-1", True),
        (["web-?"], "web-10", False),
        (["WEB-*"], "web-1", False),  # case matters, as in host names on the bus
        (["db-*", "web-[0-9]"], "web-3", True),
    ],
)
def test_host_globs(hosts: list[str], host: str, expected: bool) -> None:
    assert host_matches(with_selector(hosts=hosts), host) is expected


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),
        ({"containers": ["web-*"]}, True),  # Docker's leading slash is not part of the name
        ({"containers": ["db-*"]}, False),
        ({"images": ["nginx:*"]}, True),  # the short form of a docker.io/library reference
        ({"images": ["docker.io/library/nginx*"]}, True),
        ({"images": ["redis*"]}, False),
        ({"labels": {"tier": "web"}}, True),
        ({"labels": {"tier": "db"}}, False),
        ({"labels": {"tier": "web", "team": "a"}}, False),  # every label must match
        ({"hosts": ["other"], "containers": ["web-*"]}, False),  # every field must match
    ],
)
def test_selector_fields_must_all_match(selector: dict[str, object], expected: bool) -> None:
    assert selects(with_selector(**selector), "h1", WEB) is expected


def test_bundle_holds_the_host_matching_policies_sorted_by_name() -> None:
    policies = [
        Policy(name="zed"),
        Policy(name="db", selector=Selector(hosts=["db-*"])),
        Policy(name="all", selector=Selector(hosts=["*"], containers=["nothing-matches"])),
    ]
    got = bundle("web-1", 7, {p.name: p for p in policies}, NOW)
    assert (got.host, got.revision, got.time) == ("web-1", 7, NOW)
    assert [p.name for p in got.policies] == ["all", "zed"]  # containers are the probe's business


def test_preview_lists_reachable_hosts_and_selected_containers() -> None:
    db = ContainerStatus(id="b" * 12, name="db-1", image="postgres:16")
    statuses = {
        h: ProbeStatus(host=h, time=NOW, interval=1.0, containers=[WEB, db]) for h in ("web-host", "db-host")
    }
    hosts, matches = preview(with_selector(hosts=["web-*"], containers=["web-*"]), statuses)
    assert hosts == ["web-host"]
    assert [(m.host, m.container_name, m.image) for m in matches] == [
        ("web-host", "web-1", "docker.io/library/nginx:1.25")
    ]
