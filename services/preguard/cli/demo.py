"""`preguard up --demo`: two small containers built from host files and a sample policy."""

from __future__ import annotations

import asyncio
import subprocess

from nats.aio.client import Client as NATS

from preguard.images import build_image
from preguard.proto import Subjects, decode_policy, encode

DEMO_IMAGE = "preguard-demo"
DEMO_CONTAINERS = {"demo-web": {"tier": "web"}, "demo-db": {"tier": "db"}}
DEMO_POLICY = """
name: demo-lockdown
description: the demo web container may not read secrets, run a second shell, or reach 127.0.0.2
severity: high
selector:
  labels: {tier: web}
rules:
  - {kind: file, path: /etc/shadow, access: any, action: block}
  - {kind: process, name: dd, action: block}
  - {kind: network, cidr: 127.0.0.2/32, action: block}
  - {kind: file, path: "/tmp/audit/**", access: write, action: audit}
"""


async def start_demo(nc: NATS, subjects: Subjects, host: str) -> list[str]:
    tag = await asyncio.to_thread(build_image, "glibc", DEMO_IMAGE)
    for name, labels in DEMO_CONTAINERS.items():
        await asyncio.to_thread(_docker, "rm", "-f", name)
        label_args = [arg for k, v in labels.items() for arg in ("--label", f"{k}={v}")]
        await asyncio.to_thread(
            _docker,
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            *label_args,
            tag,
            "/bin/sleep",
            "infinity",
        )
    policy = decode_policy(DEMO_POLICY, "yaml")
    await nc.request(subjects.api_policy("put"), encode(policy), timeout=5)
    return [
        f"containers {', '.join(DEMO_CONTAINERS)} started from {tag}; policy {policy.name} applied",
        "try it:   docker exec demo-web cat /etc/shadow      (then: preguard alerts)",
    ]


async def stop_demo() -> None:
    for name in DEMO_CONTAINERS:
        await asyncio.to_thread(_docker, "rm", "-f", name)


def _docker(*args: str) -> None:
    subprocess.run(["docker", *args], check=False, capture_output=True)
