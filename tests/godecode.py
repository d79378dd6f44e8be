"""Decode JSON as UCloud/Core's Go code would, against the type descriptions in tests/data/core-go/types.json.

Go's ``encoding/json`` rules, made strict where Go is silently lenient: a key must name a field of the
Go type exactly (Go would also match another capitalisation, and drop an unknown key without a word,
which for an answer means a value Core never sees). What Go refuses is refused: a float or a string
for an integer, anything but an integer for a ``fnd.Timestamp`` (null included), a wrong JSON type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CORE_GO = Path(__file__).parent / "data" / "core-go"


class GoDecodeError(AssertionError):
    """Core's decoder would fail on this JSON, or would silently lose part of it."""


def load_types() -> dict[str, Any]:
    return json.loads((CORE_GO / "types.json").read_text())


def load_call(name: str) -> dict[str, Any]:
    return json.loads((CORE_GO / "calls" / f"{name}.json").read_text())


def load_unknown_keys_body(name: str) -> Any:
    return json.loads((CORE_GO / "calls" / f"{name}.unknown-keys.json").read_text())


def decode(types: dict[str, Any], root: str, value: Any, *, complete: bool = False) -> None:
    """Raise GoDecodeError unless ``value`` decodes into the type named ``root`` in types.json.

    ``complete``: also require every key Go's encoder would write (each field without ``omitempty``),
    i.e. that ``value`` has exactly the shape of Go's own encoding.
    """
    _decode(types, types["roots"][root], value, "$", complete)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode(types: dict[str, Any], node: dict[str, Any], value: Any, where: str, complete: bool) -> None:
    kind = node["kind"]

    def fail(why: str) -> GoDecodeError:
        return GoDecodeError(f"{where}: {why} (Go type {kind}), got {json.dumps(value)[:200]}")

    if kind in ("any", "raw"):
        return
    if kind == "timestamp":
        if not _is_int(value):
            raise fail("a fnd.Timestamp must be integer milliseconds")
        return
    if value is None:  # Go leaves the zero value for null in everything else
        return
    if kind == "string" and not isinstance(value, str):
        raise fail("not a string")
    if kind == "bool" and not isinstance(value, bool):
        raise fail("not a boolean")
    if kind == "int" and not _is_int(value):
        raise fail("not an integer")
    if kind == "uint" and not (_is_int(value) and value >= 0):
        raise fail("not an unsigned integer")
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise fail("not a number")
    if kind in ("option", "ptr"):
        _decode(types, node["elem"], value, where, complete)
    elif kind == "slice":
        if not isinstance(value, list):
            raise fail("not a list")
        for i, item in enumerate(value):
            _decode(types, node["elem"], item, f"{where}[{i}]", complete)
    elif kind == "map":
        if not isinstance(value, dict):
            raise fail("not an object")
        for key, item in value.items():
            _decode(types, node["elem"], item, f"{where}.{key}", complete)
    elif kind == "struct":
        if not isinstance(value, dict):
            raise fail(f"not an object for {node['name']}")
        fields = {f["json"]: f for f in types["structs"][node["name"]]["fields"]}
        for key, item in value.items():
            if key not in fields:
                raise GoDecodeError(f"{where}: {node['name']} has no field {key!r} (Core would drop it)")
            _decode(types, fields[key]["type"], item, f"{where}.{key}", complete)
        if complete:
            missing = [name for name, f in fields.items() if not f["omitempty"] and name not in value]
            if missing:
                raise GoDecodeError(f"{where}: Go always writes {missing} of {node['name']}")
