"""The probe service: one per Docker host; injects the hook, installs rules, publishes events and status."""

from preguard.probe.service import Probe
from preguard.probe.settings import ProbeSettings

__all__ = ["Probe", "ProbeSettings"]
