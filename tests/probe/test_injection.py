"""Injection mechanics against a real Docker engine: bundle -> files in the container, and back out."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from preguard.probe.inject import LINE
from preguard.probe.selection import ContainerInfo
from preguard.proto import (
    FileRule,
    Policy,
    ProbeStatus,
    ProcessRule,
    Selector,
    Subjects,
)
from preguard.proto.rulesfile import compile_rules
from tests.probe.conftest import SCOPE_LABEL, PublishBundle, StartProbe, eventually, pid_of

pytestmark = pytest.mark.docker


def root_of(info: dict[str, Any]) -> Path:
    return Path(f"/proc/{pid_of(info)}/root")


def on_host(*paths: str) -> list[str]:
    return [p for p in paths if os.path.lexists(p)]


def lockdown(scope: str, **labels: str) -> Policy:
    return Policy(
        name="lockdown",
        selector=Selector(labels={SCOPE_LABEL: scope, **labels}),
        rules=[ProcessRule(name="rm"), FileRule(path="/etc/shadow")],
    )


async def test_bundle_published_before_the_probe_starts_is_installed_in_selected_containers(
    container: Any, glibc_image: str, scope: str, publish_bundle: PublishBundle, start_probe: StartProbe
) -> None:
    selected = await container(glibc_image, labels={"tier": "web"})
    other = await container(glibc_image, labels={"tier": "db"})
    policy = lockdown(scope, tier="web")
    await publish_bundle([policy], revision=7)

    await start_probe()

    root = root_of(await selected.show())
    await eventually(lambda: (root / ".preguard/rules.bin").exists())
    assert (root / ".preguard/rules.bin").read_bytes() == compile_rules([policy], 7).data
    assert (root / ".preguard/libpreguard.so").stat().st_size > 0
    assert stat.S_ISFIFO((root / ".preguard/events").lstat().st_mode)
    assert (root / "etc/ld.so.preload").read_text().splitlines() == [LINE]
    other_root = root_of(await other.show())
    assert not (other_root / ".preguard").exists()
    assert not (other_root / "etc/ld.so.preload").exists()


async def test_status_reports_guarded_container_with_revision_and_libc(
    nc: NATS,
    subjects: Subjects,
    host: str,
    container: Any,
    glibc_image: str,
    scope: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    guarded = await container(glibc_image, labels={"tier": "web"})
    await publish_bundle([lockdown(scope, tier="web")], revision=3)
    sub = await nc.subscribe(subjects.status(host))
    await start_probe()
    cid = guarded.id[:12]
    for _ in range(20):
        status = msgspec.json.decode((await sub.next_msg(timeout=10)).data, type=ProbeStatus)
        mine = [c for c in status.containers if c.id == cid]
        if mine and mine[0].guarded:
            break
    assert status.revision == 3
    assert mine[0].libc == "glibc"
    assert mine[0].policies == ["lockdown"]
    assert mine[0].revision == 3


async def test_existing_preload_lines_are_kept_and_restored_when_unselected(
    container: Any, glibc_image: str, scope: str, publish_bundle: PublishBundle, start_probe: StartProbe
) -> None:
    c = await container(
        glibc_image, ["/bin/sh", "-c", "echo /usr/lib/other.so > /etc/ld.so.preload; exec sleep 3600"]
    )
    root = root_of(await c.show())
    await eventually(lambda: (root / "etc/ld.so.preload").exists())
    await publish_bundle([lockdown(scope)], revision=1)
    await start_probe()
    await eventually(lambda: LINE in (root / "etc/ld.so.preload").read_text())
    assert (root / "etc/ld.so.preload").read_text().splitlines() == [LINE, "/usr/lib/other.so"]

    await publish_bundle([], revision=2)  # no policy selects it any more

    await eventually(lambda: not (root / ".preguard").exists())
    assert (root / "etc/ld.so.preload").read_text() == "/usr/lib/other.so\n"


async def test_new_matching_container_is_guarded_after_it_starts(
    container: Any, glibc_image: str, scope: str, publish_bundle: PublishBundle, start_probe: StartProbe
) -> None:
    await publish_bundle([lockdown(scope)], revision=1)
    await start_probe()
    c = await container(glibc_image)
    root = root_of(await c.show())
    await eventually(lambda: (root / "etc/ld.so.preload").exists())  # how fast: bench/probe.py
    assert (root / ".preguard/rules.bin").exists()


async def test_planted_symlinks_never_lead_the_probe_out_of_the_container(
    container: Any, glibc_image: str, scope: str, publish_bundle: PublishBundle, start_probe: StartProbe
) -> None:
    # /.preguard -> / and /etc/ld.so.preload -> /tmp/hostfile: resolved from the host, an absolute
    # link would name the host's own files; the probe must replace links, never write through them.
    c = await container(
        glibc_image,
        ["/bin/sh", "-c", "ln -s / /.preguard; ln -s /tmp/hostfile /etc/ld.so.preload; exec sleep 3600"],
    )
    root = root_of(await c.show())
    await eventually(lambda: (root / ".preguard").is_symlink())
    await publish_bundle([lockdown(scope)], revision=1)
    await start_probe()
    await eventually(lambda: (root / ".preguard").is_dir() and not (root / ".preguard").is_symlink())
    await eventually(lambda: (root / "etc/ld.so.preload").is_file())
    assert not (root / "etc/ld.so.preload").is_symlink()
    assert not on_host("/libpreguard.so", "/rules.bin", "/events", "/tmp/hostfile")


@pytest.mark.parametrize("pid", [1, os.getpid(), os.getppid()])
async def test_a_container_whose_pid_is_a_host_process_is_refused_and_the_host_untouched(
    pid: int, scope: str, publish_bundle: PublishBundle, start_probe: StartProbe
) -> None:
    # a stale pid reused by a host process is the realistic case; the probe must never inject "/"
    before = on_host("/etc/ld.so.preload", "/.preguard")
    await publish_bundle([lockdown(scope)], revision=1)
    probe = await start_probe()
    info = ContainerInfo(id="f" * 64, name="impostor", image="x", labels={SCOPE_LABEL: scope}, pid=pid)
    await probe._on_running(info)
    tracked = probe.containers[info.id]
    assert not tracked.coverable
    assert "host" in tracked.reason
    assert tracked.policies == ["lockdown"]
    assert on_host("/etc/ld.so.preload", "/.preguard") == before
