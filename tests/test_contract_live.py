"""The running server, judged by schemathesis against the published openapi.yaml.

Every check, positive and negative data, with and without the token (through
schemathesis's auth config), a fixed seed, at least 500 generated cases, and real
session ids in the mix so the 204 path is exercised. Zero findings, on each backend.
"""

from __future__ import annotations

import pytest

from agentos_sessions.schemathesis_run import run_schemathesis
from storage import Database
from tests.support import KEY, AgnoData, LiveServer, database_toml

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("backend")]

MIN_CASES = 500
DISPOSABLE_SESSIONS = 200


def test_schemathesis_finds_nothing(make_database_settings, tmp_path):
    settings = make_database_settings()
    with LiveServer(tmp_path, database_toml(settings)) as server:
        ids = server.seed(DISPOSABLE_SESSIONS)
        result = run_schemathesis(
            server.url, KEY, tmp_path / "schemathesis", disposable_ids=ids, max_examples=600, seed=20261128
        )

    print(result.output)
    cases = result.report["test_cases"]
    assert result.returncode == 0, result.output
    assert result.report["failures"] == [] and cases["unique_failures"] == 0
    assert cases["generated"] >= MIN_CASES, cases
    assert result.report["phases"]["coverage"]["status"] == "success"
    assert result.report["phases"]["fuzzing"]["status"] == "success"

    database = Database(settings)
    try:
        left = AgnoData(database, settings.default_session_table).counts_many(ids)
        erased = [i for i in ids if left[i]["sessions"] == 0]
        # The 204 path really ran, and each erased session took its runs with it.
        assert erased, "no seeded session was deleted: the 204 path was never exercised"
        assert all(left[i]["runs"] == 0 for i in erased)
        assert all(left[i]["runs"] == 2 for i in ids if i not in erased)
    finally:
        database.dispose()
