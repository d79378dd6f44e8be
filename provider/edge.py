"""Request limits at the HTTP edge: a body or header is sized, scanned and checked before any model sees it.

Whatever a request makes the daemon hold is bounded here, and no character that a Slurm argument, a file
name or an environment variable cannot carry (NUL, a lone UTF-16 surrogate) gets past it. A body passes
three cheap steps, each once, before pydantic validates a single item:

1. ``scan_raw`` on the bytes, before any parser: size, nesting depth and number of values, counted on
   the raw bytes at C speed, so a 200,000-deep array is never parsed (the parsers recurse) and a body
   of ``[{},{},...]`` (25 times its size as Python objects) is refused while it is still bytes. For
   most bodies within the limits, Core's among them, the bytes also prove every entry count and
   string size (``_proved_within_limits``); for the others, brackets and commas inside strings only
   make a first count high, and the exact count, with string literals blanked out, runs only for a
   body whose first count is over the limit.
2. ``orjson.loads`` (strict UTF-8, no ``NaN``/``Infinity``, no lone surrogate): 28 ms for 7.5 MB of
   Core's Jobs where the standard library takes 41 (both with the collector paused, see below). A
   body orjson refuses, or one with a run of 19 or more digits (orjson turns an integer beyond 64 bits
   into a float, which would pass the range check), is parsed again by ``json.loads`` on strictly
   decoded UTF-8, whose answer (or refusal, in this module's words) is the one that counts: a refusal
   never depends on which parser ran.
3. ``check_tree``: one breadth-first walk of the result, for the entries of any one array or object,
   the size of every string and key, integers outside int64 (Core's Go types) and non-finite numbers.
   A 500,000-item ``{"items":[...]}`` is refused at its first node. NUL and lone surrogates can only
   arrive as ``\\u`` escapes, so strings are searched for them only when the raw bytes hold such an escape.
   The walk is skipped when it could find nothing: the bytes proved the sizes in step 1, orjson made
   the tree (so every number is a finite double or fits in int64) and no such escape is in the body.
   For 1,024 of Go Core's Jobs the walk costs 40 ms and the proof 20. The proof refuses nothing: a
   refusal comes from an exact count or from the walk, in the same words whether or not it ran.

Each refusal is a ``Refused`` whose message names the ``[server]`` key that set the limit.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate, repeat
from typing import Any, NoReturn

import orjson
from aiohttp import web

from provider.collector import without_collector
from provider.config import ServerSection

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# A JSON string literal, escapes included; an unrolled loop, so a long string costs one C scan.
_STRING_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Commas and brackets, in order: all that a value count and the nesting depth look at, a fifteenth of
# Core's Jobs, so one C pass over the body (2.6 ms for 7.5 MB) replaces five (15 ms).
_STRUCTURE = b",[]{}"
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)
# For _proved_within_limits: a body's quotes, commas and brackets kept, every other byte an "a"; objects
# as arrays (a body that is JSON nests them properly, and the peel only counts levels and entries);
# an innermost container, whose entries are all scalars.
_QUOTE = ord('"')
_SHAPE_MARKS = bytes(b if b in _STRUCTURE or b == _QUOTE else ord("a") for b in range(256))
_QUOTE_MARKS = bytes(b if b == _QUOTE else ord("a") for b in range(256))  # runs between quotes
_OBJECTS_AS_ARRAYS = bytes.maketrans(b"{}", b"[]")
_INNERMOST_CONTAINER = re.compile(rb"\[,*\]")
_PEEL_BUDGET = 4
_BYTES_PER_ESCAPE = 64  # a body with more escapes than one in so many bytes is walked, not split up
_BRACKET_STEP = [0] * 256
for _byte in b"[{":
    _BRACKET_STEP[_byte] = 1
for _byte in b"]}":
    _BRACKET_STEP[_byte] = -1
# The only ways NUL or a surrogate get into a decoded string (strict UTF-8 refuses them as raw bytes).
_RISKY_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")
_A_KEY = "\x00(a key)"  # where a message places a refused key (compared by identity, never by value)
# An integer orjson could turn into a float: 19 digits reach past int64 (a run inside a string only
# costs the slower parse). Found as a run of ones once every digit is a one: a regex takes 60 ms over
# 7.5 MB, translate and find take 5.
_DIGITS_AS_ONES = bytes.maketrans(b"0123456789", b"1" * 10)
_NINETEEN_DIGITS = b"1" * 19


class Refused(ValueError):
    """A request the daemon will not handle; the message says which limit or rule it broke."""


@dataclass(frozen=True)
class RequestLimits:
    """The bounds on one request: ``[server]`` in the configuration, where their defaults are explained."""

    max_body_bytes: int
    max_depth: int
    max_items: int
    max_values: int
    max_string_bytes: int
    body_timeout: float

    @classmethod
    def from_settings(cls, server: ServerSection) -> RequestLimits:
        return cls(**{name: getattr(server, name) for name in cls.__dataclass_fields__})


LIMITS = web.AppKey("request_limits", RequestLimits)


def _has_long_number(raw: bytes) -> bool:
    return _NINETEEN_DIGITS in raw.translate(_DIGITS_AS_ONES)


@without_collector
def parse_json_body(raw: bytes, limits: RequestLimits) -> Any:
    """The decoded body, or ``Refused`` naming the limit or rule it broke.

    The cyclic garbage collector is paused while the tree is built (``provider.collector``): a JSON
    tree has no cycles (7.5 MB of Core's Jobs: 57-80 ms with the collector, 28 ms without).
    """
    proved = scan_raw(raw, limits)
    search_characters = _RISKY_ESCAPE.search(raw) is not None  # whichever parser reads the body
    if not _has_long_number(raw):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard library below says why, in the words of every other refusal
        else:
            # What orjson made needs no number check: without a 19-digit run every integer fits in
            # int64, and orjson refuses a number that is infinite as a double. What else check_tree
            # checks the bytes proved, unless a \u escape may hide a NUL or a lone surrogate.
            if search_characters or not proved:
                check_tree(data, limits, search_characters=search_characters)
            return data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"the body is not JSON (not UTF-8: {exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # not reachable past scan_raw's depth bound; kept as a last line of defence
        raise Refused(f"the body is nested deeper than [server] max_depth ({limits.max_depth})") from None
    except ValueError as exc:  # Refused is a ValueError too: a NaN keeps its own message
        raise Refused(str(exc) if isinstance(exc, Refused) else f"the body is not JSON ({exc})") from None
    check_tree(data, limits, search_characters=search_characters)
    return data


def _refuse_constant(name: str) -> NoReturn:
    raise Refused(f"the body holds {name}, which is not a JSON number")


def scan_raw(raw: bytes, limits: RequestLimits) -> bool:
    """Size, value count and depth from the bytes alone, so the parse that follows has bounded cost.

    Returns True when the bytes also proved every entry count and string size within the limits
    (``_proved_within_limits``), so the parsed tree needs no walk for them; False when only the value
    count and the depth were measured. Whatever it refuses, it refuses on the exact count.
    """
    if len(raw) > limits.max_body_bytes:
        raise Refused(f"the body is larger than [server] max_body_bytes ({limits.max_body_bytes} bytes)")
    if _proved_within_limits(raw, limits):
        return True
    structure = raw.translate(None, _NOT_STRUCTURE)
    if _value_count(structure) > limits.max_values or _depth(structure) > limits.max_depth:
        structure = _STRING_LITERAL.sub(b'""', raw).translate(None, _NOT_STRUCTURE)  # not what strings hold
        if _value_count(structure) > limits.max_values:
            raise Refused(f"the body holds more than [server] max_values ({limits.max_values}) JSON values")
        if _depth(structure) > limits.max_depth:
            raise Refused(f"the body is nested deeper than [server] max_depth ({limits.max_depth})")
    return False


def _proved_within_limits(raw: bytes, limits: RequestLimits) -> bool:
    """Whether the bytes alone prove what ``check_tree`` would measure of the parsed body: the value
    count, the depth, the entries of every array and object, the size of every string and key.

    With its escapes made plain bytes (``_escapes_made_plain``), every quote byte opens or closes a
    string, and deleting the strings leaves the body's exact shape: its commas and brackets. Most
    strings hold no comma or bracket and leave two adjacent quotes, deleted as a pair; two adjacent
    quotes are an empty string, or the end of one string and the start of the next with nothing
    between them, so the quotes left still pair up around what strings hold.
    Peeling the innermost containers off the shape, a level at a time, counts the levels (the depth);
    once its children are peeled, a container's own commas stand in one run, so a run of
    ``max_items`` commas is the only way an entry count can be over. A string's UTF-8 size is at
    most its literal's length, a run of bytes between two quotes.

    False whenever something is not proved (a body that is not JSON included); the caller then
    measures the exact way and walks the tree, so a refusal and its message never come from here.
    The peel's work is bounded by ``_PEEL_BUDGET`` times the shape's size (Core's Jobs take 2.4 times),
    the escapes' by ``_BYTES_PER_ESCAPE`` (a body denser in escapes is walked).
    """
    plain = raw
    if b"\\" in raw:  # a memchr: 0.3 ms for 7.5 MB
        if raw.count(b"\\") > len(raw) // _BYTES_PER_ESCAPE:
            return False
        plain = _escapes_made_plain(raw)
    marked = plain.translate(_SHAPE_MARKS)  # quotes, commas and brackets; every other byte an "a"
    shape = marked.translate(_OBJECTS_AS_ARRAYS, b"a").replace(b'""', b"")
    if b'"' in shape:  # strings that hold commas or brackets: each pair of quotes left encloses only theirs
        shape = b"".join(shape.split(b'"')[::2])
        marked = plain.translate(_QUOTE_MARKS)  # so that a run of "a"s is again at least a whole literal
    if b"a" * (limits.max_string_bytes + 1) in marked:  # a literal may be too long (or only a long number)
        return False
    if _value_count(shape) > limits.max_values:
        return False
    too_many_entries = b"," * limits.max_items
    budget = _PEEL_BUDGET * len(shape)
    for _level in range(limits.max_depth):
        if not shape:
            return True
        budget -= len(shape)
        if too_many_entries in shape or budget < 0:
            return False
        shape = _INNERMOST_CONTAINER.sub(b"", shape)
    return not shape


def _escapes_made_plain(raw: bytes) -> bytes:
    """``raw`` with every backslash, and every quote a backslash escapes, made an "a": as long, and
    every quote left opens or closes a string. Escapes are read as a parser reads them, left to right:
    a backslash escapes the byte after it, a backslash included. One split at C speed and a step per
    escape (3 ms for the 8,192 of 1,024 Jobs with escaped text; replacing the pairs took 13)."""
    pieces = raw.split(b"\\")
    starts_escape = True  # whether the backslash before the piece starts an escape (or is one's escaped byte)
    for i in range(1, len(pieces)):
        piece = pieces[i]
        if not starts_escape:
            starts_escape = True
        elif not piece:  # two backslashes in a row: the second is the escaped byte
            starts_escape = False
        elif piece[0] == _QUOTE:
            pieces[i] = b"a" + piece[1:]
    return b"a".join(pieces)


def _value_count(structure: bytes) -> int:
    """Values in a JSON text: one, plus one per comma, plus the containers (an upper bound if strings remain)."""
    return 1 + structure.count(b",") + structure.count(b"[") + structure.count(b"{")


def _depth(structure: bytes) -> int:
    brackets = structure.translate(None, b",")
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def check_tree(data: Any, limits: RequestLimits, *, search_characters: bool = True) -> None:
    """One breadth-first walk: container sizes, depth, strings, numbers. A level at a time, so depth
    costs no stack and no per-node bookkeeping."""
    # A string of at most this many characters cannot exceed max_string_bytes (4 UTF-8 bytes each) and,
    # unless characters are searched, needs no look at all: the common case costs one compare, inline.
    short = -1 if search_characters else limits.max_string_bytes // 4
    max_items = limits.max_items
    level: list[Any] = [data] if isinstance(data, (dict, list)) else [[data]]  # a bare value: as a list's entry
    depth = 0
    while level:  # every node of a level is a dict or a list
        depth += 1
        if depth > limits.max_depth:
            raise Refused(f"the body is nested deeper than [server] max_depth ({limits.max_depth})")
        below: list[Any] = []
        for node in level:
            if len(node) > max_items:
                raise Refused(f"an array or object has {len(node)} entries, more than [server] max_items ({max_items})")
            entries: Iterable[tuple[str, Any]]
            if isinstance(node, dict):
                for key in node:
                    if len(key) > short:
                        _check_string(key, _A_KEY, limits, search_characters)
                entries = node.items()
            else:
                entries = zip(repeat(""), node)
            for key, value in entries:
                kind = type(value)
                if kind is str:
                    if len(value) > short:
                        _check_string(value, key, limits, search_characters)
                elif kind is dict or kind is list:
                    below.append(value)
                elif value is not None and kind is not bool:
                    _check_number(value, kind, key)
        level = below


def _check_number(value: Any, kind: type, key: str) -> None:
    if kind is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise Refused(f"the number in {_field(key)} does not fit in 64 bits")
    elif kind is float and value - value != 0:  # inf - inf is nan; NaN itself never parses
        raise Refused(f"the number in {_field(key)} is not finite")


def _check_string(text: str, key: str, limits: RequestLimits, search_characters: bool) -> None:
    problem = _text_problem(text, limits, search_characters)
    if problem:
        raise Refused(f"the text in {_field(key)} {problem}")


def _field(key: str) -> str:
    """How a message names where a value sits: its key, cut short and escaped (a key may itself be hostile)."""
    if key is _A_KEY:
        return "a key"
    if not key:
        return "a list entry"
    shown = key if len(key) <= 40 and key.isprintable() else repr(key[:40])
    return f"the field {shown}"


def check_text(text: str, where: str, limits: RequestLimits) -> None:
    """A string that Slurm, a file name and a log line can all carry: bounded, no NUL, no lone surrogate."""
    problem = _text_problem(text, limits, search_characters=True)
    if problem:
        raise Refused(f"the text in {where} {problem}")


def _text_problem(text: str, limits: RequestLimits, search_characters: bool) -> str | None:
    if len(text) * 4 > limits.max_string_bytes and len(text.encode("utf-8", "surrogatepass")) > limits.max_string_bytes:
        return f"is longer than [server] max_string_bytes ({limits.max_string_bytes} bytes)"
    if search_characters and (match := _BAD_CHARACTER.search(text)):
        return "contains a NUL character" if match.group() == "\x00" else "contains a lone UTF-16 surrogate (not valid Unicode)"
    return None


def check_username_header(headers: Mapping[str, str], limits: RequestLimits) -> None:
    """``ucloud-username`` (base64 of the UCloud user) must decode to printable text a Slurm call can carry."""
    value = headers.get("ucloud-username")
    if not value:
        return
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Refused("the ucloud-username header is not valid base64 of UTF-8 text") from None
    check_text(text, "the ucloud-username header", limits)
    if not text.isprintable():
        raise Refused("the ucloud-username header contains a control character")
