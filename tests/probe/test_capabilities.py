"""What the probe's own container needs: root with CAP_SYS_PTRACE alone is enough (compose: pid host)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from preguard.proto import FileRule, Policy, ProbeStatus, Selector, Subjects
from tests.probe.conftest import SCOPE_LABEL, PublishBundle, eventually, pid_of, run_in, sleeping

pytestmark = [pytest.mark.docker, pytest.mark.skipif(shutil.which("setpriv") is None, reason="no setpriv")]


@pytest.fixture
async def probe_with_caps(nats_url: str, subjects: Subjects, host: str, scope: str) -> AsyncIterator[Any]:
    procs: list[asyncio.subprocess.Process] = []

    async def start(caps: str) -> None:
        env = {
            **os.environ,
            "PREGUARD_NATS_URL": nats_url,
            "PREGUARD_PREFIX": subjects.prefix,
            "PREGUARD_HOST": host,
            "PREGUARD_SCOPE": f"{SCOPE_LABEL}={scope}",
            "PREGUARD_KEEPER": "off",
            "PREGUARD_STATUS_INTERVAL": "0.5",
        }
        procs.append(
            await asyncio.create_subprocess_exec(
                "setpriv",
                f"--bounding-set=-all{caps}",
                sys.executable,
                "-m",
                "preguard.probe",
                env=env,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )

    yield start
    for proc in procs:
        proc.terminate()
        await proc.wait()


async def test_sys_ptrace_alone_lets_the_probe_inject_enforce_and_see_coverage(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    probe_with_caps: Any,
) -> None:
    c = await container(glibc_image, ["/bin/sh", "-c", "echo s > /etc/shadow; exec sleep 3600"])
    await sleeping(c)
    policy = Policy(
        name="p", selector=Selector(labels={SCOPE_LABEL: scope}), rules=[FileRule(path="/etc/shadow")]
    )
    await publish_bundle([policy], revision=1)
    sub = await nc.subscribe(subjects.status(host))
    await probe_with_caps(",+sys_ptrace")
    root = Path(f"/proc/{pid_of(await c.show())}/root")
    await eventually(lambda: (root / "etc/ld.so.preload").exists(), within=10)
    code, out = await run_in(c, "/bin/cat", "/etc/shadow")
    assert code != 0
    assert "Permission denied" in out
    for _ in range(30):
        status = msgspec.json.decode((await sub.next_msg(timeout=10)).data, type=ProbeStatus)
        mine = [s for s in status.containers if s.id == c.id[:12]]
        if mine and mine[0].uncovered:
            break
    assert mine[0].guarded
    reasons = {u.exe: u.reason for u in mine[0].uncovered}  # a docker exec's runc may show up too
    assert reasons["/usr/bin/sleep"] == "started_before_injection"


async def test_without_sys_ptrace_containers_are_reported_unreachable(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    probe_with_caps: Any,
) -> None:
    c = await container(glibc_image)
    policy = Policy(
        name="p", selector=Selector(labels={SCOPE_LABEL: scope}), rules=[FileRule(path="/etc/shadow")]
    )
    await publish_bundle([policy], revision=1)
    sub = await nc.subscribe(subjects.status(host))
    await probe_with_caps(",+dac_override,+fowner,+chown")
    for _ in range(30):
        status = msgspec.json.decode((await sub.next_msg(timeout=10)).data, type=ProbeStatus)
        mine = [s for s in status.containers if s.id == c.id[:12]]
        if mine and not mine[0].coverable:
            break
    assert "unreachable" in mine[0].reason
    assert not (Path(f"/proc/{pid_of(await c.show())}/root") / ".preguard").exists()
