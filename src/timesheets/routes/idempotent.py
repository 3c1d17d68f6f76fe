"""The HTTP side of idempotency keys: fingerprints, stored answers and their replay."""

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .. import idempotency
from ..api import idempotency_key
from ..auth import Principal
from ..db import Connection
from ..errors import ApiError, IdempotencyKeyInUse
from ..http import JSONResponse
from ..service import BeforeCommit, EntryDocument

Run = Callable[[BeforeCommit | None], Awaitable[list[EntryDocument]]]
Respond = Callable[[list[EntryDocument]], Response]
_KEPT_HEADERS = ("content-type", "location", "etag")


def fingerprint(request: Request, payload: Any) -> str:
    """The request as far as a key is concerned: method, path and the body's content (JSON or form
    fields, keys sorted), so that the same data in another layout is the same request."""
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    head = f"{request.method} {request.url.path}\n".encode()
    return hashlib.sha256(head + canonical).hexdigest()


async def respond_once(
    request: Request, principal: Principal, payload: Any, run: Run, respond: Respond
) -> Response:
    """`respond(await run(...))`, or with an Idempotency-Key, the first answer to that key.

    The answer is stored in the transaction of the work (`run` passes the hook on to the
    service); a refusal (4xx) is stored as the final answer too; after a failure of our own
    (5xx, or anything unexpected) the key is forgotten, so that a retry may do the work. A
    cancelled request keeps its claim: a retry replays the answer if the work was committed,
    and otherwise waits, then gets 409, until the lease ends.
    """
    key = idempotency_key(request)
    if key is None:
        return respond(await run(None))
    db = request.app.state.db
    claim = await idempotency.claim(
        db, caller=principal.user_id, key=key, fingerprint=fingerprint(request, payload)
    )
    if isinstance(claim, idempotency.StoredResponse):
        return _replay(claim)
    answers: list[Response] = []

    async def store(tx: Connection, documents: list[EntryDocument]) -> None:
        answers.append(respond(documents))
        await idempotency.complete(tx, claim, _stored(answers[-1]))

    try:
        await run(store)
    except IdempotencyKeyInUse:
        raise
    except ApiError as exc:
        if exc.status_code >= 500:
            await idempotency.release(db, claim)
            raise
        refusal = JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())
        await idempotency.complete_alone(db, claim, _stored(refusal))
        return refusal
    except Exception:
        # Not on cancellation (a shutdown's deadline): that claim is kept until its lease ends.
        # The work may be committed all the same (SQLite commits a group after its members have
        # written; PostgreSQL may have a COMMIT on the wire), and a forgotten key beside
        # committed work would let a retry do it twice.
        await idempotency.release(db, claim)
        raise
    return answers[-1]


def _stored(response: Response) -> idempotency.StoredResponse:
    headers = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
    return idempotency.StoredResponse(response.status_code, headers, bytes(response.body))


def _replay(stored: idempotency.StoredResponse) -> Response:
    return Response(
        stored.body, stored.status, headers={**stored.headers, "Idempotent-Replayed": "true"}
    )
