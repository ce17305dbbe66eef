"""The policy service: the request/reply API over NATS, host discovery from heartbeats, bundle publishing."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import cast

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from preguard.policy import bundles
from preguard.policy.publisher import Publisher, ensure_bundle_stream
from preguard.policy.store import Busy, Conflict, NotFound, PolicyStore
from preguard.proto import (
    FieldError,
    InvalidPolicy,
    NameRequest,
    Policy,
    PolicyList,
    ProbeStatus,
    Refused,
    Stored,
    Subjects,
    decode,
    decode_policy,
    decode_status,
    encode,
)
from preguard.proto.api import PolicyHistory, PolicyPreview, PolicyRevision, Validated
from preguard.proto.messages import Message
from preguard.proto.policy import MAX_POLICY_BYTES, refusal_details

log = structlog.get_logger()

CLIENT_HEADER = "Preguard-Client"  # who is asking, for history; "anonymous" without it
EXPECTED_HEADER = "Preguard-Expected-Revision"  # put/delete only if the policy is at this revision
REVISION_HEADER = "Preguard-Revision"  # on get and list replies: the global revision they reflect
VERSION_HEADER = "Preguard-Version"  # on get replies: the policy's own version
MAX_SMALL_REQUEST = 4096  # every request but put, validate and preview carries a name at most
MAX_CLIENT = 128
CONCURRENCY = 32  # requests in progress per verb; puts to one policy still queue on its name
PENDING_MSGS = 8192  # per verb: a flood beyond this is dropped by the client library, not queued
PENDING_BYTES = 64 * 1024 * 1024

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # the Policy name pattern: names are KV keys too
Reply = tuple[Message, dict[str, str] | None]


class Refusal(Exception):
    def __init__(
        self, error: str, field: str = "$", reason: str = "", details: list[FieldError] | None = None
    ):
        super().__init__(error)
        self.refused = Refused(
            error=error, details=details or [FieldError(field=field, error=reason or error)]
        )


class PolicyService:
    def __init__(self, nc: NATS, store: PolicyStore, subjects: Subjects) -> None:
        self._nc, self._store, self._subjects = nc, store, subjects  # injected: the caller owns them
        self._publisher = Publisher(nc, store, subjects)
        self._statuses: dict[str, ProbeStatus] = {}  # last heartbeat per host, for preview
        self._subs: list[Subscription] = []
        self._tasks: asyncio.TaskGroup | None = None  # set while running: requests are handled in it
        self._inflight: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    @property
    def hosts(self) -> list[str]:
        return self._publisher.hosts

    async def start(self) -> None:
        """Returns once the API answers and the store's policies are loaded."""
        await ensure_bundle_stream(self._nc, self._subjects)
        await self._publisher.recover()
        started = asyncio.Event()
        self._runner = asyncio.create_task(self._run(started))  # the TaskGroup lives in _run
        await started.wait()
        try:
            async with asyncio.timeout(30):
                while not self._store.loaded:
                    with contextlib.suppress(TimeoutError):
                        await self._store.sync(within=5.0)
        except BaseException:
            self._runner.cancel()  # no half-started service left running behind the caller's back
            raise
        handlers: dict[str, Callable[[Msg], Awaitable[Reply]]] = {
            "put": self._put,
            "delete": self._delete,
            "get": self._get,
            "list": self._list,
            "validate": self._validate,
            "history": self._history,
            "preview": self._preview,
        }
        for verb, handler in handlers.items():
            sub = await self._nc.subscribe(
                self._subjects.api_policy(verb),
                queue="policy",
                cb=self._serving(verb, handler),
                pending_msgs_limit=PENDING_MSGS,
                pending_bytes_limit=PENDING_BYTES,
            )
            self._subs.append(sub)
        self._subs.append(await self._nc.subscribe(self._subjects.status_all(), cb=self._on_status))
        await self._nc.flush()
        log.info("policy_service_started", revision=self._store.revision, hosts=len(self.hosts))

    async def stop(self, grace: float = 5.0) -> None:
        try:
            async with asyncio.timeout(grace):  # sub.drain() alone waits forever on a stuck handler
                for sub in self._subs:
                    with contextlib.suppress(nats.errors.Error):
                        await sub.drain()  # type: ignore[no-untyped-call]
                if self._inflight:  # answer what was taken in before stopping the loops
                    await asyncio.wait(self._inflight)
        except TimeoutError:
            log.warning("policy_service_stop_slow", inflight=len(self._inflight))
            for sub in self._subs:  # what is still queued goes unanswered: callers time out
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        self._subs.clear()
        self._tasks = None  # requests still arriving in a callback are dropped from here on
        if self._runner is not None:
            self._runner.cancel()
            done, _ = await asyncio.wait({self._runner}, timeout=grace)
            if not done:
                log.error("policy_service_stuck")
            elif not self._runner.cancelled() and self._runner.exception() is not None:
                log.error("policy_service_failed_earlier", error=repr(self._runner.exception()))

    async def _run(self, started: asyncio.Event) -> None:
        """The store's watch and the publisher loop, until stop() cancels them."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._store.follow(self._publisher.changed))
                tasks.create_task(self._publisher.run())
                self._tasks = tasks
                started.set()
        except* Exception:
            log.exception("policy_service_failed")
            raise
        finally:
            self._tasks = None

    # -- heartbeats ------------------------------------------------------------------------------
    async def _on_status(self, msg: Msg) -> None:
        try:
            status = decode_status(self._subjects, msg.subject, msg.data)
        except msgspec.DecodeError as exc:
            log.warning("status_refused", subject=msg.subject, error=str(exc))
            return
        self._statuses[status.host] = status
        self._publisher.learn(status.host)

    # -- the API ---------------------------------------------------------------------------------
    def _serving(
        self, verb: str, handler: Callable[[Msg], Awaitable[Reply]]
    ) -> Callable[[Msg], Awaitable[None]]:
        limit = (
            MAX_POLICY_BYTES + MAX_SMALL_REQUEST
            if verb in ("put", "validate", "preview")
            else MAX_SMALL_REQUEST
        )

        slots = asyncio.Semaphore(CONCURRENCY)

        async def take(msg: Msg) -> None:
            await slots.acquire()  # all slots busy: the subscription queues, up to its pending limit
            if self._tasks is None:  # stopping
                slots.release()
                return
            task = self._tasks.create_task(serve(msg))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            task.add_done_callback(lambda _: slots.release())

        async def serve(msg: Msg) -> None:
            with structlog.contextvars.bound_contextvars(verb=verb, client=_client(msg)):
                try:
                    if len(msg.data) > limit:
                        raise Refusal(
                            "request too large", reason=f"{len(msg.data)} bytes, over the {limit} limit"
                        )
                    reply, headers = await handler(msg)
                except Refusal as exc:
                    reply, headers = exc.refused, None
                    log.info("request_refused", error=exc.refused.error, details=len(exc.refused.details))
                except (nats.errors.Error, TimeoutError) as exc:
                    reply, headers = Refused(error="store unavailable", details=[_whole(repr(exc))]), None
                    log.warning("request_failed", error=repr(exc))
                except Exception as exc:  # a bug in one request must not take the service down
                    reply, headers = (
                        Refused(error="internal error", details=[_whole(type(exc).__name__)]),
                        None,
                    )
                    log.exception("request_crashed")
                with contextlib.suppress(nats.errors.Error):  # the asker may be gone, or NATS
                    await self._respond(msg, reply, headers)

        return take

    async def _respond(self, msg: Msg, reply: Message, headers: dict[str, str] | None) -> None:
        if not msg.reply:
            return  # a publish, not a request: nobody to answer
        data = encode(reply)
        if len(data) > self._nc.max_payload:
            error = f"the reply is {len(data)} bytes, over the server's max_payload {self._nc.max_payload}"
            data, headers = encode(Refused(error="reply too large", details=[_whole(error)])), None
        await self._nc.publish(msg.reply, data, headers=headers)

    async def _put(self, msg: Msg) -> Reply:
        policy = self._policy(msg.data)
        await self._check_bundle_size(policy)
        with structlog.contextvars.bound_contextvars(policy=policy.name):
            change = await self._write(self._store.put(policy, _client(msg), _expected(msg)))
            log.info("policy_stored", revision=change.revision, version=change.version)
        return Stored(name=policy.name, revision=change.revision, version=change.version), None

    async def _delete(self, msg: Msg) -> Reply:
        name = _name(msg.data)
        with structlog.contextvars.bound_contextvars(policy=name):
            change = await self._write(self._store.delete(name, _client(msg), _expected(msg)))
            log.info("policy_deleted", revision=change.revision, version=change.version)
        return Stored(name=name, revision=change.revision, version=change.version), None

    async def _get(self, msg: Msg) -> Reply:
        name = _name(msg.data)
        try:
            stored = await self._store.get(name)
        except NotFound:
            raise Refusal("no such policy", "$.name", f"no policy named {name!r}") from None
        assert stored.policy is not None
        log.info("policy_read", policy=name, revision=stored.revision)
        return stored.policy, {REVISION_HEADER: str(stored.revision), VERSION_HEADER: str(stored.version)}

    async def _list(self, msg: Msg) -> Reply:
        await self._synced()
        policies, revision = self._store.policies(), self._store.revision
        raws = [self._store.encoded(policies[n]) for n in sorted(policies)]  # JSON in place of each Policy
        log.info("policies_listed", count=len(policies), revision=revision)
        return PolicyList(policies=cast(list[Policy], raws)), {REVISION_HEADER: str(revision)}

    async def _validate(self, msg: Msg) -> Reply:
        policy = self._policy(msg.data)
        await self._check_bundle_size(policy)
        log.info("policy_validated", policy=policy.name)
        return Validated(name=policy.name, rules=len(policy.rules)), None

    async def _history(self, msg: Msg) -> Reply:
        name = _name(msg.data)
        try:
            revisions = await self._store.history(name)
        except NotFound:
            raise Refusal("no such policy", "$.name", f"no policy named {name!r} was ever stored") from None
        revisions, left_out = _fit(revisions, self._nc.max_payload - 1024)
        log.info("policy_history_read", policy=name, revisions=len(revisions), left_out=left_out)
        return PolicyHistory(name=name, revisions=revisions), None

    async def _preview(self, msg: Msg) -> Reply:
        """A draft Policy, or `{"name"}` alone for the stored policy of that name."""
        try:
            doc = msgspec.json.decode(msg.data)
        except msgspec.DecodeError:
            doc = None
        if isinstance(doc, dict) and set(doc) == {"name"}:
            name = _name(msg.data)
            try:
                policy = (await self._store.get(name)).policy
            except NotFound:
                raise Refusal("no such policy", "$.name", f"no policy named {name!r}") from None
            assert policy is not None
        else:
            policy = self._policy(msg.data)
        hosts, matches = bundles.preview(policy, self._statuses)
        log.info("policy_previewed", policy=policy.name, hosts=len(hosts), containers=len(matches))
        return PolicyPreview(name=policy.name, hosts=hosts, containers=matches), None

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _policy(data: bytes) -> Policy:
        try:
            return decode_policy(data)
        except InvalidPolicy as exc:
            raise Refusal("invalid policy", details=exc.details) from None

    async def _write(self, write: Awaitable[PolicyRevision]) -> PolicyRevision:
        try:
            return await write
        except NotFound as exc:
            raise Refusal("no such policy", "$.name", f"no policy named {exc.args[0]!r}") from None
        except Conflict as exc:
            raise Refusal("conflict", EXPECTED_HEADER, str(exc)) from None
        except Busy as exc:
            raise Refusal("busy", reason=str(exc)) from None

    async def _synced(self) -> None:
        try:
            await self._store.sync()
        except TimeoutError:
            raise Refusal(
                "store unavailable", reason="the service's view is behind the store; retry"
            ) from None

    async def _check_bundle_size(self, policy: Policy) -> None:
        """Refuse a policy that would make some host's bundle too large for the server to carry.

        Stored record sizes bound the policies' encoded sizes from above: one sum answers the
        common case, and only when that is over the limit is each host's bundle worked out.
        """
        limit = self._nc.max_payload - 1024
        size, store = len(encode(policy)), self._store
        if store.total_bytes + size > limit // 2:  # near the limit: count what was just stored too
            with contextlib.suppress(TimeoutError):  # best effort: the publisher refuses what slips by
                await store.sync(within=1.0)
        if store.total_bytes - store.size(policy.name) + size <= limit:
            return  # even a host every policy selects fits
        others = {n: p for n, p in store.policies().items() if n != policy.name}
        for host in self.hosts:
            if bundles.host_matches(policy, host):
                total = size + sum(len(encode(p)) for p in others.values() if bundles.host_matches(p, host))
                if total > limit:
                    reason = f"host {host}'s bundle would be {total} bytes, over {limit}"
                    raise Refusal("bundle too large", reason=reason)


def _fit(revisions: list[PolicyRevision], limit: int) -> tuple[list[PolicyRevision], int]:
    """Leave out the policy bodies of the oldest revisions until the history fits in one reply."""
    sizes = [len(encode(r)) for r in revisions]
    total, out, left_out = sum(sizes), list(revisions), 0
    for i, r in enumerate(revisions):
        if total <= limit:
            break
        if r.policy is not None:
            out[i] = msgspec.structs.replace(r, policy=None)
            total += len(encode(out[i])) - sizes[i]
            left_out += 1
    return out, left_out


def _client(msg: Msg) -> str:
    raw = (msg.headers or {}).get(CLIENT_HEADER, "").strip()
    clean = "".join(c for c in raw[:MAX_CLIENT] if c.isprintable())
    return clean or "anonymous"


def _expected(msg: Msg) -> int | None:
    raw = (msg.headers or {}).get(EXPECTED_HEADER)
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise Refusal("invalid request", EXPECTED_HEADER, f"{raw[:40]!r} is not a revision (0 or more)")
    return int(raw)


def _name(data: bytes) -> str:
    try:
        name = decode(data, NameRequest).name
    except msgspec.DecodeError as exc:
        raise Refusal("invalid request", details=refusal_details(exc)) from None
    if not _NAME.match(name):
        raise Refusal("invalid request", "$.name", f"{name[:70]!r} is not a policy name ({_NAME.pattern})")
    return name


def _whole(error: str) -> FieldError:
    return FieldError(field="$", error=error)
