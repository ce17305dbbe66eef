"""The probe's settings: the shared PREGUARD_* variables plus the probe's own knobs."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import msgspec

from preguard.proto import Subjects
from preguard.runtime import from_environ


class ProbeSettings(msgspec.Struct, frozen=True, kw_only=True):
    """PREGUARD_* environment variables the probe reads (the shared ones have the same names)."""

    nats_url: str = "nats://127.0.0.1:4222"
    host: str = ""  # default: the machine's host name
    prefix: str = "preguard"
    creds: str | None = None
    log_level: str = "info"
    status_interval: float = 5.0  # PREGUARD_STATUS_INTERVAL: seconds between heartbeats
    tamper_interval: float = 1.0  # seconds between checks of /etc/ld.so.preload and /.preguard/
    event_rate: float = 20_000.0  # per container: events per second admitted (token bucket) ...
    event_burst: float = 40_000.0  # ... and the bucket's depth
    buffer_events: int = 100_000  # events held while NATS is unreachable; beyond: counted drops
    batch_events: int = 256  # events per NATS message at most (a message is an Event or a list)
    docker_url: str | None = None  # default: DOCKER_HOST or the local socket
    keeper: str = "/run/preguard/keeper.sock"  # the pipe keeper's socket; "off": no keeper
    scope: str = ""  # PREGUARD_SCOPE: only containers with this label ("key" or "key=value"); "" = all
    proc: str = "/proc"  # where the host's processes are seen (the probe needs the host PID namespace)
    create_streams: bool = True  # false when its credential may not (preguard.auth): others create them

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ProbeSettings:
        settings = from_environ(cls, environ)
        if not settings.host:
            settings = msgspec.structs.replace(settings, host=socket.gethostname())
        return settings

    def in_scope(self, labels: Mapping[str, str]) -> bool:
        if not self.scope:
            return True
        key, has_value, value = self.scope.partition("=")
        return key in labels and (not has_value or labels[key] == value)

    @property
    def subjects(self) -> Subjects:
        return Subjects(prefix=self.prefix)
