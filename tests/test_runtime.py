"""Settings come from PREGUARD_* variables through one mechanism."""

from __future__ import annotations

import msgspec

from preguard.alert.settings import AlertSettings
from preguard.console.service import ConsoleSettings
from preguard.runtime import Settings, from_environ


class Example(msgspec.Struct, frozen=True):
    interval: float = 5.0
    name: str = "default"
    enabled: bool = True


def test_variables_convert_to_field_types_and_empty_or_unknown_ones_are_ignored() -> None:
    env = {
        "PREGUARD_INTERVAL": "0.25",
        "PREGUARD_NAME": "",
        "PREGUARD_ENABLED": "false",
        "PREGUARD_OTHER": "x",
    }
    assert from_environ(Example, env) == Example(interval=0.25, name="default", enabled=False)
    assert from_environ(Example, {"PREGUARD_X_INTERVAL": "2"}, "PREGUARD_X_") == Example(interval=2.0)


def test_each_service_reads_its_own_variables() -> None:
    env = {
        "PREGUARD_NATS_URL": "nats://n:4222",
        "PREGUARD_HOST": "h1",
        "PREGUARD_CONSOLE_PORT": "9090",
        "PREGUARD_ALERT_WINDOW": "30",
    }
    assert (Settings.from_env(env).nats_url, Settings.from_env(env).host) == ("nats://n:4222", "h1")
    assert ConsoleSettings.from_env(env).console_port == 9090
    assert AlertSettings.from_env(env).window == 30
    assert AlertSettings.from_env(env).instance, "an instance name is made when none is given"
