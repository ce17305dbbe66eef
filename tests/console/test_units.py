"""The console's modules without I/O, by plain calls: editor, state, chart, sessions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from preguard.console import security
from preguard.console.chart import severity_chart
from preguard.console.editor import diff, parse, to_text
from preguard.console.security import Sessions, csrf_ok, token_matches
from preguard.console.state import AlertBook, Hosts, hourly_counts, matches, merge
from preguard.proto import AlertQuery, FileRule, NetworkRule, Policy, Selector, Severity, decode_policy
from tests.console.conftest import alert, heartbeat

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_error_in_a_nested_field_is_placed_at_its_line() -> None:
    text = (
        "name: web\nrules:\n  - kind: file\n    path: /etc/shadow\n  - kind: network\n    cidr: 10.0.0.1/8\n"
    )
    policy, errors = parse(text, "yaml")
    assert policy is None
    assert [(e.field, e.line) for e in errors] == [("$.rules[1].cidr", 6)]


def test_missing_field_is_placed_at_its_parent() -> None:
    _, errors = parse("name: web\nrules:\n  - kind: file\n    access: read\n", "yaml")
    assert errors[0].field == "$.rules[0].path"
    assert errors[0].line == 3  # the rule that lacks it


def test_json_errors_get_lines_too() -> None:
    text = '{\n  "name": "web",\n  "rules": [\n    {"kind": "process", "name": "a/b"}\n  ]\n}\n'
    _, errors = parse(text, "json")
    assert [(e.field, e.line) for e in errors] == [("$.rules[0].name", 4)]


def test_yaml_syntax_error_is_placed_at_the_line_the_parser_names() -> None:
    _, errors = parse("name: web\nrules: [\n  {kind: file\n", "yaml")
    assert errors[0].field == "$"
    assert errors[0].line is not None


def test_policy_text_round_trips_in_both_formats_and_leaves_defaults_out() -> None:
    policy = Policy(
        name="web",
        severity=Severity.HIGH,
        selector=Selector(containers=["web-*"], labels={"tier": "web"}),
        rules=[FileRule(path="/etc/shadow"), NetworkRule(cidr="127.0.0.2/32", ports="1-1024")],
    )
    for fmt in ("yaml", "json"):
        text = to_text(policy, fmt)  # type: ignore[arg-type]
        assert decode_policy(text, fmt) == policy  # type: ignore[arg-type]
    yaml_text = to_text(policy)
    assert "defaults" not in yaml_text
    assert "description" not in yaml_text
    assert yaml_text.startswith("name: web\n")


def test_diff_marks_added_and_removed_lines() -> None:
    kinds = dict((line, kind) for kind, line in diff("a\nb\n", "a\nc\n", "old", "new"))
    assert kinds["-b"] == "del"
    assert kinds["+c"] == "add"


def test_hourly_counts_slice_the_last_hour_by_severity() -> None:
    alerts = [
        msgspec.structs.replace(alert("/a", alert_id="1"), last_seen=NOW - timedelta(minutes=1)),
        msgspec.structs.replace(alert("/b", alert_id="2"), last_seen=NOW - timedelta(minutes=59)),
        msgspec.structs.replace(
            alert("/c", alert_id="3", severity=Severity.LOW), last_seen=NOW - timedelta(minutes=2)
        ),
        msgspec.structs.replace(alert("/d", alert_id="4"), last_seen=NOW - timedelta(minutes=61)),
    ]
    slices, totals = hourly_counts(alerts, NOW)
    assert totals[Severity.HIGH] == 2
    assert totals[Severity.LOW] == 1
    assert slices[-1][Severity.HIGH] == 1
    assert slices[0][Severity.HIGH] == 1


def test_chart_draws_one_bar_part_per_severity_and_slice_without_inline_style() -> None:
    slices, totals = hourly_counts([msgspec.structs.replace(alert("/a"), last_seen=NOW)], NOW)
    svg = str(severity_chart(slices, totals))
    assert svg.count("<rect") == 1
    assert 'data-severity="high" data-count="1"' in svg
    assert "style=" not in svg  # the CSP forbids inline styles: colours come from classes


def test_book_keeps_the_highest_count_when_an_older_copy_arrives_late() -> None:
    book = AlertBook(limit=2)
    seq = book.add(alert("/a", 5, alert_id="x"))
    assert book.add(alert("/a", 3, alert_id="x")) == seq  # nothing changed
    got = book.get("x")
    assert got is not None
    assert got.count == 5
    book.add(alert("/b", alert_id="y"))
    book.add(alert("/c", alert_id="z"))
    assert book.get("x") is None  # the oldest went
    assert [a.id for _, a in book.since(seq)] == ["y", "z"]


def test_filters_match_severity_host_container_and_policy() -> None:
    a = alert("/a")
    assert matches(AlertQuery(severity=["high"], host="h1", container="web-1", policy="lock"), a)
    assert matches(AlertQuery(container="c0ffee000001"), a)
    assert not matches(AlertQuery(severity=["low"]), a)
    assert not matches(AlertQuery(host="h2"), a)
    assert not matches(AlertQuery(policy="other"), a)


def test_merge_keeps_one_alert_per_id_with_the_highest_count() -> None:
    merged = merge([alert("/a", 2, alert_id="x")], [alert("/a", 7, alert_id="x"), alert("/b", alert_id="y")])
    assert sorted((a.id, a.count) for a in merged) == [("x", 7), ("y", 1)]


def test_host_is_stale_after_three_missed_heartbeats() -> None:
    hosts = Hosts()
    hosts.update(heartbeat("h1"), NOW)
    (view,) = hosts.all()
    assert view.healthy(NOW + timedelta(seconds=2))
    assert not view.healthy(NOW + timedelta(seconds=4))


def test_sessions_issue_fresh_ids_and_check_csrf() -> None:
    sessions = Sessions()
    sid, session = sessions.new()
    sid2, _ = sessions.new(signed_in=True)
    assert sid != sid2
    assert sessions.get(sid) is session
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, "")
    assert not csrf_ok(session, None)
    assert not csrf_ok(None, session.csrf)
    sessions.drop(sid)
    assert sessions.get(sid) is None


def test_expired_session_is_gone() -> None:
    sessions = Sessions(lifetime=-1)
    sid, _ = sessions.new(signed_in=True)
    assert sessions.get(sid) is None


def test_token_comparison() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abd", "abc")
    assert not token_matches("", "abc")


def test_a_flood_of_anonymous_sessions_does_not_sign_out_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(security, "MAX_SESSIONS", 3)
    sessions = Sessions()
    operator, _ = sessions.new(signed_in=True)
    for _ in range(10):
        sessions.new()
    assert sessions.get(operator) is not None
