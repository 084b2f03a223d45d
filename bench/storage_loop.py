"""The storage ceiling: the service's erase transactions in a tight loop, no HTTP, no ORM.

Same statements the service issues for a database holding Agno's sessions and runs
tables, the same connection pragmas (WAL, foreign_keys, busy_timeout,
synchronous=FULL) or PostgreSQL defaults, one transaction per session, committed
durably before the next one starts. Run as a process:

    python -m bench.storage_loop URL DURATION THREADS IDS_FILE...

and it prints one JSON line: per thread how many ids it erased (in file order) and
the latency of every transaction.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time

from storage.database import sqlite_pragmas


def _sqlite_worker(path: str, ids: list[str], deadline: float, out: dict) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0, check_same_thread=False)
    for pragma in sqlite_pragmas(busy_timeout_ms=5000):  # the service's own, default timeout
        conn.execute(pragma)
    latencies, done, missing = [], 0, 0
    start = time.perf_counter()
    for sid in ids:
        t0 = time.perf_counter()
        if t0 >= deadline:
            break
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM agno_runs WHERE agno_runs.session_id = ?", (sid,))
        if conn.execute("DELETE FROM agno_sessions WHERE agno_sessions.session_id = ?", (sid,)).rowcount:
            conn.execute("COMMIT")
        else:
            conn.execute("ROLLBACK")
            missing += 1
        latencies.append(time.perf_counter() - t0)
        done += 1
    out.update(done=done, missing=missing, start=start, end=time.perf_counter(), latencies=latencies)
    conn.close()


def _postgres_worker(dsn: str, ids: list[str], deadline: float, out: dict) -> None:
    import psycopg

    conn = psycopg.connect(dsn)
    latencies, done, missing = [], 0, 0
    start = time.perf_counter()
    with conn.cursor() as cur:
        for sid in ids:
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            cur.execute("DELETE FROM ai.agno_runs WHERE ai.agno_runs.session_id = %s", (sid,))
            cur.execute("DELETE FROM ai.agno_sessions WHERE ai.agno_sessions.session_id = %s", (sid,))
            if cur.rowcount:
                conn.commit()
            else:
                conn.rollback()
                missing += 1
            latencies.append(time.perf_counter() - t0)
            done += 1
    out.update(done=done, missing=missing, start=start, end=time.perf_counter(), latencies=latencies)
    conn.close()


def main(argv: list[str]) -> None:
    url, duration, files = argv[0], float(argv[1]), argv[2:]
    lists = [open(f).read().split() for f in files]
    deadline = time.perf_counter() + duration
    results = [dict() for _ in lists]
    if url.startswith("sqlite"):
        target, where = _sqlite_worker, url.removeprefix("sqlite:///")
    else:
        target, where = _postgres_worker, url.replace("postgresql+psycopg://", "postgresql://", 1)
    threads = [threading.Thread(target=target, args=(where, ids, deadline, out)) for ids, out in zip(lists, results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"files": files, "results": results}))


if __name__ == "__main__":
    main(sys.argv[1:])
