"""Probe health from heartbeats: a silent probe, its return, and coverage changes per container.

No I/O: the service feeds ProbeStatus heartbeats and calls check() on a timer, then takes the
alerts to publish and the per-host states to persist. Heartbeat times are not persisted: after a
restart every known host gets a fresh `misses` intervals before it counts as silent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from preguard.proto import Alert, Kind, ProbeStatus, Severity


class Coverage(msgspec.Struct, kw_only=True):
    signature: str  # what the last coverage alert said; "" when everything is covered
    alert_id: str = ""
    name: str = ""
    image: str = ""


class HostHealth(msgspec.Struct, kw_only=True):
    """One probe's health as persisted: whether its silence is raised, and coverage per container."""

    host: str
    interval: float
    silent_id: str = ""  # id of the raised silence alert; "" when the probe is alive
    silent_since: datetime | None = None
    coverage: dict[str, Coverage] = {}
    last: float = 0.0  # clock of the last heartbeat (reset to now on restore)


def _id(*parts: str) -> str:
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=10).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class HealthTracker:
    def __init__(self, *, misses: int = 3, clock: Callable[[], float]) -> None:
        self.misses = misses
        self._clock = clock
        self.hosts: dict[str, HostHealth] = {}
        self._outbox: list[Alert] = []
        self._changes: dict[str, HostHealth] = {}

    def restore(self, state: HostHealth) -> None:
        state.last = self._clock()
        self.hosts[state.host] = state

    def heartbeat(self, status: ProbeStatus) -> None:
        h = self.hosts.get(status.host)
        if h is None:
            h = self.hosts[status.host] = HostHealth(host=status.host, interval=status.interval)
            self._changes[h.host] = h
        h.last, h.interval = self._clock(), status.interval
        if h.silent_id:
            self._outbox.append(self._probe_alert(h, "cleared", "final"))
            h.silent_id, h.silent_since = "", None
            self._changes[h.host] = h
        seen = set()
        for c in status.containers:
            seen.add(c.id)
            signature = "; ".join(
                f"pid {p.pid} {p.exe}: {p.reason}" for p in sorted(c.uncovered, key=lambda p: p.pid)
            )
            before = h.coverage.get(c.id)
            if (before.signature if before else "") == signature:
                continue
            if signature:
                cov = Coverage(signature=signature, name=c.name, image=c.image)
                cov.alert_id = _id(h.host, c.id, signature, str(self._clock()))
                h.coverage[c.id] = cov
                self._outbox.append(self._coverage_alert(h.host, c.id, cov, "raised", "new"))
            else:
                assert before is not None
                self._outbox.append(self._coverage_alert(h.host, c.id, before, "cleared", "final"))
                del h.coverage[c.id]
            self._changes[h.host] = h
        for gone in set(h.coverage) - seen:  # container removed: nothing left to cover
            del h.coverage[gone]
            self._changes[h.host] = h

    def check(self) -> None:
        """Raise a critical alert for every probe silent for `misses` of its intervals."""
        now = self._clock()
        for h in self.hosts.values():
            if not h.silent_id and now - h.last >= self.misses * h.interval:
                h.silent_since = datetime.fromtimestamp(h.last, UTC)
                h.silent_id = _id(h.host, "silent", str(h.last))
                self._outbox.append(self._probe_alert(h, "raised", "new"))
                self._changes[h.host] = h

    def take(self) -> tuple[list[Alert], dict[str, HostHealth]]:
        out, changes = self._outbox, self._changes
        self._outbox, self._changes = [], {}
        return out, changes

    def _probe_alert(self, h: HostHealth, action: str, state: str) -> Alert:
        since = h.silent_since or _now()
        raised = action == "raised"
        return Alert(
            id=h.silent_id,
            host=h.host,
            container_id="",
            container_name="",
            image="",
            policy="",
            rule=-1,
            kind=Kind.PROBE,
            target=h.host,
            action=action,
            severity=Severity.CRITICAL,
            count=1,
            first_seen=since,
            last_seen=_now(),
            state=state,
            title=f"probe on {h.host} {'is silent' if raised else 'is back'}",
            detail=(
                f"no heartbeat for {self.misses} intervals of {h.interval:g}s since {since.isoformat()}"
                if raised
                else f"heartbeat received again after silence since {since.isoformat()}"
            ),
        )

    def _coverage_alert(self, host: str, cid: str, cov: Coverage, action: str, state: str) -> Alert:
        now = _now()
        raised = action == "raised"
        return Alert(
            id=cov.alert_id,
            host=host,
            container_id=cid,
            container_name=cov.name,
            image=cov.image,
            policy="",
            rule=-1,
            kind=Kind.COVERAGE,
            target=cov.name,
            action=action,
            severity=Severity.HIGH,
            count=cov.signature.count(";") + 1,
            first_seen=now,
            last_seen=now,
            state=state,
            title=(
                f"processes in {cov.name} on {host} run without preguard"
                if raised
                else f"every process in {cov.name} on {host} is covered again"
            ),
            detail=cov.signature,
        )
