"""Hostile tokens against the real app: each is refused with 401 and the exact RFC 6750 challenge,
none of them makes the service fetch anything but its configured key set, and the legitimate
variants (scheme casing, audience arrays, leeway, the three scope claims) are accepted.

Tokens carry real RSA signatures: minted by the DevIssuer or signed by hand with `cryptography`
where PyJWT would refuse to produce them."""

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from starlette.testclient import TestClient

from timesheets.app import create_app
from timesheets.auth import DevIssuer, SigningKey

from ..conftest import AUDIENCE, EMAIL_CLAIM, EMPLOYEE, ENTRY, bearer, challenge
from ..keyserver import KeyServer

JWKS_PATH = "/.well-known/jwks.json"
MESSAGE = "Missing or invalid token"
NO_TOKEN_CHALLENGE = challenge()


def invalid_token_challenge(description: str) -> str:
    return challenge('error="invalid_token"', f'error_description="{description}"')


# --- crafting tokens by hand -------------------------------------------------------------------

DROP = object()  # a header parameter or claim to leave out

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def rsa_sign(header: dict[str, Any], claims: dict[str, Any], key: rsa.RSAPrivateKey) -> str:
    """A compact JWS with a real RS*/PS* signature over exactly these header and claims (RS256
    when the header's `alg` names no RSA algorithm)."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg[:2].upper() not in ("RS", "PS"):
        alg = "RS256"
    signing_input = f"{encode_json(header)}.{encode_json(claims)}"
    digest = _HASHES[alg[2:]]()
    if alg.upper().startswith("PS"):
        scheme: padding.AsymmetricPadding = padding.PSS(
            mgf=padding.MGF1(digest), salt_length=digest.digest_size
        )
    else:
        scheme = padding.PKCS1v15()
    signature = key.sign(signing_input.encode(), scheme, digest)
    return f"{signing_input}.{b64url(signature)}"


def hmac_sign(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """The classic key-confusion forgery: HS256 keyed with material that is public."""
    signing_input = f"{encode_json(header)}.{encode_json(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def self_signed_certificate(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.example")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


@dataclass
class Forge:
    """Builds tokens against the test's issuer; `attacker` is a second server nobody should call."""

    issuer: DevIssuer
    keys: list[SigningKey]
    attacker: KeyServer

    @property
    def key(self) -> SigningKey:
        return self.issuer.keys[0]

    @property
    def attacker_key(self) -> SigningKey:
        return self.attacker.issuer.keys[0]

    @property
    def now(self) -> int:
        return int(time.time())

    def header(self, **changes: Any) -> dict[str, Any]:
        header = {"alg": "RS256", "typ": "JWT", "kid": self.key.kid, **changes}
        return {name: value for name, value in header.items() if value is not DROP}

    def claims(self, **changes: Any) -> dict[str, Any]:
        claims = {
            "iss": self.issuer.issuer,
            "sub": "auth0|ann",
            "aud": AUDIENCE,
            "iat": self.now,
            "exp": self.now + 3600,
            "scope": " ".join(EMPLOYEE),
            EMAIL_CLAIM: "ann@example.com",
            **changes,
        }
        return {name: value for name, value in claims.items() if value is not DROP}

    def token(
        self,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        header = self.header() if header is None else header
        claims = self.claims() if claims is None else claims
        return rsa_sign(header, claims, (key or self.key).private_key)

    def attacker_token(self, **header: Any) -> str:
        """Signed with the attacker's key; the header points at that key."""
        return self.token(self.header(kid=self.attacker_key.kid, **header), key=self.attacker_key)


def _public_pem(forge: Forge) -> bytes:
    return forge.key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _tampered(forge: Forge) -> str:
    header, _, signature = forge.token().split(".")
    promoted = forge.claims(scope="read:timesheets approve:timesheets batch:upload")
    return f"{header}.{encode_json(promoted)}.{signature}"


def _no_kid_among_several_keys(forge: Forge) -> str:
    forge.issuer.keys.append(forge.keys[1])
    return forge.token(forge.header(kid=DROP))


def _alg_none(alg: str, signature: str) -> Callable[[Forge], str]:
    def build(forge: Forge) -> str:
        return f"{encode_json(forge.header(alg=alg))}.{encode_json(forge.claims())}.{signature}"

    return build


def _garbage_header(raw: bytes) -> Callable[[Forge], str]:
    def build(forge: Forge) -> str:
        _, payload, signature = forge.token().split(".")
        return f"{b64url(raw)}.{payload}.{signature}"

    return build


def _garbage_payload(raw: bytes) -> Callable[[Forge], str]:
    def build(forge: Forge) -> str:
        header, _, signature = forge.token().split(".")
        return f"{header}.{b64url(raw)}.{signature}"

    return build


def _segments(count: int) -> Callable[[Forge], str]:
    def build(forge: Forge) -> str:
        segments = forge.token().split(".")
        return ".".join((segments * 2)[:count])

    return build


@dataclass(frozen=True)
class Case:
    build: Callable[[Forge], str]
    description: str
    needs_keys: bool = False  # False: refused before any request to the key server


def case(name: str, build: Callable[[Forge], str], description: str, *, needs_keys: bool = False):
    return pytest.param(Case(build, description, needs_keys), id=name)


def _alg_none_cases() -> list[Any]:
    cases = []
    for alg in ("none", "None", "NONE", "nOnE"):
        # An empty third segment is no signature at all: malformed before the algorithm is read.
        cases.append(case(f"alg-{alg}-empty-signature", _alg_none(alg, ""), "malformed token"))
        cases.append(
            case(
                f"alg-{alg}-with-signature",
                _alg_none(alg, b64url(b"signature")),
                "algorithm not allowed",
            )
        )
    return cases


HOSTILE = [
    *_alg_none_cases(),
    # --- algorithm confusion
    case(
        "hs256-keyed-with-public-pem",
        lambda f: hmac_sign(f.header(alg="HS256"), f.claims(), _public_pem(f)),
        "algorithm not allowed",
    ),
    case(
        "hs256-keyed-with-public-jwk-json",
        lambda f: hmac_sign(
            f.header(alg="HS256"), f.claims(), json.dumps(f.key.public_jwk()).encode()
        ),
        "algorithm not allowed",
    ),
    case("rs384-with-right-key", lambda f: f.token(f.header(alg="RS384")), "algorithm not allowed"),
    case("rs512-with-right-key", lambda f: f.token(f.header(alg="RS512")), "algorithm not allowed"),
    case("ps256-with-right-key", lambda f: f.token(f.header(alg="PS256")), "algorithm not allowed"),
    case("alg-lowercase-rs256", lambda f: f.token(f.header(alg="rs256")), "algorithm not allowed"),
    case("alg-missing", lambda f: f.token(f.header(alg=DROP)), "algorithm not allowed"),
    case("alg-not-a-string", lambda f: f.token(f.header(alg=["RS256"])), "algorithm not allowed"),
    # --- keys
    case(
        "unknown-kid",
        lambda f: f.token(f.header(kid="no-such-key")),
        "unknown key id",
        needs_keys=True,
    ),
    case(
        "no-kid-among-several-keys", _no_kid_among_several_keys, "key id required", needs_keys=True
    ),
    case(
        "signed-by-another-key-with-known-kid",
        lambda f: f.token(key=f.attacker_key),
        "invalid signature",
        needs_keys=True,
    ),
    case("tampered-payload", _tampered, "invalid signature", needs_keys=True),
    case(
        "zeroed-signature",
        lambda f: f.token().rsplit(".", 1)[0] + "." + b64url(bytes(256)),
        "invalid signature",
        needs_keys=True,
    ),
    case("kid-integer", lambda f: f.token(f.header(kid=123)), "malformed token"),
    case("kid-array", lambda f: f.token(f.header(kid=[f.key.kid])), "malformed token"),
    case("kid-object", lambda f: f.token(f.header(kid={"kid": f.key.kid})), "malformed token"),
    case("kid-boolean", lambda f: f.token(f.header(kid=True)), "malformed token"),
    # --- header parameters that would let the token choose its own key
    case(
        "jku-to-attacker",
        lambda f: f.attacker_token(jku=f.attacker.base_url + ".well-known/jwks.json"),
        "key reference in token header not allowed",
    ),
    case(
        "x5u-to-attacker",
        lambda f: f.attacker_token(x5u=f.attacker.base_url + "cert.pem"),
        "key reference in token header not allowed",
    ),
    case(
        "embedded-jwk-of-attacker",
        lambda f: f.attacker_token(jwk=f.attacker_key.public_jwk()),
        "key reference in token header not allowed",
    ),
    case(
        "embedded-x5c-of-attacker",
        lambda f: f.attacker_token(
            x5c=[base64.b64encode(self_signed_certificate(f.attacker_key.private_key)).decode()]
        ),
        "key reference in token header not allowed",
    ),
    case(
        "unknown-crit",
        lambda f: f.token(f.header(crit=["urn:example:must-understand"])),
        "unsupported critical header",
    ),
    case(
        "crit-b64-unencoded-payload",
        lambda f: f.token(f.header(b64=False, crit=["b64"])),
        "unsupported critical header",
    ),
    case("typ-dpop", lambda f: f.token(f.header(typ="dpop+jwt")), "unsupported token type"),
    # --- claims
    case(
        "expired",
        lambda f: f.token(claims=f.claims(iat=f.now - 7200, exp=f.now - 3600)),
        "token expired",
        needs_keys=True,
    ),
    case(
        "nbf-in-future",
        lambda f: f.token(claims=f.claims(nbf=f.now + 3600)),
        "token not yet valid",
        needs_keys=True,
    ),
    case(
        "iat-in-future",
        lambda f: f.token(claims=f.claims(iat=f.now + 3600)),
        "token issued in the future",
        needs_keys=True,
    ),
    case(
        "no-exp",
        lambda f: f.token(claims=f.claims(exp=DROP)),
        "missing required claim",
        needs_keys=True,
    ),
    case(
        "no-sub",
        lambda f: f.token(claims=f.claims(sub=DROP)),
        "missing required claim",
        needs_keys=True,
    ),
    case(
        "empty-sub",
        lambda f: f.token(claims=f.claims(sub="")),
        "invalid claim",
        needs_keys=True,
    ),
    case(
        "no-aud",
        lambda f: f.token(claims=f.claims(aud=DROP)),
        "missing required claim",
        needs_keys=True,
    ),
    case(
        "wrong-iss",
        lambda f: f.token(claims=f.claims(iss="https://evil.example/")),
        "issuer mismatch",
    ),
    case(
        "iss-without-trailing-slash",
        lambda f: f.token(claims=f.claims(iss=f.issuer.issuer.rstrip("/"))),
        "issuer mismatch",
    ),
    case(
        "wrong-aud",
        lambda f: f.token(claims=f.claims(aud="https://api.exampleco.com/other")),
        "audience mismatch",
        needs_keys=True,
    ),
    case(
        "aud-array-without-ours",
        lambda f: f.token(claims=f.claims(aud=["https://a.example/", "https://b.example/"])),
        "audience mismatch",
        needs_keys=True,
    ),
    # --- size and shape
    case(
        "oversized-token",
        lambda f: f.token(claims=f.claims(padding="x" * (17 * 1024))),
        "token too large",
    ),
    case(
        "signature-stripped-keeping-dot",
        lambda f: f.token().rsplit(".", 1)[0] + ".",
        "malformed token",
    ),
    case("signature-stripped", lambda f: f.token().rsplit(".", 1)[0], "malformed token"),
    case("non-base64-segments", lambda f: "!!!.@@@.###", "malformed token"),
    case("empty-segments", lambda f: "..", "malformed token"),
    case("header-not-json", _garbage_header(b"not json"), "malformed token"),
    case("header-json-array", _garbage_header(b'["RS256"]'), "malformed token"),
    case("header-json-string", _garbage_header(b'"RS256"'), "malformed token"),
    case("header-not-utf8", _garbage_header(b'{"alg":"\xff\xfe"}'), "malformed token"),
    case(
        "header-deeply-nested-json",
        _garbage_header(b'{"alg":"RS256","x":' + b"[" * 5000 + b"]" * 5000 + b"}"),
        "malformed token",
    ),
    case("payload-not-json", _garbage_payload(b"not json"), "malformed token"),
    case("payload-json-array", _garbage_payload(b"[1, 2]"), "malformed token"),
    case("two-segments", _segments(2), "malformed token"),
    case("four-segments", _segments(4), "malformed token"),
    case("five-segments-jwe", _segments(5), "encrypted tokens are not accepted"),
]


@pytest.fixture(scope="module")
def attacker(signing_keys: list[SigningKey]) -> Iterator[KeyServer]:
    """A server the attacker controls, publishing the attacker's key: it must never be called, by
    any test of this module (so one server serves them all)."""
    server = KeyServer(DevIssuer("https://attacker.example/", [signing_keys[2]]))
    yield server
    server.stop()


@pytest.fixture
def forge(issuer: DevIssuer, signing_keys: list[SigningKey], attacker: KeyServer) -> Forge:
    return Forge(issuer, signing_keys, attacker)


def assert_invalid_token(response: Any, description: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == invalid_token_challenge(description)
    assert response.json()["message"] == MESSAGE
    assert response.json()["error"] == "invalid_token"


def assert_no_token(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == NO_TOKEN_CHALLENGE
    assert response.json()["message"] == MESSAGE


@pytest.mark.parametrize("hostile", HOSTILE)
def test_get_timesheets_rejects_hostile_token(client, forge, key_server, attacker, hostile: Case):
    token = hostile.build(forge)
    fetches_before = key_server.jwks_fetches

    response = client.get("/timesheets", headers=bearer(token))

    assert_invalid_token(response, hostile.description)
    assert attacker.requests == []
    assert all(path.endswith(JWKS_PATH) for path in key_server.requests), key_server.requests
    if not hostile.needs_keys:
        assert key_server.jwks_fetches == fetches_before


def test_hostile_token_table_tokens_are_valid_apart_from_their_flaw(client, forge):
    # The forge's untouched token is accepted, so each case fails for its own flaw only.
    assert client.get("/timesheets", headers=bearer(forge.token())).status_code == 200


# --- what a hostile token would have needed, done legitimately ---------------------------------


def test_get_timesheets_accepts_aud_array_containing_ours(client, forge):
    token = forge.token(claims=forge.claims(aud=["https://other.example/", AUDIENCE]))
    assert client.get("/timesheets", headers=bearer(token)).status_code == 200


def test_get_timesheets_accepts_no_kid_when_jwks_holds_one_key(client, forge):
    token = forge.token(forge.header(kid=DROP))
    assert client.get("/timesheets", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "application/at+jwt", DROP])
def test_get_timesheets_accepts_access_token_types(client, forge, typ):
    token = forge.token(forge.header(typ=typ))
    assert client.get("/timesheets", headers=bearer(token)).status_code == 200


# --- the Authorization header ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_get_timesheets_accepts_scheme_in_any_case(client, make_token, scheme):
    response = client.get("/timesheets", headers={"Authorization": f"{scheme} {make_token()}"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "authorization",
    ["Basic YW5uOnNlY3JldA==", "Bearer", "Bearer ", "Token abc.def.ghi", ""],
    ids=["basic", "bearer-without-token", "bearer-blank", "other-scheme", "empty"],
)
def test_get_timesheets_answers_bare_challenge_without_bearer_token(client, authorization):
    assert_no_token(client.get("/timesheets", headers={"Authorization": authorization}))


def test_get_timesheets_answers_bare_challenge_without_authorization_header(client):
    assert_no_token(client.get("/timesheets"))


# --- leeway -------------------------------------------------------------------------------------


def test_get_timesheets_accepts_token_expired_within_leeway(client, make_token):
    token = make_token(lifetime=-10)
    assert client.get("/timesheets", headers=bearer(token)).status_code == 200


def test_get_timesheets_rejects_token_expired_beyond_leeway(client, make_token):
    token = make_token(lifetime=-60)
    assert_invalid_token(client.get("/timesheets", headers=bearer(token)), "token expired")


def test_get_timesheets_rejects_a_remembered_token_once_it_has_expired(client, make_token):
    token = make_token(lifetime=120)
    assert client.get("/timesheets", headers=bearer(token)).status_code == 200  # now remembered
    verifier = client.app.state.verifier
    verifier._clock = lambda: time.time() + 120 + 31  # past exp and the leeway

    assert_invalid_token(client.get("/timesheets", headers=bearer(token)), "token expired")


# --- scopes and identity -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope_claims",
    [
        {"scope": "openid read:timesheets"},
        {"scope": ["read:timesheets"]},
        {"scp": ["read:timesheets"]},
        {"scp": "read:timesheets"},
        {"permissions": ["read:timesheets"]},
    ],
    ids=["scope-string", "scope-array", "scp-array", "scp-string", "permissions-array"],
)
def test_get_timesheets_accepts_scope_from_any_scope_claim(client, forge, scope_claims):
    claims = forge.claims(**{"scope": DROP, **scope_claims})
    response = client.get("/timesheets", headers=bearer(forge.token(claims=claims)))
    assert response.status_code == 200, response.text


def test_get_timesheets_forbids_token_without_read_scope(client, forge):
    claims = forge.claims(scope="create:timesheets", scp=["openid"], permissions=["batch:upload"])
    response = client.get("/timesheets", headers=bearer(forge.token(claims=claims)))
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == (
        challenge('error="insufficient_scope"', 'scope="read:timesheets"')
    )
    assert response.json()["error"] == "insufficient_scope"
    assert response.json()["message"] == "Forbidden"


def test_create_timesheet_records_email_claim_as_user_id(client, make_token):
    token = make_token("ann@example.com", subject="auth0|ann-subject")
    response = client.post("/timesheets", json=ENTRY, headers=bearer(token))
    assert response.status_code == 201, response.text
    assert response.json()["user_id"] == "ann@example.com"


def test_create_timesheet_records_sub_as_user_id_without_email_claim(client, make_token):
    token = make_token(None, subject="auth0|42")
    response = client.post("/timesheets", json=ENTRY, headers=bearer(token))
    assert response.status_code == 201, response.text
    assert response.json()["user_id"] == "auth0|42"


def test_get_timesheets_rejects_allowed_algorithm_that_key_is_not_published_for(settings, forge):
    # PS256 is allowed, but the issuer publishes key-0 for RS256 only (RFC 8725 section 3.1).
    both = settings.model_copy(update={"algorithms": ("RS256", "PS256")})
    with TestClient(create_app(both)) as client:
        assert client.get("/timesheets", headers=bearer(forge.token())).status_code == 200
        response = client.get("/timesheets", headers=bearer(forge.token(forge.header(alg="PS256"))))
    assert_invalid_token(response, "algorithm not allowed")
