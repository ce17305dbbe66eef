"""Reading policies: decode (JSON or YAML), one validate() step, and one error type naming the field."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import msgspec

from preguard.proto.api import FieldError
from preguard.proto.messages import (
    AnyRule,
    FileRule,
    NetworkRule,
    Policy,
    ProcessRule,
)

MAX_POLICY_BYTES = 512 * 1024  # ten thousand rules fit; a megabyte of anything is refused unread
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1
_AT_FIELD = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<field>\$[^`]*)`)?$", re.S)
_PORTS = re.compile(r"^\d{1,5}(-\d{1,5})?(,\d{1,5}(-\d{1,5})?)*$")

Format = Literal["json", "yaml"]


class InvalidPolicy(ValueError):
    """The one error a policy decode raises: every problem found, each with its field and reason."""

    def __init__(self, details: list[FieldError]) -> None:
        self.details = details
        super().__init__("; ".join(f"{d.field}: {d.error}" for d in details))


def decode_policy(data: bytes | str, fmt: Format = "json") -> Policy:
    """A validated Policy from JSON or YAML text, or InvalidPolicy saying which field and why."""
    return _to_policy(_decode_documents(data, fmt, many=False)[0], prefix="$")


def load_policies(path: str | Path) -> list[Policy]:
    """Every policy in a file: YAML (several `---` documents allowed) or JSON (an object or a list)."""
    p = Path(path)
    raw = p.read_bytes()
    fmt: Format = "json" if p.suffix.lower() == ".json" else "yaml"
    return decode_policies(raw, fmt)


def decode_policies(data: bytes | str, fmt: Format = "yaml") -> list[Policy]:
    docs = _decode_documents(data, fmt, many=True)
    if len(docs) == 1 and isinstance(docs[0], list):
        docs = docs[0]
    policies = [_to_policy(doc, prefix="$" if len(docs) == 1 else f"$[{i}]") for i, doc in enumerate(docs)]
    if not policies:
        raise InvalidPolicy([FieldError(field="$", error="no policy in the document")])
    return policies


def validate(policy: Policy) -> list[FieldError]:
    """What the types cannot say: one of path/name, CIDRs, port ranges, absolute paths."""
    errors: list[FieldError] = []
    for i, rule in enumerate(policy.rules):
        errors.extend(FieldError(field=f"$.rules[{i}]{f}", error=e) for f, e in _rule_errors(rule))
    return errors


def refusal_details(exc: Exception) -> list[FieldError]:
    """FieldErrors for any decode failure, for API replies."""
    if isinstance(exc, InvalidPolicy):
        return exc.details
    return [_field_error(str(exc))]


# -- internals --------------------------------------------------------------------------------
def _decode_documents(data: bytes | str, fmt: Format, *, many: bool) -> list[Any]:
    size = len(data.encode() if isinstance(data, str) else data)
    if size > MAX_POLICY_BYTES:
        raise InvalidPolicy(
            [FieldError(field="$", error=f"policy is {size} bytes, over the {MAX_POLICY_BYTES} limit")]
        )
    try:
        if fmt == "json":
            return [msgspec.json.decode(data)]
        import yaml  # only YAML needs it; proto stays importable with msgspec alone

        text = data.decode("utf-8") if isinstance(data, bytes) else data
        docs = list(yaml.safe_load_all(text)) if many else [yaml.safe_load(text)]
        return [d for d in docs if d is not None] if many else docs
    except RecursionError:
        raise InvalidPolicy([FieldError(field="$", error="document is nested too deeply")]) from None
    except UnicodeDecodeError as exc:
        raise InvalidPolicy([FieldError(field="$", error=f"not UTF-8 text: {exc.reason}")]) from None
    except msgspec.DecodeError as exc:
        raise InvalidPolicy([_field_error(str(exc))]) from None
    except Exception as exc:  # yaml.YAMLError and friends; yaml is imported lazily
        if type(exc).__module__.startswith("yaml"):
            raise InvalidPolicy([FieldError(field="$", error=f"not valid YAML: {exc}")]) from None
        raise


def _to_policy(doc: Any, prefix: str) -> Policy:
    try:
        policy = msgspec.convert(doc, Policy)
    except RecursionError:
        raise InvalidPolicy([FieldError(field=prefix, error="document is nested too deeply")]) from None
    except UnicodeEncodeError:  # YAML's "\ud800" escape makes a lone surrogate, which msgspec refuses
        raise InvalidPolicy([FieldError(field=prefix, error="text is not valid Unicode")]) from None
    except msgspec.ValidationError as exc:
        raise InvalidPolicy([_field_error(str(exc), prefix, doc)]) from None
    errors = validate(policy)
    if errors:
        raise InvalidPolicy([FieldError(field=prefix + e.field[1:], error=e.error) for e in errors])
    return policy


def _field_error(message: str, prefix: str = "$", doc: Any = None) -> FieldError:
    m = _AT_FIELD.match(message)
    assert m is not None  # the pattern matches any text
    msg, field = m.group("msg"), m.group("field") or "$"
    if field == "$.selector.labels[...]":  # msgspec does not name the key: find it
        labels = (doc.get("selector") or {}).get("labels") if isinstance(doc, dict) else None
        bad = [k for k, v in labels.items() if not isinstance(v, str)] if isinstance(labels, dict) else []
        field = f"$.selector.labels.{bad[0]}" if bad else field
    field = prefix + field[1:]
    if "Expected `str`, got `bool`" in msg:
        msg += " (in YAML an unquoted yes/no/on/off/true/false is a boolean: quote it)"
    elif msg.startswith("Object missing required field") or msg.startswith("Object contains unknown field"):
        name = msg.split("`")[1] if "`" in msg else ""
        field = f"{field}.{name}" if name else field
    return FieldError(field=field, error=msg)


def _rule_errors(rule: AnyRule) -> Iterable[tuple[str, str]]:
    if isinstance(rule, ProcessRule):
        if (rule.path is None) == (rule.name is None):
            yield "", "a process rule needs exactly one of `path` or `name`"
        if rule.path is not None and not rule.path.startswith(("/", "*")):
            yield ".path", "must be an absolute path glob (start with / or *)"
        if rule.name is not None and "/" in rule.name:
            yield ".name", "is a base name and cannot contain /; use `path` for a path"
    elif isinstance(rule, FileRule):
        if not rule.path.startswith(("/", "*")):
            yield ".path", "must be an absolute path glob (start with / or *)"
    elif isinstance(rule, NetworkRule):
        yield from _network_errors(rule)


def _network_errors(rule: NetworkRule) -> Iterable[tuple[str, str]]:
    if (rule.cidr is None) == (rule.unix is None):
        yield "", "a network rule needs exactly one of `cidr` or `unix`"
    if rule.cidr is not None:
        try:
            ipaddress.ip_network(rule.cidr, strict=True)
        except ValueError as exc:
            yield ".cidr", f"not an IPv4 or IPv6 network: {exc}"
    if rule.ports is not None:
        yield from ((".ports", e) for e in port_errors(rule.ports))
    if rule.unix is not None:
        if not rule.unix.startswith("/"):
            yield ".unix", "must be an absolute socket path"
        if len(rule.unix.encode()) > _SUN_PATH_MAX:
            yield ".unix", f"longer than a unix socket path can be ({_SUN_PATH_MAX} bytes)"
        if rule.ports is not None or rule.protocol is not None:
            yield "", "`ports` and `protocol` do not apply to a unix socket rule"


def port_errors(ports: str) -> list[str]:
    if not _PORTS.match(ports):
        return [f"{ports!r} is not a port list such as 443, 1-1024 or 80,443,8000-8080"]
    errors = []
    for part in ports.split(","):
        lo, _, hi = part.partition("-")
        low, high = int(lo), int(hi or lo)
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            errors.append(f"port {high if low <= 65535 and low >= 1 else low} is outside 1-65535")
        elif low > high:
            errors.append(f"range {part} runs backwards")
    return errors


def parse_ports(ports: str | None) -> list[tuple[int, int]]:
    """Validated port text as inclusive ranges; none means every port."""
    if ports is None:
        return [(0, 65535)]
    out = []
    for part in ports.split(","):
        lo, _, hi = part.partition("-")
        out.append((int(lo), int(hi or lo)))
    return out
