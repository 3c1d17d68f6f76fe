"""Background work on a timer: it keeps going after a failure and runs once more when closed."""

import asyncio
import logging

from timesheets.periodic import Periodic


def test_periodic_work_survives_a_failure_and_runs_once_more_when_closed(caplog):
    runs: list[int] = []

    async def work() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise OSError("the stream is gone")

    async def scenario() -> int:
        periodic = Periodic(0.01, work, what="flushing")
        periodic.start()
        await asyncio.sleep(0.1)
        before_close = len(runs)
        await periodic.close()
        await asyncio.sleep(0.05)  # stopped: nothing runs any more
        assert len(runs) == before_close + 1
        return before_close

    with caplog.at_level(logging.WARNING, logger="timesheets"):
        assert asyncio.run(scenario()) >= 3  # the first failed, the later ones still ran
    assert [r.getMessage() for r in caplog.records] == [
        "flushing failed; the next round tries again"
    ]
