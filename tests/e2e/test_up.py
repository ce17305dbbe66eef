"""The whole system as a user runs it: `preguard up`, policies from the CLI and from another system,
blocked calls in a real container, alerts on the bus, services killed and restarted mid-stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from preguard.natsserver import free_port
from preguard.proto import Alert, ProbeStatus, Subjects, decode, decode_policy, encode
from preguard.runtime import Settings, nats_options
from tests.conftest import MakeContainer

pytestmark = pytest.mark.docker

CONTRACT_FIELDS = {
    "id", "host", "container_id", "container_name", "image", "policy", "rule", "kind", "target",
    "action", "severity", "count", "first_seen", "last_seen", "sample",
}  # fmt: skip


class Up:
    def __init__(
        self,
        proc: subprocess.Popen[str],
        url: str,
        subjects: Subjects,
        host: str,
        data: Path,
        env: dict[str, str],
    ) -> None:
        self.proc, self.url, self.subjects, self.host, self.data, self.env = (
            proc,
            url,
            subjects,
            host,
            data,
            env,
        )

    @property
    def scope(self) -> dict[str, str]:
        """The label that puts a container in this probe's care."""
        key, _, value = self.env["PREGUARD_SCOPE"].partition("=")
        return {key: value}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "preguard.cli", *args, "--nats", self.url, "--json"],
            env=self.env, capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip

    def child(self, service: str) -> int:
        """The pid of up's child running this service."""
        out = subprocess.run(
            [
                "pgrep",
                "-P",
                str(self.proc.pid),
                "-f",
                "nats-server" if service == "nats" else f"preguard.{service}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        pids = [int(p) for p in out.stdout.split()]
        assert len(pids) == 1, f"{service}: {pids}"
        return pids[0]


class Console:
    """Everything `preguard up` prints, read on a thread for its whole life (a full pipe would block it)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line)

    def wait_for(self, marker: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(marker) for line in self.lines):
                return
            if self._proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"`preguard up` never said {marker!r}:\n{''.join(self.lines)}")

    def close(self) -> None:
        self._thread.join(10)
        assert self._proc.stdout is not None
        self._proc.stdout.close()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[Up]:
    data = tmp_path_factory.mktemp("up")
    host = f"e2e-{uuid.uuid4().hex[:6]}"
    prefix = f"e2e{uuid.uuid4().hex[:6]}"
    nats_port = free_port()
    # The probe manages only containers with this label: other tests' containers are never touched.
    env = {
        **os.environ,
        "PREGUARD_PREFIX": prefix,
        "PREGUARD_STATUS_INTERVAL": "1",
        "PREGUARD_SCOPE": f"preguard-e2e={prefix}",
        # its own pipe keeper (which holds pipes open while the probe is away), stopped after the test
        "PREGUARD_KEEPER": str(data / "keeper.sock"),
        "PREGUARD_DATA_DIR": str(data),  # the CLI finds up's operator credential there
    }
    args = [
        "up",
        "--data-dir",
        str(data),
        "--nats-port",
        str(nats_port),
        "--console-port",
        str(free_port()),
        "--host",
        host,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "preguard.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    console = Console(proc)
    try:
        console.wait_for("ready")
        yield Up(proc, f"nats://127.0.0.1:{nats_port}", Subjects(prefix=prefix), host, data, env)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            console.close()
        assert any(line.startswith("stopped") for line in console.lines), "".join(console.lines)
        subprocess.run(["pkill", "-f", f"preguard.probe.keeper {data}"], check=False)
        leftover = subprocess.run(
            ["pgrep", "-f", f"-sd {data}"], capture_output=True, text=True, check=False
        ).stdout
        assert not leftover.strip(), "no stray nats-server after up stops"


@pytest.fixture
async def bus(up: Up) -> AsyncIterator[NATS]:
    admin = Settings(
        nats_url=up.url, creds=str(up.data / "auth" / "admin.json")
    )  # up's server refuses anonymous
    nc = await nats.connect(up.url, **nats_options(admin))
    yield nc
    await nc.drain()


async def _guarded(bus: NATS, up: Up, name: str, revision: int, timeout: float = 30) -> None:
    sub = await bus.subscribe(up.subjects.status(up.host))
    try:
        async with asyncio.timeout(timeout):
            while True:
                status = decode((await sub.next_msg(timeout=timeout)).data, ProbeStatus)
                for c in status.containers:
                    if c.name == name and c.guarded and c.revision >= revision:
                        return
    finally:
        await sub.unsubscribe()


async def _exec(container: Any, *cmd: str) -> tuple[int, str]:
    ex = await container.exec(list(cmd), stdout=True, stderr=True)
    out: list[bytes] = []
    async with ex.start(detach=False) as stream:
        while (msg := await stream.read_out()) is not None:
            out.append(msg.data)
    code: int = (await ex.inspect())["ExitCode"]
    return code, b"".join(out).decode(errors="replace")


async def _alerts(sub: Any, want: set[str], container: str, timeout: float = 20) -> dict[str, dict[str, Any]]:
    """The first rule-hit alert of each wanted kind for one container (health alerts are skipped)."""
    got: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(timeout):
        while not want <= got.keys():
            raw = json.loads((await sub.next_msg(timeout=timeout)).data)
            if raw["container_name"] == container and raw["policy"]:
                got.setdefault(raw["kind"], raw)
    return got


POLICY = """
name: e2e-lockdown
severity: high
selector: {{labels: {{e2e: "{tag}"}}}}
rules:
  - {{kind: file, path: /etc/passwd, access: read, action: block}}
  - {{kind: process, name: dd, action: block}}
  - {{kind: network, cidr: 127.0.0.2/32, action: block}}
"""


async def test_policy_from_the_cli_blocks_exec_open_and_connect_and_alerts_arrive(
    up: Up, bus: NATS, make_container: MakeContainer, glibc_image: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY.format(tag=tag))
    container = await make_container(glibc_image, labels={"e2e": tag, **up.scope})
    name = (await container.show())["Name"].lstrip("/")
    applied = up.cli("apply", "-f", str(policy_file))
    assert applied.returncode == 0, applied.stderr
    revision = json.loads(applied.stdout)["revision"]
    await _guarded(bus, up, name, revision)

    sub = await bus.subscribe(up.subjects.alerts_all())
    assert (await _exec(container, "/bin/cat", "/etc/passwd"))[0] != 0
    assert (await _exec(container, "/bin/sh", "-c", "/bin/dd if=/dev/null of=/dev/null"))[0] != 0
    code, out = await _exec(container, "/bin/bash", "-c", "echo > /dev/tcp/127.0.0.2/80")
    assert code != 0
    assert "Permission denied" in out  # not "Connection refused": the hook said no, not the kernel
    assert (await _exec(container, "/bin/cat", "/etc/group"))[0] == 0, "what no rule names still works"

    alerts = await _alerts(sub, {"file", "process", "network"}, name)
    for kind, raw in alerts.items():
        assert raw.keys() >= CONTRACT_FIELDS, kind
        alert = msgspec.convert(raw, Alert)
        assert (alert.policy, alert.container_name, alert.action, alert.severity) == (
            "e2e-lockdown",
            name,
            "blocked",
            "high",
        )
    assert alerts["file"]["target"] == "/etc/passwd"
    assert alerts["network"]["target"].startswith("127.0.0.2:")


async def test_another_system_sets_policy_with_a_plain_nats_client(
    up: Up, bus: NATS, make_container: MakeContainer, glibc_image: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    policy = decode_policy(POLICY.format(tag=tag).replace("e2e-lockdown", "e2e-other"), "yaml")
    container = await make_container(glibc_image, labels={"e2e": tag, **up.scope})
    name = (await container.show())["Name"].lstrip("/")
    reply = json.loads((await bus.request(up.subjects.api_policy("put"), encode(policy), timeout=5)).data)
    assert reply["ok"] is True
    await _guarded(bus, up, name, reply["revision"])
    assert (await _exec(container, "/bin/cat", "/etc/passwd"))[0] != 0
    bad = json.loads(
        (
            await bus.request(
                up.subjects.api_policy("put"), b'{"name": "x", "rules": [{"kind": "file"}]}', timeout=5
            )
        ).data
    )
    assert bad["ok"] is False
    assert bad["details"][0]["field"] == "$.rules[0].path"


@pytest.mark.parametrize("service", ["probe", "alert", "policy", "nats"])
async def test_killed_service_is_restarted_and_no_event_is_lost(
    up: Up, bus: NATS, make_container: MakeContainer, glibc_image: str, tmp_path: Path, service: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY.format(tag=tag).replace("e2e-lockdown", f"e2e-{service}"))
    container = await make_container(glibc_image, labels={"e2e": tag, **up.scope})
    name = (await container.show())["Name"].lstrip("/")
    applied = up.cli("apply", "-f", str(policy_file))
    await _guarded(bus, up, name, json.loads(applied.stdout)["revision"])
    sub = await bus.subscribe(up.subjects.alerts_all())
    assert (await _exec(container, "/bin/cat", "/etc/passwd"))[0] != 0
    first = await _alerts(sub, {"file"}, name)
    assert first["file"]["count"] == 1

    os.kill(up.child(service), signal.SIGKILL)
    # The application keeps running, and keeps being denied, while the service is away.
    for _ in range(5):
        assert (await _exec(container, "/bin/cat", "/etc/passwd"))[0] != 0
    assert (await container.show())["State"]["Running"]

    counts: list[int] = []
    async with asyncio.timeout(60):
        while 6 not in counts:  # the same alert, its count rising to exactly 6 once the service is back
            raw = json.loads((await sub.next_msg(timeout=60)).data)
            if raw["container_name"] == name and raw["kind"] == "file":
                assert raw["id"] == first["file"]["id"]
                counts.append(raw["count"])
    assert max(counts) == 6, counts
