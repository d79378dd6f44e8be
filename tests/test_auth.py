"""Inbound tokens: only what UCloud/Core signs, exactly as it signs, is accepted."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provider.ucloud.auth import PublicKeyError, TokenVerifier, Unauthorized, load_public_key, parse_public_key
from provider.ucloud.devcore import DevCoreKeys


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> DevCoreKeys:
    return DevCoreKeys.load_or_create(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def verifier(keys: DevCoreKeys) -> TokenVerifier:
    return TokenVerifier(load_public_key(keys.public_key_file))


def test_a_token_signed_as_core_signs_is_accepted(keys: DevCoreKeys, verifier: TokenVerifier) -> None:
    claims = verifier.verify_header(f"Bearer {keys.service_token()}")
    assert (claims["sub"], claims["role"]) == ("_UCloud", "SERVICE")


def test_the_public_key_file_is_base64_der_as_ucloud_hands_it_out(keys: DevCoreKeys) -> None:
    text = keys.public_key_file.read_text().strip()
    assert not text.startswith("-----")
    base64.b64decode(text, validate=True)


def test_pem_public_keys_are_accepted_too(keys: DevCoreKeys) -> None:
    pem = keys.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    TokenVerifier(parse_public_key(pem)).verify(keys.service_token())


def test_a_file_that_is_not_a_key_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "key.pub"
    bad.write_text("not a key")
    with pytest.raises(PublicKeyError, match=str(bad)):
        load_public_key(bad)


def test_non_rsa_keys_are_refused() -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(PublicKeyError, match="not an RSA public key"):
        parse_public_key(pem)


def _unsigned(claims: dict[str, object]) -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    import json

    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}."


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {"sub": "_UCloud", "role": "SERVICE", "iss": "cloud.sdu.dk", "iat": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("make_token", "why"),
    [
        (lambda k: k.service_token(now=int(time.time()) - 3600), "Token has expired"),
        (lambda k: k.service_token(sub="#P_slurm"), "Token subject is not UCloud/Core"),
        (lambda k: k.service_token(role="PROVIDER"), "Token role is not SERVICE"),
        (lambda k: k.service_token(iss="evil.example"), "Token has the wrong issuer"),
        (lambda k: k.service_token(exp=None), "Token lacks the claim 'exp'"),
        (lambda k: k.service_token(iat=None), "Token lacks the claim 'iat'"),
        (lambda k: _unsigned(_claims()), "Token is not signed with RS256"),
        (lambda k: jwt.encode(_claims(), "secret-secret-secret-secret-32by", algorithm="HS256"), "Token is not signed with RS256"),
        (
            lambda k: jwt.encode(_claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256"),
            "Token signature is invalid",
        ),
        (lambda k: "garbage", "Token is malformed"),
    ],
    ids=["expired", "wrong-sub", "wrong-role", "wrong-iss", "no-exp", "no-iat", "alg-none", "hs256", "other-key", "garbage"],
)
def test_everything_else_is_refused(keys: DevCoreKeys, verifier: TokenVerifier, make_token, why: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Unauthorized) as err:
        verifier.verify(make_token(keys))
    assert str(err.value) == why


def test_hs256_signed_with_the_public_key_text_is_refused(keys: DevCoreKeys, verifier: TokenVerifier) -> None:
    """The classic algorithm-confusion attack: HMAC keyed with the RSA public key."""
    import hashlib
    import hmac
    import json

    secret = keys.public_key_file.read_bytes()
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")  # noqa: E731
    signing_input = enc(b'{"alg":"HS256","typ":"JWT"}') + b"." + enc(json.dumps(_claims()).encode())
    token = (signing_input + b"." + enc(hmac.new(secret, signing_input, hashlib.sha256).digest())).decode()
    with pytest.raises(Unauthorized, match="not signed with RS256"):
        verifier.verify(token)


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer "])
def test_missing_or_malformed_headers_are_refused(verifier: TokenVerifier, header: str | None) -> None:
    with pytest.raises(Unauthorized):
        verifier.verify_header(header)
