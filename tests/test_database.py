"""The database layer's own promises, beyond what the API tests see."""

import asyncio

import asyncpg

from timesheets import db


def test_postgres_connections_go_to_waiting_requests_first_come_first_served(postgres_database):
    async def scenario() -> list[str]:
        database = await db.connect(postgres_database)
        served: list[str] = []
        try:
            held = [await database._acquire() for _ in range(db.POOL_SIZE)]

            async def ask(name: str) -> None:
                connection = await database._acquire()
                served.append(name)
                await database._release(connection)

            waiting = []
            for name in ("first", "second", "third"):
                waiting.append(asyncio.ensure_future(ask(name)))
                await asyncio.sleep(0.01)  # queued in this order
            for connection in held[:-1]:
                # A newcomer that asks while a connection is being given back must not take it
                # from those already waiting (asyncpg's own pool lets it).
                waiting.append(asyncio.ensure_future(database._release(connection)))
                await asyncio.sleep(0)
                waiting.append(asyncio.ensure_future(ask("newcomer")))
            await asyncio.wait_for(asyncio.gather(*waiting), 5)
            await database._release(held[-1])
        finally:
            await database.close()
        return served

    served = asyncio.run(scenario())

    assert served[:3] == ["first", "second", "third"]
    assert len(served) == 3 + db.POOL_SIZE - 1


def test_the_daily_cap_reads_one_day_through_the_date_index_on_postgres(postgres_database):
    from timesheets.service.writes import DAY_ENTRIES

    async def plan() -> str:
        connection = await asyncpg.connect(postgres_database)
        try:
            query, _ = db._positional(DAY_ENTRIES)
            await connection.execute("SET plan_cache_mode = force_generic_plan")
            await connection.execute(f"PREPARE day_entries AS {query}")
            rows = await connection.fetch(
                "EXPLAIN EXECUTE day_entries('ann@example.com', '2017-07-10')"
            )
            return "\n".join(row[0] for row in rows)
        finally:
            await connection.close()

    assert "ix_entry_user_date" in asyncio.run(plan())
