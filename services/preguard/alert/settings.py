"""The alert service's tunables, from PREGUARD_ALERT_* environment variables."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping

import msgspec

from preguard.runtime import from_environ

DAY = 86400.0


class AlertSettings(msgspec.Struct, frozen=True, kw_only=True):
    window: float = 60.0  # seconds of event time one alert folds repeats over
    update_interval: float = 5.0  # at most one update per alert this often
    grace: float = 2.0  # a window closes this long after its end even without a later event
    attack_threshold: int = 10  # distinct rules or targets per container per window
    partitions: int = 8  # fixed per deployment: the work stream hashes host+container into these
    lease_ttl: float = 10.0  # a dead instance's partitions move after this long
    health_misses: int = 3  # heartbeat intervals a probe may miss before it is silent
    tick: float = 0.25  # how often windows are checked for updates and deadlines
    batch: int = 256  # messages per fetch
    alerts_max_age: float = 7 * DAY
    alerts_max_bytes: int = 1 << 30
    events_max_age: float = DAY  # for the events and work streams when this service creates them
    events_max_bytes: int = 1 << 30
    state_ttl: float = DAY  # closed windows and idle state vanish from the bucket after this
    instance: str = ""  # a name for this instance in the lease bucket; default host-pid-random

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> AlertSettings:
        return from_environ(cls, environ, "PREGUARD_ALERT_").named()

    def named(self) -> AlertSettings:
        if self.instance:
            return self
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        return msgspec.structs.replace(self, instance="".join(c if c.isalnum() else "_" for c in name))
