"""Text from containers (names, executables, paths) is data: in log lines, in subjects, on the wire.
The console's side (autoescaping, textContent only) is tested in
tests/console/test_http.py::test_text_from_containers_is_escaped_on_every_page."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from preguard.proto import Event, Kind, Outcome, Severity, Subjects, decode_events, encode

HOSTILE = [
    'web\n{"level": "critical", "event": "policy_deleted"}',  # a forged second log line
    "%s%s%n%x",  # printf-style formats
    "{0.__class__}{exe}",  # str.format fields
    "../../../etc/shadow",
    "/proc/self/root/../../etc//shadow",
    "host.*.>",  # subject wildcards and separators
    "\x1b[31mred\x1b[0m\x07",  # terminal escapes
    "evil\r\nPUB preguard.api.policy.delete 2\r\n{}\r\n",  # NATS protocol injection
    "<script>alert(1)</script>",
    "\x00nul",
]
TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def _log_line(**values: str) -> str:
    """One line rendered by the same processors configure_logging() installs."""
    out = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(file=out),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    log.info("event_published", **values)
    return out.getvalue()


def test_hostile_text_is_one_json_value_in_one_log_line() -> None:
    for text in HOSTILE:
        line = _log_line(exe=text, target=text, container_name=text)
        assert line.count("\n") == 1 and line.endswith("\n"), line  # no second line can be forged
        parsed = json.loads(line)
        assert parsed["exe"] == parsed["target"] == text  # kept verbatim, never formatted
        assert parsed["event"] == "event_published" and parsed["level"] == "info"


@settings(max_examples=300, deadline=None, database=None)
@given(host=st.text(max_size=300), container=st.text(max_size=300))
def test_any_host_or_container_name_is_one_sanitised_token_of_its_subject(host: str, container: str) -> None:
    subjects = Subjects(prefix="preguard")
    for subject, n in (
        (subjects.events(host, container), 4),
        (subjects.status(host), 3),
        (subjects.policy(host), 3),
    ):
        tokens = subject.split(".")
        assert len(tokens) == n and all(TOKEN.match(t) for t in tokens), subject


def test_hostile_text_crosses_the_wire_unchanged() -> None:
    now = datetime.now(UTC)
    for text in HOSTILE:
        event = Event(
            host="h", container_id="c0ffee000001", container_name=text, image=text, time=now,
            time_ns=1, pid=1, uid=0, exe=text, kind=Kind.FILE, target=text, access="read",
            action=Outcome.BLOCKED, policy="p", rule=0, severity=Severity.HIGH,
        )  # fmt: skip
        wire = encode(event)
        assert b"\n" not in wire and b"\r" not in wire  # one JSON value, control characters escaped
        assert decode_events(wire) == [event]
