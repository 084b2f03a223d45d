"""GET /health: could every configured database take an erase now, within a bounded time?

Each database is pinged on a daemon thread of its own, one at a time: a hung one costs
one stuck thread, never the thread pool, and never keeps the process up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Iterable

from storage import CannotWrite, Database

logger = logging.getLogger("agentos_sessions.health")

OK = "ok"
FAILED = "failed"
TIMED_OUT = "timed out"


class HealthCheck:
    def __init__(self, databases: Iterable[Database], timeout_seconds: float):
        self.databases = list(databases)
        self.timeout = timeout_seconds
        self._lock = threading.Lock()
        self._in_flight: dict[str, concurrent.futures.Future] = {}

    def _ping(self, database: Database) -> concurrent.futures.Future:
        with self._lock:
            future = self._in_flight.get(database.id)
            if future is not None and not future.done():
                # Still waiting on the last probe: share it instead of stacking another.
                return future
            future = concurrent.futures.Future()

            def run() -> None:
                try:
                    database.ping()
                except BaseException as exc:  # noqa: BLE001 - reported as a failed database
                    future.set_exception(exc)
                else:
                    future.set_result(None)

            threading.Thread(target=run, name=f"health-{database.id}", daemon=True).start()
            self._in_flight[database.id] = future
            return future

    async def check(self) -> dict[str, str]:
        """Each database id with ``ok``, ``failed``, ``timed out`` or why it cannot take a
        write (``read-only``, ``disk full``, ``locked``)."""
        waiting = {database.id: asyncio.wrap_future(self._ping(database)) for database in self.databases}
        done, _pending = await asyncio.wait(waiting.values(), timeout=self.timeout)
        results = {}
        for db_id, future in waiting.items():
            if future not in done:
                # Retrieve the eventual outcome so asyncio never warns it went unobserved.
                future.add_done_callback(lambda f: f.cancelled() or f.exception())
                results[db_id] = TIMED_OUT
            elif isinstance(future.exception(), CannotWrite):
                logger.warning("database %r cannot take a write: %s", db_id, future.exception())
                results[db_id] = str(future.exception())
            elif future.exception() is not None:
                # The type only: driver messages can carry host names and user names.
                logger.warning("database %r failed its health check: %s", db_id, type(future.exception()).__name__)
                results[db_id] = FAILED
            else:
                results[db_id] = OK
        return results


def _failure(db_id: str, state: str, timeout_seconds: float) -> str:
    if state == TIMED_OUT:
        return f"database '{db_id}' did not answer within {timeout_seconds * 1000:.0f} ms"
    if state == FAILED:
        return f"database '{db_id}' is unavailable"
    return f"database '{db_id}' cannot take a write ({state})"


def unhealthy_detail(results: dict[str, str], timeout_seconds: float) -> str | None:
    failing = [_failure(db_id, state, timeout_seconds) for db_id, state in results.items() if state != OK]
    if not failing:
        return None
    text = "; ".join(failing)
    return text[0].upper() + text[1:]
