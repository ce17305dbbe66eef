"""Every NATS subject, stream and bucket name preguard uses, built from one prefix."""

from __future__ import annotations

import re

import msgspec

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_TOKEN = 128


def token(value: str) -> str:
    """One subject token from outside text: `web.1` -> `web_1`, never empty, never a wildcard.

    A dot, `*`, `>` or space in a host or container name would silently change the subject
    hierarchy (or subscribe to everything), so anything outside [A-Za-z0-9_-] becomes `_`.
    """
    cleaned = _UNSAFE.sub("_", value[:_MAX_TOKEN])
    return cleaned or "_"


class Subjects(msgspec.Struct, frozen=True):
    """Subject names. Each method's comment (publisher -> payload) is the contract."""

    prefix: str = "preguard"  # PREGUARD_PREFIX; each test uses a fresh one

    def __post_init__(self) -> None:
        if not self.prefix or any(token(part) != part for part in self.prefix.split(".")):
            raise ValueError(f"invalid subject prefix {self.prefix!r}: use [A-Za-z0-9_-] tokens")

    # -- request/reply APIs -------------------------------------------------------------------
    def api_policy(self, verb: str) -> str:  # anyone allowed -> policy service: see proto.api
        return f"{self.prefix}.api.policy.{token(verb)}"

    def api_alerts(self, verb: str) -> str:  # anyone allowed -> alert service: AlertQuery
        return f"{self.prefix}.api.alerts.{token(verb)}"

    # -- policy distribution ------------------------------------------------------------------
    def policy(self, host: str) -> str:  # policy service -> probe: PolicyBundle (retained)
        return f"{self.prefix}.policy.{token(host)}"

    def policy_all(self) -> str:  # wildcard over every host's bundle
        return f"{self.prefix}.policy.*"

    # -- probe output ---------------------------------------------------------------------------
    def events(self, host: str, container: str) -> str:  # probe -> alert: Event (or a list)
        return f"{self.prefix}.events.{token(host)}.{token(container)}"

    def events_all(self) -> str:
        return f"{self.prefix}.events.>"

    def status(self, host: str) -> str:  # probe -> policy, alert, console: ProbeStatus
        return f"{self.prefix}.status.{token(host)}"

    def status_all(self) -> str:
        return f"{self.prefix}.status.*"

    # -- alerts ---------------------------------------------------------------------------------
    def alerts(self, severity: str, host: str) -> str:  # alert service -> anyone: Alert
        return f"{self.prefix}.alerts.{token(severity)}.{token(host)}"

    def alerts_all(self) -> str:
        return f"{self.prefix}.alerts.>"

    def alerts_matching(self, severity: str | None = None, host: str | None = None) -> str:
        """A subscription pattern: `*` where a filter is not given (never a sanitised `_`)."""
        return f"{self.prefix}.alerts.{token(severity) if severity else '*'}.{token(host) if host else '*'}"

    # -- JetStream names (no dots allowed there) -------------------------------------------------
    def _js(self, what: str) -> str:
        return f"{self.prefix.replace('.', '_')}_{what}"

    def kv_policies(self) -> str:  # KV bucket: policy name -> StoredPolicy
        return self._js("policies")

    def stream_bundles(self) -> str:  # keeps the last PolicyBundle per host subject
        return self._js("bundles")

    def stream_events(self) -> str:  # captures events.> so the alert service loses none
        return self._js("events")

    def stream_alerts(self) -> str:  # alert history, size- and age-limited
        return self._js("alerts")
