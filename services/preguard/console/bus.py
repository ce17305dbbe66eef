"""The console's requests to the other services: the policy API and the alert query, typed."""

from __future__ import annotations

from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from preguard.proto import (
    AlertList,
    AlertQuery,
    FieldError,
    NameRequest,
    Policy,
    PolicyList,
    Refused,
    Stored,
    Subjects,
    decode,
    encode,
)
from preguard.proto.api import PolicyHistory, PolicyPreview, Validated

T = TypeVar("T")
CLIENT_HEADER = "Preguard-Client"
EXPECTED_HEADER = "Preguard-Expected-Revision"  # put/delete only if the policy is at this revision
REVISION_HEADER = "Preguard-Revision"  # on get replies: the policy's current global revision


class Unavailable(Exception):
    """No service answered: a message for the operator, not a refusal."""


class RefusedError(Exception):
    def __init__(self, refused: Refused) -> None:
        self.refused = refused
        super().__init__(refused.error)

    @property
    def details(self) -> list[FieldError]:
        return self.refused.details

    @property
    def conflict(self) -> bool:
        return self.refused.error == "conflict"


class Bus:
    """Request/reply over NATS; every reply is decoded into the proto type, or raises."""

    def __init__(self, nc: NATS, subjects: Subjects, client: str = "console", timeout: float = 3.0) -> None:
        self._nc, self._subjects, self._client, self._timeout = nc, subjects, client, timeout

    async def list_policies(self) -> list[Policy]:
        return (await self._policy("list", b"{}", PolicyList)).policies

    async def get_policy(self, name: str) -> Policy:
        return (await self.read_policy(name))[0]

    async def read_policy(self, name: str) -> tuple[Policy, int]:
        """The policy and the global revision it is at, for a later put with `expected`."""
        msg = await self._request(self._subjects.api_policy("get"), encode(NameRequest(name=name)), "policy")
        revision = (msg.headers or {}).get(REVISION_HEADER, "")
        return _decode(msg.data, Policy), int(revision) if revision.isdigit() else -1

    async def history(self, name: str) -> PolicyHistory:
        return await self._policy("history", encode(NameRequest(name=name)), PolicyHistory)

    async def put(self, policy: Policy, who: str = "", expected: int | None = None) -> Stored:
        """Store the policy; with `expected`, only if it is still at that revision (0: must be new)."""
        headers = {EXPECTED_HEADER: str(expected)} if expected is not None and expected >= 0 else {}
        return await self._policy("put", encode(policy), Stored, who, headers)

    async def delete(self, name: str, who: str = "") -> Stored:
        return await self._policy("delete", encode(NameRequest(name=name)), Stored, who)

    async def validate(self, policy: Policy) -> Validated:
        return await self._policy("validate", encode(policy), Validated)

    async def preview(self, policy: Policy) -> PolicyPreview:
        return await self._policy("preview", encode(policy), PolicyPreview)

    async def alerts(self, query: AlertQuery) -> AlertList:
        reply = await self._request(self._subjects.api_alerts("query"), encode(query), "alert")
        return _decode(reply.data, AlertList)

    async def _policy(
        self, verb: str, payload: bytes, tp: type[T], who: str = "", headers: dict[str, str] | None = None
    ) -> T:
        reply = await self._request(self._subjects.api_policy(verb), payload, "policy", who, headers)
        return _decode(reply.data, tp)

    async def _request(
        self, subject: str, payload: bytes, service: str, who: str = "", headers: dict[str, str] | None = None
    ) -> Msg:
        client = f"{self._client}:{who}" if who else self._client
        try:
            msg = await self._nc.request(
                subject, payload, timeout=self._timeout, headers={CLIENT_HEADER: client, **(headers or {})}
            )
        except NoRespondersError:
            raise Unavailable(f"no {service} service is answering on {subject}") from None
        except TimeoutError:  # nats.errors.TimeoutError subclasses the builtin one
            raise Unavailable(f"the {service} service did not answer on {subject} in time") from None
        except nats.errors.Error as exc:  # connection closed, draining, reconnecting...
            raise Unavailable(f"NATS: {exc}") from None
        return msg


class _Ok(msgspec.Struct):
    ok: bool = True


def _decode(data: bytes, tp: type[T]) -> T:
    """A reply with `"ok": false` is a Refused; anything else must be the expected type."""
    try:
        if not msgspec.json.decode(data, type=_Ok).ok:
            raise RefusedError(decode(data, Refused))
        if tp is Policy:  # get replies the bare Policy, which refuses unknown fields such as "ok"
            raw = msgspec.json.decode(data)
            if isinstance(raw, dict):
                raw.pop("ok", None)
            data = msgspec.json.encode(raw)
        return decode(data, tp)
    except msgspec.ValidationError as exc:
        raise Unavailable(f"unexpected reply: {exc}") from None
    except msgspec.DecodeError as exc:
        raise Unavailable(f"reply is not JSON: {exc}") from None
