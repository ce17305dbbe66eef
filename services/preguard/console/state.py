"""What the console knows from the bus, without I/O: probe heartbeats and recent alerts."""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import msgspec

from preguard.proto import Alert, AlertQuery, ContainerStatus, ProbeStatus, Severity

STALE_AFTER = 3  # heartbeats missed before a probe is shown as stale
MAX_ALERTS = 2000  # alerts kept in memory for the live list and the chart


class HostView(msgspec.Struct, frozen=True, kw_only=True):
    """One probe's last heartbeat, as the overview shows it."""

    status: ProbeStatus
    received: datetime  # our clock, so a probe with a wrong clock still shows its age right

    def age(self, now: datetime) -> float:
        return (now - self.received).total_seconds()

    def healthy(self, now: datetime) -> bool:
        return self.age(now) <= STALE_AFTER * max(self.status.interval, 1.0)


class Hosts:
    """The last ProbeStatus per host."""

    def __init__(self) -> None:
        self._hosts: dict[str, HostView] = {}

    def update(self, status: ProbeStatus, now: datetime) -> None:
        self._hosts[status.host] = HostView(status=status, received=now)

    def all(self) -> list[HostView]:
        return [self._hosts[h] for h in sorted(self._hosts)]

    def containers(self) -> list[tuple[str, ContainerStatus]]:
        return [(v.status.host, c) for v in self.all() for c in v.status.containers]


class AlertBook:
    """Recent alerts by id, in the order they last changed; the live feed and query replies land here.

    Each change gets a sequence number, so a browser that reconnects (sending the last number it
    saw) is sent what changed while it was away.
    """

    def __init__(self, limit: int = MAX_ALERTS) -> None:
        self._alerts: OrderedDict[str, tuple[int, Alert]] = OrderedDict()
        self._limit = limit
        self._seq = 0

    def add(self, alert: Alert) -> int:
        """Keep the alert; its sequence number (unchanged if a late, older copy arrived)."""
        old = self._alerts.get(alert.id)
        if old is not None and old[1].count > alert.count:  # an older copy arrived late: keep ours
            return old[0]
        self._alerts.pop(alert.id, None)
        self._seq += 1
        self._alerts[alert.id] = (self._seq, alert)
        while len(self._alerts) > self._limit:
            self._alerts.popitem(last=False)
        return self._seq

    def get(self, alert_id: str) -> Alert | None:
        found = self._alerts.get(alert_id)
        return found[1] if found else None

    def query(self, q: AlertQuery) -> list[Alert]:
        found = [a for _, a in reversed(self._alerts.values()) if matches(q, a)]
        return found[: q.limit]

    def since(self, seq: int) -> list[tuple[int, Alert]]:
        """What changed after `seq`, oldest first."""
        return [(n, a) for n, a in self._alerts.values() if n > seq]


def matches(q: AlertQuery, alert: Alert) -> bool:
    """AlertQuery's filters, applied to one alert (the live stream uses the same ones)."""
    if q.severity and alert.severity not in q.severity:
        return False
    if q.host and alert.host != q.host:
        return False
    if q.container and q.container not in (alert.container_id, alert.container_name):
        return False
    if q.policy and alert.policy != q.policy:
        return False
    return not (q.since and alert.last_seen < q.since)


def merge(*lists: list[Alert]) -> list[Alert]:
    """One list per alert id (highest count wins), newest first."""
    best: dict[str, Alert] = {}
    for alerts in lists:
        for a in alerts:
            if a.id not in best or a.count >= best[a.id].count:
                best[a.id] = a
    return sorted(best.values(), key=lambda a: a.last_seen, reverse=True)


SEVERITIES = [Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW]


def hourly_counts(
    alerts: list[Alert], now: datetime, buckets: int = 12
) -> tuple[list[dict[Severity, int]], dict[Severity, int]]:
    """Alerts last seen in the past hour, per severity, in `buckets` slices (oldest first), and totals."""
    width = timedelta(hours=1) / buckets
    start = now - timedelta(hours=1)
    slices: list[dict[Severity, int]] = [dict.fromkeys(SEVERITIES, 0) for _ in range(buckets)]
    totals = dict.fromkeys(SEVERITIES, 0)
    for a in alerts:
        seen = a.last_seen if a.last_seen.tzinfo else a.last_seen.replace(tzinfo=UTC)
        if not start <= seen <= now:
            continue
        i = min(int((seen - start) / width), buckets - 1)
        slices[i][a.severity] += 1
        totals[a.severity] += 1
    return slices, totals
