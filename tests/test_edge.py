"""The request limits of provider/edge.py as pure rules: each hostile body is refused, naming its limit,
and Core's largest realistic bulk passes."""

from __future__ import annotations

import base64
import json
import time

import pytest

from provider.config import ServerSection
from provider.edge import Refused, RequestLimits, check_username_header, parse_json_body
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
