"""The operator CLI against a real nats-server and the real policy service, run as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.client import Client as NATS

from preguard.natsserver import free_port
from preguard.policy.service import PolicyService
from preguard.proto import ContainerStatus, ProbeStatus, Subjects, encode

TWO_POLICIES = """
name: no-shells
severity: high
rules:
  - {kind: process, path: /bin/sh}
---
name: no-secrets
selector: {containers: ["web-*"]}
rules:
  - {kind: file, path: /etc/shadow, access: read}
"""


async def cli(nats_url: str, subjects: Subjects, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREGUARD_PREFIX": subjects.prefix, "PREGUARD_NATS_URL": nats_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "preguard.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_apply_puts_every_document_and_lists_them_as_json_lines_when_piped(
    nats_url: str, subjects: Subjects, policy_service: PolicyService, tmp_path: Path
) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(TWO_POLICIES)
    applied = await cli(nats_url, subjects, "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    assert [r["policy"] for r in lines(applied.stdout)] == ["no-shells", "no-secrets"]
    listed = await cli(nats_url, subjects, "policies")
    rows = {r["name"]: r for r in lines(listed.stdout)}
    assert rows["no-shells"]["severity"] == "high"
    assert rows["no-secrets"]["containers"] == "web-*"

    deleted = await cli(nats_url, subjects, "delete", "no-shells")
    assert deleted.returncode == 0
    assert [r["name"] for r in lines((await cli(nats_url, subjects, "policies")).stdout)] == ["no-secrets"]


async def test_a_bad_file_is_refused_locally_with_the_field_and_exit_code_1(
    nats_url: str, subjects: Subjects, policy_service: PolicyService, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: ok\n---\nname: bad\nrules: [{kind: network, cidr: 10.0.0.0/8, ports: '70000'}]\n")
    result = await cli(nats_url, subjects, "apply", "-f", str(path))
    assert result.returncode == 1
    assert "$[1].rules[0].ports: port 70000 is outside 1-65535" in result.stderr
    assert lines((await cli(nats_url, subjects, "policies")).stdout) == [], (
        "nothing from a bad file is applied"
    )


async def test_dry_run_shows_what_would_be_selected_and_stores_nothing(
    nc: NATS, nats_url: str, subjects: Subjects, policy_service: PolicyService, tmp_path: Path
) -> None:
    web = ContainerStatus(id="abcdef123456", name="web-1", image="nginx:1")
    db = ContainerStatus(id="123456abcdef", name="db-1", image="postgres:16")
    status = ProbeStatus(host="h1", time=datetime.now(UTC), interval=1, containers=[web, db])
    await nc.publish(subjects.status("h1"), encode(status))
    await nc.flush()
    path = tmp_path / "p.yaml"
    path.write_text(TWO_POLICIES.split("---")[1])
    for _ in range(50):  # the service learns hosts from heartbeats; give it the time to see this one
        result = await cli(nats_url, subjects, "apply", "--dry-run", "-f", str(path))
        if "web-1" in result.stdout:
            break
        await asyncio.sleep(0.1)
    assert result.returncode == 0, result.stderr
    (row,) = lines(result.stdout)
    assert row == {"policy": "no-secrets", "result": "valid", "would_select": "h1/web-1"}
    assert lines((await cli(nats_url, subjects, "policies")).stdout) == []


async def test_unreachable_nats_is_one_sentence_and_exit_code_2(subjects: Subjects) -> None:
    result = await cli(f"nats://127.0.0.1:{free_port()}", subjects, "policies")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("preguard: cannot reach NATS at nats://127.0.0.1:")


async def test_no_policy_service_is_one_sentence(nats_url: str, subjects: Subjects) -> None:
    result = await cli(nats_url, subjects, "policies")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"preguard: no service answers on {subjects.api_policy('list')}: is the service running?"
    )


def test_table_output_aligns_columns_and_neutralises_control_characters() -> None:
    import io

    from preguard.cli.output import Output

    buf = io.StringIO()
    out = Output(json_lines=False, stream=buf)
    out.row({"name": "a", "target": "/tmp/\x1b[2Jevil"})
    out.row({"name": "longer", "target": "/x"})
    out.flush()
    assert buf.getvalue().splitlines() == ["NAME    TARGET", "a       /tmp/?[2Jevil", "longer  /x"]


def test_check_validates_files_offline(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.json"
    good.write_text(TWO_POLICIES)
    bad.write_text('{"name": "x", "acton": "block"}')
    ok = subprocess.run(
        [sys.executable, "-m", "preguard.cli", "check", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (ok.returncode, ok.stdout.split("\n")[0]) == (0, "no-shells: 1 rules, valid")
    refused = subprocess.run(
        [sys.executable, "-m", "preguard.cli", "check", str(bad)], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 1
    assert "$.acton: Object contains unknown field `acton`" in refused.stderr


async def test_alerts_follow_with_a_severity_prints_live_alerts_of_that_severity_only(
    nc: NATS, nats_url: str, subjects: Subjects
) -> None:
    from preguard.proto import Alert, Kind, Severity

    env = {**os.environ, "PREGUARD_PREFIX": subjects.prefix, "PREGUARD_NATS_URL": nats_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "preguard.cli", "alerts", "--follow", "--severity", "high", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    now = datetime.now(UTC)

    def alert(severity: Severity, target: str) -> Alert:
        return Alert(
            id=target, host="h1", container_id="abcdef123456", container_name="web-1", image="i", policy="p",
            rule=0, kind=Kind.FILE, target=target, action="blocked", severity=severity, count=1,
            first_seen=now, last_seen=now,
        )  # fmt: skip

    try:
        async with asyncio.timeout(20):
            while True:  # until the CLI has subscribed: publish, and see whether a line comes back
                await nc.publish(subjects.alerts("low", "h1"), encode(alert(Severity.LOW, "/low")))
                await nc.publish(subjects.alerts("high", "h1"), encode(alert(Severity.HIGH, "/high")))
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), 0.5)
                    break
                except TimeoutError:
                    continue
        row = json.loads(line)
        assert (row["target"], row["severity"], row["host"]) == ("/high", "high", "h1")
    finally:
        proc.terminate()
        await proc.wait()
