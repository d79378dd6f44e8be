"""Reading Go source for the conformance generator: struct and type declarations, string constants, rpc calls.

Only what UCloud's API packages use is understood (named fields with json tags, embedded structs, inline
struct types, generics, ``util.Option``, ``fnd.Timestamp``, ``json.RawMessage``); anything else stops
the generator with the file and line, so a new Go construct is never guessed at.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SHARED = "provider-integration/shared/pkg"
PACKAGES = ("orchestrators", "accounting", "foundation", "util", "rpc")
BASIC = {
    "string": "string", "bool": "bool", "any": "any", "interface{}": "any",
    "int": "int", "int8": "int", "int16": "int", "int32": "int", "int64": "int",
    "uint": "uint", "uint8": "uint", "uint16": "uint", "uint32": "uint", "uint64": "uint", "byte": "uint", "rune": "int",
    "float32": "float", "float64": "float",
}


class GoSourceError(Exception):
    """Go source the generator does not understand; the message names the file and line."""


class Source:
    """Files of a UCloud checkout, or of a bare git repository at a commit."""

    def __init__(self, checkout: Path | None = None, git_dir: Path | None = None, commit: str = "HEAD") -> None:
        self.checkout, self.git_dir, self.commit = checkout, git_dir, commit

    def git(self, *argv: str) -> str:
        if self.git_dir is not None:
            cmd = ["git", "--git-dir", str(self.git_dir), *argv]
        else:
            cmd = ["git", "-C", str(self.checkout), *argv]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def resolved_commit(self) -> str:
        return self.git("rev-parse", f"{self.commit}^{{commit}}" if self.git_dir else "HEAD").strip()

    def files(self, directory: str) -> list[str]:
        if self.git_dir is not None:
            names = self.git("ls-tree", "--name-only", f"{self.commit}:{directory}").split()
            return [f"{directory}/{n}" for n in names if n.endswith(".go") and not n.endswith("_test.go")]
        root = self.checkout / directory  # type: ignore[operator]
        return sorted(
            f"{directory}/{p.name}" for p in root.iterdir() if p.suffix == ".go" and not p.name.endswith("_test.go")
        )

    def read(self, path: str) -> str:
        if self.git_dir is not None:
            return self.git("show", f"{self.commit}:{path}")
        return (self.checkout / path).read_text(encoding="utf-8")  # type: ignore[operator]


# -- type expressions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeExpr:
    """A Go type: kind is basic, named, slice, map, ptr or struct (inline)."""

    kind: str
    name: str = ""  # basic: its class; named: "package.Name"
    args: tuple[TypeExpr, ...] = ()  # named: type arguments; slice/ptr: (elem,); map: (key, elem)
    fields: tuple[Field, ...] = ()  # inline struct

    def __str__(self) -> str:
        if self.kind == "basic":
            return self.name
        if self.kind == "named":
            return self.name + (f"[{', '.join(map(str, self.args))}]" if self.args else "")
        if self.kind == "slice":
            return f"[]{self.args[0]}"
        if self.kind == "ptr":
            return f"*{self.args[0]}"
        if self.kind == "map":
            return f"map[{self.args[0]}]{self.args[1]}"
        return "struct{...}"


@dataclass(frozen=True)
class Field:
    go_name: str
    type: TypeExpr
    json_name: str | None  # None = no json tag name
    omitempty: bool
    skip: bool  # json:"-" or unexported
    embedded: bool
    source: str  # path:line


@dataclass
class TypeDecl:
    package: str
    name: str
    params: tuple[str, ...]
    struct_fields: tuple[Field, ...] | None  # a struct, or
    underlying: TypeExpr | None  # a defined type over another
    source: str
    error: str = ""  # the declaration could not be read; only an error if something needs it


@dataclass
class RpcCall:
    name: str
    request: TypeExpr
    response: TypeExpr
    base_context: str
    convention: str
    operation: str
    source: str


@dataclass
class GoPackages:
    """Every type, string constant and rpc.Call of UCloud's shared API packages."""

    types: dict[str, TypeDecl] = field(default_factory=dict)  # "package.Name"
    consts: dict[str, str] = field(default_factory=dict)  # "package.Name" -> string value
    calls: dict[str, RpcCall] = field(default_factory=dict)  # "package.Name"
    custom_marshalers: set[str] = field(default_factory=set)  # "package.Name" with a MarshalJSON


def _imports(text: str, package: str) -> dict[str, str]:
    """alias -> package name for the API packages (e.g. ``fnd`` -> ``foundation``); others map to themselves."""
    aliases = {package: package}
    for alias, path in re.findall(r'^\s*(?:(\w+)\s+)?"([\w./-]+)"\s*$', _import_block(text), re.M):
        last = path.rsplit("/", 1)[-1]
        aliases[alias or last] = last
    return aliases


def _import_block(text: str) -> str:
    match = re.search(r"^import\s*\((.*?)^\)", text, re.M | re.S)
    single = re.findall(r'^import\s+((?:\w+\s+)?"[^"]+")', text, re.M)
    return (match.group(1) if match else "") + "\n" + "\n".join(single)


class _TypeParser:
    def __init__(self, text: str, package: str, imports: dict[str, str], params: tuple[str, ...], where: str) -> None:
        self.s, self.i = text, 0
        self.package, self.imports, self.params, self.where = package, imports, params, where

    def fail(self, why: str) -> GoSourceError:
        return GoSourceError(f"{self.where}: {why} in {self.s!r}")

    def parse(self) -> TypeExpr:
        t = self.type()
        if self.s[self.i :].strip():
            raise self.fail("trailing text after a type")
        return t

    def type(self) -> TypeExpr:
        s = self.s
        if s.startswith("[]", self.i):
            self.i += 2
            return TypeExpr("slice", args=(self.type(),))
        if s.startswith("*", self.i):
            self.i += 1
            return TypeExpr("ptr", args=(self.type(),))
        if s.startswith("map[", self.i):
            self.i += 4
            key = self.type()
            self.expect("]")
            return TypeExpr("map", args=(key, self.type()))
        if s.startswith("interface{}", self.i):
            self.i += len("interface{}")
            return TypeExpr("basic", "any")
        match = re.compile(r"(\w+)(?:\.(\w+))?").match(s, self.i)
        if not match:
            raise self.fail("no type")
        self.i = match.end()
        first, second = match.group(1), match.group(2)
        if second is None and first in BASIC:
            return TypeExpr("basic", BASIC[first])
        if second is None and first in self.params:
            return TypeExpr("param", first)
        qualified = f"{self.package}.{first}" if second is None else f"{self.imports.get(first, first)}.{second}"
        args: list[TypeExpr] = []
        if s.startswith("[", self.i):
            self.i += 1
            args.append(self.type())
            while s.startswith(",", self.i):
                self.i += 1
                self.skip_space()
                args.append(self.type())
            self.expect("]")
        return TypeExpr("named", qualified, tuple(args))

    def skip_space(self) -> None:
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1

    def expect(self, token: str) -> None:
        if not self.s.startswith(token, self.i):
            raise self.fail(f"expected {token!r}")
        self.i += len(token)


_FIELD = re.compile(r"^(?P<names>\w+(?:\s*,\s*\w+)*)\s+(?P<type>[^`]+?)\s*(?:`(?P<tag>[^`]*)`)?\s*$")
_EMBEDDED = re.compile(r"^(?P<type>\*?[\w.]+(?:\[[^`]*\])?)\s*(?:`(?P<tag>[^`]*)`)?\s*$")


def _strip_comment(line: str) -> str:
    out, in_tag, in_str = [], False, False
    i = 0
    while i < len(line):
        c = line[i]
        if c == "`" and not in_str:
            in_tag = not in_tag
        elif c == '"' and not in_tag:
            in_str = not in_str
        elif c == "/" and line.startswith("//", i) and not in_tag and not in_str:
            break
        out.append(c)
        i += 1
    return "".join(out).strip()


def _json_tag(tag: str | None) -> tuple[str | None, bool, bool]:
    """(name, omitempty, skip) from a struct tag."""
    if not tag:
        return None, False, False
    match = re.search(r'json:"([^"]*)"', tag)
    if not match:
        return None, False, False
    name, *options = match.group(1).split(",")
    if name == "-" and not options:
        return None, False, True
    unknown = set(options) - {"omitempty"}
    if unknown:
        raise GoSourceError(f"json tag options {sorted(unknown)} are not understood")
    return name or None, "omitempty" in options, False


def _struct_fields(
    lines: list[str], start: int, path: str, package: str, imports: dict[str, str], params: tuple[str, ...]
) -> tuple[tuple[Field, ...], int]:
    """The fields of a struct whose body starts after line ``start``; returns them and the closing line."""
    fields: list[Field] = []
    i = start + 1
    while i < len(lines):
        where = f"{path}:{i + 1}"
        line = _strip_comment(lines[i])
        if not line:
            i += 1
            continue
        if line.startswith("}"):
            return tuple(fields), i
        inline = re.match(r"^(\w+)\s+struct\s*\{\s*$", line)
        if inline:
            inner, end = _struct_fields(lines, i, path, package, imports, params)
            closing = _strip_comment(lines[end])
            tag = re.search(r"`([^`]*)`", closing)
            name, omit, skip = _json_tag(tag.group(1) if tag else None)
            fields.append(Field(inline.group(1), TypeExpr("struct", fields=inner), name, omit, skip, False, where))
            i = end + 1
            continue
        match = _FIELD.match(line)
        if match and not _EMBEDDED.match(line):
            try:
                name, omit, skip = _json_tag(match.group("tag"))
            except GoSourceError as exc:
                raise GoSourceError(f"{where}: {exc}") from None
            parsed = _TypeParser(match.group("type").strip(), package, imports, params, where).parse()
            for go_name in re.split(r"\s*,\s*", match.group("names")):
                fields.append(
                    Field(go_name, parsed, name, omit, skip or not go_name[0].isupper(), False, where)
                )
        else:
            emb = _EMBEDDED.match(line)
            if not emb:
                raise GoSourceError(f"{where}: a struct field the generator does not understand: {line!r}")
            name, omit, skip = _json_tag(emb.group("tag"))
            parsed = _TypeParser(emb.group("type"), package, imports, params, where).parse()
            base = parsed.args[0] if parsed.kind == "ptr" else parsed
            go_name = base.name.rsplit(".", 1)[-1]
            fields.append(Field(go_name, parsed, name, omit, skip, True, where))
        i += 1
    raise GoSourceError(f"{path}:{start + 1}: struct without its closing brace")


def _string_value(expr: str, package: str, imports: dict[str, str], consts: dict[str, str]) -> str | None:
    """A constant string expression ("a" + pkg.B + "c"), or None if it is not one."""
    parts = [p.strip() for p in expr.split("+")]
    out = []
    for part in parts:
        if re.fullmatch(r'"[^"\\]*"', part):
            out.append(part[1:-1])
            continue
        ref = part.split(".")
        qualified = f"{imports.get(ref[0], ref[0])}.{ref[1]}" if len(ref) == 2 else f"{package}.{part}"
        if qualified not in consts:
            return None
        out.append(consts[qualified])
    return "".join(out)


def load_packages(source: Source) -> GoPackages:
    """Parse the shared API packages at the source's commit."""
    result = GoPackages()
    texts: list[tuple[str, str, str]] = []
    for package in PACKAGES:
        for path in source.files(f"{SHARED}/{package}"):
            texts.append((package, path, source.read(path)))
    for _ in range(3):  # string constants may refer to each other across files
        for package, _path, text in texts:
            imports = _imports(text, package)
            for name, expr in _const_lines(text):
                value = _string_value(expr, package, imports, result.consts)
                if value is not None:
                    result.consts.setdefault(f"{package}.{name}", value)
    for package, path, text in texts:
        imports = _imports(text, package)
        lines = text.splitlines()
        for number, line in enumerate(lines):
            marshal = re.match(r"^func \(\w+ \*?(\w+)(?:\[\w+\])?\) MarshalJSON\(", line)
            if marshal:
                result.custom_marshalers.add(f"{package}.{marshal.group(1)}")
            decl = re.match(r"^type (\w+)(?:\[([^\]]*)\])?\s+(.*?)\s*$", line)
            if decl:
                name, params_text, rest = decl.groups()
                params = tuple(p.strip().split()[0] for p in (params_text or "").split(",") if p.strip())
                where = f"{path}:{number + 1}"
                key = f"{package}.{name}"
                try:
                    if rest.startswith("struct {") and rest.endswith("{"):
                        fields, _ = _struct_fields(lines, number, path, package, imports, params)
                        result.types[key] = TypeDecl(package, name, params, fields, None, where)
                    elif rest == "struct{}":
                        result.types[key] = TypeDecl(package, name, params, (), None, where)
                    elif not rest.startswith(("interface", "func", "=")) and "{" not in rest:
                        underlying = _TypeParser(rest, package, imports, params, where).parse()
                        result.types[key] = TypeDecl(package, name, params, None, underlying, where)
                except GoSourceError as exc:
                    result.types[key] = TypeDecl(package, name, params, None, None, where, error=str(exc))
            call = re.match(r"^var (\w+) = rpc\.Call\[(.*)\]\{\s*$", line)
            if call:
                name, type_args = call.groups()
                where = f"{path}:{number + 1}"
                req_text, resp_text = _split_type_args(type_args, where)
                body: dict[str, str] = {}
                j = number + 1
                while not lines[j].startswith("}"):
                    kv = re.match(r"^\s*(\w+):\s*(.*?),?\s*$", _strip_comment(lines[j]))
                    if kv:
                        body[kv.group(1)] = kv.group(2)
                    j += 1
                base = _string_value(body.get("BaseContext", '""'), package, imports, result.consts)
                operation = _string_value(body.get("Operation", '""'), package, imports, result.consts)
                if base is None or operation is None:  # not a plain constant: not a call towards providers
                    continue
                try:
                    request = _TypeParser(req_text, package, imports, (), where).parse()
                    response = _TypeParser(resp_text, package, imports, (), where).parse()
                except GoSourceError:
                    continue
                convention = body.get("Convention", "").removeprefix("rpc.")
                result.calls[f"{package}.{name}"] = RpcCall(name, request, response, base, convention, operation, where)
    return result


_CONST = re.compile(r"^(\w+)(?:\s+[\w.]+)?\s*=\s*(.+?)\s*$")


def _const_lines(text: str) -> list[tuple[str, str]]:
    """(name, expression) of every package-level constant: ``const X = ...`` and ``const ( ... )`` blocks."""
    found, in_block = [], False
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if in_block:
            if line.startswith(")"):
                in_block = False
            elif (match := _CONST.match(line)) is not None:
                found.append((match.group(1), match.group(2)))
        elif line.startswith("const ("):
            in_block = True
        elif line.startswith(("const ", "var ")) and not raw.startswith((" ", "\t")):
            match = _CONST.match(line.split(" ", 1)[1].strip())
            if match is not None:
                found.append((match.group(1), match.group(2)))
    return found


def _split_type_args(text: str, where: str) -> tuple[str, str]:
    depth = 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == "," and depth == 0:
            return text[:i].strip(), text[i + 1 :].strip()
    raise GoSourceError(f"{where}: rpc.Call without two type arguments")


def call_path(packages: GoPackages, call: RpcCall, provider_id: str) -> tuple[str, str]:
    """(method, path) of a call as Go's rpc client builds it (``shared/pkg/rpc/00_module.go``, ``InvokeEx``,
    and ``client.go``: the trailing '/' is cut; ``PROVIDER_ID`` becomes the provider's id)."""
    context = call.base_context
    if context not in ("", "/") and not context.startswith(("auth", "ucloud/")):
        context = f"api/{context}"
    operation = call.operation
    if call.convention == "ConventionRetrieve":
        method, path = "GET", f"/{context}/retrieve{operation[:1].upper()}{operation[1:]}"
    elif call.convention in ("ConventionUpdate", "ConventionCreate"):
        method, path = "POST", f"/{context}/{operation}"
    else:
        raise GoSourceError(f"{call.source}: convention {call.convention} is not used towards providers")
    path = path.removesuffix("/").replace(packages.consts["rpc.ProviderPlaceholder"], provider_id)
    return method, path
