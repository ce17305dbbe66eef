"""Hostile input, fuzzed for a bounded time: the pipe record decoder, the policy decoders (JSON and
YAML) and the policy and alert API handlers (bytes sent to the real subjects of the real services).
No crash, no hang, every refusal a clean error."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

import msgspec
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from preguard.alert.service import AlertService
from preguard.alert.settings import AlertSettings
from preguard.policy.service import PolicyService
from preguard.policy.store import PolicyStore
from preguard.proto import InvalidPolicy, Kind, Outcome, Subjects, decode_policies, decode_policy
from preguard.proto.abi import RECORD_MAX, Record, RecordReader, encode_record

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
_MAGIC = encode_record(
    Record(version=1, time_ns=1, pid=1, uid=0, kind=Kind.FILE, action=Outcome.BLOCKED, access="read",
           rule_id=0, revision=1, exe="", target="", truncated=False)
)[:4]  # fmt: skip


# -- the pipe ---------------------------------------------------------------------------------
records = st.builds(
    Record,
    version=st.just(1),
    time_ns=st.integers(0, 2**63 - 1),
    pid=st.integers(0, 2**31 - 1),
    uid=st.integers(0, 2**32 - 1),
    kind=st.sampled_from([Kind.FILE, Kind.PROCESS, Kind.NETWORK]),
    action=st.sampled_from([Outcome.BLOCKED, Outcome.AUDITED]),
    access=st.sampled_from(["read", "write", "exec", "connect", "send"]),
    rule_id=st.integers(0, 10_000),
    revision=st.integers(0, 2**31),
    exe=st.text(max_size=100),
    target=st.text(max_size=200),
    truncated=st.booleans(),
)


@FUZZ
@given(chunks=st.lists(st.binary(max_size=600), max_size=20))
def test_the_record_reader_survives_any_bytes_and_keeps_its_buffer_bounded(chunks: list[bytes]) -> None:
    reader = RecordReader()
    for chunk in chunks:
        for rec in reader.feed(chunk):
            assert isinstance(rec, Record) and isinstance(rec.exe, str) and isinstance(rec.target, str)
        assert len(reader._buf) <= RECORD_MAX  # a container cannot make the probe hold more


@FUZZ
@given(
    recs=st.lists(records, min_size=1, max_size=5),
    garbage=st.lists(st.binary(max_size=300).filter(lambda b: _MAGIC[:1] not in b), max_size=5),
    cuts=st.lists(st.integers(1, 400), max_size=8),
)
def test_valid_records_between_garbage_and_split_anywhere_all_come_out(
    recs: list[Record], garbage: list[bytes], cuts: list[int]
) -> None:
    wire = [encode_record(r) for r in recs if len(encode_record(r)) <= RECORD_MAX]
    stream = b"".join(g + w for g, w in zip(garbage + [b""] * len(wire), wire, strict=False))
    reader, got, pos = RecordReader(), [], 0
    for cut in cuts:
        got += reader.feed(stream[pos : pos + cut])
        pos += cut
    got += reader.feed(stream[pos:])
    assert [encode_record(r) for r in got] == wire


# -- policies ---------------------------------------------------------------------------------
def _refused_cleanly(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except InvalidPolicy as exc:
        clean = exc.details and all(d.field.startswith("$") and d.error for d in exc.details)
        assert clean, exc.details  # noqa: PT017 (either outcome is fine for any input; a clean one is the point)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_any_bytes_as_a_policy_is_a_policy_or_a_clean_refusal(data: bytes) -> None:
    _refused_cleanly(decode_policy, data, "json")
    _refused_cleanly(decode_policy, data, "yaml")
    _refused_cleanly(decode_policies, data, "yaml")
    _refused_cleanly(decode_policies, data, "json")


FIELDS = ["name", "rules", "kind", "path", "cidr", "ports", "selector", "hosts", "labels", "action",
          "access", "defaults", "severity", "process", "unix", "protocol", "description"]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
    | st.sampled_from(["block", "file", "/etc/shadow", "10.0.0.0/8", "1-70000", "web-1", "*"]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=6),
    max_leaves=40,
)  # fmt: skip


@FUZZ
@given(doc=json_values)
def test_policy_shaped_documents_are_policies_or_clean_refusals_in_json_and_yaml(doc: Any) -> None:
    text = json.dumps(doc)
    _refused_cleanly(decode_policy, text, "json")
    _refused_cleanly(decode_policy, text, "yaml")  # JSON is YAML too
    _refused_cleanly(decode_policies, text, "yaml")


@pytest.mark.timeout(20)
def test_a_megabyte_and_deep_nesting_are_refused_without_crashing() -> None:
    for data in (b" " * (1 << 20), b"[" * (1 << 20), b"a: " * 400_000):
        with pytest.raises(InvalidPolicy, match="limit"):
            decode_policy(data, "yaml")
        with pytest.raises(InvalidPolicy, match="limit"):
            decode_policies(data, "json")
    for fmt in ("json", "yaml"):
        for deep in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
            with pytest.raises(InvalidPolicy):
                decode_policy(deep, fmt)  # type: ignore[arg-type]
    yaml_bomb = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
        b"%s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n"
        % ((bytes([98 + i]),) * 2 + (bytes([97 + i]),) * 9)
        for i in range(8)
    )  # billion laughs: aliases expand to 9**9 items
    with pytest.raises(InvalidPolicy):
        decode_policy(yaml_bomb, "yaml")


def test_yaml_is_loaded_safely() -> None:
    """No Python object from a tag: a safe loader refuses it instead of calling it."""
    for doc in (b"!!python/object/apply:os.system ['true']", b"name: !!python/name:os.system x"):
        with pytest.raises(InvalidPolicy, match="YAML"):
            decode_policy(doc, "yaml")


# -- the API handlers -------------------------------------------------------------------------
class LoopThread:
    """The real services on their own event loop; hypothesis' synchronous tests call into it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Services:
    def __init__(self, url: str) -> None:
        self.url, self.subjects = url, Subjects(prefix=f"f{uuid.uuid4().hex[:8]}")

    async def start(self) -> None:
        self.nc: NATS = await nats.connect(self.url)
        self.client: NATS = await nats.connect(self.url)
        store = await PolicyStore.open(self.nc.jetstream(), self.subjects.kv_policies())
        self.policy = PolicyService(self.nc, store, self.subjects)
        await self.policy.start()
        alert = AlertSettings(partitions=1, lease_ttl=1.5, tick=0.05).named()
        self.alert = AlertService(self.nc, self.subjects, alert)
        await self.alert.start()

    async def stop(self) -> None:
        await self.alert.stop()
        await self.policy.stop()
        js = self.nc.jetstream()
        for stream in await js.streams_info():
            if stream.config.name and stream.config.name.removeprefix("KV_").startswith(self.subjects.prefix):
                await js.delete_stream(stream.config.name)
        await self.client.close()
        await self.nc.close()

    async def ask(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> Any:
        reply = await self.client.request(subject, data, timeout=10, headers=headers)
        return msgspec.json.decode(reply.data)


@pytest.fixture(scope="module")
def services(nats_url: str) -> Iterator[tuple[LoopThread, Services]]:
    loop, svc = LoopThread(), Services(nats_url)
    loop.run(svc.start())
    yield loop, svc
    loop.run(svc.stop())
    loop.close()


VERBS = ["put", "delete", "get", "list", "validate", "history", "preview"]
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    verb=st.sampled_from(VERBS),
    data=st.binary(max_size=1500) | json_values.map(lambda d: json.dumps(d).encode()),
    client=header_text,
    expected=header_text,
)
def test_the_policy_api_answers_any_request_with_a_clean_reply(
    services: tuple[LoopThread, Services], verb: str, data: bytes, client: str, expected: str
) -> None:
    loop, svc = services
    headers = {"Preguard-Client": client, "Preguard-Expected-Revision": expected}
    reply = loop.run(svc.ask(svc.subjects.api_policy(verb), data, headers))
    assert isinstance(reply, dict)
    if reply.get("ok") is False:
        assert reply["error"] != "internal error", reply
        assert all(d["field"] and d["error"] for d in reply["details"])


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=500) | json_values.map(lambda d: json.dumps(d).encode()))
def test_the_alert_query_answers_any_request_with_a_clean_reply(
    services: tuple[LoopThread, Services], data: bytes
) -> None:
    loop, svc = services
    reply = loop.run(svc.ask(svc.subjects.api_alerts("query"), data))
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
    if not reply["ok"]:
        assert reply["error"] != "internal error", reply


def test_after_the_fuzzing_the_services_still_do_their_job(services: tuple[LoopThread, Services]) -> None:
    loop, svc = services
    started = time.monotonic()
    policy = b'{"name": "after-fuzz", "rules": [{"kind": "file", "path": "/etc/shadow"}]}'
    assert loop.run(svc.ask(svc.subjects.api_policy("put"), policy))["ok"] is True
    assert (
        loop.run(svc.ask(svc.subjects.api_policy("get"), b'{"name": "after-fuzz"}'))["name"] == "after-fuzz"
    )
    assert loop.run(svc.ask(svc.subjects.api_alerts("query"), b"{}"))["ok"] is True
    assert time.monotonic() - started >= 0
