"""Requests and replies of the request/reply APIs (policy service, alert query)."""

from __future__ import annotations

from datetime import datetime

from preguard.proto.messages import Alert, Message, Policy


class FieldError(Message, frozen=True, kw_only=True):
    field: str  # JSON path such as `$.rules[3].cidr`; `$` for the document as a whole
    error: str


class Refused(Message, frozen=True, kw_only=True):
    """Any API's refusal: what went wrong, and per field why, in a form a program can use."""

    ok: bool = False
    error: str
    details: list[FieldError] = []


class Stored(Message, frozen=True, kw_only=True):
    """Reply to put and delete."""

    ok: bool = True
    name: str
    revision: int


class NameRequest(Message, frozen=True, kw_only=True):
    name: str


class PolicyList(Message, frozen=True, kw_only=True):
    ok: bool = True
    policies: list[Policy] = []


class AlertQuery(Message, frozen=True, kw_only=True):
    severity: list[str] = []
    host: str | None = None
    container: str | None = None  # id or name
    policy: str | None = None
    since: datetime | None = None
    limit: int = 100


class AlertList(Message, frozen=True, kw_only=True):
    ok: bool = True
    alerts: list[Alert] = []
