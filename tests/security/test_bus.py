"""Bus authentication and least privilege, enforced by a real nats-server with the generated config:
every service does its job with its own credential, and every role is refused what it must not do."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiodocker
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from preguard.alert.service import AlertService
from preguard.alert.settings import AlertSettings
from preguard.auth import Role, permissions, read_credential
from preguard.policy.service import PolicyService
from preguard.policy.store import PolicyStore
from preguard.probe import Probe, ProbeSettings
from preguard.proto import (
    Event,
    Kind,
    Outcome,
    Policy,
    PolicyBundle,
    PolicyList,
    ProbeStatus,
    Severity,
    Stored,
    decode,
    decode_policy,
    encode,
)
from tests.security.conftest import Connect, SecureBus

POLICY = b'{"name": "lockdown", "severity": "high", "rules": [{"kind": "process", "path": "/bin/sh"}]}'


async def _quiet(exc: Exception) -> None:
    pass


def _event(host: str) -> Event:
    now = datetime.now(UTC)
    return Event(
        host=host, container_id="c0ffee000001", container_name="web-1", image="nginx:1", time=now,
        time_ns=int(now.timestamp() * 1e9), pid=7, uid=0, exe="/bin/sh", kind=Kind.PROCESS,
        target="/bin/sh", access="exec", action=Outcome.BLOCKED, policy="lockdown", rule=0,
        severity=Severity.HIGH,
    )  # fmt: skip


async def test_anonymous_and_wrong_password_clients_are_refused(secure_bus: SecureBus) -> None:
    for options in ({}, {"user": "operator", "password": "not-the-password"}, {"user": "nobody"}):
        client = NATS()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await client.connect(
                secure_bus.url, allow_reconnect=False, connect_timeout=5, error_cb=_quiet, **options
            )
        await client.close()  # nats-py leaves the refused socket open otherwise
    assert secure_bus.log.read_text().count("authentication error") >= 3


@pytest.mark.docker
async def test_every_service_does_its_job_with_its_own_credential_and_nothing_more(
    secure_bus: SecureBus, connect_as: Connect, docker: aiodocker.Docker
) -> None:
    """put (operator) -> policy service -> bundle -> real probe of host-a (direct get, core subscription)
    -> its events -> alert service -> a dashboard; the server logs no permission violation."""
    s = secure_bus.subjects
    before = len(secure_bus.violations())
    policy_c, alert_c = await connect_as(Role.POLICY), await connect_as(Role.ALERT)
    store = await PolicyStore.open(policy_c.nc.jetstream(), s.kv_policies())
    policy = PolicyService(policy_c.nc, store, s)
    await policy.start()
    settings = AlertSettings(
        window=30, update_interval=0.5, grace=0.5, partitions=2, lease_ttl=1.5, tick=0.05
    )
    alert = AlertService(alert_c.nc, s, settings.named())
    await alert.start()
    dashboard, operator = await connect_as(Role.DASHBOARD), await connect_as(Role.OPERATOR)
    alerts = await dashboard.nc.subscribe(s.alerts_all())
    status = await operator.nc.subscribe(s.status("host-a"))
    probe_c = await connect_as(Role.PROBE, "host-a")
    probe_settings = ProbeSettings(
        host="host-a", scope=f"preguard.test={uuid.uuid4().hex}", keeper="off", create_streams=False,
        status_interval=0.5, prefix=s.prefix,
    )  # fmt: skip
    probe = Probe(probe_c.nc, docker, s, probe_settings)
    await probe.start()
    try:
        reply = await operator.nc.request(s.api_policy("put"), POLICY, timeout=5)
        stored = decode(reply.data, Stored)
        while decode((await status.next_msg(timeout=10)).data, ProbeStatus).revision < stored.revision:
            pass  # the policy service learnt host-a from its heartbeat and sent its bundle
        assert probe.bundle is not None and [p.name for p in probe.bundle.policies] == ["lockdown"]

        await probe_c.nc.publish(s.events("host-a", "c0ffee000001"), encode(_event("host-a")))
        while (alert_msg := await alerts.next_msg(timeout=10)).subject != s.alerts("high", "host-a"):
            pass  # health alerts of the hosts may come first
        assert msgspec.json.decode(alert_msg.data)["target"] == "/bin/sh"

        query = await dashboard.nc.request(s.api_alerts("query"), b"{}", timeout=5)
        assert msgspec.json.decode(query.data)["ok"] is True

        console = await connect_as(Role.CONSOLE)  # what the console does on the bus (console/bus.py)
        await console.nc.subscribe(s.status_all())
        await console.nc.subscribe(s.alerts_all())
        for verb, body in (("get", b'{"name": "lockdown"}'), ("history", b'{"name": "lockdown"}'),
                           ("validate", POLICY), ("preview", POLICY), ("list", b"{}")):  # fmt: skip
            answer = msgspec.json.decode((await console.nc.request(s.api_policy(verb), body, timeout=5)).data)
            assert answer.get("ok", True) is True, (verb, answer)
        await console.nc.request(s.api_alerts("query"), b"{}", timeout=5)
    finally:
        await probe.stop()
        await alert.stop()
        await policy.stop()
    assert secure_bus.violations()[before:] == []


async def test_a_probe_cannot_read_another_hosts_bundle_nor_speak_for_another_host(
    secure_bus: SecureBus, connect_as: Connect
) -> None:
    s = secure_bus.subjects
    admin = await connect_as(Role.ADMIN)  # plays the policy service: a bundle for each host
    js = admin.nc.jetstream()
    from preguard.probe.streams import ensure_streams

    await ensure_streams(js, s)
    for host in ("host-a", "host-b"):
        await js.publish(s.policy(host), encode(PolicyBundle(host=host, revision=1, policies=[])))

    probe = await connect_as(Role.PROBE, "host-a")
    own = await probe.nc.jetstream().get_last_msg(s.stream_bundles(), s.policy("host-a"), direct=True)
    assert decode(own.data or b"", PolicyBundle).host == "host-a"  # what it may do works

    bundles = s.stream_bundles()
    await probe.nc.publish(f"$JS.API.DIRECT.GET.{bundles}.{s.policy('host-b')}", b"")
    await probe.refused(f"$JS.API.DIRECT.GET.{bundles}.{s.policy('host-b')}")
    await probe.nc.publish(
        f"$JS.API.DIRECT.GET.{bundles}", b'{"last_by_subj": "%s"}' % s.policy("host-b").encode()
    )
    await probe.refused(f'"$JS.API.DIRECT.GET.{bundles}"')
    await probe.nc.publish(f"$JS.API.STREAM.MSG.GET.{bundles}", b'{"seq": 1}')
    await probe.refused(f"$JS.API.STREAM.MSG.GET.{bundles}")
    await probe.nc.publish(f"$JS.API.CONSUMER.CREATE.{bundles}", b"{}")
    await probe.refused(f"$JS.API.CONSUMER.CREATE.{bundles}")
    await probe.nc.publish(f"$JS.API.STREAM.CREATE.{bundles}", b"{}")
    await probe.refused(f"$JS.API.STREAM.CREATE.{bundles}")
    await probe.nc.subscribe(s.policy("host-b"))
    await probe.refused(s.policy("host-b"))
    await probe.nc.subscribe(s.policy_all())
    await probe.refused(s.policy_all())
    await probe.nc.subscribe("_INBOX.>")  # every other client's replies, bundles read by others included
    await probe.refused('"_INBOX.>"')

    await probe.nc.publish(s.events("host-b", "c0ffee000001"), encode(_event("host-b")))
    await probe.refused(s.events("host-b", "c0ffee000001"))
    await probe.nc.publish(s.status("host-b"), b"{}")
    await probe.refused(s.status("host-b"))
    await probe.nc.publish(s.policy("host-a"), b"{}")  # nor forge its own bundle
    await probe.refused(s.policy("host-a"))


async def test_a_probe_cannot_put_or_delete_a_policy(secure_bus: SecureBus, connect_as: Connect) -> None:
    s = secure_bus.subjects
    probe = await connect_as(Role.PROBE, "host-a")
    for verb in ("put", "delete", "list"):
        await probe.nc.publish(s.api_policy(verb), POLICY)
        await probe.refused(s.api_policy(verb))
    await probe.nc.publish(f"$KV.{s.kv_policies()}.lockdown", POLICY)  # nor write the store itself
    await probe.refused(f"$KV.{s.kv_policies()}.lockdown")


async def test_a_dashboard_reads_alerts_and_can_write_nothing(
    secure_bus: SecureBus, connect_as: Connect
) -> None:
    s = secure_bus.subjects
    dash = await connect_as(Role.DASHBOARD)
    await dash.nc.subscribe(s.alerts_all())  # allowed: no error follows (checked by the flush below)
    for subject in (s.api_policy("put"), s.api_policy("delete"), s.alerts("high", "x"), s.events("x", "y")):
        await dash.nc.publish(subject, POLICY)
        await dash.refused(subject)
    for subject in (s.status_all(), s.events_all(), s.api_policy("put")):
        await dash.nc.subscribe(subject)
        await dash.refused(subject)
    await dash.nc.flush()
    assert not any(s.alerts_all() in e for e in dash.pending())


async def test_an_operator_uses_the_api_but_cannot_forge_bundles_events_or_alerts(
    secure_bus: SecureBus, connect_as: Connect
) -> None:
    s = secure_bus.subjects
    op = await connect_as(Role.OPERATOR)
    for subject in (
        s.policy("host-a"),
        s.events("host-a", "c"),
        s.alerts("high", "host-a"),
        s.status("host-a"),
    ):
        await op.nc.publish(subject, b"{}")
        await op.refused(subject)
    await op.nc.publish(f"$JS.API.STREAM.DELETE.{s.kv_policies()}", b"")  # nor wipe the store
    await op.refused(f"$JS.API.STREAM.DELETE.{s.kv_policies()}")


def test_credential_files_are_private_and_name_their_role(secure_bus: SecureBus) -> None:
    for user, path in secure_bus.auth.credentials.items():
        assert path.stat().st_mode & 0o077 == 0, path
        cred = read_credential(path)
        assert cred is not None and cred.user == user and cred.inbox_prefix == f"_INBOX.{user}"
    assert secure_bus.auth.config.stat().st_mode & 0o077 == 0
    assert secure_bus.auth.directory.stat().st_mode & 0o077 == 0


def test_probe_permissions_name_only_its_own_host() -> None:
    from preguard.proto import Subjects

    perms = permissions(Role.PROBE, Subjects(), "web.1")
    assert perms.publish == [
        "preguard.events.web_1.*", "preguard.status.web_1",
        "$JS.API.DIRECT.GET.preguard_bundles.preguard.policy.web_1",
    ]  # fmt: skip
    assert perms.subscribe == ["preguard.policy.web_1", "_INBOX.probe-web_1.>"]
    assert not perms.allow_responses
    with pytest.raises(ValueError, match="host"):
        permissions(Role.PROBE, Subjects())


async def test_the_operator_reads_policies_it_wrote(secure_bus: SecureBus, connect_as: Connect) -> None:
    """The operator's own request/reply works through its private inbox (no shared _INBOX.>)."""
    s = secure_bus.subjects
    policy_c = await connect_as(Role.POLICY)
    service = PolicyService(policy_c.nc, await PolicyStore.open(policy_c.nc.jetstream(), s.kv_policies()), s)
    await service.start()
    try:
        op = await connect_as(Role.OPERATOR)
        await op.nc.request(s.api_policy("put"), POLICY, timeout=5)
        listed = decode((await op.nc.request(s.api_policy("list"), b"{}", timeout=5)).data, PolicyList)
        assert [p.name for p in listed.policies] == ["lockdown"]
        assert decode_policy(POLICY) == listed.policies[0] or isinstance(listed.policies[0], Policy)
    finally:
        await service.stop()
    await asyncio.sleep(0)


def test_credentials_for_a_deployment_from_the_command_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "preguard.auth", str(tmp_path / "a"), "--host", "web.1", "--prefix", "acme"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "probe-web_1: " in out.stdout and "operator: " in out.stdout
    config = json.loads((tmp_path / "a" / "nats.conf").read_text())
    users = {u["user"]: u for u in config["authorization"]["users"]}
    assert users["probe-web_1"]["permissions"]["subscribe"]["allow"][0] == "acme.policy.web_1"
    again = read_credential(tmp_path / "a" / "operator.json")
    subprocess.run(
        [sys.executable, "-m", "preguard.auth", str(tmp_path / "a")], capture_output=True, check=True
    )
    assert read_credential(tmp_path / "a" / "operator.json") == again  # a second run keeps passwords
