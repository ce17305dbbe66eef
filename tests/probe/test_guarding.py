"""Coverage, tamper repair, label changes and the musl create-time path, on real containers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from preguard.probe import inject
from preguard.probe.inject import LINE
from preguard.proto import (
    ContainerStatus,
    Kind,
    Policy,
    ProbeStatus,
    ProcessRule,
    Selector,
    Severity,
    Subjects,
    decode_events,
)
from preguard.proto.abi import LIBRARY_BUILDS, library_build
from tests.probe.conftest import (
    LIBDL,
    SCOPE_LABEL,
    PublishBundle,
    StartProbe,
    eventually,
    pid_of,
    run_in,
    sleeping,
)

pytestmark = pytest.mark.docker


def policy(scope: str, **labels: str) -> Policy:
    return Policy(
        name="no-nc", selector=Selector(labels={SCOPE_LABEL: scope, **labels}), rules=[ProcessRule(name="nc")]
    )


async def status_until(sub: Any, cid: str, check: Any, tries: int = 30) -> ContainerStatus:
    """The container's status from successive heartbeats, until check(status) holds."""
    for _ in range(tries):
        status = msgspec.json.decode((await sub.next_msg(timeout=10)).data, type=ProbeStatus)
        mine = [c for c in status.containers if c.id == cid]
        if mine and check(mine[0]):
            return mine[0]
    raise AssertionError(f"status of {cid} never satisfied the check: {mine}")


async def detached(container: Any, *cmd: str) -> None:
    execution = await container.exec(list(cmd))
    await execution.start(detach=True)


async def test_coverage_names_processes_started_before_injection_and_static_binaries(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    c = await container(glibc_image)
    await sleeping(c)  # its sleep runs before the probe injects
    await publish_bundle([policy(scope)], revision=1)
    sub = await nc.subscribe(subjects.status(host))
    await start_probe()
    root = Path(f"/proc/{pid_of(await c.show())}/root")
    await eventually(lambda: (root / "etc/ld.so.preload").exists())
    await detached(c, "/bin/sleep", "301")  # after injection: loads the library
    await detached(c, "/bin/busybox-static", "sleep", "302")  # static: can never load it

    def settled(s: ContainerStatus) -> bool:
        return s.covered >= 1 and {u.reason for u in s.uncovered} >= {
            "started_before_injection",
            "static_binary",
        }

    mine = await status_until(sub, c.id[:12], settled)
    reasons = {u.exe.rsplit("/", 1)[-1]: u.reason for u in mine.uncovered}
    assert reasons["sleep"] == "started_before_injection"
    assert reasons["busybox-static"] == "static_binary"
    assert mine.covered == 1


async def test_tampering_with_the_preload_file_is_repaired_and_reported(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    c = await container(glibc_image)
    await publish_bundle([policy(scope)], revision=1)
    await start_probe()
    root = Path(f"/proc/{pid_of(await c.show())}/root")
    await eventually(lambda: (root / "etc/ld.so.preload").exists())
    sub = await nc.subscribe(subjects.events(host, c.id[:12]))

    # a static program passes any libc hook: it can empty the file and remove the library
    code, out = await run_in(
        c, "/bin/busybox-static", "sh", "-c", ": > /etc/ld.so.preload; rm /.preguard/libpreguard.so"
    )
    assert code == 0, out

    events = decode_events((await sub.next_msg(timeout=10)).data)
    tamper = [e for e in events if e.kind == Kind.TAMPER]
    assert tamper
    assert tamper[0].severity == Severity.CRITICAL
    assert "/etc/ld.so.preload" in tamper[0].target
    assert "/.preguard/libpreguard.so" in tamper[0].target
    await eventually(lambda: (root / "etc/ld.so.preload").read_text().splitlines() == [LINE])
    assert (root / ".preguard/libpreguard.so").exists()


async def test_a_label_change_by_recreating_moves_a_container_in_and_out_of_a_policy(
    scope: str,
    container: Any,
    docker: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([policy(scope, tier="web")], revision=1)
    await start_probe()
    plain = await container(glibc_image, labels={"tier": "db"})
    name = (await plain.show())["Name"].lstrip("/")
    await plain.delete(force=True)
    web = await container(glibc_image, labels={"tier": "web"}, name=name)  # same name, new labels
    web_root = Path(f"/proc/{pid_of(await web.show())}/root")
    await eventually(lambda: (web_root / "etc/ld.so.preload").exists())
    name2 = name + "-b"
    await web.delete(force=True)
    back = await container(glibc_image, labels={"tier": "db"}, name=name2)
    back_root = Path(f"/proc/{pid_of(await back.show())}/root")
    await eventually(lambda: (back_root / "etc").exists())
    assert not (back_root / ".preguard").exists()


async def test_musl_container_without_the_volume_is_reported_not_coverable(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    musl_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    c = await container(musl_image, ["/bin/sleep", "3600"])
    await publish_bundle([policy(scope)], revision=1)
    sub = await nc.subscribe(subjects.status(host))
    await start_probe()
    mine = await status_until(sub, c.id[:12], lambda s: not s.coverable)
    assert mine.libc == "musl"
    assert "LD_PRELOAD" in mine.reason
    root = Path(f"/proc/{pid_of(await c.show())}/root")
    assert not (root / ".preguard").exists()
    assert not (root / "etc/ld.so.preload").exists()


async def test_musl_container_started_with_the_volume_is_filled_and_guarded(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    musl_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    await publish_bundle([policy(scope)], revision=1)
    sub = await nc.subscribe(subjects.status(host))
    await start_probe()
    c = await container(
        musl_image,
        ["/bin/sleep", "3600"],
        env=["LD_PRELOAD=/.preguard/libpreguard.so"],
        host_config={"Binds": [], "Mounts": [{"Type": "volume", "Target": "/.preguard"}]},
    )
    mine = await status_until(sub, c.id[:12], lambda s: s.guarded)
    assert mine.libc == "musl"
    root = Path(f"/proc/{pid_of(await c.show())}/root")
    assert (root / ".preguard/rules.bin").exists()
    assert not (root / "etc/ld.so.preload").exists()  # musl reads LD_PRELOAD only
    code, out = await run_in(c, "/usr/bin/hello")
    assert (code, out.strip()) == (0, "hello from musl")
    await c.delete(force=True, v=True)  # and its anonymous volume


async def test_read_only_root_is_reported_not_coverable_with_the_policies_that_select_it(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    c = await container(glibc_image, host_config={"ReadonlyRootfs": True})
    await publish_bundle([policy(scope)], revision=1)
    sub = await nc.subscribe(subjects.status(host))
    await start_probe()
    mine = await status_until(sub, c.id[:12], lambda s: not s.coverable)
    assert "read-only" in mine.reason
    assert (mine.guarded, mine.policies) == (False, ["no-nc"])


async def test_a_rename_into_a_name_selector_guards_the_container(
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    named = Policy(
        name="by-name",
        selector=Selector(containers=[f"pg-{scope}-web*"]),
        rules=[ProcessRule(name="nc")],
    )
    await publish_bundle([named], revision=1)
    await start_probe()
    c = await container(glibc_image, name=f"pg-{scope}-db")
    root = Path(f"/proc/{pid_of(await c.show())}/root")
    await c.rename(f"pg-{scope}-web")
    await eventually(lambda: (root / "etc/ld.so.preload").exists())


async def test_glibc_2_34_and_later_get_the_build_that_needs_no_libdl(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    """Debian 12 (glibc 2.36) without libdl.so.2: guarded, with the build that takes dlsym from
    libc.so.6 (the build that links libdl is refused where it is missing: test_units)."""
    c = await container(glibc_image, ["/bin/sh", "-c", f"rm {LIBDL}; exec sleep 3600"])
    root = Path(f"/proc/{pid_of(await c.show())}/root")
    await eventually(lambda: not (root / LIBDL.lstrip("/")).exists())
    blocks_cat = Policy(
        name="no-cat", selector=Selector(labels={SCOPE_LABEL: scope}), rules=[ProcessRule(name="cat")]
    )
    await publish_bundle([blocks_cat], revision=1)
    sub = await nc.subscribe(subjects.status(host))
    await start_probe()
    mine = await status_until(sub, c.id[:12], lambda s: s.guarded)
    assert mine.coverable and mine.libc == "glibc"
    build = inject.LIB_DIR / LIBRARY_BUILDS[library_build("glibc", (2, 36))]
    assert (root / LINE.lstrip("/")).read_bytes() == build.read_bytes()
    assert (await run_in(c, "/bin/sh", "-c", "cat /etc/hostname"))[0] == 126  # judged: blocked
    assert (await run_in(c, "/bin/sh", "-c", "head -c0 /etc/hostname"))[0] == 0


async def test_coverage_of_a_host_pid_namespace_container_counts_only_its_own_processes(
    nc: NATS,
    subjects: Subjects,
    host: str,
    scope: str,
    container: Any,
    glibc_image: str,
    publish_bundle: PublishBundle,
    start_probe: StartProbe,
) -> None:
    c = await container(glibc_image, host_config={"PidMode": "host"})
    await sleeping(c)
    await publish_bundle([policy(scope)], revision=1)
    sub = await nc.subscribe(subjects.status(host))
    await start_probe()
    mine = await status_until(sub, c.id[:12], lambda s: s.guarded and s.uncovered)
    assert [(u.exe, u.reason) for u in mine.uncovered] == [("/usr/bin/sleep", "started_before_injection")]
    assert mine.covered == 0
