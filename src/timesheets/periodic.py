"""Background work on a timer: every `interval` seconds, and once more when it stops."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger("timesheets")


class Periodic:
    """Runs `work` every `interval` seconds until closed, then once more (so that what it hands
    on, counts or log lines, is not left behind). A failure is logged; the next round retries."""

    def __init__(self, interval: float, work: Callable[[], Awaitable[None]], *, what: str) -> None:
        self._interval = interval
        self._work = work
        self._what = what
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._keep_going())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._run()

    async def _keep_going(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._run()

    async def _run(self) -> None:
        try:
            await self._work()
        except Exception:
            logger.warning("%s failed; the next round tries again", self._what, exc_info=True)
