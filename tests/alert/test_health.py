"""Probe health from heartbeats, driven by plain calls and a hand-turned clock."""

from __future__ import annotations

from datetime import UTC, datetime

from preguard.alert.health import HealthTracker
from preguard.proto import ContainerStatus, Kind, ProbeStatus, ProcessCoverage, Severity


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status(*uncovered: ProcessCoverage, host: str = "h1") -> ProbeStatus:
    container = ContainerStatus(id="c0ffee000001", name="web-1", image="nginx", uncovered=list(uncovered))
    return ProbeStatus(host=host, time=datetime.now(UTC), interval=5.0, containers=[container])


def test_silent_probe_raises_one_critical_alert_and_its_return_clears_it() -> None:
    clock = Clock()
    tracker = HealthTracker(misses=3, clock=clock)
    tracker.heartbeat(status())
    clock.now += 14.9
    tracker.check()
    assert tracker.take()[0] == []
    clock.now += 0.1
    tracker.check()
    tracker.check()
    [raised] = tracker.take()[0]
    assert (raised.kind, raised.severity, raised.action, raised.state) == (
        Kind.PROBE,
        Severity.CRITICAL,
        "raised",
        "new",
    )
    tracker.heartbeat(status())
    [cleared] = tracker.take()[0]
    assert (cleared.id, cleared.action, cleared.state) == (raised.id, "cleared", "final")


def test_coverage_alert_once_per_change_naming_processes_and_why() -> None:
    tracker = HealthTracker(misses=3, clock=Clock())
    old = ProcessCoverage(pid=12, exe="/usr/bin/app", reason="started_before_injection")
    tracker.heartbeat(status(old))
    tracker.heartbeat(status(old))
    [first] = tracker.take()[0]
    assert first.kind == Kind.COVERAGE and "pid 12 /usr/bin/app: started_before_injection" in first.detail
    static = ProcessCoverage(pid=40, exe="/opt/gobin", reason="static_binary")
    tracker.heartbeat(status(old, static))
    [second] = tracker.take()[0]
    assert "static_binary" in second.detail and second.id != first.id
    tracker.heartbeat(status())
    [cleared] = tracker.take()[0]
    assert (cleared.id, cleared.action, cleared.state) == (second.id, "cleared", "final")
    tracker.heartbeat(status())
    assert tracker.take()[0] == []
