"""The compose demo, run as a user would (with stand-in images built here): up, a blocked call, its alert, down."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from preguard.natsserver import free_port
from tests.conftest import need
from tests.support.compose import REPO, base_image, nats_image, wheels

pytestmark = pytest.mark.docker

COMPOSE_FILE = REPO / "compose/docker-compose.yml"


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]  # Debian's 1.29: what CI has
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    need("docker compose", "install Debian's docker-compose")
    raise AssertionError("unreachable")


def _until(check: object, what: str, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()  # type: ignore[operator]
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


class Stack:
    def __init__(self, project: str, env: dict[str, str], nats_url: str) -> None:
        self.project, self.env, self.nats_url = project, env, nats_url
        self.compose = [*_compose_command(), "-p", project, "-f", str(COMPOSE_FILE)]

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.compose, *args], env=self.env, capture_output=True, text=True, check=False, timeout=timeout
        )
        if check and done.returncode != 0:  # say what compose said, not just the exit status
            raise AssertionError(
                f"`{' '.join(done.args)}` failed ({done.returncode}):\n{done.stderr[-3000:]}"
            )
        return done

    def container(self, service: str) -> str:
        out = self.run("ps", "-q", service).stdout.split()
        assert out, f"no container for {service}"
        return out[0]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "preguard.cli", *args, "--nats", self.nats_url, "--json"],
            env=self.env,  # PREGUARD_CREDS: the stack's NATS refuses anonymous clients
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "60", check=False).stdout


@pytest.fixture(scope="module")
def stack(docker_engine: None) -> Iterator[Stack]:
    if shutil.which("debootstrap") is None:
        need("debootstrap", "install Debian's debootstrap (it makes the stand-in base image)")
    base = base_image()
    suffix = uuid.uuid4().hex[:8]
    nats_port = free_port()
    env = {
        **os.environ,
        "PREGUARD_BASE_IMAGE": base,
        "PREGUARD_NATS_IMAGE": nats_image(base),
        "PREGUARD_DEMO_IMAGE": base,
        "PREGUARD_IMAGE": f"preguard-test-compose:{suffix}",
        "PREGUARD_NATS_PORT": str(nats_port),
        "PREGUARD_CONSOLE_PORT": str(free_port()),
        "PREGUARD_HOST": f"compose-{suffix}",
        # the stack's probe manages only the demo containers: other tests' containers are never touched
        "PREGUARD_DEMO_ID": suffix,
        "PREGUARD_SCOPE": f"preguard-demo={suffix}",
    }
    wheels()
    s = Stack(f"pgtest{suffix}", env, f"nats://127.0.0.1:{nats_port}")
    try:
        s.run("build", "policy")  # one image serves every preguard service (same `image:` tag)
        s.run("up", "-d")
        creds = Path(tempfile.mkdtemp()) / "operator.json"  # what the stack's auth service generated
        subprocess.run(["docker", "cp", f"{s.container('auth')}:/auth/operator.json", str(creds)], check=True)
        s.env["PREGUARD_CREDS"] = str(creds)
        yield s
    finally:
        print(s.logs())
        s.run("down", "-v", "--remove-orphans", check=False)
        subprocess.run(["docker", "rmi", "-f", env["PREGUARD_IMAGE"]], capture_output=True, check=False)


def test_compose_demo_blocks_a_call_and_its_alert_is_read_with_the_cli(stack: Stack) -> None:
    def policy_applied() -> bool:
        out = stack.cli("policies")
        return out.returncode == 0 and "demo-lockdown" in out.stdout

    _until(policy_applied, "the setup service to apply the demo policy", 120)

    def web_guarded() -> bool:
        out = stack.cli("status", "--wait", "6")
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        return any("demo-web" in str(r.get("container", "")) and r.get("guarded") == "yes" for r in rows)

    _until(web_guarded, "the probe to guard demo-web", 120)
    web = stack.container("demo-web")
    blocked = subprocess.run(
        ["docker", "exec", web, "cat", "/etc/shadow"], capture_output=True, text=True, check=False
    )
    assert blocked.returncode != 0 and "Permission denied" in blocked.stderr, blocked
    db = stack.container("demo-db")
    allowed = subprocess.run(
        ["docker", "exec", db, "cat", "/etc/shadow"], capture_output=True, text=True, check=False
    )
    assert allowed.returncode == 0, "the unselected container is untouched"

    def alert_listed() -> list[dict[str, object]]:
        out = stack.cli("alerts")
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        return [r for r in rows if r.get("target") == "/etc/shadow" and r.get("policy") == "demo-lockdown"]

    alerts = _until(alert_listed, "the alert for /etc/shadow", 60)
    assert alerts[0]["action"] == "blocked"  # type: ignore[index]
    assert alerts[0]["severity"] == "high"  # type: ignore[index]


def test_compose_file_is_valid_for_compose_v1(stack: Stack) -> None:
    config = stack.run("config").stdout
    assert "pid: host" in config and "SYS_PTRACE" in config
    assert Path(COMPOSE_FILE).read_text().startswith("# preguard demo")
