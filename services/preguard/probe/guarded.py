"""One container as the probe tracks it: facts, what was injected, counters, events, status."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from preguard.probe.inject import Installed
from preguard.probe.libc import Libc
from preguard.probe.pipes import PipeReader, TokenBucket
from preguard.probe.rootfs import RootFS
from preguard.probe.selection import ContainerInfo
from preguard.proto import ContainerStatus, Event, Kind, Outcome, ProcessCoverage, Severity
from preguard.proto.abi import Record
from preguard.proto.rulesfile import CompiledRules

MAX_UNCOVERED = 100  # per container in a heartbeat: the message stays small with thousands of processes
KEEP_REVISIONS = 4  # records written under recent rules still find their origins


class Tracked:
    def __init__(self, info: ContainerInfo, rate: float, burst: float) -> None:
        self.info = info
        self.root: RootFS | None = None
        self.libc = Libc(family="unknown")
        self.coverable = True
        self.reason = ""
        self.volume = info.preload_env and info.preguard_volume  # create-time path: no preload edit
        self.policies: list[str] = []
        self.revision = 0
        self.guarded = False  # selected by a policy and injected
        self.injected = False  # our files are in place (also for an unselected volume container)
        self.installed = Installed()
        self.reader: PipeReader | None = None
        self.old_readers: list[PipeReader] = []
        self.controls: dict[int, int] = {}  # inode -> descriptor of every control file processes map
        self.compiled: dict[int, CompiledRules] = {}
        self.bucket = TokenBucket(rate, burst, time.monotonic())
        self.events = 0
        self.dropped = 0  # refused by the rate limit or the full buffer
        self.drops_library = 0
        self.covered = 0
        self.uncovered: list[ProcessCoverage] = []

    @property
    def drops_probe(self) -> int:
        readers = [self.reader, *self.old_readers] if self.reader else self.old_readers
        return self.dropped + sum(r.invalid for r in readers) + self._old_invalid

    _old_invalid = 0

    def close_reader(self) -> None:
        if self.reader is not None:
            self._old_invalid += self.reader.invalid
            self.reader.close()
            self.reader = None

    def retire_reader(self) -> None:
        """The pipe was replaced: processes that opened the old one still write there, keep reading."""
        if self.reader is not None:
            self.old_readers.append(self.reader)
            self.reader = None

    def close(self) -> None:
        self.close_reader()
        for reader in self.old_readers:
            self._old_invalid += reader.invalid
            reader.close()
        self.old_readers.clear()
        for fd in self.controls.values():
            os.close(fd)
        self.controls.clear()
        if self.root is not None:
            self.root.close()
            self.root = None

    def refuse(self, reason: str) -> None:
        self.coverable, self.reason, self.guarded = False, reason, False

    def keep_compiled(self, compiled: CompiledRules) -> None:
        self.compiled[compiled.revision] = compiled
        for old in sorted(self.compiled)[:-KEEP_REVISIONS]:
            del self.compiled[old]

    def to_events(self, records: list[Record], host: str) -> list[Event]:
        """Records enriched into Events, attributed to this container whatever they claim."""
        now = time.monotonic()
        admitted = self.bucket.take(now, len(records))
        self.dropped += len(records) - admitted
        current = self.compiled.get(self.revision)
        out = []
        for r in records[:admitted]:
            compiled = self.compiled.get(r.revision, current)
            origin = compiled.origin(r.rule_id) if compiled is not None else None
            tamper = r.kind == Kind.TAMPER
            out.append(
                Event(
                    host=host,
                    container_id=self.info.short_id,
                    container_name=self.info.name,
                    image=self.info.image,
                    time=datetime.fromtimestamp(r.time_ns / 1e9, UTC),
                    time_ns=r.time_ns,
                    pid=r.pid,
                    uid=r.uid,
                    exe=r.exe,
                    kind=r.kind,
                    target=r.target,
                    access=r.access,
                    action=r.action,
                    policy=origin.policy if origin and not tamper else "",
                    rule=origin.rule if origin and not tamper else -1,
                    severity=Severity.CRITICAL if tamper or origin is None else origin.severity,
                    revision=r.revision,
                    truncated=r.truncated,
                    detail=""
                    if origin or tamper
                    else f"rule id {r.rule_id} unknown at revision {r.revision}",
                )
            )
        self.events += len(out)
        return out

    def tamper_event(self, host: str, paths: list[str]) -> Event:
        now = time.time_ns()
        return Event(
            host=host,
            container_id=self.info.short_id,
            container_name=self.info.name,
            image=self.info.image,
            time=datetime.fromtimestamp(now / 1e9, UTC),
            time_ns=now,
            pid=0,
            uid=0,
            exe="",
            kind=Kind.TAMPER,
            target=", ".join(paths),
            access="write",
            action=Outcome.AUDITED,
            policy="",
            rule=-1,
            severity=Severity.CRITICAL,
            revision=self.revision,
            detail="changed inside the container; the probe restored it",
        )

    def status(self) -> ContainerStatus:
        return ContainerStatus(
            id=self.info.short_id,
            name=self.info.name,
            image=self.info.image,
            labels=self.info.labels,
            libc=self.libc.family,
            guarded=self.guarded,
            coverable=self.coverable,
            reason=self.reason or ("" if self.guarded else "no policy selects this container"),
            policies=self.policies,
            revision=self.revision if self.guarded else 0,
            covered=self.covered,
            uncovered=self.uncovered[:MAX_UNCOVERED],
            drops_library=self.drops_library,
            drops_probe=self.drops_probe,
            events=self.events,
        )
