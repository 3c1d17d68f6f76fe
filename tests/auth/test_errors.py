"""The RFC 6750 challenges that the auth errors render, and the fixed error_description vocabulary."""

import re

import pytest

from timesheets.auth import InsufficientScope, InvalidToken, KeySourceUnavailable, MissingToken
from timesheets.auth.errors import DESCRIPTIONS

# RFC 6750 section 3: error_description may hold %x20-21 / %x23-5B / %x5D-7E only.
_DESCRIPTION_CHARACTERS = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]+")


def test_missing_token_challenges_without_error():
    error = MissingToken()
    assert error.status_code == 401
    assert error.www_authenticate() == 'Bearer realm="timesheets"'
    assert error.headers() == {"WWW-Authenticate": 'Bearer realm="timesheets"'}


def test_invalid_token_challenges_with_error_and_description():
    error = InvalidToken("token expired")
    assert error.status_code == 401
    assert error.www_authenticate() == (
        'Bearer realm="timesheets", error="invalid_token", error_description="token expired"'
    )
    assert error.code == "invalid_token"
    assert error.message == "Missing or invalid token"


def test_insufficient_scope_challenges_with_required_scope():
    error = InsufficientScope("read:timesheets")
    assert error.status_code == 403
    assert error.www_authenticate() == (
        'Bearer realm="timesheets", error="insufficient_scope", scope="read:timesheets"'
    )
    assert error.code == "insufficient_scope"
    assert error.message == "Forbidden"


def test_challenge_names_configured_realm():
    error = InvalidToken("issuer mismatch", realm="payroll")
    assert error.www_authenticate() == (
        'Bearer realm="payroll", error="invalid_token", error_description="issuer mismatch"'
    )


def test_key_source_unavailable_asks_to_retry_with_503():
    error = KeySourceUnavailable()
    assert error.status_code == 503
    assert error.headers()["Retry-After"].isdigit()
    assert int(error.headers()["Retry-After"]) > 0


@pytest.mark.parametrize(
    "description",
    [
        "Signature verification failed",  # PyJWT's own text
        "token expired ",
        "Token expired",
        'token "expired"',
        "",
    ],
)
def test_invalid_token_raises_value_error_for_description_outside_vocabulary(description):
    with pytest.raises(ValueError):
        InvalidToken(description)


def test_invalid_token_accepts_every_description_of_vocabulary():
    for description in DESCRIPTIONS:
        assert InvalidToken(description).description == description


@pytest.mark.parametrize("description", sorted(DESCRIPTIONS))
def test_vocabulary_description_fits_rfc6750_characters(description):
    assert _DESCRIPTION_CHARACTERS.fullmatch(description)
