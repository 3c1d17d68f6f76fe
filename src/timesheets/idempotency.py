"""Idempotency keys (IETF httpapi draft "The Idempotency-Key HTTP Header Field"), kept in the
database so that they hold across server processes and hosts. Knows SQL; nothing of HTTP.

A first request with a key claims it: a row "in flight" is committed in a short transaction of its
own, so a duplicate that arrives meanwhile sees it. The answer is stored in the same transaction as
the work (see `complete`), so either both are committed or neither. A duplicate that finds the
answer replays it; one that finds the key in flight waits up to WAIT_SECONDS for the answer, then
gets 409. A claim whose process died mid-work is taken over after IN_FLIGHT_LEASE: the takeover
changes the row's `attempt`, so a first attempt that was only slow cannot commit its work after all
(`complete` finds no row of its attempt, and the work rolls back). Keys live 24 hours; expired ones
are ignored and deleted whenever a key is claimed.
"""

import asyncio
import datetime as dt
import secrets
import time
from dataclasses import dataclass

import orjson

from .db import Connection, Database
from .errors import IdempotencyKeyInUse, IdempotencyKeyReused

KEY_LIFETIME = dt.timedelta(hours=24)
IN_FLIGHT_LEASE = dt.timedelta(seconds=60)
WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to do the work of `key` for `caller`, as long as `attempt` still owns it."""

    caller: str
    key: str
    attempt: str


async def claim(db: Database, *, caller: str, key: str, fingerprint: str) -> Claim | StoredResponse:
    """Claims `key` for a first request, or answers the stored response of an earlier one.

    Raises:
        IdempotencyKeyReused: the key came with a request of another fingerprint.
        IdempotencyKeyInUse: the first request is still in flight after WAIT_SECONDS.
    """
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        found = await _try_claim(db, caller=caller, key=key, fingerprint=fingerprint)
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise IdempotencyKeyInUse()
        await asyncio.sleep(_POLL_SECONDS)


async def _try_claim(
    db: Database, *, caller: str, key: str, fingerprint: str
) -> Claim | StoredResponse | None:
    now = dt.datetime.now(dt.UTC)
    ids = {"caller": caller, "key": key}
    async with db.transaction() as tx:
        await tx.lock(f"idempotency:{caller}:{key}")
        row = await tx.fetch_one(
            "SELECT fingerprint, state, locked_until <= :now, response_status, response_headers, "
            "response_body FROM idempotency_key WHERE caller = :caller AND request_key = :key "
            "AND expires_at > :now",
            {**ids, "now": now},
        )
        if row is None:
            return await _insert(tx, caller=caller, key=key, fingerprint=fingerprint, now=now)
        if row[0] != fingerprint:
            raise IdempotencyKeyReused()
        if row[1] == "done":
            return StoredResponse(row[3], orjson.loads(row[4]), row[5].encode())
        if not row[2]:
            return None
        attempt = secrets.token_hex(16)
        await tx.fetch_all(
            "UPDATE idempotency_key SET attempt = :attempt, locked_until = :until "
            "WHERE caller = :caller AND request_key = :key",
            {**ids, "attempt": attempt, "until": now + IN_FLIGHT_LEASE},
        )
        return Claim(caller, key, attempt)


async def _insert(
    tx: Connection, *, caller: str, key: str, fingerprint: str, now: dt.datetime
) -> Claim:
    # Expired keys of everyone go here; this caller's expired row must go before the insert anyway.
    await tx.fetch_all("DELETE FROM idempotency_key WHERE expires_at <= :now", {"now": now})
    attempt = secrets.token_hex(16)
    await tx.fetch_all(
        "INSERT INTO idempotency_key (caller, request_key, fingerprint, attempt, state, "
        "created_at, locked_until, expires_at) VALUES (:caller, :key, :fingerprint, :attempt, "
        "'in_flight', :now, :until, :expires)",
        {
            "caller": caller,
            "key": key,
            "fingerprint": fingerprint,
            "attempt": attempt,
            "now": now,
            "until": now + IN_FLIGHT_LEASE,
            "expires": now + KEY_LIFETIME,
        },
    )
    return Claim(caller, key, attempt)


async def complete(tx: Connection, claim: Claim, response: StoredResponse) -> None:
    """Stores the answer to the claimed key, in the transaction of the work it answers.

    Raises:
        IdempotencyKeyInUse: the claim was taken over (its lease ran out); the work must roll back.
    """
    stored = await tx.fetch_one(
        "UPDATE idempotency_key SET state = 'done', response_status = :status, "
        "response_headers = :headers, response_body = :body "
        "WHERE caller = :caller AND request_key = :key AND attempt = :attempt RETURNING caller",
        {
            "status": response.status,
            "headers": orjson.dumps(response.headers).decode(),
            "body": response.body.decode(),
            "caller": claim.caller,
            "key": claim.key,
            "attempt": claim.attempt,
        },
    )
    if stored is None:
        raise IdempotencyKeyInUse()


async def complete_alone(db: Database, claim: Claim, response: StoredResponse) -> None:
    """Stores a refusal (4xx) as the final answer to the key, when no work was committed."""
    async with db.transaction() as tx:
        await complete(tx, claim, response)


async def release(db: Database, claim: Claim) -> None:
    """Forgets the claim after an unexpected failure, so that a retry may do the work."""
    async with db.transaction() as tx:
        await tx.fetch_all(
            "DELETE FROM idempotency_key WHERE caller = :caller AND request_key = :key "
            "AND attempt = :attempt",
            {"caller": claim.caller, "key": claim.key, "attempt": claim.attempt},
        )
