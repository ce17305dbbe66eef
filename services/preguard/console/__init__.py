"""The web console: policies, hosts and their coverage, live alerts; a NATS client like any other."""

from preguard.console.service import ConsoleServer, ConsoleSettings, serve

__all__ = ["ConsoleServer", "ConsoleSettings", "serve"]
