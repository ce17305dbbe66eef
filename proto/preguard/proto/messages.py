"""Every message on the bus as a frozen msgspec Struct: policies, bundles, events, alerts, status.

Rules for change: add fields with defaults at the end, never change a field's type, give a
breaking change a new subject. Messages between services tolerate unknown fields (an old reader
survives a newer writer); Policy and its parts refuse them, because people write policies by hand
and a typo such as `acton: block` must never be silently ignored in a security policy.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import msgspec

# -- limits (checked at decode; see policy.py for the byte limit) ------------------------------
MAX_RULES = 10_000
MAX_PATTERN = 4096  # PATH_MAX: no path or glob is longer
MAX_SELECTOR_ITEMS = 256
MAX_DESCRIPTION = 4096

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Pattern = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATTERN)]
LabelKey = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
LabelValue = Annotated[str, msgspec.Meta(max_length=MAX_PATTERN)]
Globs = Annotated[list[Pattern], msgspec.Meta(max_length=MAX_SELECTOR_ITEMS)]


class Severity(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}


class Action(enum.StrEnum):
    """What a rule does on a match. Where policies disagree, block beats audit beats allow."""

    BLOCK = "block"  # deny and report
    AUDIT = "audit"  # allow and report
    ALLOW = "allow"  # admit silently (for allow-list mode)

    @property
    def strength(self) -> int:
        return _ACTION_STRENGTH[self]


_ACTION_STRENGTH = {Action.ALLOW: 0, Action.AUDIT: 1, Action.BLOCK: 2}


class Access(enum.StrEnum):
    READ = "read"
    WRITE = "write"  # create, truncate, rename, link, remove, change mode
    ANY = "any"


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Mode(enum.StrEnum):
    """Per-kind default: `deny` turns a kind into allow-list mode."""

    ALLOW = "allow"
    DENY = "deny"


class Kind(enum.StrEnum):
    """What an event or alert is about. Events carry the first four; the rest are alert-only."""

    PROCESS = "process"
    FILE = "file"
    NETWORK = "network"
    TAMPER = "tamper"  # a container changed /etc/ld.so.preload or /.preguard/
    PROBE = "probe"  # alert: a probe's heartbeat stopped, or came back
    COVERAGE = "coverage"  # alert: processes in a guarded container run without the library
    ATTACK = "attack"  # alert: one container hit many distinct rules or targets in a window


class Outcome(enum.StrEnum):
    """An event's `action`: what the library did."""

    BLOCKED = "blocked"
    AUDITED = "audited"


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """Base for everything on the bus: immutable, built with keywords."""


class Strict(Message, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base for what people write by hand: an unknown field is an error, never ignored."""


# -- policy -----------------------------------------------------------------------------------
class Rule(Strict, frozen=True, kw_only=True, tag_field="kind"):
    action: Action = Action.BLOCK


class ProcessRule(Rule, frozen=True, kw_only=True, tag="process"):
    """Matches the resolved executable: `path` is a glob on its absolute path, `name` its base name."""

    path: Pattern | None = None
    name: Pattern | None = None


class FileRule(Rule, frozen=True, kw_only=True, tag="file"):
    """Matches the absolute, canonical path opened; `**` matches any depth."""

    path: Pattern
    access: Access = Access.ANY


class NetworkRule(Rule, frozen=True, kw_only=True, tag="network"):
    """Matches a destination: an IPv4/IPv6 network with optional ports and protocol, or a unix path."""

    cidr: Pattern | None = None
    ports: Pattern | None = None  # "443", "1-1024", "80,443,8000-8080"; none = every port
    protocol: Protocol | None = None  # none = tcp and udp
    unix: Pattern | None = None


AnyRule = ProcessRule | FileRule | NetworkRule


class Selector(Strict, frozen=True, kw_only=True):
    """All given fields must match; an empty selector selects every container on every host."""

    hosts: Globs = []
    containers: Globs = []
    images: Globs = []
    labels: Annotated[dict[LabelKey, LabelValue], msgspec.Meta(max_length=MAX_SELECTOR_ITEMS)] = {}


class Defaults(Strict, frozen=True, kw_only=True):
    process: Mode = Mode.ALLOW
    file: Mode = Mode.ALLOW
    network: Mode = Mode.ALLOW


class Policy(Strict, frozen=True, kw_only=True):
    name: Name
    rules: Annotated[list[AnyRule], msgspec.Meta(max_length=MAX_RULES)] = []
    description: Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION)] = ""
    severity: Severity = Severity.MEDIUM
    selector: Selector = Selector()
    defaults: Defaults = Defaults()


class PolicyBundle(Message, frozen=True, kw_only=True):
    """Everything one host must enforce, at one global revision. Retained per host."""

    host: str
    revision: int  # global revision; a probe never applies a lower one after a higher one
    policies: list[Policy] = []
    time: datetime | None = None


# -- events and alerts ------------------------------------------------------------------------
class Event(Message, frozen=True, kw_only=True):
    """One rule hit inside a container, attributed by the pipe it came from."""

    host: str
    container_id: str
    container_name: str
    image: str
    time: datetime  # RFC 3339, UTC
    time_ns: int
    pid: int
    uid: int
    exe: str
    kind: Kind
    target: str  # path, ip:port ([v6]:port), or unix socket path
    access: str  # read | write | any (file), exec (process), connect | send (network)
    action: Outcome
    policy: str
    rule: int  # 0-based index in the policy's rules; -1 for a kind's default (allow-list mode)
    severity: Severity
    revision: int = 0  # global policy revision the library enforced
    truncated: bool = False  # exe or target was cut to fit one atomic pipe record
    detail: str = ""


class Alert(Message, frozen=True, kw_only=True):
    """Events folded by (host, container, policy, rule, kind, target, action), or a health alert."""

    id: str
    host: str
    container_id: str
    container_name: str
    image: str
    policy: str
    rule: int
    kind: Kind
    target: str
    action: str  # blocked | audited for rule hits; raised | cleared for health alerts
    severity: Severity
    count: int
    first_seen: datetime
    last_seen: datetime
    sample: Event | None = None
    state: str = "new"  # new | update | final
    title: str = ""  # one line a person can read
    detail: str = ""


# -- probe status -----------------------------------------------------------------------------
class ProcessCoverage(Message, frozen=True, kw_only=True):
    pid: int
    exe: str
    reason: str  # started_before_injection | static_binary | no_interpreter | no_libc


class ContainerStatus(Message, frozen=True, kw_only=True):
    id: str  # 12-character container id
    name: str
    image: str
    labels: dict[str, str] = {}
    libc: str = "unknown"  # glibc | musl | none | unknown
    guarded: bool = False  # selected by at least one policy and injected
    coverable: bool = True
    reason: str = ""  # why not coverable or not guarded
    policies: list[str] = []
    revision: int = 0  # policy revision applied in this container
    covered: int = 0  # processes running with the library loaded
    uncovered: list[ProcessCoverage] = []
    drops_library: int = 0  # records the library could not write (pipe full or no reader)
    drops_probe: int = 0  # records the probe refused or could not publish
    events: int = 0


class ProbeStatus(Message, frozen=True, kw_only=True):
    host: str
    time: datetime
    interval: float  # seconds between heartbeats
    revision: int = 0  # bundle revision received
    containers: list[ContainerStatus] = []
    version: str = ""
