"""The musl build loads in a musl container (LD_PRELOAD into the preguard volume) and enforces there."""

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
                host_config={"Binds": [f"{guard.dir}:/.preguard"]},
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
