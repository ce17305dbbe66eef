"""The probe and NATS: streams it creates, and events held while the server is away."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiodocker
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy, StorageType

from preguard.natsserver import free_port, run_nats_server
from preguard.probe import Probe, ProbeSettings
from preguard.probe.streams import ensure_streams
from preguard.proto import FileRule, Policy, PolicyBundle, Selector, Subjects, decode_events, encode
from tests.probe.conftest import SCOPE_LABEL, eventually, pid_of
from tests.probe.test_events import record, write_pipe


async def test_streams_are_created_with_the_contract_config_and_creating_twice_is_fine(
    nc: NATS, subjects: Subjects
) -> None:
    js = nc.jetstream()
    await ensure_streams(js, subjects)
    await ensure_streams(js, subjects)  # a second probe, or the policy service first
    bundles = (await js.stream_info(subjects.stream_bundles())).config
    events = (await js.stream_info(subjects.stream_events())).config
    assert (bundles.subjects, bundles.max_msgs_per_subject) == ([subjects.policy_all()], 1)
    assert events.subjects == [subjects.events_all()]
    assert (events.max_age, events.max_bytes, events.storage) == (86400, 1 << 30, StorageType.FILE)


@pytest.mark.docker
async def test_events_written_while_nats_is_down_are_published_when_it_returns(
    tmp_path: Path, docker: aiodocker.Docker, container: Any, glibc_image: str, scope: str, host: str
) -> None:
    subjects, port = Subjects(prefix="t" + os.urandom(4).hex()), free_port()
    c = await container(glibc_image)
    info = await c.show()
    policy = Policy(
        name="p", selector=Selector(labels={SCOPE_LABEL: scope}), rules=[FileRule(path="/etc/shadow")]
    )
    settings = ProbeSettings(host=host, scope=f"{SCOPE_LABEL}={scope}", status_interval=0.5, keeper="off")
    with run_nats_server(tmp_path, port) as url:
        admin = await nats.connect(url)
        await ensure_streams(admin.jetstream(), subjects)
        bundle = PolicyBundle(host=host, revision=1, policies=[policy])
        await admin.jetstream().publish(subjects.policy(host), encode(bundle))
        await admin.drain()
        probe_nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        probe = Probe(probe_nc, docker, subjects, settings)
        await probe.start()
        root = Path(f"/proc/{pid_of(info)}/root")
        await eventually(lambda: (root / ".preguard/events").exists())
    try:
        # the server is down: the application's records still go into the pipe, the probe holds them
        write_pipe(info, record(target="/etc/during-outage") * 3)
        await eventually(lambda: probe.held_events == 3)
        with run_nats_server(tmp_path, port) as url:
            reader = await nats.connect(url)
            sub = await reader.jetstream().subscribe(
                subjects.events(host, info["Id"][:12]),
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
            got: list[str] = []
            while len(got) < 3:
                got += [e.target for e in decode_events((await sub.next_msg(timeout=10)).data)]
            assert got == ["/etc/during-outage"] * 3
            await reader.drain()
            await probe.stop()
            await probe_nc.close()
    finally:
        if not probe_nc.is_closed:
            await probe.stop()
            await probe_nc.close()
