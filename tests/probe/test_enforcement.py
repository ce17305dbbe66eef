"""End to end with the real library: bundle -> rules in the container -> denied call -> Event on NATS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from preguard.probe.keeper import KeeperClient
from preguard.proto import (
    Event,
    FileRule,
    Kind,
    NetworkRule,
    Outcome,
    Policy,
    ProbeStatus,
    ProcessRule,
    Protocol,
    Selector,
    Severity,
    Subjects,
    decode_events,
)
from tests.probe.conftest import SCOPE_LABEL, PublishBundle, StartProbe, eventually, pid_of, run_in

pytestmark = pytest.mark.docker

SETUP = ["/bin/sh", "-c", "echo secret > /etc/shadow; exec sleep 3600"]


def lockdown(scope: str) -> Policy:
    return Policy(
        name="lockdown",
        severity=Severity.HIGH,
        selector=Selector(labels={SCOPE_LABEL: scope}),
        rules=[
            ProcessRule(name="id"),
            FileRule(path="/etc/shadow"),
            NetworkRule(cidr="127.0.0.2/32", ports="1-1024", protocol=Protocol.TCP),
        ],
    )


async def injected(c: Any) -> dict[str, Any]:
    info: dict[str, Any] = await c.show()
    root = Path(f"/proc/{pid_of(info)}/root")
    await eventually(lambda: (root / "etc/ld.so.preload").exists() and (root / "etc/shadow").exists())
    return info


async def one_event(sub: Any) -> Event:
    events = decode_events((await sub.next_msg(timeout=10)).data)
    assert len(events) == 1, events
    return events[0]


async def test_blocked_exec_open_and_connect_each_produce_one_event(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([lockdown(scope)], revision=4)  # before the probe runs: retained
    c = await container(glibc_image, SETUP)
    await start_probe()
    info = await injected(c)
    sub = await nc.subscribe(subjects.events(host, c.id[:12]))

    code, out = await run_in(c, "/bin/cat", "/etc/shadow")
    assert code != 0
    assert "Permission denied" in out
    e = await one_event(sub)
    assert (e.kind, e.action, e.target, e.access) == (Kind.FILE, Outcome.BLOCKED, "/etc/shadow", "read")
    assert (e.policy, e.rule, e.severity, e.revision) == ("lockdown", 1, Severity.HIGH, 4)
    assert (e.container_id, e.container_name, e.host) == (c.id[:12], info["Name"].lstrip("/"), host)
    assert e.exe.endswith("/cat")

    code, out = await run_in(c, "/bin/sh", "-c", "/usr/bin/id")
    assert code != 0
    e = await one_event(sub)
    assert (e.kind, e.action, e.rule, e.access) == (Kind.PROCESS, Outcome.BLOCKED, 0, "exec")
    assert e.exe == "/usr/bin/sh"
    assert e.target.rsplit("/", 1)[-1] == "id"  # the library reports a name rule's hit by name

    code, out = await run_in(c, "/bin/bash", "-c", "echo > /dev/tcp/127.0.0.2/80")
    assert code != 0
    assert "Permission denied" in out
    e = await one_event(sub)
    assert (e.kind, e.action, e.target, e.rule) == (Kind.NETWORK, Outcome.BLOCKED, "127.0.0.2:80", 2)

    code, out = await run_in(c, "/bin/cat", "/etc/passwd")  # not in the policy: untouched
    assert code == 0
    assert "root:x:0:0" in out


async def test_a_new_bundle_reaches_running_processes_and_a_removed_one_frees_them(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([lockdown(scope)], revision=1)
    c = await container(glibc_image, SETUP)
    await start_probe()
    await injected(c)
    assert (await run_in(c, "/bin/cat", "/etc/hostname"))[0] == 0
    sub = await nc.subscribe(subjects.events(host, c.id[:12]))

    root = Path(f"/proc/{pid_of(await c.show())}/root")
    # a shell already running reads the file in a loop until the new rules deny it
    loop = asyncio.create_task(
        run_in(
            c,
            "/bin/bash",
            "-c",
            ": > /tmp/started; while ((SECONDS < 10)); do read -r x < /etc/hostname || exit 0; done; exit 1",
        )
    )
    await eventually(lambda: (root / "tmp/started").exists())
    tighter = Policy(
        name="lockdown",
        selector=Selector(labels={SCOPE_LABEL: scope}),
        rules=[FileRule(path="/etc/hostname")],
    )
    await publish_bundle([tighter], revision=2)
    code, out = await loop
    assert code == 0, out
    e = await one_event(sub)
    assert (e.target, e.revision, e.policy) == ("/etc/hostname", 2, "lockdown")

    await publish_bundle([], revision=3)
    await eventually(lambda: not (root / "etc/ld.so.preload").exists())
    assert (await run_in(c, "/bin/cat", "/etc/shadow"))[0] == 0


@pytest.mark.timeout(120)
async def test_a_killed_probe_leaves_enforcement_in_place_and_the_next_delivers_what_was_denied_meanwhile(
    nc: NATS,
    nats_url: str,
    subjects: Subjects,
    host: str,
    scope: str,
    tmp_path: Path,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([lockdown(scope)], revision=1)
    c = await container(glibc_image, SETUP)
    keeper = str(tmp_path / "keeper.sock")
    env = {
        **os.environ,
        "PREGUARD_NATS_URL": nats_url,
        "PREGUARD_PREFIX": subjects.prefix,
        "PREGUARD_HOST": host,
        "PREGUARD_SCOPE": f"{SCOPE_LABEL}={scope}",
        "PREGUARD_KEEPER": keeper,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "preguard.probe", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await injected(c)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    try:
        code, out = await run_in(c, "/bin/cat", "/etc/shadow")  # no probe: still denied
        assert code != 0
        assert "Permission denied" in out

        sub = await nc.subscribe(subjects.events(host, c.id[:12]))
        await start_probe(keeper=keeper)
        e = await one_event(sub)  # the record written while no probe ran
        assert (e.target, e.policy, e.exe) == ("/etc/shadow", "lockdown", "/usr/bin/cat")
    finally:
        client = KeeperClient(Path(keeper))
        if client.connect(start=False) and (pid := client.pid()) is not None:
            os.kill(pid, signal.SIGTERM)  # started by the killed probe: init reaps it
        client.close()


async def test_musl_container_started_with_the_volume_is_enforced(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    musl_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([lockdown(scope)], revision=1)
    await start_probe()
    c = await container(
        musl_image,
        SETUP,
        env=["LD_PRELOAD=/.preguard/libpreguard.so"],
        host_config={"Mounts": [{"Type": "volume", "Target": "/.preguard"}]},
    )
    try:
        root = Path(f"/proc/{pid_of(await c.show())}/root")
        await eventually(lambda: (root / ".preguard/rules.bin").exists() and (root / "etc/shadow").exists())
        sub = await nc.subscribe(subjects.events(host, c.id[:12]))
        code, out = await run_in(c, "/usr/bin/hello", "/etc/shadow")
        assert (code, out.strip()) == (1, "open /etc/shadow: denied")
        e = await one_event(sub)
        assert (e.kind, e.target, e.policy, e.exe) == (Kind.FILE, "/etc/shadow", "lockdown", "/usr/bin/hello")
    finally:
        await c.delete(force=True, v=True)


async def test_records_written_while_no_probe_runs_are_delivered_by_the_next_one(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    tmp_path: Path,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([lockdown(scope)], revision=1)
    c = await container(glibc_image, SETUP)
    keeper = str(tmp_path / "keeper.sock")
    first = await start_probe(keeper=keeper)
    keeper_pid = first.keeper_pid
    assert keeper_pid is not None
    try:
        await injected(c)
        await first.stop()
        code, _ = await run_in(c, "/bin/cat", "/etc/shadow")  # denied while no probe runs
        assert code != 0
        sub = await nc.subscribe(subjects.events(host, c.id[:12]))
        second = await start_probe(keeper=keeper)
        assert second.keeper_pid == keeper_pid  # the same keeper, found again
        e = await one_event(sub)
        assert (e.target, e.exe, e.policy) == ("/etc/shadow", "/usr/bin/cat", "lockdown")
    finally:
        os.kill(keeper_pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            await asyncio.to_thread(os.waitpid, keeper_pid, 0)  # the probe spawned it from here


async def test_processes_from_before_a_removed_preguard_dir_keep_reporting_and_reloading(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([lockdown(scope)], revision=1)
    c = await container(glibc_image, SETUP)
    await start_probe()
    await injected(c)
    root = Path(f"/proc/{pid_of(await c.show())}/root")
    sub = await nc.subscribe(subjects.events(host, c.id[:12]))
    # a process that maps the first control file and holds the first pipe
    loop = asyncio.create_task(
        run_in(
            c,
            "/bin/bash",
            "-c",
            ": > /tmp/started; while ((SECONDS < 20)); do read -r x < /etc/hostname || exit 0; done; exit 1",
        )
    )
    await eventually(lambda: (root / "tmp/started").exists())
    code, out = await run_in(c, "/bin/busybox-static", "rm", "-rf", "/.preguard")  # static: unhooked
    assert code == 0, out
    assert (await one_event(sub)).kind == Kind.TAMPER
    await eventually(lambda: (root / ".preguard/rules.bin").exists())

    tighter = Policy(
        name="lockdown",
        selector=Selector(labels={SCOPE_LABEL: scope}),
        rules=[FileRule(path="/etc/hostname")],
    )
    await publish_bundle([tighter], revision=2)
    code, out = await loop  # the old process saw revision 2 through the control file it maps
    assert code == 0, out
    e = await one_event(sub)  # and its event came through the pipe it had open
    assert (e.target, e.revision, e.exe) == ("/etc/hostname", 2, "/usr/bin/bash")


async def test_records_the_library_could_not_write_are_counted_in_the_status(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([lockdown(scope)], revision=1)
    c = await container(glibc_image, SETUP)
    first = await start_probe()  # no keeper: while it is away, nobody holds the pipe
    await injected(c)
    await first.stop()
    assert (await run_in(c, "/bin/cat", "/etc/shadow"))[0] != 0  # denied, its record dropped
    sub = await nc.subscribe(subjects.status(host))
    await start_probe()
    for _ in range(30):
        status = msgspec.json.decode((await sub.next_msg(timeout=10)).data, type=ProbeStatus)
        mine = [s for s in status.containers if s.id == c.id[:12]]
        if mine and mine[0].drops_library:
            break
    assert mine[0].drops_library == 1
    assert mine[0].events == 0


async def test_a_restarted_container_is_guarded_again_and_its_events_flow(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([lockdown(scope)], revision=1)
    c = await container(glibc_image, SETUP)
    probe = await start_probe()
    first_pid = pid_of(await injected(c))
    await c.restart(t=0)  # its sleep ignores SIGTERM as pid 1: no point waiting
    info = await injected(c)
    assert pid_of(info) != first_pid
    await eventually(lambda: (t := probe.containers.get(c.id)) is not None and t.info.pid == pid_of(info))
    sub = await nc.subscribe(subjects.events(host, c.id[:12]))
    assert (await run_in(c, "/bin/cat", "/etc/shadow"))[0] != 0
    e = await one_event(sub)
    assert (e.target, e.container_id) == ("/etc/shadow", c.id[:12])
