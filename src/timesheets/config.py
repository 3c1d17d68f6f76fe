"""Typed settings from TIMESHEETS_* variables, a .env file and the seed's AUTH0_* names.

Nothing is read at import: `load_settings()` reads the environment when the command line asks for it,
and refuses bad configuration with a sentence that names the variable.
"""

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .auth import AuthConfig, IssuerConfig
from .auth.config import ASYMMETRIC_ALGORITHMS, CachePolicy
from .auth.urls import is_loopback

CommaList = Annotated[tuple[str, ...], NoDecode]
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}|\{[A-Za-z_][\w.]*\}")


class ConfigError(Exception):
    """Configuration that the service refuses to start with; the message names the variable."""


class DatabaseSettings(BaseSettings):
    """What `timesheets db upgrade` needs, and no more."""

    model_config = SettingsConfigDict(
        env_prefix="TIMESHEETS_", env_file=".env", extra="ignore", populate_by_name=True
    )

    database_url: str = "sqlite:///timesheets.db"


class Settings(DatabaseSettings):
    auth0_domain: str | None = Field(None, validation_alias=AliasChoices("AUTH0_DOMAIN"))
    issuer: CommaList = ()
    audience: CommaList = Field(
        (), validation_alias=AliasChoices("TIMESHEETS_AUDIENCE", "AUTH0_AUDIENCE", "audience")
    )
    jwks_uri: str | None = None
    algorithms: CommaList = ("RS256",)
    email_claim: str = "https://api.exampleco.com/email"
    cors_origins: CommaList = ("*",)
    leeway_seconds: int = Field(30, ge=0, le=300)
    max_token_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    jwks_ttl_seconds: float = Field(600.0, ge=1.0)
    jwks_min_ttl_seconds: float = Field(60.0, ge=1.0)
    jwks_max_ttl_seconds: float = Field(86_400.0, ge=1.0)
    jwks_max_stale: float = Field(86_400.0, ge=0)
    jwks_refreshes_per_minute: int = Field(5, ge=1, le=600)
    jwks_cooldown_seconds: float = Field(5.0, ge=0, le=600)
    jwks_timeout_seconds: float = Field(3.0, gt=0, le=60)
    require_at_jwt: bool = False
    max_page_size: int = Field(1000, ge=1, le=10000)
    metrics_enabled: bool = True  # GET /metrics on the API's own port
    metrics_port: int | None = Field(None, ge=1, le=65535)  # and/or on a port of its own
    rate_limit_per_minute: int = Field(6000, ge=0)  # per caller, all workers together; 0: off
    rate_limit_sync_seconds: float = Field(1.0, gt=0, le=60)  # how often workers share counts
    # read by the HTTP protocol of every worker (server.py) from the environment; checked here
    header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    shutdown_timeout_seconds: int = Field(10, ge=1, le=300)  # for requests in flight at SIGTERM
    dev_issuer_key_file: str | None = None

    @field_validator("issuer", "audience", "algorithms", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if not self.issuer and self.auth0_domain:
            _refuse_placeholder("AUTH0_DOMAIN", self.auth0_domain)
            domain = self.auth0_domain.strip().strip("/")
            if "/" in domain:  # e.g. 'https://example.eu.auth0.com': the issuer would never match
                raise ValueError(
                    f"AUTH0_DOMAIN must be a bare host name such as example.eu.auth0.com, "
                    f"not {self.auth0_domain!r}"
                )
            self.issuer = (f"https://{domain}/",)
        _require("TIMESHEETS_ISSUER (or AUTH0_DOMAIN)", self.issuer, "the token issuer's URL")
        _require("TIMESHEETS_AUDIENCE (or AUTH0_AUDIENCE)", self.audience, "your API identifier")
        for issuer in self.issuer:
            _check_url("TIMESHEETS_ISSUER", issuer)
        for audience in self.audience:
            _refuse_placeholder("TIMESHEETS_AUDIENCE (or AUTH0_AUDIENCE)", audience)
        if self.jwks_uri is not None:
            _check_url("TIMESHEETS_JWKS_URI", self.jwks_uri)
            if len(self.issuer) > 1:
                raise ValueError(
                    "TIMESHEETS_JWKS_URI names one key set, but TIMESHEETS_ISSUER lists several "
                    "issuers: leave it unset so that each issuer's keys are discovered"
                )
        if not self.jwks_min_ttl_seconds <= self.jwks_ttl_seconds <= self.jwks_max_ttl_seconds:
            raise ValueError(
                "TIMESHEETS_JWKS_TTL_SECONDS must lie between TIMESHEETS_JWKS_MIN_TTL_SECONDS and "
                "TIMESHEETS_JWKS_MAX_TTL_SECONDS"
            )
        _check_algorithms(self.algorithms)
        return self

    def auth_config(self) -> AuthConfig:
        issuers = tuple(IssuerConfig(issuer, self.jwks_uri) for issuer in self.issuer)
        return AuthConfig(
            issuers=issuers,
            audiences=self.audience,
            algorithms=self.algorithms,
            email_claim=self.email_claim,
            leeway_seconds=self.leeway_seconds,
            max_token_bytes=self.max_token_bytes,
            require_at_jwt=self.require_at_jwt,
            keys=CachePolicy(
                default_ttl=self.jwks_ttl_seconds,
                min_ttl=self.jwks_min_ttl_seconds,
                max_ttl=self.jwks_max_ttl_seconds,
                max_stale=self.jwks_max_stale,
                refreshes_per_minute=self.jwks_refreshes_per_minute,
                cooldown=self.jwks_cooldown_seconds,
                timeout=self.jwks_timeout_seconds,
            ),
        )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and .env, or ConfigError with one sentence per problem."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def load_database_settings() -> DatabaseSettings:
    try:
        return DatabaseSettings()
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    sentences = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            variable = "TIMESHEETS_" + str(error["loc"][0]).upper()
            message = f"{variable} is invalid: {message}"
        sentences.append(message if message.endswith(".") else message + ".")
    return " ".join(sentences)


def _require(variable: str, value: tuple[str, ...], what: str) -> None:
    if not value:
        raise ValueError(f"{variable} is not set: set it to {what}")


def _refuse_placeholder(variable: str, value: str) -> None:
    # The seed's sample shipped 'https://${account.namespace}/' in single quotes: never expanded.
    if _PLACEHOLDER.search(value):
        raise ValueError(
            f"{variable} holds an unexpanded placeholder ({value!r}): put the real value"
        )


def _check_url(variable: str, url: str) -> None:
    _refuse_placeholder(variable, url)
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{variable} must be an https:// URL, not {url!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(
            f"{variable} uses http:// for {parts.hostname}, which is not a loopback host: use https://"
        )


def _check_algorithms(algorithms: tuple[str, ...]) -> None:
    if not algorithms:
        raise ValueError("TIMESHEETS_ALGORITHMS is empty: allow at least RS256")
    for alg in algorithms:
        if alg.upper().startswith("HS") or alg.lower() == "none":
            raise ValueError(
                f"TIMESHEETS_ALGORITHMS lists {alg}, which is not an asymmetric algorithm: "
                "a resource server must verify with the issuer's public keys only"
            )
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise ValueError(f"TIMESHEETS_ALGORITHMS lists {alg}, an unknown algorithm")
