"""Load helpers for the proof-under-fire suites: many concurrent DELETEs, and an agent-like
writer that keeps changing other sessions meanwhile."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select, update

from tests.support import AUTH, AgnoData


@dataclass
class LoadResult:
    statuses: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    requests: int = 0
    seconds: float = 0.0

    def tally(self) -> Counter:
        return Counter(s for answers in self.statuses.values() for s in answers)


async def _drive(base_urls: list[str], session_ids: list[str], concurrency: int, timeout: float) -> LoadResult:
    result = LoadResult()
    queue: asyncio.Queue = asyncio.Queue()
    for session_id in session_ids:
        queue.put_nowait(session_id)
    # Idle connections are dropped well before uvicorn's 5 s keep-alive timeout: at the
    # same 5 s both ends race to close, and a request sent on a connection the server is
    # closing fails without ever reaching it (seen once in 6,000 requests).
    # One client, and so one connection, per worker: a pool shared by 32 workers spent
    # more CPU managing itself (several ms per request) than the server spent answering.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=2)
    urls = itertools.cycle(base_urls)
    clients = [httpx.AsyncClient(base_url=next(urls), headers=AUTH, timeout=timeout, limits=limits) for _ in range(concurrency)]

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            session_id = queue.get_nowait()
            try:
                response = await client.delete(f"/sessions/{session_id}")
                answer = response.status_code
            except httpx.TimeoutException:
                answer = "timeout"
            except httpx.HTTPError as exc:
                answer = f"error:{type(exc).__name__}"
            result.statuses[session_id].append(answer)
            result.requests += 1

    started = time.monotonic()
    try:
        await asyncio.gather(*(worker(client) for client in clients))
    finally:
        for client in clients:
            await client.aclose()
    result.seconds = time.monotonic() - started
    return result


def delete_concurrently(base_urls: list[str], session_ids: list[str], *, concurrency: int = 32,
                        timeout: float = 30) -> LoadResult:  # fmt: skip
    return asyncio.run(_drive(base_urls, session_ids, concurrency, timeout))


class AgentWriter(threading.Thread):
    """Inserts new sessions with runs and updates its own sessions, as a live agent would."""

    def __init__(self, data: AgnoData, prefix: str, updatable: list[str]):
        super().__init__(daemon=True)
        self.data, self.prefix, self.updatable = data, prefix, updatable
        self.stop_event = threading.Event()
        self.inserted: list[str] = []
        self.updates = 0
        self.errors: list[str] = []

    def run(self) -> None:
        sessions, runs = self.data.sessions, self.data.runs
        for n in itertools.count():
            if self.stop_event.is_set():
                return
            try:
                session_id = self.data.add_session(f"{self.prefix}-{n}", runs=2, everything=False)
                self.inserted.append(session_id)
                target = self.updatable[n % len(self.updatable)]
                with self.data.database.engine.begin() as conn:
                    conn.execute(update(sessions).where(sessions.c.session_id == target)
                                 .values(session_data={"turn": n}, updated_at=n))  # fmt: skip
                    conn.execute(update(runs).where(runs.c.session_id == target).values(status=f"turn-{n}"))
                self.updates += 1
            except Exception as exc:  # counted, and the test asserts there are none
                self.errors.append(repr(exc))
            time.sleep(0.002)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def snapshot(data: AgnoData, session_ids: list[str]) -> dict:
    """Every column of every session and run row of these sessions, for a byte-exact compare."""
    with data.database.engine.connect() as conn:
        sessions = conn.execute(
            select(data.sessions).where(data.sessions.c.session_id.in_(session_ids)).order_by(data.sessions.c.session_id)
        ).all()
        runs = conn.execute(
            select(data.runs).where(data.runs.c.session_id.in_(session_ids)).order_by(data.runs.c.run_id)
        ).all()
    return {"sessions": [tuple(r) for r in sessions], "runs": [tuple(r) for r in runs]}
