"""Nothing is lost when the service is killed, or when NATS restarts on the same store directory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from preguard.natsserver import free_port, run_nats_server
from preguard.policy.service import PolicyService
from preguard.policy.store import PolicyStore
from preguard.proto import FileRule, NameRequest, Policy, PolicyList, Stored, Subjects
from preguard.proto.api import PolicyHistory
from tests.policy.conftest import Api, Hosts, next_bundle


def policy(name: str, description: str = "") -> Policy:
    return Policy(name=name, description=description, rules=[FileRule(path="/etc/shadow")])


async def until_answered(api: Api, verb: str, body: Any, reply: type[Any], within: float = 20.0) -> Any:
    """The reply once the service (or NATS behind it) is back; retries while nobody answers."""
    async with asyncio.timeout(within):
        while True:
            try:
                result = await api.call(verb, body, reply, wait=1.0)
            except (
                nats.errors.NoRespondersError,
                nats.errors.TimeoutError,
                nats.errors.ConnectionClosedError,
            ):
                await asyncio.sleep(0.1)  # polling for a restart, not waiting for a message
                continue
            if getattr(result, "ok", True):
                return result
            await asyncio.sleep(0.1)  # refused while the store comes back: ask again


@pytest.fixture
def service_process(nats_url: str, subjects: Subjects) -> Iterator[Any]:
    """`python -m preguard.policy` as a real process; start() it, kill it with SIGKILL."""
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PREGUARD_NATS_URL": nats_url, "PREGUARD_PREFIX": subjects.prefix}

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "preguard.policy"], env=env, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_a_killed_service_comes_back_with_every_policy_and_host(
    api: Api, hosts: Hosts, service_process: Any
) -> None:
    first = service_process()
    await until_answered(api, "list", b"{}", PolicyList)
    await api.call("put", policy("gone"), Stored)
    await api.call("put", policy("kept", "v1"), Stored)
    await api.call("delete", NameRequest(name="gone"), Stored)
    before = await api.call("put", policy("kept", "v2"), Stored)
    await hosts.join("h1")
    history = await api.call("history", NameRequest(name="gone"), PolicyHistory)
    first.send_signal(signal.SIGKILL)
    first.wait()

    service_process()
    listed = await until_answered(api, "list", b"{}", PolicyList)
    assert listed.policies == [policy("kept", "v2")]
    assert await api.call("history", NameRequest(name="gone"), PolicyHistory) == history
    after = await api.call("put", policy("new"), Stored)
    assert after.revision == before.revision + 1
    late = await hosts.subscribe("h1")  # no heartbeat since the restart: the host came back from the stream
    bundle = await next_bundle(late, after.revision)
    assert [p.name for p in bundle.policies] == ["kept", "new"]


async def test_policies_and_revisions_survive_a_nats_restart(tmp_path: Path, subjects: Subjects) -> None:
    store_dir, port = tmp_path / "jetstream", free_port()
    with run_nats_server(store_dir, port) as url:
        nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        service = PolicyService(nc, await PolicyStore.open(nc.jetstream(), subjects.kv_policies()), subjects)
        await service.start()
        api, hosts = Api(nc, subjects), Hosts(nc, subjects)
        await api.call("put", policy("a"), Stored)
        await api.call("put", policy("b"), Stored)
        last = await api.call("put", policy("a", "v2"), Stored)
        await hosts.join("h1")
        history = await api.call("history", NameRequest(name="a"), PolicyHistory)
        for sub in hosts.subs:
            await sub.unsubscribe()
    try:
        with run_nats_server(store_dir, port):  # the same store, the same address: the client reconnects
            after = await until_answered(api, "put", policy("c"), Stored)
            assert after.revision == last.revision + 1
            listed = await until_answered(api, "list", b"{}", PolicyList)
            assert [p.name for p in listed.policies] == ["a", "b", "c"]
            assert listed.policies[0].description == "v2"
            assert await api.call("history", NameRequest(name="a"), PolicyHistory) == history
            bundle = await next_bundle(await Hosts(nc, subjects).subscribe("h1"), after.revision)
            assert [p.name for p in bundle.policies] == ["a", "b", "c"]

            await service.stop()  # and the service restarted on top of the restarted server
            again = PolicyService(
                nc, await PolicyStore.open(nc.jetstream(), subjects.kv_policies()), subjects
            )
            await again.start()
            assert (await api.call("list", b"{}", PolicyList)).policies == listed.policies
            assert (await api.call("put", policy("d"), Stored)).revision == after.revision + 1
            await again.stop()
    finally:
        await nc.close()
