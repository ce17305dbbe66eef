"""Events into alerts for one partition: windows per key, throttled updates, finals, attack correlation.

No I/O: the service feeds events with their work-stream sequence, then takes the alerts to publish
and the window states to persist. The clock is injected (wall-clock seconds) so that tests drive
time by hand and persisted deadlines survive a restart.

Exactness rests on the sequence: each window remembers the last stream sequence folded into it,
and messages arrive in stream order, so a message redelivered after a crash is skipped by every
window that already counted it and folded by every window that did not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from preguard.proto import Alert, Event, Kind, Severity

Key = tuple[str, str, str, int, str, str, str]  # host, container_id, policy, rule, kind, target, action
MAX_TARGETS = 50  # names an attack alert keeps; distinct hits beyond are not counted


class Window(msgspec.Struct, kw_only=True):
    """One open (or recently closed) alert; mutable, persisted in the state bucket as JSON."""

    alert: Alert  # as first published (state new); updates are built from it
    seq: int  # last work-stream sequence folded in
    first_ns: int  # event time the window starts at; it covers [first_ns, first_ns + window)
    count: int
    last_seen: datetime
    opened: float  # clock when opened: closes at opened + window + grace at the latest
    published_at: float = 0.0
    published_count: int = 0
    closed: bool = False
    announced: bool = True  # attack windows stay silent until the threshold is reached
    targets: list[str] = []  # attack windows: the distinct hits, as `policy#rule kind target`
    closed_at: float = 0.0
    folding: int = msgspec.field(default=0, name="_folding")  # transient: the seq being folded now


def key_name(key: Key) -> str:
    """A stable KV-safe name for a key (the state bucket holds one entry per key)."""
    raw = "\x00".join(map(str, key)).encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def alert_id(name: str, seq: int, first_ns: int) -> str:
    """Deterministic: a message redelivered after a crash recreates the same id, never a new one."""
    return hashlib.blake2b(f"{name}:{seq}:{first_ns}".encode(), digest_size=10).hexdigest()


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


class Aggregator:
    def __init__(
        self,
        *,
        window: float = 60.0,
        update_interval: float = 5.0,
        grace: float = 2.0,
        attack_threshold: int = 10,
        clock: Callable[[], float],
    ) -> None:
        self.window, self.update_interval, self.grace = window, update_interval, grace
        self.attack_threshold = attack_threshold
        self._window_ns = int(window * 1e9)
        self._clock = clock
        self.windows: dict[Key, Window] = {}
        self._names: dict[Key, str] = {}
        self._outbox: list[Alert] = []
        self._changes: dict[str, Window | None] = {}  # key name -> state to persist (None: delete)
        self._changed: set[Key] = set()  # folded since their last publish
        self._dirty: set[Key] = set()  # folded since their last persist

    # -- input ------------------------------------------------------------------------------------
    def restore(self, window: Window) -> None:
        window.folding = 0  # a persisted mark must not let a redelivered message fold twice
        self.windows[key_of(window.alert)] = window

    def add(self, events: list[Event], seq: int) -> None:
        """Fold one message's events (stream sequence `seq`, strictly increasing across calls)."""
        windows = self.windows
        for ev in events:
            key: Key = (ev.host, ev.container_id, ev.policy, ev.rule, ev.kind, ev.target, ev.action)
            w = windows.get(key)
            if w is not None:
                if w.seq >= seq and w.folding != seq:
                    continue  # redelivered: this window already counted the message
                if w.closed or ev.time_ns >= w.first_ns + self._window_ns:
                    if not w.closed:
                        self._close(key, w)
                    w = None
            if w is None:
                self._open(key, ev, seq)
                continue
            w.count += 1
            w.seq = w.folding = seq
            if ev.time > w.last_seen:
                w.last_seen = ev.time
            self._changed.add(key)
            self._dirty.add(key)

    # -- time -------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Updates for windows that changed and were last published at least update_interval ago."""
        now = self._clock()
        for key in list(self._changed):
            w = self.windows[key]
            if w.closed or now >= w.opened + self.window + self.grace:
                continue  # closed, or about to be: the final carries the count
            if now - w.published_at >= self.update_interval:
                self._changed.discard(key)
                if w.announced and w.count != w.published_count:
                    self._publish(w, "update")
                self._persist(key, w)

    def expire(self) -> None:
        """Finals for windows past their deadline; forget windows closed a window ago."""
        now = self._clock()
        for key, w in list(self.windows.items()):
            if not w.closed and now >= w.opened + self.window + self.grace:
                self._close(key, w)
            elif w.closed and now >= w.closed_at + self.window + self.grace:
                del self.windows[key]
                self._changes[self._names.pop(key, "") or key_name(key)] = None

    def take(self) -> tuple[list[Alert], dict[str, Window | None]]:
        """What to publish, then what to persist (in this order), since the last take."""
        for key in self._dirty:  # counted but not yet due: persisted so a restart keeps them
            if (w := self.windows.get(key)) is not None:
                self._persist(key, w)
        self._dirty.clear()
        out, changes = self._outbox, self._changes
        self._outbox, self._changes = [], {}
        return out, changes

    # -- internals ---------------------------------------------------------------------------------
    def _name(self, key: Key) -> str:
        if (name := self._names.get(key)) is None:
            name = self._names[key] = key_name(key)
        return name

    def _persist(self, key: Key, w: Window) -> None:
        self._changes[self._name(key)] = w

    def _open(self, key: Key, ev: Event, seq: int) -> None:
        name = self._name(key)
        severity = Severity.CRITICAL if ev.kind == Kind.TAMPER else ev.severity
        alert = Alert(
            id=alert_id(name, seq, ev.time_ns),
            host=ev.host,
            container_id=ev.container_id,
            container_name=ev.container_name,
            image=ev.image,
            policy=ev.policy,
            rule=ev.rule,
            kind=ev.kind,
            target=ev.target,
            action=ev.action,
            severity=severity,
            count=1,
            first_seen=ev.time,
            last_seen=ev.time,
            sample=ev,
            state="new",
            title=f"{ev.action} {ev.kind} {ev.target} in {ev.container_name} ({ev.policy} rule {ev.rule})",
            detail=f"{ev.exe} (pid {ev.pid}, uid {ev.uid}) {ev.access} {ev.target}",
        )
        now = self._clock()
        w = Window(alert=alert, seq=seq, first_ns=ev.time_ns, count=1, last_seen=ev.time, opened=now)
        w.folding = seq
        self.windows[key] = w
        self._publish(w, "new")
        self._persist(key, w)
        if ev.kind != Kind.TAMPER:
            self._note_attack(ev, seq, f"{ev.policy}#{ev.rule} {ev.kind} {ev.target}")

    def _note_attack(self, ev: Event, seq: int, hit: str) -> None:
        """Count a distinct rule or target hit against the container's attack window."""
        key: Key = (ev.host, ev.container_id, "", -1, Kind.ATTACK, "", "raised")
        w = self.windows.get(key)
        if w is not None and (w.closed or ev.time_ns >= w.first_ns + self._window_ns):
            if not w.closed:
                self._close(key, w)
            w = None
        if w is None:
            name = self._name(key)
            alert = Alert(
                id=alert_id(name, seq, ev.time_ns),
                host=ev.host,
                container_id=ev.container_id,
                container_name=ev.container_name,
                image=ev.image,
                policy="",
                rule=-1,
                kind=Kind.ATTACK,
                target=ev.container_name,
                action="raised",
                severity=Severity.CRITICAL,
                count=0,
                first_seen=ev.time,
                last_seen=ev.time,
                sample=ev,
                state="new",
                title=f"container {ev.container_name} on {ev.host} is under attack",
            )
            w = Window(
                alert=alert,
                seq=seq,
                first_ns=ev.time_ns,
                count=0,
                last_seen=ev.time,
                opened=self._clock(),
                announced=False,
            )
            self.windows[key] = w
        if hit in w.targets or len(w.targets) >= MAX_TARGETS:
            return
        w.targets.append(hit)
        w.count, w.seq = len(w.targets), max(w.seq, seq)
        w.last_seen = max(w.last_seen, ev.time)
        if not w.announced and w.count >= self.attack_threshold:
            w.announced = True
            self._publish(w, "new")
        self._changed.add(key)
        self._persist(key, w)

    def _close(self, key: Key, w: Window) -> None:
        w.closed, w.closed_at = True, self._clock()
        self._changed.discard(key)
        if w.announced:
            self._publish(w, "final")
        self._persist(key, w)

    def _publish(self, w: Window, state: str) -> None:
        base = w.alert
        detail = base.detail
        if base.kind == Kind.ATTACK:
            detail = f"{w.count} distinct rules or targets within {self.window:g}s: " + "; ".join(w.targets)
        self._outbox.append(
            msgspec.structs.replace(base, count=w.count, last_seen=w.last_seen, state=state, detail=detail)
        )
        w.published_at, w.published_count = self._clock(), w.count


def key_of(alert: Alert) -> Key:
    if alert.kind == Kind.ATTACK:
        return (alert.host, alert.container_id, "", -1, Kind.ATTACK, "", "raised")
    return (
        alert.host,
        alert.container_id,
        alert.policy,
        alert.rule,
        alert.kind,
        alert.target,
        alert.action,
    )
