"""Who is calling, and what they may do, as read from verified claims."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    email: str | None
    scopes: frozenset[str]
    client_id: str | None
    claims: Mapping[str, Any]

    @property
    def user_id(self) -> str:
        """The caller's user id: the email claim when present, else `sub`."""
        return self.email or self.subject

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], *, email_claim: str) -> "Principal":
        email = claims.get(email_claim)
        client_id = claims.get("azp") or claims.get("client_id")
        return cls(
            subject=str(claims["sub"]),
            email=email if isinstance(email, str) and email else None,
            scopes=scopes_from_claims(claims),
            client_id=client_id if isinstance(client_id, str) else None,
            claims=claims,
        )


def scopes_from_claims(claims: Mapping[str, Any]) -> frozenset[str]:
    """The union of `scope` and `scp` (space-delimited strings or arrays) and Auth0's `permissions`."""
    scopes: set[str] = set()
    for name in ("scope", "scp", "permissions"):
        value = claims.get(name)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(item for item in value if isinstance(item, str))
    return frozenset(scopes)
