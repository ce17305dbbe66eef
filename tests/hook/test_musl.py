"""The musl build loads in a musl container (LD_PRELOAD into the preguard volume) and enforces there.

The volume is mounted read-only: a probe from another test run that manages every container on the
host would otherwise rewrite it (a read-only control file only costs the library its counters).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from preguard.proto import Kind, Outcome
from tests.conftest import MakeContainer
from tests.hook.conftest import Guard, policy


@pytest.mark.docker
async def test_musl_build_blocks_inside_a_musl_container(
    hook_build: Path, tmp_path: Path, musl_image: str, make_container: MakeContainer
) -> None:
    guard = Guard(tmp_path / "pg", hook_build / "libpreguard-musl.so")
    try:
        guard.install(policy({"kind": "file", "path": "/etc/passwd", "access": "read"}))
        logs = []
        for target in ("/etc/passwd", "/etc/group"):
            container: Any = await make_container(
                musl_image,
                ["/usr/bin/hello", target],
                env=["LD_PRELOAD=/.preguard/libpreguard.so"],
                host_config={"Binds": [f"{guard.dir}:/.preguard:ro"]},
            )
            await container.wait(timeout=60)
            logs.append("".join(await container.log(stdout=True, stderr=True)))
        assert logs == ["open /etc/passwd: denied\n", "open /etc/group: ok\n"]
        [event] = guard.events()
        assert (event.kind, event.action, event.target, event.exe) == (
            Kind.FILE,
            Outcome.BLOCKED,
            "/etc/passwd",
            "/usr/bin/hello",
        )
    finally:
        guard.close()


MUSL_CALLS = [
    # (arguments of calls-musl, expected line)
    (["open", "/etc/passwd", ""], "err 13"),
    (["open_2", "/etc/passwd", ""], "err 13"),
    (["openat", "/etc", "passwd", ""], "err 13"),
    (["fopen", "/etc/passwd", "r"], "err 13"),
    (["sys_open", "/etc/passwd"], "err 13"),
    (["open", "/etc/group", ""], "ok"),
    (["execve", "/usr/bin/hello"], "err 13"),
    (["execvp", "hello"], "err 13"),
    (["posix_spawn", "/usr/bin/hello"], "err 13"),
    (["connect", "4", "127.0.0.2", "80"], "err 13"),
    (["sendto", "4", "127.0.0.2", "53"], "err 13"),
    (["sendmmsg", "4", "127.0.0.2", "53"], "err 13"),
    (["connect", "6", "::ffff:127.0.0.2", "80"], "err 13"),
    (["open", "/tmp/new", "wc"], "err 13"),
    (["mkstemp", "/tmp"], "err 13"),
    (["unlink", "/tmp/keep"], "err 13"),
]


@pytest.mark.docker
async def test_musl_build_judges_every_family_in_a_musl_container(
    hook_build: Path, tmp_path: Path, musl_image: str, make_container: MakeContainer
) -> None:
    guard = Guard(tmp_path / "pg", hook_build / "libpreguard-musl.so")
    try:
        guard.install(
            policy(
                {"kind": "file", "path": "/etc/passwd", "access": "read"},
                {"kind": "file", "path": "/tmp/**", "access": "write"},
                {"kind": "process", "name": "hello"},
                {"kind": "network", "cidr": "127.0.0.2/32"},
            )
        )
        script = "touch /tmp/keep\n" + "".join(f"/t/calls-musl {' '.join(args)}\n" for args, _ in MUSL_CALLS)
        (tmp_path / "run.sh").write_text(script)
        container: Any = await make_container(
            musl_image,
            ["/bin/sh", "/t/run.sh"],
            env=["LD_PRELOAD=/.preguard/libpreguard.so"],
            host_config={
                "Binds": [
                    f"{guard.dir}:/.preguard:ro",
                    f"{hook_build / 'tests/calls-musl'}:/t/calls-musl:ro",
                    f"{tmp_path / 'run.sh'}:/t/run.sh:ro",
                ]
            },
        )
        await container.wait(timeout=60)
        lines = "".join(await container.log(stdout=True)).splitlines()
        assert lines == [expected for _, expected in MUSL_CALLS]
        assert len(guard.events()) == sum(expected == "err 13" for _, expected in MUSL_CALLS)
    finally:
        guard.close()
