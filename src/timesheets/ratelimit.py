"""A per-caller rate limit (requests per minute) that all worker processes share.

Each process counts its own requests and, every `sync_interval` seconds, adds them to the caller's
row for the current minute in the database, reading back the total of all processes. A caller is
refused once the last known total plus what this process has counted since reaches the limit, so
workers (and hosts) agree within one sync interval, and no request ever waits on the database for
it. If the database is unreachable, counts stay local until it returns.
"""

import math
import time
from collections.abc import Callable

from .db import Database
from .errors import ApiError
from .periodic import Periodic

_WINDOW = 60


class TooManyRequests(ApiError):
    status_code = 429
    error = "rate_limited"
    message = "Too many requests: slow down and retry later"

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RateLimiter:
    def __init__(
        self,
        db: Database,
        limit_per_minute: int,
        *,
        sync_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.limit = limit_per_minute
        self._clock = clock
        self._pending: dict[tuple[str, int], int] = {}  # counted here, not yet in the database
        self._known: dict[tuple[str, int], int] = {}  # all processes' total at the last sync
        self._syncing = Periodic(sync_interval, self.sync, what="storing rate-limit counts")

    def check(self, caller: str) -> None:
        """Counts one request of `caller`.

        Raises:
            TooManyRequests: the caller has used up this minute's allowance (with Retry-After).
        """
        now = self._clock()
        key = (caller, int(now // _WINDOW))
        if self._known.get(key, 0) + self._pending.get(key, 0) >= self.limit:
            raise TooManyRequests(max(1, math.ceil(_WINDOW - now % _WINDOW)))
        self._pending[key] = self._pending.get(key, 0) + 1

    def start(self) -> None:
        self._syncing.start()

    async def close(self) -> None:
        """Stops syncing in the background, after one last sync."""
        await self._syncing.close()

    async def sync(self) -> None:
        """Adds this process's counts to the shared ones and learns the totals."""
        pending, self._pending = self._pending, {}
        current = int(self._clock() // _WINDOW)
        if not pending:
            self._forget_before(current)
            return
        try:
            async with self._db.transaction() as tx:
                for (caller, window), hits in sorted(pending.items()):
                    row = await tx.fetch_one(
                        "INSERT INTO rate_limit_window (caller, window_start, hits) "
                        "VALUES (:caller, :window, :hits) ON CONFLICT (caller, window_start) "
                        "DO UPDATE SET hits = rate_limit_window.hits + excluded.hits "
                        "RETURNING hits",
                        {"caller": caller, "window": window, "hits": hits},
                    )
                    self._known[(caller, window)] = int(row[0]) if row else hits
                await tx.fetch_all(
                    "DELETE FROM rate_limit_window WHERE window_start < :old", {"old": current - 1}
                )
        except Exception:
            for key, hits in pending.items():  # keep them for the next round
                self._pending[key] = self._pending.get(key, 0) + hits
            raise
        self._forget_before(current)

    def _forget_before(self, window: int) -> None:
        for table in (self._known, self._pending):
            for key in [key for key in table if key[1] < window]:
                del table[key]
