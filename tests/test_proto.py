"""The message contract: policies decode, validate and refuse with the field; subjects sanitise."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS

from preguard.proto import (
    Action,
    Event,
    FieldError,
    FileRule,
    InvalidPolicy,
    Kind,
    NetworkRule,
    Outcome,
    Policy,
    ProcessRule,
    Severity,
    Subjects,
    decode,
    decode_events,
    decode_policies,
    decode_policy,
    encode,
    load_policies,
    token,
)
from preguard.proto.schema import SCHEMA_DIR, TYPES, render

EXAMPLE_YAML = """
name: web-lockdown
description: no shells, no secrets, no metadata service
severity: high
selector:
  hosts: ["*"]
  containers: ["web-*"]
  images: ["nginx*"]
  labels: {tier: web}
defaults:
  process: allow
rules:
  - {kind: process, path: /bin/sh, action: block}
  - {kind: process, name: nc, action: block}
  - {kind: file, path: /etc/shadow, access: read, action: block}
  - {kind: file, path: "/var/www/**", access: write, action: audit}
  - {kind: network, cidr: 127.0.0.2/32, ports: "1-1024", protocol: tcp, action: block}
  - {kind: network, cidr: "::ffff:127.0.0.0/104", action: block}
  - {kind: network, unix: /var/run/docker.sock, action: block}
"""


def refusal(data: str | bytes, fmt: str = "json") -> list[FieldError]:
    with pytest.raises(InvalidPolicy) as info:
        decode_policy(data, fmt)  # type: ignore[arg-type]
    assert info.value.details, "a refusal always says why"
    return info.value.details


def test_contract_example_decodes_from_yaml_with_every_rule_kind() -> None:
    policy = decode_policy(EXAMPLE_YAML, "yaml")
    assert policy.severity is Severity.HIGH
    assert policy.selector.labels == {"tier": "web"}
    assert [type(r) for r in policy.rules] == [
        ProcessRule,
        ProcessRule,
        FileRule,
        FileRule,
        NetworkRule,
        NetworkRule,
        NetworkRule,
    ]
    assert policy.rules[3].action is Action.AUDIT


def test_policy_round_trips_through_json_and_yaml() -> None:
    policy = decode_policy(EXAMPLE_YAML, "yaml")
    assert decode_policy(encode(policy)) == policy
    import yaml

    as_yaml = yaml.safe_dump(msgspec.to_builtins(policy))
    assert decode_policy(as_yaml, "yaml") == policy


@pytest.mark.parametrize(
    ("doc", "field", "reason"),
    [
        ({"rules": []}, "$.name", "missing required field"),
        ({"name": "Web!"}, "$.name", "matching regex"),
        ({"name": "a", "rules": [{"kind": "teleport"}]}, "$.rules[0].kind", "Invalid value 'teleport'"),
        (
            {"name": "a", "rules": [{"kind": "network", "cidr": "10.0.0.300/8"}]},
            "$.rules[0].cidr",
            "not an IPv4 or IPv6",
        ),
        ({"name": "a", "rules": [{"kind": "network", "cidr": "10.0.0.1/8"}]}, "$.rules[0].cidr", "host bits"),
        (
            {"name": "a", "rules": [{"kind": "network", "cidr": "fe80::/300"}]},
            "$.rules[0].cidr",
            "not an IPv4 or IPv6",
        ),
        (
            {"name": "a", "rules": [{"kind": "network", "cidr": "127.0.0.0/8", "ports": "70000"}]},
            "$.rules[0].ports",
            "70000 is outside 1-65535",
        ),
        (
            {"name": "a", "rules": [{"kind": "network", "cidr": "127.0.0.0/8", "ports": "90-80"}]},
            "$.rules[0].ports",
            "backwards",
        ),
        (
            {"name": "a", "rules": [{"kind": "network", "cidr": "127.0.0.0/8", "ports": "http"}]},
            "$.rules[0].ports",
            "not a port list",
        ),
        ({"name": "a", "rules": [{"kind": "network", "unix": "run/x.sock"}]}, "$.rules[0].unix", "absolute"),
        (
            {"name": "a", "rules": [{"kind": "network", "unix": "/x", "ports": "80"}]},
            "$.rules[0]",
            "do not apply",
        ),
        ({"name": "a", "rules": [{"kind": "network"}]}, "$.rules[0]", "exactly one of `cidr` or `unix`"),
        (
            {"name": "a", "rules": [{"kind": "process", "path": "/bin/sh", "acton": "block"}]},
            "$.rules[0].acton",
            "unknown field",
        ),
        ({"name": "a", "rules": [{"kind": "process"}]}, "$.rules[0]", "exactly one of `path` or `name`"),
        ({"name": "a", "rules": [{"kind": "process", "name": "bin/sh"}]}, "$.rules[0].name", "base name"),
        ({"name": "a", "rules": [{"kind": "file", "path": "etc/shadow"}]}, "$.rules[0].path", "absolute"),
        (
            {"name": "a", "rules": [{"kind": "file", "path": "/x", "access": "exec"}]},
            "$.rules[0].access",
            "Invalid enum value",
        ),
        ({"name": "a", "severity": "urgent"}, "$.severity", "Invalid enum value"),
        ({"name": "a", "selector": {"labels": {"tier": 1}}}, "$.selector.labels.tier", "Expected `str`"),
        ({"name": "a", "selektor": {}}, "$.selektor", "unknown field"),
    ],
)
def test_bad_policy_is_refused_naming_the_field(doc: dict[str, object], field: str, reason: str) -> None:
    details = refusal(json.dumps(doc))
    assert any(d.field == field and reason in d.error for d in details), details


def test_unquoted_yes_label_in_yaml_is_refused_with_a_hint() -> None:
    details = refusal("name: a\nselector: {labels: {public: yes}}\n", "yaml")
    assert details[0].field == "$.selector.labels.public"
    assert "quote it" in details[0].error


def test_every_problem_in_one_policy_is_reported() -> None:
    doc = {"name": "a", "rules": [{"kind": "file", "path": "x"}, {"kind": "network", "cidr": "1.2.3.4/33"}]}
    fields = {d.field for d in refusal(json.dumps(doc))}
    assert fields == {"$.rules[0].path", "$.rules[1].cidr"}


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"\xff\xfe\x00garbage", b"[1, 2", b"null", b"[" * 100_000],
    ids=["empty", "text", "binary", "truncated", "null", "deep"],
)
def test_non_json_is_refused_with_a_reason(data: bytes) -> None:
    details = refusal(data)
    assert details[0].field.startswith("$")


def test_a_megabyte_of_garbage_is_refused_without_parsing() -> None:
    details = refusal(b"x" * (1 << 20))
    assert "over the" in details[0].error


def test_yaml_garbage_and_deep_nesting_are_refused() -> None:
    assert "not valid YAML" in refusal("name: [unclosed", "yaml")[0].error
    assert refusal("[" * 50_000, "yaml")


def test_policy_files_load_several_yaml_documents_and_json_lists(tmp_path: Path) -> None:
    multi = tmp_path / "p.yaml"
    multi.write_text("name: one\n---\nname: two\nrules: [{kind: process, name: nc}]\n")
    assert [p.name for p in load_policies(multi)] == ["one", "two"]
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps([{"name": "one"}, {"name": "two"}]))
    assert [p.name for p in load_policies(as_json)] == ["one", "two"]
    with pytest.raises(InvalidPolicy) as info:
        decode_policies("name: one\n---\nname: Two\n")
    assert info.value.details[0].field == "$[1].name"


def test_subjects_follow_the_contract_and_sanitise_tokens() -> None:
    s = Subjects()
    assert s.api_policy("put") == "preguard.api.policy.put"
    assert s.policy("web.1") == "preguard.policy.web_1"
    assert s.events("host a", "abcdef123456") == "preguard.events.host_a.abcdef123456"
    assert s.status("h*>") == "preguard.status.h__"
    assert s.alerts("high", "h1") == "preguard.alerts.high.h1"
    assert token("") == "_"
    assert s.alerts_matching("high") == "preguard.alerts.high.*"
    assert s.alerts_matching(host="web.1") == "preguard.alerts.*.web_1"
    assert Subjects(prefix="acme.pg").events_all() == "acme.pg.events.>"
    assert Subjects(prefix="acme.pg").stream_events() == "acme_pg_events"
    with pytest.raises(ValueError, match="invalid subject prefix"):
        Subjects(prefix="a.*")


def _event(**overrides: object) -> Event:
    fields: dict[str, object] = dict(
        host="h1", container_id="abcdef123456", container_name="web-1", image="nginx:1",
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), time_ns=1, pid=7, uid=0, exe="/bin/sh",
        kind=Kind.FILE, target="/etc/shadow", access="read", action=Outcome.BLOCKED,
        policy="web-lockdown", rule=2, severity=Severity.HIGH,
    )  # fmt: skip
    fields.update(overrides)
    return Event(**fields)  # type: ignore[arg-type]


def test_event_time_is_rfc3339_utc_and_unknown_fields_are_tolerated() -> None:
    wire = json.loads(encode(_event()))
    assert wire["time"] == "2026-01-02T03:04:05Z"
    wire["added_by_a_newer_probe"] = 1
    assert decode(json.dumps(wire).encode(), Event) == _event()
    assert decode_events(json.dumps([wire, wire]).encode()) == [_event(), _event()]


async def test_policy_crosses_a_real_nats_server_intact(nc: NATS, subjects: Subjects) -> None:
    policy = decode_policy(EXAMPLE_YAML, "yaml")
    sub = await nc.subscribe(subjects.api_policy("put"))
    await nc.publish(subjects.api_policy("put"), encode(policy))
    msg = await sub.next_msg(timeout=2)
    assert decode_policy(msg.data) == policy
    assert decode(msg.data, Policy) == policy


@pytest.mark.parametrize("name", sorted(TYPES))
def test_committed_json_schemas_match_the_code(name: str) -> None:
    committed = (SCHEMA_DIR / f"{name}.schema.json").read_bytes()
    assert committed == render(name), f"stale schema: run `preguard schema` ({name})"


def test_a_heartbeat_is_attributed_by_its_subject_not_by_what_it_claims() -> None:
    from preguard.proto import ProbeStatus, decode_status

    s = Subjects()
    body = encode(ProbeStatus(host="web.1", time=datetime(2026, 1, 1, tzinfo=UTC), interval=5))
    assert decode_status(s, "preguard.status.web_1", body).host == "web.1"
    with pytest.raises(msgspec.ValidationError, match=r"is not the one of subject preguard\.status\.db"):
        decode_status(s, "preguard.status.db", body)
