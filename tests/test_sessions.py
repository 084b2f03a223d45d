"""The delete handler's own decisions: how an id is decoded, and what each outcome answers."""

from __future__ import annotations

import asyncio

import pytest

from handlers.errors import ApiError
from handlers.sessions import RequestRecord, current_record, decoded, erase_and_answer
from storage import ErasedRows, UnknownDatabase


@pytest.mark.parametrize("raw, text", [
    ("plain", "plain"), ("a%2Fb", "a/b"), ("line%0Abreak", "line\nbreak"), ("100%25", "100%"), ("%", "%"),
    ("%zz", "%zz"), ("caf%C3%A9", "café"), ("a+b", "a+b"), ("%2E%2E", ".."),
])  # fmt: skip
def test_ids_are_percent_decoded_once_as_utf8(raw, text):
    assert decoded(raw) == text


@pytest.mark.parametrize("raw", ["%FF%FE", "%C0%AF", "%ED%A0%80", "caf%C3"])
def test_bytes_that_are_not_utf8_are_refused(raw):
    with pytest.raises(ApiError) as refused:
        decoded(raw)
    assert refused.value.status == 422


class Target:
    database = type("Database", (), {"id": "default"})()
    session_table = type("Table", (), {"name": "agno_sessions"})()


class FakeStorage:
    def __init__(self, answer):
        self.answer, self.asked = answer, []

    def locate(self, db_id, table):
        if db_id == "elsewhere":
            raise UnknownDatabase("No database found with id 'elsewhere'")
        return Target()

    async def erase(self, target, session_id, *, audit=None):
        self.asked.append((session_id, audit))
        return self.answer


def answer(storage, *args):
    record = RequestRecord(request_id="req-1", caller="c")
    token = current_record.set(record)
    try:
        return asyncio.run(erase_and_answer(storage, *args)), record
    except ApiError as error:
        return error, record
    finally:
        current_record.reset(token)


def test_an_erase_is_a_bare_204_and_the_record_says_what_went():
    storage = FakeStorage(ErasedRows({"runs": 2, "sessions": 1}))
    response, record = answer(storage, "s-1")
    assert (response.status_code, response.body, response.headers.get("content-type")) == (204, b"", None)
    assert (record.operation, record.session_id, record.db_id, record.table) == ("delete_session", "s-1", "default", "agno_sessions")
    assert record.erased.counts == {"runs": 2, "sessions": 1} and storage.asked[0][1].request_id == "req-1"


def test_no_such_session_is_404_and_an_unknown_database_its_own_404():
    missing, record = answer(FakeStorage(None), "s-1")
    assert (missing.status, missing.detail, record.storage_answered) == (404, "Session not found", True)
    unknown, record = answer(FakeStorage(None), "s-1", "elsewhere")
    assert (unknown.status, unknown.detail, record.storage_answered) == (404, "No database found with id 'elsewhere'", False)
