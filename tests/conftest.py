"""Factory fixtures: a database of each backend, settings, a started app. No test imports
this module; helpers live in ``tests/support.py``."""

from __future__ import annotations

import uuid
import warnings
from dataclasses import replace

import pytest
from sqlalchemy import create_engine
from sqlalchemy.schema import DropSchema

from agentos_sessions.app import create_app
from agentos_sessions.settings import Settings
from storage import Database, DatabaseSettings, SessionTable
from tests.support import KEY, AgnoData, postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_database_settings(backend, tmp_path):
    """DatabaseSettings for an isolated, empty database of the current backend.

    SQLite gets a fresh file per database; PostgreSQL a fresh schema, dropped afterwards.
    """
    schemas: list[str] = []
    url = postgres_url() if backend == "postgres" else None

    def make(db_id: str = "default", session_tables=("agno_sessions",), **overrides) -> DatabaseSettings:
        tables = tuple(t if isinstance(t, SessionTable) else SessionTable.named(t) for t in session_tables)
        if backend == "sqlite":
            return DatabaseSettings(id=db_id, url=f"sqlite:///{tmp_path / f'{db_id}.db'}", session_tables=tables, **overrides)
        schema = f"t_{uuid.uuid4().hex[:12]}"
        schemas.append(schema)
        return DatabaseSettings(id=db_id, url=url, session_tables=tables, schema=schema, **overrides)

    yield make
    if schemas:
        engine = create_engine(url)
        with engine.begin() as conn:
            for schema in schemas:
                conn.execute(DropSchema(schema, cascade=True, if_exists=True))
        engine.dispose()


@pytest.fixture
def make_database(make_database_settings):
    opened: list[Database] = []

    def make(*args, **kwargs) -> Database:
        database = Database(make_database_settings(*args, **kwargs), busy_timeout_ms=2000)
        opened.append(database)
        return database

    yield make
    for database in opened:
        database.dispose()


@pytest.fixture
def make_settings(make_database_settings):
    def make(databases: tuple[DatabaseSettings, ...] | None = None, **overrides) -> Settings:
        settings = Settings(databases=databases or (make_database_settings(),), security_key=KEY, busy_timeout_ms=2000)
        return replace(settings, **overrides)

    return make


@pytest.fixture
def make_client(make_settings):
    """A started app (lifespan run) behind Starlette's test client."""
    clients = []

    def make(settings: Settings | None = None, **overrides):
        app = create_app(settings or make_settings(**overrides))
        client = app.test_client(raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        client.storage = app.storage
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def agno_db(backend, tmp_path):
    """Opens Agno databases (the real ``agno`` package's) of the current backend, and the
    matching service settings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from agno.db.postgres import PostgresDb
        from agno.db.sqlite import SqliteDb
    made = []

    def make(db_id: str, session_table: str | None = None):
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / f'{db_id}.db'}"
            db = SqliteDb(db_file=str(tmp_path / f"{db_id}.db"), session_table=session_table, id=db_id)
            schema = None
        else:
            url = postgres_url()
            schema = f"agno_{uuid.uuid4().hex[:10]}"
            db = PostgresDb(db_url=url, db_schema=schema, session_table=session_table, id=db_id)
        made.append((db, schema))
        settings = DatabaseSettings(
            id=db_id, url=url, session_tables=(SessionTable.named(db.session_table_name),), schema=schema,
            create_tables=False,
        )  # fmt: skip
        return db, settings

    yield make
    for db, schema in made:
        if schema:
            with db.db_engine.begin() as conn:
                conn.execute(DropSchema(schema, cascade=True, if_exists=True))
        db.db_engine.dispose()


@pytest.fixture
def data(database):
    """Agno-shaped tables and rows in the test module's own ``database`` fixture."""
    agno = AgnoData(database, database.settings.default_session_table)
    agno.create_all()
    return agno

