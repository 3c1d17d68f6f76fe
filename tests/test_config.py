"""Settings: TIMESHEETS_* variables, a .env file in the working directory, the seed's AUTH0_* names,
and the refusals that keep a misconfigured service from starting (each a sentence naming the variable).

The autouse `clean_environ` fixture clears TIMESHEETS_*/AUTH0_* and runs each test in its own
empty working directory, so a `.env` written here is the only one that can be read.
"""

from pathlib import Path

import pytest

from timesheets.config import ConfigError, load_settings

ISSUER = "https://example.eu.auth0.com/"
AUDIENCE = "https://api.exampleco.com/timesheets"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    """Sets environment variables for one test (undone by monkeypatch afterwards)."""

    def set_env(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_env


@pytest.fixture
def valid_env(env) -> None:
    env(TIMESHEETS_ISSUER=ISSUER, TIMESHEETS_AUDIENCE=AUDIENCE)


def refusal(**variables: str) -> str:
    """The message load_settings() refuses with, once `variables` are set."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in variables.items():
            patch.setenv(name, value)
        with pytest.raises(ConfigError) as caught:
            load_settings()
    return str(caught.value)


def assert_sentence(message: str, variable: str) -> None:
    assert variable in message, message
    assert message.endswith("."), message
    assert "\n" not in message, message
    assert "Traceback" not in message
    assert "errors.pydantic.dev" not in message  # pydantic's own boilerplate never leaks


# --- where the values come from -----------------------------------------------------------------


def test_load_settings_reads_timesheets_variables(env):
    env(
        TIMESHEETS_ISSUER=ISSUER,
        TIMESHEETS_AUDIENCE=AUDIENCE,
        TIMESHEETS_JWKS_URI="https://keys.example.com/jwks.json",
        TIMESHEETS_ALGORITHMS="RS256",
        TIMESHEETS_EMAIL_CLAIM="email",
        TIMESHEETS_DATABASE_URL="postgresql://db.example.com/timesheets",
        TIMESHEETS_CORS_ORIGINS="https://app.example.com",
        TIMESHEETS_LEEWAY_SECONDS="5",
    )

    settings = load_settings()

    assert settings.issuer == (ISSUER,)
    assert settings.audience == (AUDIENCE,)
    assert settings.jwks_uri == "https://keys.example.com/jwks.json"
    assert settings.algorithms == ("RS256",)
    assert settings.email_claim == "email"
    assert settings.database_url == "postgresql://db.example.com/timesheets"
    assert settings.cors_origins == ("https://app.example.com",)
    assert settings.leeway_seconds == 5
    auth = settings.auth_config()
    assert [(i.issuer, i.jwks_uri) for i in auth.issuers] == [
        (ISSUER, "https://keys.example.com/jwks.json")
    ]
    assert auth.audiences == (AUDIENCE,)
    assert auth.email_claim == "email"
    assert auth.leeway_seconds == 5


def test_load_settings_without_optional_variables_uses_documented_defaults(valid_env):
    settings = load_settings()

    assert settings.algorithms == ("RS256",)
    assert settings.email_claim == "https://api.exampleco.com/email"
    assert settings.database_url == "sqlite:///timesheets.db"
    assert settings.cors_origins == ("*",)
    assert settings.jwks_uri is None


def test_load_settings_without_jwks_uri_leaves_it_to_discovery(valid_env):
    auth = load_settings().auth_config()

    # Found at run time: OpenID discovery, RFC 8414 metadata, else {issuer}.well-known/jwks.json
    assert auth.issuers[0].jwks_uri is None


def test_load_settings_reads_dotenv_in_working_directory(tmp_path: Path):
    (tmp_path / ".env").write_text(
        f"TIMESHEETS_ISSUER={ISSUER}\n"
        f"TIMESHEETS_AUDIENCE={AUDIENCE}\n"
        "TIMESHEETS_DATABASE_URL=sqlite:///from-dotenv.db\n"
    )

    settings = load_settings()

    assert settings.issuer == (ISSUER,)
    assert settings.audience == (AUDIENCE,)
    assert settings.database_url == "sqlite:///from-dotenv.db"


def test_load_settings_with_variable_and_dotenv_prefers_the_variable(tmp_path: Path, env):
    (tmp_path / ".env").write_text(
        f"TIMESHEETS_ISSUER={ISSUER}\nTIMESHEETS_AUDIENCE=https://from-dotenv.example.com\n"
    )
    env(TIMESHEETS_AUDIENCE=AUDIENCE)

    settings = load_settings()

    assert settings.issuer == (ISSUER,)
    assert settings.audience == (AUDIENCE,)


def test_load_settings_reads_seed_auth0_names(env):
    env(AUTH0_DOMAIN="example.eu.auth0.com", AUTH0_AUDIENCE=AUDIENCE)

    settings = load_settings()

    assert settings.issuer == ("https://example.eu.auth0.com/",)
    assert settings.audience == (AUDIENCE,)
    assert settings.auth_config().issuers[0].issuer == "https://example.eu.auth0.com/"
    assert settings.auth_config().issuers[0].jwks_uri is None


def test_load_settings_reads_seed_auth0_names_from_dotenv(tmp_path: Path):
    (tmp_path / ".env").write_text(
        f"AUTH0_DOMAIN=example.eu.auth0.com\nAUTH0_AUDIENCE={AUDIENCE}\n"
    )

    settings = load_settings()

    assert settings.issuer == ("https://example.eu.auth0.com/",)
    assert settings.audience == (AUDIENCE,)


def test_load_settings_with_both_names_prefers_timesheets_variables(env):
    env(
        AUTH0_DOMAIN="seed.auth0.com",
        AUTH0_AUDIENCE="https://seed.example.com",
        TIMESHEETS_ISSUER=ISSUER,
        TIMESHEETS_AUDIENCE=AUDIENCE,
    )

    settings = load_settings()

    assert settings.issuer == (ISSUER,)
    assert settings.audience == (AUDIENCE,)


def test_load_settings_with_auth0_domain_trailing_slash_builds_one_slash_issuer(env):
    env(AUTH0_DOMAIN="example.eu.auth0.com/", AUTH0_AUDIENCE=AUDIENCE)

    assert load_settings().issuer == ("https://example.eu.auth0.com/",)


# --- comma lists --------------------------------------------------------------------------------


def test_load_settings_splits_comma_lists_and_drops_blanks(env):
    env(
        TIMESHEETS_ISSUER=f"{ISSUER}, https://other.example.com/ ,",
        TIMESHEETS_AUDIENCE=f"{AUDIENCE},https://api.exampleco.com/legacy",
        TIMESHEETS_ALGORITHMS="RS256, ES256,PS256",
        TIMESHEETS_CORS_ORIGINS="https://app.example.com, http://localhost:3000",
    )

    settings = load_settings()

    assert settings.issuer == (ISSUER, "https://other.example.com/")
    assert settings.audience == (AUDIENCE, "https://api.exampleco.com/legacy")
    assert settings.algorithms == ("RS256", "ES256", "PS256")
    assert settings.cors_origins == ("https://app.example.com", "http://localhost:3000")
    auth = settings.auth_config()
    assert [i.issuer for i in auth.issuers] == [ISSUER, "https://other.example.com/"]
    assert [i.jwks_uri for i in auth.issuers] == [None, None]  # each issuer's own, discovered
    assert auth.audiences == (AUDIENCE, "https://api.exampleco.com/legacy")
    assert auth.algorithms == ("RS256", "ES256", "PS256")


def test_load_settings_with_star_cors_origins_allows_any_origin(valid_env, env):
    env(TIMESHEETS_CORS_ORIGINS="*")

    assert load_settings().cors_origins == ("*",)


# --- refusals -----------------------------------------------------------------------------------


def test_load_settings_without_audience_refuses_naming_the_variable(env):
    env(TIMESHEETS_ISSUER=ISSUER)

    message = refusal()

    assert_sentence(message, "TIMESHEETS_AUDIENCE")
    assert "AUTH0_AUDIENCE" in message


def test_load_settings_without_issuer_refuses_naming_the_variable(env):
    env(TIMESHEETS_AUDIENCE=AUDIENCE)

    message = refusal()

    assert_sentence(message, "TIMESHEETS_ISSUER")
    assert "AUTH0_DOMAIN" in message


def test_load_settings_with_nothing_set_refuses():
    message = refusal()

    assert_sentence(message, "TIMESHEETS_ISSUER")


@pytest.mark.parametrize("domain", ["${account.namespace}", "{AUTH0_DOMAIN}", "{yourDomain}"])
def test_load_settings_with_placeholder_auth0_domain_refuses(env, domain):
    env(AUTH0_AUDIENCE=AUDIENCE)

    message = refusal(AUTH0_DOMAIN=domain)

    assert_sentence(message, "AUTH0_DOMAIN")
    assert "placeholder" in message


@pytest.mark.parametrize(
    "domain",
    ["https://example.eu.auth0.com", "https://example.eu.auth0.com/", "example.com/tenant"],
)
def test_load_settings_with_auth0_domain_not_a_bare_host_refuses(env, domain):
    env(AUTH0_AUDIENCE=AUDIENCE)

    # 'https://https://example.eu.auth0.com/' would never match a token's iss: refuse instead.
    message = refusal(AUTH0_DOMAIN=domain)

    assert_sentence(message, "AUTH0_DOMAIN")


def test_load_settings_with_seed_sample_placeholder_issuer_refuses(env):
    env(TIMESHEETS_AUDIENCE=AUDIENCE)

    # The seed's sample shipped this in single quotes, so the shell never expanded it.
    message = refusal(TIMESHEETS_ISSUER="https://${account.namespace}/")

    assert_sentence(message, "TIMESHEETS_ISSUER")
    assert "placeholder" in message


def test_load_settings_with_placeholder_audience_refuses(env):
    env(TIMESHEETS_ISSUER=ISSUER)

    message = refusal(TIMESHEETS_AUDIENCE="${API_IDENTIFIER}")

    assert_sentence(message, "TIMESHEETS_AUDIENCE")
    assert "placeholder" in message


def test_load_settings_with_placeholder_auth0_audience_refuses_naming_it(env):
    env(AUTH0_DOMAIN="example.eu.auth0.com")

    message = refusal(AUTH0_AUDIENCE="${API_IDENTIFIER}")

    assert_sentence(message, "AUTH0_AUDIENCE")
    assert "placeholder" in message


@pytest.mark.parametrize(
    "url",
    [
        "http://example.eu.auth0.com/",
        "http://10.0.0.1/",
        "http://localhost.example.com/",
        "http://127.0.0.1.nip.io/",
    ],
)
def test_load_settings_with_http_issuer_not_loopback_refuses(env, url):
    env(TIMESHEETS_AUDIENCE=AUDIENCE)

    message = refusal(TIMESHEETS_ISSUER=url)

    assert_sentence(message, "TIMESHEETS_ISSUER")
    assert "https://" in message


@pytest.mark.parametrize(
    "url", ["http://keys.example.com/jwks.json", "http://192.168.1.10:8080/jwks.json"]
)
def test_load_settings_with_http_jwks_uri_not_loopback_refuses(valid_env, url):
    message = refusal(TIMESHEETS_JWKS_URI=url)

    assert_sentence(message, "TIMESHEETS_JWKS_URI")
    assert "https://" in message


@pytest.mark.parametrize("url", ["ftp://example.com/", "example.eu.auth0.com", "https:///"])
def test_load_settings_with_issuer_not_a_url_refuses(env, url):
    env(TIMESHEETS_AUDIENCE=AUDIENCE)

    assert_sentence(refusal(TIMESHEETS_ISSUER=url), "TIMESHEETS_ISSUER")


@pytest.mark.parametrize(
    "base",
    [
        "http://127.0.0.1:8080/dev/",
        "http://127.0.0.2/",
        "http://[::1]:8080/",
        "http://localhost:8080/",
    ],
)
def test_load_settings_with_http_loopback_issuer_and_jwks_uri_accepts(env, base):
    env(
        TIMESHEETS_ISSUER=base,
        TIMESHEETS_AUDIENCE=AUDIENCE,
        TIMESHEETS_JWKS_URI=base + ".well-known/jwks.json",
    )

    settings = load_settings()

    assert settings.issuer == (base,)
    assert settings.auth_config().issuers[0].jwks_uri == base + ".well-known/jwks.json"


@pytest.mark.parametrize("algorithm", ["HS256", "hs512", "none", "RS256,HS256"])
def test_load_settings_with_symmetric_or_none_algorithm_refuses(valid_env, algorithm):
    message = refusal(TIMESHEETS_ALGORITHMS=algorithm)

    assert_sentence(message, "TIMESHEETS_ALGORITHMS")
    assert "asymmetric" in message


@pytest.mark.parametrize("algorithm", ["RS1024", "rs256", "RSA-OAEP"])
def test_load_settings_with_unknown_algorithm_refuses(valid_env, algorithm):
    message = refusal(TIMESHEETS_ALGORITHMS=algorithm)

    assert_sentence(message, "TIMESHEETS_ALGORITHMS")
    assert algorithm in message


def test_load_settings_with_empty_algorithms_refuses(valid_env):
    assert_sentence(refusal(TIMESHEETS_ALGORITHMS=" , "), "TIMESHEETS_ALGORITHMS")


@pytest.mark.parametrize("leeway", ["thirty", "1.5", ""])
def test_load_settings_with_non_integer_leeway_refuses(valid_env, leeway):
    assert_sentence(refusal(TIMESHEETS_LEEWAY_SECONDS=leeway), "TIMESHEETS_LEEWAY_SECONDS")


def test_load_settings_with_negative_leeway_refuses(valid_env):
    assert_sentence(refusal(TIMESHEETS_LEEWAY_SECONDS="-1"), "TIMESHEETS_LEEWAY_SECONDS")


def test_load_settings_with_bad_dotenv_value_refuses_naming_the_variable(tmp_path: Path):
    (tmp_path / ".env").write_text(
        f"TIMESHEETS_ISSUER={ISSUER}\nTIMESHEETS_AUDIENCE={AUDIENCE}\nTIMESHEETS_ALGORITHMS=HS256\n"
    )

    assert_sentence(refusal(), "TIMESHEETS_ALGORITHMS")


def test_the_served_app_keeps_what_it_built_at_start_out_of_the_garbage_collectors_walks(valid_env):
    import gc

    from timesheets.app import create_app_from_env

    gc.unfreeze()
    try:
        create_app_from_env()
        frozen = gc.get_freeze_count()
    finally:
        gc.unfreeze()

    assert frozen > 10_000  # the modules, routes and validators, walked by no collection
