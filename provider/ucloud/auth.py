"""Checking that a request really comes from UCloud/Core: an RS256 JWT signed with this provider's key.

Core signs every call to the provider with a per-provider RSA key and the claims
``iss=cloud.sdu.dk, sub=_UCloud, role=SERVICE``. The provider receives the public half at registration
as base64 DER (SubjectPublicKeyInfo) without PEM armour; PEM is accepted too. Only RS256 is ever
accepted, whatever the token's header says.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

UCLOUD_ISSUER = "cloud.sdu.dk"
UCLOUD_SUBJECT = "_UCloud"
UCLOUD_ROLE = "SERVICE"
# Clocks on a login node and on Core drift a little; a few seconds of leeway avoid spurious 401s.
LEEWAY_SECONDS = 30


class PublicKeyError(Exception):
    """The public key file cannot be used; the message names the file."""


class Unauthorized(Exception):
    """The request is not from UCloud/Core; the message is safe to return in ``why``."""


def load_public_key(path: Path) -> RSAPublicKey:
    """Read UCloud's public key: base64 DER as UCloud hands it out, or PEM."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PublicKeyError(f"{path}: cannot be read: {exc.strerror}") from None
    return parse_public_key(data, source=str(path))


def parse_public_key(data: bytes, source: str = "public key") -> RSAPublicKey:
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = load_pem_public_key(text)
        else:
            key = load_der_public_key(base64.b64decode(b"".join(text.split()), validate=True))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise PublicKeyError(f"{source}: not a public key in base64 DER or PEM form ({exc})") from None
    if not isinstance(key, RSAPublicKey):
        raise PublicKeyError(f"{source}: not an RSA public key")
    return key


class TokenVerifier:
    """Verifies ``Authorization: Bearer`` tokens from UCloud/Core.

    >>> verifier = TokenVerifier(load_public_key(Path("/etc/ucloud-slurm-provider/ucloud_key.pub")))
    >>> claims = verifier.verify_header(request.headers.get("Authorization"))
    """

    def __init__(self, key: RSAPublicKey) -> None:
        self._key = key

    def verify_header(self, header: str | None) -> dict[str, Any]:
        if not header:
            raise Unauthorized("Missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization header must be 'Bearer <token>'")
        return self.verify(token.strip())

    def verify(self, token: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=["RS256"],
                issuer=UCLOUD_ISSUER,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token has expired") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized("Token is not signed with RS256") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("Token signature is invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"Token lacks the claim '{exc.claim}'") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("Token has the wrong issuer") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("Token is not valid yet") from None
        except jwt.PyJWTError:
            raise Unauthorized("Token is malformed") from None
        if claims.get("sub") != UCLOUD_SUBJECT:
            raise Unauthorized("Token subject is not UCloud/Core")
        if claims.get("role") != UCLOUD_ROLE:
            raise Unauthorized("Token role is not SERVICE")
        return claims
