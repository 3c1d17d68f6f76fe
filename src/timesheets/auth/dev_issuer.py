"""A development issuer: real RSA keys, a JWKS, a discovery document and minted RS256 tokens.

`timesheets dev` serves it so that a newcomer needs no Auth0 account; the tests use it so that every
token they send carries a real signature checked by the production code path.
"""

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def generate(cls, kid: str | None = None) -> "SigningKey":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid or uuid.uuid4().hex[:16], key)

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass
class DevIssuer:
    issuer: str
    keys: list[SigningKey] = field(default_factory=list)

    @classmethod
    def generate(cls, issuer: str) -> "DevIssuer":
        return cls(issuer, [SigningKey.generate()])

    @classmethod
    def from_key_file(cls, issuer: str, path: Path) -> "DevIssuer":
        """The issuer whose key lives in `path`, creating the key (mode 0600) on first use."""
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError(f"{path} does not hold an RSA private key")
            return cls(issuer, [SigningKey(_thumbprint_kid(key), key)])
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signing = SigningKey(_thumbprint_kid(private_key), private_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_bytes(signing.private_pem())
        return cls(issuer, [signing])

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self.keys]}

    def discovery(self, jwks_uri: str) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": jwks_uri,
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        }

    def mint(
        self,
        *,
        audience: str | list[str],
        subject: str = "dev|user",
        email: str | None = None,
        scopes: Iterable[str] = (),
        lifetime: int = 3600,
        email_claim: str = "https://api.exampleco.com/email",
        extra_claims: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """A signed RS256 access token shaped like Auth0's (scope string and permissions array)."""
        now = int(time.time())
        scope_list = list(scopes)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "exp": now + lifetime,
            "scope": " ".join(scope_list),
            "permissions": scope_list,
        }
        if email is not None:
            claims[email_claim] = email
        claims.update(extra_claims or {})
        signing = key or self.keys[-1]
        return jwt.encode(
            claims,
            signing.private_key,
            algorithm="RS256",
            headers={"kid": signing.kid, "typ": "JWT", **(headers or {})},
        )


def _thumbprint_kid(key: rsa.RSAPrivateKey) -> str:
    # RFC 7638 thumbprint: the same key file always yields the same kid across restarts.
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    canonical = json.dumps({name: jwk[name] for name in ("e", "kty", "n")}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:16]
