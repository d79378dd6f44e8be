"""The request limits of provider/edge.py as pure rules: each hostile body is refused, naming its limit,
and Core's largest realistic bulk passes."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider import edge
from provider.config import ServerSection
from provider.edge import Refused, RequestLimits, check_username_header, parse_json_body, scan_raw
from provider.ucloud.devcore import job_body

LIMITS = RequestLimits.from_settings(ServerSection())


def refusal(raw: bytes, limits: RequestLimits = LIMITS) -> str:
    with pytest.raises(Refused) as caught:
        parse_json_body(raw, limits)
    return str(caught.value)


def core_job(n: int) -> dict[str, object]:
    """A job as Core2 sends it, with the heavy parts a real one carries (resolved application, updates)."""
    job = job_body(str(10_000_000 + n), parameters={f"p{i}": {"type": "text", "value": "some value"} for i in range(10)})
    parameter = {"type": "text", "name": "p", "optional": True, "title": "A parameter", "description": "d" * 400}
    job["status"]["resolvedApplication"] = {  # type: ignore[index]
        "metadata": {"name": "terminal", "version": "1", "description": "x" * 3000, "group": {"specification": {"title": "t"}}},
        "invocation": {"tool": {"tool": {"description": {"info": {"name": "t", "version": "1"}}}}, "parameters": [parameter] * 20},
    }
    job["updates"] = [{"state": "RUNNING", "status": "Your job is now running", "timestamp": 1700000000000 + i} for i in range(30)]
    return job


def test_core_s_largest_bulk_passes_and_its_measure_is_documented() -> None:
    body = json.dumps({"items": [core_job(n) for n in range(1000)]}).encode()
    started = time.monotonic()
    data = parse_json_body(body, LIMITS)
    print(f"1,000 full jobs: {len(body) / 1e6:.1f} MB checked in {time.monotonic() - started:.2f} s")
    assert len(data["items"]) == 1000
    assert len(body) < LIMITS.max_body_bytes


@pytest.mark.parametrize(
    ("raw", "limit"),
    [
        (b'{"items":' + b"[" * 200_000 + b"]" * 200_000 + b"}", "max_depth"),
        (b'{"items":' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}", "max_depth"),
        (b'{"items":[' + b",".join([b"1"] * 500_000) + b"]}", "max_items"),
        (b'{"items":{' + b",".join(b'"k%d":1' % i for i in range(20_000)) + b"}}", "max_items"),
        (b"[" + b"{}," * 4_000_000 + b"{}]", "max_values"),
        (b'{"items":["' + b"a" * 70_000 + b'"]}', "max_string_bytes"),
        (b'{"' + b"k" * 70_000 + b'":1}', "max_string_bytes"),
        (b'{"items":["' + "é".encode() * 33_000 + b'"]}', "max_string_bytes"),
    ],
    ids=["200k-deep", "deep-objects", "500k-items", "20k-keys", "4M-empty-objects", "long-string", "long-key", "long-utf8"],
)
def test_each_limit_is_named_in_the_refusal(raw: bytes, limit: str) -> None:
    assert f"[server] {limit}" in refusal(raw)


def test_a_body_over_max_body_bytes_is_refused_before_it_is_scanned() -> None:
    small = RequestLimits.from_settings(ServerSection(max_body_bytes=65536))
    assert "[server] max_body_bytes (65536 bytes)" in refusal(b'{"items":["' + b"a" * 70_000 + b'"]}', small)


def test_brackets_and_commas_inside_strings_do_not_count() -> None:
    text = "[" * 40 + "," * 100
    tight = RequestLimits.from_settings(ServerSection(max_values=10_000))
    body = json.dumps({"items": [text] * 200}).encode()  # 20,000 commas and 8,000 brackets, all inside strings
    assert parse_json_body(body, tight) == {"items": [text] * 200}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"items":[{"id":"\\ud800"}]}', "lone UTF-16 surrogate"),
        (b'{"items":[{"id":"ok\\udfff"}]}', "lone UTF-16 surrogate"),
        (b'{"\\udc00":1}', "lone UTF-16 surrogate"),
        (b'{"items":[{"owner":{"project":"p\\u0000"}}]}', "NUL character"),
        (b'{"items":[{"owner":{"createdBy":"\\u0000"}}]}', "NUL character"),
        (b'{"a\\u0000":1}', "NUL character"),
        (b'["\xed\xa0\x80"]', "not UTF-8"),  # a surrogate as raw (CESU-8) bytes
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"items":[NaN]}', "NaN"),
        (b'{"items":[-Infinity]}', "-Infinity"),
        (b'{"items":[1e999]}', "not finite"),
        (b'{"createdAt":9223372036854775808}', "64 bits"),
        (b'{"createdAt":-9223372036854775809}', "64 bits"),
        (b'{"createdAt":18446744073709551615}', "64 bits"),  # fits orjson's unsigned 64 bits, not Go's int64
        (b'{"createdAt":123456789012345678901234567890}', "64 bits"),  # orjson would make it a float
        (b'{"createdAt":-123456789012345678901234567890}', "64 bits"),
        (b'{"items":[' + b"9" * 5000 + b"]}", "not JSON"),
        (b"{not json", "not JSON"),
    ],
)
def test_bad_characters_and_numbers_are_refused(raw: bytes, says: str) -> None:
    assert says in refusal(raw)


def test_where_names_the_field_and_escapes_a_hostile_key() -> None:
    assert "the field project contains a NUL" in refusal(b'{"owner":{"project":"a\\u0000b"}}')
    why = refusal(b'{"' + b"x\\u0007" * 30 + b'":"\\ud800"}')
    assert "\x07" not in why and "\\x07" in why


@pytest.mark.parametrize("extra", ["", "1234567890123456789012"], ids=["orjson", "a long digit run: json"])
def test_both_parsers_give_core_bodies_exactly(extra: str) -> None:
    """Whichever parser reads it (orjson, or the standard library for a 19-digit run), a bulk of Go
    Core's whole Jobs comes out equal, number types included, to what the standard library makes."""
    body = json.dumps({"items": [job_body(f"5411{i}", "RUNNING") for i in range(20)], "note": extra}).encode()
    data = parse_json_body(body, LIMITS)
    expected = json.loads(body)
    assert data == expected
    assert repr(data) == repr(expected)  # 1 and 1.0 compare equal; their reprs do not


def test_valid_unicode_and_pairs_pass() -> None:
    data = parse_json_body('{"items":["Zoë 😀 \\ud83d\\ude00 \\u00e9", 9223372036854775807, -1.5e300]}'.encode(), LIMITS)
    assert data["items"][0] == "Zoë 😀 😀 é"


@pytest.mark.parametrize(
    ("username", "says"),
    [
        (b"user\x00name", "NUL character"),
        (b"user\nname", "control character"),
        (b"\xff\xfe", "not valid base64 of UTF-8"),
        (b"a" * 70_000, "max_string_bytes"),
    ],
)
def test_the_username_header_is_checked_after_base64(username: bytes, says: str) -> None:
    with pytest.raises(Refused, match=says):
        check_username_header({"ucloud-username": base64.b64encode(username).decode()}, LIMITS)


def test_a_plain_username_header_passes() -> None:
    check_username_header({"ucloud-username": base64.b64encode(b"donna#1234").decode()}, LIMITS)
    check_username_header({}, LIMITS)
    with pytest.raises(Refused, match="not valid base64"):
        check_username_header({"ucloud-username": "not base64!"}, LIMITS)


# The bytes' proof (edge._proved_within_limits) lets a body skip the tree walk. It may only ever save
# time: every answer, a refusal's words included, is the one the walk gives.

TINY = RequestLimits(max_body_bytes=1 << 20, max_depth=4, max_items=3, max_values=40, max_string_bytes=8, body_timeout=1.0)
SEED_VERIFY = Path(__file__).parent / "data" / "seed_verify_request.json"


def verdict(raw: bytes, limits: RequestLimits) -> object:
    try:
        return ("accepted", repr(parse_json_body(raw, limits)))
    except Refused as exc:
        return ("refused", str(exc))


def verdicts(raw: bytes, limits: RequestLimits) -> tuple[object, object]:
    """The answer with the proof, tried however dense the body's escapes (the density bound only
    spares a slow split; these bodies are small), and the answer of the walk alone."""
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(edge, "_BYTES_PER_ESCAPE", 1)
        with_the_proof = verdict(raw, limits)
        patched.setattr(edge, "_proved_within_limits", lambda raw, limits: False)
        return with_the_proof, verdict(raw, limits)


_text = (
    st.text(alphabet=st.sampled_from('a",[]{}\\\x00é😀\n '), max_size=10)
    | st.text(alphabet="a,[]{}é ", max_size=10)
    | st.text(alphabet='x"', max_size=3)  # escaped quotes: were they read as quotes, they would pair across values
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_text, inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=3000, derandomize=True, deadline=None, database=None)
@given(value=_json, ascii_only=st.booleans(), indent=st.sampled_from([None, 0, 1, 12]), roomy=st.booleans())
def test_the_bytes_proof_never_changes_an_answer(value: object, ascii_only: bool, indent: int | None, roomy: bool) -> None:
    """Random bodies around tiny limits (3 entries, depth 4, 40 values, strings of 8 bytes or, so that
    indented bodies are proved too, 64), strings full of quotes, brackets, commas, backslashes and
    escapes: the answer with the proof is the walk's."""
    raw = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()
    limits = dataclasses.replace(TINY, max_string_bytes=64) if roomy else TINY
    with_the_proof, walked = verdicts(raw, limits)
    assert with_the_proof == walked


@pytest.mark.parametrize(
    ("raw", "refused"),
    [
        (b'[[1,2],3,[4]]', None),  # three entries, the children's brackets between them
        (b'[[1,2],3,[4],5]', "max_items"),  # four, in three runs until the children are peeled
        (b'{"a":{"b":[1,[2]]}}', None),  # four levels
        (b'{"a":{"b":[1,[[2]]]}}', "max_depth"),
        (json.dumps([[[[1] * 3] * 3] * 3] * 3).encode(), "max_values"),  # 121 values, no container too big or deep
        (b'["12345678"]', None),
        (b'["123456789"]', "max_string_bytes"),
        (b'{"123456789":1}', "max_string_bytes"),
        (b'["\\u00e9\\u00e9\\u00e9\\u00e9"]', None),  # 24 bytes of escapes, 8 of UTF-8: the walk decides
    ],
)
def test_bodies_at_and_over_each_limit(raw: bytes, refused: str | None) -> None:
    answer, walked = verdicts(raw, TINY)
    assert answer == walked
    if refused:
        assert answer[0] == "refused" and f"[server] {refused}" in answer[1]  # type: ignore[index]
    else:
        assert answer[0] == "accepted"


@pytest.mark.parametrize(
    ("raw", "refused"),
    [
        (b'["\\"",1,2,3,"\\""]', "max_items"),  # as quotes, they would hide the numbers in a string
        (b'["' + b'\\"'.join([b"x" * 30] * 3) + b'"]', "max_string_bytes"),  # or cut this string in short ones
        (b'["\\\\",1,2,3,"\\\\"]', "max_items"),  # a string ending in an escaped backslash ends there
    ],
)
def test_escaped_quotes_are_never_read_as_quotes(raw: bytes, refused: str) -> None:
    roomy = dataclasses.replace(TINY, max_string_bytes=64)  # no run of bytes here is a string too long
    answer, walked = verdicts(raw, roomy)
    assert answer == walked
    assert answer[0] == "refused" and f"[server] {refused}" in answer[1]  # type: ignore[index]


def core_job_with_escapes(n: int) -> dict[str, object]:
    """Go Core's whole Job with what real text brings: quotes, backslashes, newlines, a tab."""
    job = job_body(str(81_000_000 + n), "RUNNING")
    job["specification"]["name"] = 'The "big" run\\n of C:\\data,\tday [1]\n'  # type: ignore[index]
    return job


@pytest.mark.parametrize("shape", ["Go Core's whole Jobs", "with escapes in its text", "the seed's Job", "Core's largest bulk"])
def test_core_s_bodies_are_proved_by_their_bytes_and_skip_the_walk(shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes a verify of 1,024 whole Jobs cheap (docs/admin.md): Core's bodies need no walk."""
    if shape == "Go Core's whole Jobs":
        body = json.dumps({"items": [job_body(str(81_000_000 + i), "RUNNING") for i in range(1024)]}).encode()
    elif shape == "with escapes in its text":
        body = json.dumps({"items": [core_job_with_escapes(i) for i in range(1024)]}).encode()
    elif shape == "the seed's Job":
        body = SEED_VERIFY.read_bytes()
    else:
        body = json.dumps({"items": [core_job(n) for n in range(1000)]}).encode()
    walks: list[object] = []
    monkeypatch.setattr(edge, "check_tree", lambda *args, **kwargs: walks.append(args))
    assert scan_raw(body, LIMITS) is True
    assert parse_json_body(body, LIMITS) == json.loads(body)
    assert walks == []


def test_a_body_the_bytes_cannot_prove_is_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    walks: list[object] = []
    monkeypatch.setattr(edge, "check_tree", lambda *args, **kwargs: walks.append(args))
    unproved = (
        b'{"items":["\\ud83d\\ude00"]}',  # an escape that may be a lone surrogate (or a NUL): strings are searched
        b'{"items":[' + b" " * 70_000 + b"1]}",  # a run of bytes as long as a string too long
        b'{"items":["' + b"\\n" * 100 + b'"]}',  # more escapes than one in 64 bytes
    )
    for raw in unproved:
        parse_json_body(raw, LIMITS)
    assert len(walks) == len(unproved)
    proved = b'{"items":["a, [b] or {c}", "a \\"quoted\\" word\\\\", "\\n", "' + b"plain text " * 40 + b'"]}'
    parse_json_body(proved, LIMITS)  # strings with commas, brackets and (some) escapes
    assert len(walks) == len(unproved)
