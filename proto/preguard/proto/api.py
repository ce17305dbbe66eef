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
    revision: int  # global revision of this change (what the hosts' bundles then carry)
    version: int = 0  # per-policy: 1 for its first put, +1 for every later put or delete


class NameRequest(Message, frozen=True, kw_only=True):
    name: str


class PolicyList(Message, frozen=True, kw_only=True):
    ok: bool = True
    policies: list[Policy] = []


class Validated(Message, frozen=True, kw_only=True):
    """Reply to validate: the policy would be stored as it is."""

    ok: bool = True
    name: str
    rules: int = 0


class PolicyRevision(Message, frozen=True, kw_only=True):
    """One change of one policy: what it became (None when deleted), when, and by which client."""

    name: str
    revision: int  # global revision of the change
    version: int  # per-policy revision, 1 for the first put
    time: datetime
    client: str = "anonymous"  # the request's Preguard-Client header
    deleted: bool = False
    policy: Policy | None = None


class PolicyHistory(Message, frozen=True, kw_only=True):
    """Reply to history: oldest first; the store keeps the last 64 changes per policy."""

    ok: bool = True
    name: str
    revisions: list[PolicyRevision] = []


class PreviewMatch(Message, frozen=True, kw_only=True):
    host: str
    container_id: str
    container_name: str
    image: str


class PolicyPreview(Message, frozen=True, kw_only=True):
    """Reply to preview: known hosts the policy's host globs match, and the containers it selects."""

    ok: bool = True
    name: str
    hosts: list[str] = []
    containers: list[PreviewMatch] = []


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
