"""The policy editor's logic, without I/O: text <-> Policy, errors placed at their line, diffs."""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

import msgspec
import yaml

from preguard.proto import FieldError, InvalidPolicy, Policy, decode_policy

Format = Literal["yaml", "json"]
_ORDER = ("name", "description", "severity", "selector", "defaults", "rules")
_STEP = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


class PlacedError(msgspec.Struct, frozen=True, kw_only=True):
    field: str  # `$.rules[0].ports`
    error: str
    line: int | None  # 1-based line in the text where the field (or its nearest parent) is


def parse(text: str, fmt: Format) -> tuple[Policy | None, list[PlacedError]]:
    """The policy in the text, or the errors with the line of each field."""
    try:
        return decode_policy(text, fmt), []
    except InvalidPolicy as exc:
        return None, place(text, exc.details)


def place(text: str, details: list[FieldError]) -> list[PlacedError]:
    """Attach each field error to the line of its field in the YAML or JSON text."""
    root = _compose(text)
    return [PlacedError(field=d.field, error=d.error, line=_line(root, d.field, d.error)) for d in details]


def to_text(policy: Policy, fmt: Format = "yaml") -> str:
    """A policy as an operator edits it: only what differs from the defaults, in a stable order."""
    data = _builtins(policy)
    data = {k: data[k] for k in _ORDER if k in data}
    data["rules"] = [
        {k: v for k, v in r.items() if k != "action"} | _action(r) for r in data.get("rules", [])
    ]
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(data), indent=2).decode() + "\n"
    text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
    return text


def diff(old: str, new: str, old_label: str, new_label: str) -> list[tuple[str, str]]:
    """Unified diff lines, each with its kind (add | del | hunk | ctx | head) for styling."""
    out: list[tuple[str, str]] = []
    for line in difflib.unified_diff(
        old.splitlines(), new.splitlines(), old_label, new_label, lineterm="", n=3
    ):
        if line.startswith(("+++", "---")):
            kind = "head"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        out.append((kind, line))
    return out


# -- internals ----------------------------------------------------------------------------------
def _action(rule: dict[str, Any]) -> dict[str, Any]:
    return {"action": rule["action"]} if "action" in rule else {}


def _builtins(value: Any) -> Any:
    """Like msgspec.to_builtins, leaving out struct fields that hold their default."""
    if isinstance(value, msgspec.Struct):
        out: dict[str, Any] = {}
        for f in msgspec.structs.fields(value):
            v = getattr(value, f.name)
            if v == f.default or (f.default_factory is not msgspec.NODEFAULT and v == f.default_factory()):
                continue
            out[f.encode_name] = _builtins(v)
        tag = value.__struct_config__.tag
        if isinstance(tag, str):
            out = {value.__struct_config__.tag_field or "type": tag, **out}
        return out
    if isinstance(value, list):
        return [_builtins(v) for v in value]
    if isinstance(value, dict):
        return {k: _builtins(v) for k, v in value.items()}
    return msgspec.to_builtins(value)


def _compose(text: str) -> yaml.Node | None:
    try:
        # JSON is (nearly) YAML: one composer gives line numbers for both
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def _line(root: yaml.Node | None, field: str, error: str) -> int | None:
    if root is None:
        return _yaml_error_line(error)
    node: yaml.Node = root
    for key, index in _STEP.findall(field.removeprefix("$")):
        child = _child(node, key, index)
        if child is None:
            break  # a missing field: point at its parent
        node = child
    return int(node.start_mark.line) + 1


def _child(node: yaml.Node, key: str, index: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and key:
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                result: Any = v
                return result  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and index:
        i = int(index)
        if i < len(node.value):
            return node.value[i]  # type: ignore[no-any-return]
    return None


def _yaml_error_line(error: str) -> int | None:
    m = re.search(r"line (\d+)", error)
    return int(m.group(1)) if m else None
