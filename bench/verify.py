"""After a measurement: exactly the acknowledged sessions and all their runs are gone."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import create_engine, text

GONE, KEPT, EITHER = "gone", "kept", "either"


@dataclass
class Expectation:
    filler_sessions: int
    filler_runs: int
    target_runs_each: int
    states: dict[str, str]  # target id -> GONE (acknowledged), KEPT (never sent), EITHER (in flight at stop)


def verify(url: str, expected: Expectation) -> list[str]:
    """Return the list of violations (empty when everything is exactly right)."""
    prefix = "ai." if url.startswith("postgresql") else ""
    sessions, runs = f"{prefix}agno_sessions", f"{prefix}agno_runs"
    problems: list[str] = []
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TEMP TABLE bench_targets (id TEXT PRIMARY KEY, state TEXT NOT NULL)"))
            rows = [{"id": i, "state": s} for i, s in expected.states.items()]
            for start in range(0, len(rows), 20_000):
                conn.execute(text("INSERT INTO bench_targets (id, state) VALUES (:id, :state)"), rows[start : start + 20_000])
            total_sessions = conn.execute(text(f"SELECT count(*) FROM {sessions}")).scalar_one()
            total_runs = conn.execute(text(f"SELECT count(*) FROM {runs}")).scalar_one()
            per_state = {
                state: (present, run_count)
                for state, present, run_count in conn.execute(
                    text(
                        f"SELECT t.state, count(s.session_id), "
                        f"coalesce(sum((SELECT count(*) FROM {runs} r WHERE r.session_id = t.id)), 0) "
                        f"FROM bench_targets t LEFT JOIN {sessions} s ON s.session_id = t.id GROUP BY t.state"
                    )
                )
            }
            wanted = {state: sum(1 for s in expected.states.values() if s == state) for state in (GONE, KEPT, EITHER)}
            gone_present, gone_runs = per_state.get(GONE, (0, 0))
            if gone_present or gone_runs:
                problems.append(f"{gone_present} acknowledged sessions and {gone_runs} of their runs are still there")
            kept_present, kept_runs = per_state.get(KEPT, (0, 0))
            if kept_present != wanted[KEPT] or kept_runs != wanted[KEPT] * expected.target_runs_each:
                problems.append(f"unsent targets: {kept_present}/{wanted[KEPT]} sessions, {kept_runs} runs")
            for sid, present, run_count in conn.execute(
                text(
                    f"SELECT t.id, s.session_id IS NOT NULL, (SELECT count(*) FROM {runs} r WHERE r.session_id = t.id) "
                    f"FROM bench_targets t LEFT JOIN {sessions} s ON s.session_id = t.id WHERE t.state = 'either'"
                )
            ):
                if run_count != (expected.target_runs_each if present else 0):
                    problems.append(f"in-flight session {sid} half-erased: present={present}, runs={run_count}")
            target_present = sum(p for p, _ in per_state.values())
            target_runs = sum(r for _, r in per_state.values())
            if total_sessions - target_present != expected.filler_sessions:
                problems.append(
                    f"other sessions: {total_sessions - target_present}, expected {expected.filler_sessions}"
                )
            if total_runs - target_runs != expected.filler_runs:
                problems.append(f"other runs: {total_runs - target_runs}, expected {expected.filler_runs}")
            orphans = conn.execute(
                text(
                    f"SELECT count(*) FROM {runs} r WHERE NOT EXISTS "
                    f"(SELECT 1 FROM {sessions} s WHERE s.session_id = r.session_id)"
                )
            ).scalar_one()
            if orphans:
                problems.append(f"{orphans} runs without a session")
            conn.execute(text("DROP TABLE bench_targets"))
    finally:
        engine.dispose()
    return problems
