"""Per-request CPU cost of our app without sockets, wrk or other processes.

    python -m bench.inprocess [N] [--profile]

Seeds N sessions in a scratch SQLite file, then sends N DELETEs straight into the ASGI
app, one at a time, and reports microseconds per request (and, with --profile, the
cProfile top list). Contention on a shared machine barely moves this number, which
makes it the one to watch while trimming per-request work.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

STATE: dict = {}


async def _lifespan(app):
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": STATE}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    message = await outbox.get()
    assert message["type"] == "lifespan.startup.complete", message

    async def shutdown():
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return shutdown


async def _delete(app, session_id: str, token: bytes) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "DELETE", "scheme": "http",
        "path": f"/sessions/{session_id}", "raw_path": f"/sessions/{session_id}".encode(), "root_path": "",
        "query_string": b"", "headers": [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer " + token)],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": dict(STATE),
    }  # fmt: skip
    status = 0

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def main(count: int, profile: bool, stub: bool = False) -> None:
    from agentos_sessions.app import create_app
    from agentos_sessions.settings import load_settings
    from bench import seeding

    work = Path(tempfile.mkdtemp(prefix="agentos-inprocess-"))
    url = f"sqlite:///{work / 'db.sqlite'}"
    seeding.reset(url)
    ids = seeding.new_ids(count + 200)
    seeding.insert(url, ids, seeding.Shape(3))
    os.environ.update({"AGENTOS_SESSIONS_DB_URL": url, "OS_SECURITY_KEY": "inprocess-key"})
    app = create_app(load_settings())
    shutdown = await _lifespan(app)
    if stub:
        # Only the HTTP stack: storage answers at once, as if the erase cost nothing.
        from storage.erase import ErasedRows

        async def instant(target, session_id, **_kw):
            return ErasedRows({"runs": 3, "sessions": 1})

        app.storage.erase = instant
    for sid in ids[:200]:  # warm caches (compiled SQL, validators)
        assert await _delete(app, sid, b"inprocess-key") == 204
    profiler = cProfile.Profile() if profile else None
    started, cpu = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    for sid in ids[200:]:
        assert await _delete(app, sid, b"inprocess-key") == 204
    if profiler:
        profiler.disable()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    await shutdown()
    print(f"{count} deletes{' (storage stubbed)' if stub else ''}: {wall / count * 1e6:.0f} us wall, "
          f"{cpu / count * 1e6:.0f} us CPU per request")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    asyncio.run(main(int(args[0]) if args else 2000, "--profile" in sys.argv, "--stub" in sys.argv))
