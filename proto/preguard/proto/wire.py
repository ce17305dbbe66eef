"""JSON on the bus, swapped in one place; decoders built once per type."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from preguard.proto.messages import Event, ProbeStatus
from preguard.proto.subjects import Subjects

T = TypeVar("T")

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # NATS' own max_payload is smaller; nothing larger is decoded

encode = msgspec.json.Encoder().encode


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    if (dec := _decoders.get(tp)) is None:
        dec = _decoders[tp] = msgspec.json.Decoder(tp)
    return dec


def decode(data: bytes, tp: type[T]) -> T:
    """Decode one message; msgspec.DecodeError (ValidationError included) names the field."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise msgspec.DecodeError(f"message of {len(data)} bytes is over {MAX_MESSAGE_BYTES}")
    result: T = _decoder(tp).decode(data)
    return result


_events = msgspec.json.Decoder(Event | list[Event])


def decode_events(data: bytes) -> list[Event]:
    """An events subject carries one Event or a list of them."""
    got = _events.decode(data)
    return got if isinstance(got, list) else [got]


def decode_status(subjects: Subjects, subject: str, data: bytes) -> ProbeStatus:
    """A heartbeat, attributed by the subject it came on: a probe may only speak for its own host.

    The server lets a probe publish only on its own status subject; a body that names another
    host is a lie (it could clear that host's probe-down alert) and is refused like bad JSON.
    """
    status = decode(data, ProbeStatus)
    if subject != subjects.status(status.host):
        raise msgspec.ValidationError(f"host {status.host!r} is not the one of subject {subject}")
    return status
