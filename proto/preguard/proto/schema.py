"""JSON Schemas of the hand-written and published messages, generated from the Structs."""

from __future__ import annotations

from pathlib import Path

import msgspec

from preguard.proto.messages import Alert, Event, Policy, PolicyBundle, ProbeStatus

SCHEMA_DIR = Path(__file__).parent / "schemas"
TYPES: dict[str, type] = {
    "policy": Policy,
    "policy-bundle": PolicyBundle,
    "event": Event,
    "alert": Alert,
    "probe-status": ProbeStatus,
}


def render(name: str) -> bytes:
    schema = msgspec.json.schema(TYPES[name])
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TYPES:
        path = directory / f"{name}.schema.json"
        path.write_bytes(render(name))
        written.append(path)
    return written
