"""Go's encoding/json, for the conformance generator: Go values -> the exact JSON Go writes, and type descriptions.

The rules followed (Go's ``encoding/json``, and UCloud's own marshalers):
- every exported field is written, in declaration order, embedded structs' fields promoted in place
  (the shallower field wins a name clash; a tie drops both, as Go does);
- ``omitempty`` drops false, 0, "", and nil or empty slices and maps; never a struct (so never an Option);
- nil slices, maps, pointers and interfaces are ``null``; map keys are sorted;
- ``util.Option[T]`` is ``null`` when absent (``util/option.go``); ``fnd.Timestamp`` is integer
  milliseconds, and its zero value is Go's zero time, -62135596800000 (``foundation/core.go``);
  ``json.RawMessage`` is written as the JSON it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gosource import Field, GoPackages, GoSourceError, TypeExpr

GO_ZERO_TIME_MS = -62135596800000
MISSING: Any = object()


@dataclass(frozen=True)
class Raw:
    """A ``json.RawMessage`` holding the Go encoding of ``value`` (already a JSON-able value)."""

    value: Any


@dataclass(frozen=True)
class Promoted:
    json_name: str
    field: Field
    type: TypeExpr
    path: tuple[str, ...]  # Go field names from the outer struct to this one


def substitute(t: TypeExpr, subst: dict[str, TypeExpr]) -> TypeExpr:
    if t.kind == "param":
        return subst[t.name]
    if t.kind == "struct":
        return TypeExpr("struct", fields=tuple(_subst_field(f, subst) for f in t.fields))
    if t.args:
        return TypeExpr(t.kind, t.name, tuple(substitute(a, subst) for a in t.args))
    return t


def _subst_field(f: Field, subst: dict[str, TypeExpr]) -> Field:
    return Field(f.go_name, substitute(f.type, subst), f.json_name, f.omitempty, f.skip, f.embedded, f.source)


class GoJson:
    """Encodes Python descriptions of Go values as Go would, and records which Go field each key comes from."""

    def __init__(self, packages: GoPackages, unknown_key: str | None = None) -> None:
        self.packages = packages
        self.unknown_key = unknown_key  # if set, every struct gets this extra key (a newer Core's field)
        self.sources: dict[str, str] = {}  # JSON pointer ('*' = any list index or map key) -> Go field

    # -- what a type is ---------------------------------------------------------------------------

    def resolve(self, t: TypeExpr) -> tuple[str, Any]:
        """(kind, detail): basic/slice/map/ptr/option/timestamp/raw/struct, with what each needs."""
        if t.kind == "basic":
            return t.name, None
        if t.kind in ("slice", "ptr"):
            return t.kind, t.args[0]
        if t.kind == "map":
            return "map", t.args
        if t.kind == "struct":
            return "struct", t.fields
        if t.kind != "named":
            raise GoSourceError(f"unresolved type parameter {t}")
        if t.name == "util.Option":
            return "option", t.args[0]
        if t.name == "foundation.Timestamp":
            return "timestamp", None
        if t.name == "json.RawMessage":
            return "raw", None
        if t.name in self.packages.custom_marshalers:
            raise GoSourceError(f"{t.name} has its own MarshalJSON, which the generator does not model")
        decl = self.packages.types.get(t.name)
        if decl is None:
            raise GoSourceError(f"unknown type {t.name}")
        if decl.error:
            raise GoSourceError(decl.error)
        subst = dict(zip(decl.params, t.args, strict=True))
        if decl.underlying is not None:
            return self.resolve(substitute(decl.underlying, subst))
        return "struct", tuple(_subst_field(f, subst) for f in decl.struct_fields or ())

    def fields(self, t: TypeExpr) -> list[Promoted]:
        kind, fields = self.resolve(t)
        if kind != "struct":
            raise GoSourceError(f"{t} is not a struct")
        found: list[tuple[int, bool, Promoted]] = []
        self._collect(fields, (), 0, found)
        best: dict[str, list[tuple[int, bool, Promoted]]] = {}
        for entry in found:
            best.setdefault(entry[2].json_name, []).append(entry)
        keep: list[Promoted] = []
        for entry in found:
            rivals = best[entry[2].json_name]
            depth = min(d for d, _, _ in rivals)
            top = [r for r in rivals if r[0] == depth]
            tagged = [r for r in top if r[1]]
            winner = top[0] if len(top) == 1 else (tagged[0] if len(tagged) == 1 else None)
            if winner is entry:
                keep.append(entry[2])
        return keep

    def _collect(self, fields: tuple[Field, ...], path: tuple[str, ...], depth: int, out: list[Any]) -> None:
        for f in fields:
            if f.skip:
                continue
            inner = f.type.args[0] if f.type.kind == "ptr" else f.type
            if f.embedded and f.json_name is None and self.resolve(inner)[0] == "struct":
                self._collect(self.resolve(inner)[1], (*path, f.go_name), depth + 1, out)
                continue
            out.append((depth, f.json_name is not None, Promoted(f.json_name or f.go_name, f, f.type, (*path, f.go_name))))

    # -- encoding ---------------------------------------------------------------------------------

    def encode(self, t: TypeExpr, value: Any, pointer: str = "") -> Any:
        kind, detail = self.resolve(t)
        if kind == "string":
            return "" if value is MISSING else _check(value, str, t)
        if kind in ("int", "uint"):
            return 0 if value is MISSING else _check(value, int, t)
        if kind == "float":
            return 0 if value is MISSING else _check(value, (int, float), t)
        if kind == "bool":
            return False if value is MISSING else _check(value, bool, t)
        if kind == "any":
            return None if value is MISSING else value
        if kind == "timestamp":
            return GO_ZERO_TIME_MS if value is MISSING else _check(value, int, t)
        if kind == "raw":
            if value is MISSING or value is None:
                return None
            if not isinstance(value, Raw):
                raise GoSourceError(f"{pointer}: a json.RawMessage needs Raw(...)")
            return value.value
        if kind in ("option", "ptr"):
            return None if value is MISSING or value is None else self.encode(detail, value, pointer)
        if kind == "slice":
            if value is MISSING or value is None:
                return None
            return [self.encode(detail, item, f"{pointer}/*") for item in _check(value, list, t)]
        if kind == "map":
            if value is MISSING or value is None:
                return None
            items = _check(value, dict, t)
            return {k: self.encode(detail[1], items[k], f"{pointer}/*") for k in sorted(items)}
        return self._encode_struct(t, {} if value is MISSING else _check(value, dict, t), pointer)

    def _encode_struct(self, t: TypeExpr, value: dict[str, Any], pointer: str) -> dict[str, Any]:
        promoted = self.fields(t)
        known = {p.path[0] for p in promoted} | {p.path[-1] for p in promoted}
        unknown = set(value) - known
        if unknown:
            raise GoSourceError(f"{pointer or '/'}: {t} has no fields {sorted(unknown)}")
        out: dict[str, Any] = {}
        for p in promoted:
            v = _lookup(value, p.path)
            encoded = self.encode(p.type, v, f"{pointer}/{_escape(p.json_name)}")
            if p.field.omitempty and _empty(self.resolve(p.type)[0], encoded):
                continue
            out[p.json_name] = encoded
            self.sources[f"{pointer}/{_escape(p.json_name)}"] = f"{p.field.source} {p.field.go_name} {p.type}"
        if self.unknown_key:
            out[self.unknown_key] = {"depth": pointer.count("/"), "added by": "tests/conformance/generate.py"}
        return out

    # -- describing types (for the tests' decoder) -------------------------------------------------

    def describe(self, t: TypeExpr, registry: dict[str, Any]) -> dict[str, Any]:
        kind, detail = self.resolve(t)
        if kind in ("string", "int", "uint", "float", "bool", "any", "timestamp", "raw"):
            return {"kind": kind}
        if kind in ("option", "ptr", "slice"):
            return {"kind": kind, "elem": self.describe(detail, registry)}
        if kind == "map":
            return {"kind": "map", "key": self.describe(detail[0], registry), "elem": self.describe(detail[1], registry)}
        name = str(t)
        if name not in registry:
            registry[name] = None  # recursion guard
            registry[name] = {
                "fields": [
                    {
                        "json": p.json_name,
                        "omitempty": p.field.omitempty,
                        "type": self.describe(p.type, registry),
                        "go": f"{p.field.go_name} {p.type}",
                        "source": p.field.source,
                    }
                    for p in self.fields(t)
                ]
            }
        return {"kind": "struct", "name": name}


def _lookup(value: dict[str, Any], path: tuple[str, ...]) -> Any:
    """A field's value: by its full path of embedded structs, or by its own (promoted) name."""
    node: Any = value
    for name in path:
        if not isinstance(node, dict) or name not in node:
            node = MISSING
            break
        node = node[name]
    if node is MISSING and len(path) > 1:
        return value.get(path[-1], MISSING)
    return node


def _empty(kind: str, encoded: Any) -> bool:
    """Go's isEmptyValue, by the field's kind (structs, and so Options and Timestamps, are never empty)."""
    if kind == "bool":
        return encoded is False
    if kind in ("int", "uint", "float"):
        return encoded == 0
    if kind == "string":
        return encoded == ""
    if kind in ("slice", "map"):
        return encoded is None or len(encoded) == 0
    if kind in ("ptr", "any", "raw"):
        return encoded is None
    return False


def _check(value: Any, kind: type | tuple[type, ...], t: TypeExpr) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise GoSourceError(f"{value!r} is not a value of {t}")
    return value


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
