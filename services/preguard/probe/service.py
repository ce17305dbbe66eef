"""The probe: discovers containers, injects the library and rules, publishes events and status."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import aiodocker
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.errors import NotFoundError

from preguard.probe import coverage, inject
from preguard.probe.docker import Watcher
from preguard.probe.guarded import Tracked
from preguard.probe.keeper import KeeperClient
from preguard.probe.libc import detect, missing_libraries, needed_libraries
from preguard.probe.pipes import PipeReader
from preguard.probe.publisher import Publisher
from preguard.probe.rootfs import HostRootError, RootFS
from preguard.probe.selection import ContainerInfo, select
from preguard.probe.settings import ProbeSettings
from preguard.probe.streams import ensure_streams
from preguard.proto import PolicyBundle, ProbeStatus, Subjects, decode, encode
from preguard.proto.abi import GLIBC_REQUIRED, Record, glibc_version_ok, library_build
from preguard.proto.rulesfile import CompiledRules, compile_rules

log = structlog.get_logger()
try:
    VERSION = importlib.metadata.version("preguard")
except importlib.metadata.PackageNotFoundError:  # running from a checkout without an install
    VERSION = ""


class Probe:
    def __init__(
        self, nc: NATS, docker: aiodocker.Docker, subjects: Subjects, settings: ProbeSettings
    ) -> None:
        self._nc, self._docker, self._subjects, self._settings = nc, docker, subjects, settings
        self.host = settings.host
        self.containers: dict[str, Tracked] = {}
        self.bundle: PolicyBundle | None = None
        self._compiled: dict[tuple[str, ...], CompiledRules] = {}
        self._watcher = Watcher(docker, self._on_running, self._on_gone, self._on_resync, settings.scope)
        self._publisher = Publisher(
            nc, capacity=settings.buffer_events, batch=settings.batch_events, on_drop=self._on_drop
        )
        self._changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._bundle_sub: object = None
        self._reconnects = 0
        self._keeper = KeeperClient(Path(settings.keeper)) if settings.keeper != "off" else None

    @property
    def held_events(self) -> int:
        """Events waiting for NATS (while it is unreachable)."""
        return self._publisher.held

    @property
    def keeper_pid(self) -> int | None:
        """The pid of the process holding the pipes open between probes, when there is one."""
        return self._keeper.pid() if self._keeper is not None else None

    @property
    def docker_connected(self) -> bool:
        """Following the engine's events now (false while it is unreachable and retried)."""
        return self._watcher.connected

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Returns once containers are listed and the bundle subscription is in place."""
        js = self._nc.jetstream()
        if self._settings.create_streams:
            await ensure_streams(js, self._subjects)
        subject = self._subjects.policy(self.host)
        self.bundle = await self._load_bundle()  # before any container: none is touched on a guess
        if self.bundle is not None:
            log.info("bundle_loaded", revision=self.bundle.revision)
        if self._keeper is not None and not await asyncio.to_thread(self._keeper.connect):
            log.warning("keeper_unavailable", socket=str(self._keeper.path))
        self._runner = asyncio.create_task(self._run())  # hosts the TaskGroup that owns the loops
        synced = asyncio.ensure_future(self._watcher.synced.wait())
        # an unreachable engine is retried in the background: the probe still heartbeats meanwhile
        await asyncio.wait([synced, self._runner], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        synced.cancel()
        if self._runner.done():
            self._runner.result()  # raises what stopped it
        # A core subscription on its own subject and a direct get of its own retained bundle: all a
        # probe's credential allows (docs/security.md). Missed while disconnected: read again after.
        self._bundle_sub = await self._nc.subscribe(subject, cb=self._on_bundle)
        self._reconnects = self._nc.stats["reconnects"]
        await self._reload_bundle()
        log.info("probe_started", host=self.host, containers=len(self.containers))

    async def stop(self, timeout: float = 5.0) -> None:
        """Stops reading and publishing; what is injected stays and keeps enforcing the last rules."""
        with contextlib.suppress(Exception):
            if self._bundle_sub is not None:
                await self._bundle_sub.unsubscribe()  # type: ignore[attr-defined]
        with contextlib.suppress(TimeoutError):
            await self._publisher.flush(timeout / 2)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(timeout / 2):
                    await self._runner
        for tracked in self.containers.values():
            tracked.close()
        self.containers.clear()
        if self._keeper is not None:
            self._keeper.close()  # it keeps holding the pipes for the next probe
        log.info("probe_stopped", host=self.host)

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watcher.run())
            tg.create_task(self._publisher.run())
            tg.create_task(self._heartbeat())
            tg.create_task(self._tamper_loop())

    # -- policy -----------------------------------------------------------------------------------
    async def _load_bundle(self) -> PolicyBundle | None:
        """This host's retained bundle (direct get by subject), None when there is none (yet)."""
        subject = self._subjects.policy(self.host)
        try:
            last = await self._nc.jetstream().get_last_msg(
                self._subjects.stream_bundles(), subject, direct=True
            )
            return decode(last.data or b"", PolicyBundle)
        except (NotFoundError, NoRespondersError):  # none yet; no stream (or not allow_direct) yet
            log.info("bundle_missing", subject=subject)
        except msgspec.DecodeError as exc:
            log.error("bundle_refused", subject=subject, error=str(exc))
        return None

    async def _reload_bundle(self) -> None:
        if (bundle := await self._load_bundle()) is not None:
            await self._apply_bundle(bundle)

    async def _on_bundle(self, msg: Msg) -> None:
        try:
            bundle = decode(msg.data, PolicyBundle)
        except msgspec.DecodeError as exc:
            log.error("bundle_refused", subject=msg.subject, error=str(exc))
            return
        await self._apply_bundle(bundle)

    async def _apply_bundle(self, bundle: PolicyBundle) -> None:
        if self.bundle is not None and bundle.revision <= self.bundle.revision:
            log.info("bundle_ignored", revision=bundle.revision, applied=self.bundle.revision)
            return
        started = time.monotonic()
        # compile each distinct set of policies in a thread: 10,000 rules take ~0.1 s of CPU,
        # which would otherwise stall every pipe and heartbeat of the probe
        compiled: dict[tuple[str, ...], CompiledRules] = {}
        for tracked in self.containers.values():
            chosen = select(bundle.policies, self.host, tracked.info)
            key = tuple(p.name for p in chosen)
            if tracked.coverable and key not in compiled:
                compiled[key] = await asyncio.to_thread(compile_rules, chosen, bundle.revision)
        if self.bundle is not None and bundle.revision <= self.bundle.revision:
            return  # a newer bundle was applied while we compiled (a reload and a message raced)
        self.bundle, self._compiled = bundle, compiled
        for tracked in list(self.containers.values()):
            self._reconcile(tracked)
        self._changed.set()
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        log.info(
            "bundle_applied", revision=bundle.revision, policies=len(bundle.policies), elapsed_ms=elapsed_ms
        )

    def _compile(self, policies: list[msgspec.Struct], revision: int) -> CompiledRules:
        key = tuple(p.name for p in policies)  # type: ignore[attr-defined]
        if (compiled := self._compiled.get(key)) is None:
            compiled = self._compiled[key] = compile_rules(policies, revision)  # type: ignore[arg-type]
        return compiled

    # -- containers -------------------------------------------------------------------------------
    async def _on_running(self, info: ContainerInfo) -> None:
        if not self._settings.in_scope(info.labels):
            return
        tracked = self.containers.get(info.id)
        if tracked is not None and tracked.info.pid == info.pid:
            tracked.info = info  # a rename: same process, new facts
        else:
            if tracked is not None:
                tracked.close()
            tracked = self.containers[info.id] = Tracked(
                info, self._settings.event_rate, self._settings.event_burst
            )
            self._examine(tracked)
        self._reconcile(tracked)
        self._changed.set()

    async def _on_gone(self, cid: str) -> None:
        if (tracked := self.containers.pop(cid, None)) is not None:
            tracked.close()
            if self._keeper is not None:
                self._keeper.drop(cid)
            self._changed.set()
            log.info("container_gone", container_id=cid[:12])

    async def _on_resync(self, running: set[str]) -> None:
        for cid in set(self.containers) - running:
            await self._on_gone(cid)
        if self._keeper is not None:
            self._keeper.only(sorted(running))

    def _examine(self, tracked: Tracked) -> None:
        """Root, libc and whether the library can work here; refuse with the reason otherwise."""
        info = tracked.info
        try:
            tracked.root = RootFS(info.pid, self._settings.proc)
        except HostRootError as exc:
            log.error("container_root_refused", container_id=info.short_id, error=str(exc))
            tracked.refuse(f"container root is the host's: {exc}")
            return
        except OSError as exc:
            tracked.refuse(f"container root unreachable: {exc.strerror}")
            return
        tracked.libc = libc = detect(tracked.root)
        if libc.family == "none":
            tracked.refuse("no dynamic loader in the image (static or no libc)")
        elif libc.family == "musl" and not tracked.volume:
            tracked.refuse("musl ignores /etc/ld.so.preload: start with a /.preguard volume and LD_PRELOAD")
        elif libc.family == "glibc" and libc.version is not None and not glibc_version_ok(libc.version):
            need = ".".join(map(str, GLIBC_REQUIRED))
            tracked.refuse(f"glibc {libc.version[0]}.{libc.version[1]} is older than the {need} required")
        elif info.read_only and not tracked.volume:
            tracked.refuse("read-only root filesystem")
        else:
            try:
                library = inject.library_bytes(library_build(libc.family, libc.version))
            except (FileNotFoundError, KeyError):
                tracked.refuse(f"no {libc.family} build of the library in this probe")
                return
            except ValueError as exc:
                tracked.refuse(str(exc))
                return
            # a library whose dependency is missing would stop every program from starting
            if missing := missing_libraries(tracked.root, libc.family, needed_libraries(library)):
                tracked.refuse(f"the library needs {', '.join(missing)}, which the image lacks")

    def _reconcile(self, tracked: Tracked) -> None:
        """Bring one container to what the bundle says: injected with its rules, or clean."""
        if self.bundle is None:
            return  # without a bundle, what is in place stays (the last rules keep enforcing)
        policies = select(self.bundle.policies, self.host, tracked.info)
        tracked.policies = [p.name for p in policies]
        if not tracked.coverable or tracked.root is None:
            return
        root, cid = tracked.root, tracked.info.short_id
        with structlog.contextvars.bound_contextvars(container_id=cid):
            try:
                if policies or tracked.volume:
                    self._inject(tracked, self._compile(policies, self.bundle.revision))  # type: ignore[arg-type]
                elif tracked.injected or inject.has_line(inject.preload_text(root)):
                    self._eject(tracked)
            except OSError as exc:
                if not root.alive(self._settings.proc):
                    return  # vanished mid-operation: the engine's die event follows
                tracked.refuse(f"injection failed: {exc.strerror or exc}")
                log.warning("container_injection_failed", error=str(exc))
            except Exception as exc:  # a bug or a rules compile error: the other containers go on
                log.error("container_reconcile_failed", error=str(exc), exc_info=exc)

    def _inject(self, tracked: Tracked, compiled: CompiledRules) -> None:
        assert tracked.root is not None
        root, first = tracked.root, not tracked.injected
        if first:
            inject.install(root, library_build(tracked.libc.family, tracked.libc.version), tracked.installed)
            tracked.injected = True
        if tracked.revision != compiled.revision or first or tracked.installed.rules is None:
            tracked.keep_compiled(compiled)
            fd, ino = inject.open_control(root)
            if ino in tracked.controls:
                os.close(fd)
            else:
                tracked.controls[ino] = fd
            inject.install_rules(root, compiled, tracked.installed, list(tracked.controls.values()))
            tracked.revision = compiled.revision
        if tracked.reader is None:
            self._open_reader(tracked)
        if not tracked.volume:
            added = inject.add_preload(root)
            if added or tracked.installed.injected_at is None:
                st = root.lstat(inject.PRELOAD)
                tracked.installed.injected_at = time.time() if added or st is None else st.st_mtime
        elif tracked.installed.injected_at is None:
            tracked.installed.injected_at = time.time()
        tracked.guarded = bool(tracked.policies)
        if first:
            log.info("container_injected", revision=compiled.revision, policies=tracked.policies)

    def _eject(self, tracked: Tracked) -> None:
        assert tracked.root is not None
        revision = self.bundle.revision if self.bundle else 0
        inject.uninstall(tracked.root, compile_rules([], revision), keep_library=tracked.volume)
        tracked.close_reader()
        if self._keeper is not None:
            self._keeper.drop(tracked.info.id)
        tracked.guarded, tracked.injected, tracked.revision = False, False, 0
        tracked.installed = inject.Installed()
        log.info("container_ejected")

    def _open_reader(self, tracked: Tracked) -> None:
        assert tracked.root is not None
        key, subject = tracked.info.id, self._subjects.events(self.host, tracked.info.short_id)

        def on_records(records: list[Record]) -> None:
            self._publisher.submit(key, subject, tracked.to_events(records, self.host))

        tracked.reader = PipeReader(inject.open_pipe(tracked.root), on_records)
        if self._keeper is not None:  # hold the pipe open for the next probe before reading it
            self._keeper.keep(key, tracked.reader.fd)
        tracked.reader.start(asyncio.get_running_loop())

    def _on_drop(self, key: str, count: int) -> None:
        if (tracked := self.containers.get(key)) is not None:
            tracked.dropped += count

    # -- tamper -------------------------------------------------------------------------------------
    async def _tamper_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.tamper_interval)
            for tracked in list(self.containers.values()):
                if tracked.guarded and tracked.root is not None:
                    self._check_tamper(tracked)

    def _check_tamper(self, tracked: Tracked) -> None:
        assert tracked.root is not None
        try:
            problems = inject.tampered(tracked.root, tracked.installed, preload=not tracked.volume)
            reader_ino = tracked.reader.ino if tracked.reader else None
            if not problems and reader_ino == inject.pipe_inode(tracked.root):
                return
            if not tracked.root.alive(self._settings.proc):
                return  # stopping: its files go with it; the engine's die event follows
            with structlog.contextvars.bound_contextvars(container_id=tracked.info.short_id):
                log.warning("container_tampered", paths=problems)
                if reader_ino != inject.pipe_inode(tracked.root):
                    tracked.retire_reader()
                tracked.injected = False  # re-run the whole injection
                self._reconcile(tracked)
        except OSError as exc:
            log.warning("tamper_check_failed", container_id=tracked.info.short_id, error=str(exc))
            return
        if problems:
            subject = self._subjects.events(self.host, tracked.info.short_id)
            self._publisher.submit(tracked.info.id, subject, [tracked.tamper_event(self.host, problems)])
            self._changed.set()

    # -- status -------------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.status_interval):
                    await self._changed.wait()
                await asyncio.sleep(0.05)  # fold a burst of changes into one message
            self._changed.clear()
            await self._refresh_coverage()
            if self._nc.is_connected and self._nc.stats["reconnects"] != self._reconnects:
                self._reconnects = self._nc.stats["reconnects"]  # bundles published meanwhile were missed
                with contextlib.suppress(Exception):  # logged by _load_bundle or retried next time
                    await self._reload_bundle()
            if self._nc.is_connected:
                await self._nc.publish(self._subjects.status(self.host), encode(self.status()))

    async def _refresh_coverage(self) -> None:
        guarded = [t for t in self.containers.values() if t.guarded and t.root is not None]
        scans = {t.info.id: (t.info.pid, t.installed.injected_at) for t in guarded}
        proc = self._settings.proc

        def work() -> dict[str, tuple[int, list[object]]]:
            groups = coverage.pids_by_namespace(proc)
            return {cid: coverage.scan(pid, at, groups, proc) for cid, (pid, at) in scans.items()}  # type: ignore[misc]

        results = await asyncio.to_thread(work)
        for t in guarded:
            if t.info.id in results:
                t.covered, t.uncovered = results[t.info.id]  # type: ignore[assignment]
            if t.root is not None and (state := inject.read_control(t.root)) is not None:
                t.drops_library = state.drops

    def status(self) -> ProbeStatus:
        return ProbeStatus(
            host=self.host,
            time=datetime.now(UTC),
            interval=self._settings.status_interval,
            revision=self.bundle.revision if self.bundle else 0,
            containers=[t.status() for t in self.containers.values()],
            version=VERSION,
        )
