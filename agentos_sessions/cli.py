"""The ``agentos-sessions`` command: serve the contract, seed demo sessions, judge a server,
or find (and sweep) what erases left behind; check, scan and orphans exit 0 when clean, 1
with findings, 2 when they could not run."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import shutil
import sys

from agentos_sessions.settings import (
    ENV_CONFIG,
    ENV_SECURITY_KEY,
    SettingsError,
    env_name,
    load_settings,
    open_storage,
)

ENV_HOST, ENV_PORT, ENV_WORKERS = env_name("host"), env_name("port"), env_name("workers")

FACTORY = "agentos_sessions.app:create_app_from_environment"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentos-sessions",
        description="Host Agno AgentOS's DELETE /sessions/{session_id} contract and erase sessions for real.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help=f"TOML settings file (env {ENV_CONFIG}; default ./agentos-sessions.toml if present)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve the API with uvicorn",
        description="Serve DELETE /sessions/{session_id} with uvicorn. Without OS_SECURITY_KEY a key is "
        "generated, printed once with a curl line, and shared by every worker.",
    )
    serve.add_argument("--host", help=f"interface to bind (env {ENV_HOST}; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port to listen on (env {ENV_PORT}; default 7777)")
    serve.add_argument("--workers", type=int, help=f"uvicorn worker processes (env {ENV_WORKERS}; default 1)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--no-access-log", action="store_true", help="turn off uvicorn's per-request access log")

    seed = commands.add_parser(
        "seed",
        help="create demo sessions with runs and print their ids",
        description="Create demo sessions (with runs) in Agno's layout through the service's own storage "
        "code, then print one session id per line, ready to delete.",
    )
    seed.add_argument("--count", type=int, default=3, help="sessions to create (default 3)")
    seed.add_argument("--runs", type=int, default=3, help="runs per session (default 3)")
    seed.add_argument("--db-id", help="database id (default: the first configured database)")
    seed.add_argument("--table", help="sessions table (default: the database's first sessions table)")

    check = commands.add_parser(
        "check",
        help="judge a running server against the contract and print a report",
        description="Run the project's contract suite (schemathesis, every check, schemathesis.toml) against "
        "any server claiming this spec, plus delete → 204 → 404 on disposable ids, and compare the target's own "
        "OpenAPI document with the contract. Exit 0 clean, 1 findings (or drift with --strict-drift), 2 could "
        "not check.",
    )
    check.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:7777")
    check.add_argument("--token", help=f"its bearer key (default: env {ENV_SECURITY_KEY})")
    check.add_argument("--spec", help="the contract to judge by (default: this project's openapi.yaml)")
    check.add_argument("--ids-file", help="disposable session ids, one per line ('-' for stdin); they will be "
                       "deleted. Without them the erase is not exercised, and the verdict says so")
    check.add_argument("--max-examples", type=int, default=100, help="schemathesis cases per phase (default 100)")
    check.add_argument("--seed", type=int, default=1, help="schemathesis seed, for a reproducible run (default 1)")
    check.add_argument("--target-spec", metavar="URL|FILE",
                       help="the target's own OpenAPI document, for the drift section (default: URL/openapi.json)")
    check.add_argument("--strict-drift", action="store_true", help="drift from the contract counts as a finding")
    check.add_argument("--report", action="append", metavar="FORMAT=FILE",
                       help="also write the report as junit=FILE or json=FILE (repeatable)")
    check.add_argument("--report-dir", help="keep schemathesis's own reports (JSON run report, NDJSON events) here")

    # scan and orphans look at the same databases and print the same two ways.
    sweep_options = argparse.ArgumentParser(add_help=False)
    sweep_options.add_argument("--db-id", help="only this database (default: every configured one)")
    sweep_options.add_argument("--json", action="store_true", help="print one JSON array instead of lines")

    scan = commands.add_parser(
        "scan",
        parents=[sweep_options],
        help="report every row that still holds these session ids",
        description="Search every text column of every table of the configured databases for each id (as "
        "text and as JSON writes it, case-sensitively, inside longer text too) and print one line per "
        "table and column that holds it. Exit 0 nothing found, 1 found, 2 could not run.",
    )
    scan.add_argument("session_ids", nargs="+", metavar="SESSION_ID", help="ids to look for")

    orphans = commands.add_parser(
        "orphans",
        parents=[sweep_options],
        help="report, and with --erase sweep, rows whose session no longer exists",
        description="List the rows an erase takes (runs, transcripts, compactions, tool results and their "
        "payloads; traces and spans with erase_traces) whose session is gone, by session id. With --erase, "
        "erase them, one transaction and one audit line (and audit_table row) per id. Exit 0 none left, "
        "1 found (without --erase), 2 could not run.",
    )
    orphans.add_argument("--erase", action="store_true", help="erase the orphans found")
    return parser


def raise_open_file_limit() -> None:
    """Idle or slow clients soon reach a soft limit of 1,024 descriptors before the request
    timeout closes them: serve takes the hard limit, as Go's runtime does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from agentos_sessions.app import announce_generated_key
    from agentos_sessions.http import H11_MAX_INCOMPLETE_EVENT_SIZE, BoundedH11Protocol
    from agentos_sessions.observability import logging_config, prepare_multiprocess_dir

    # Workers are separate processes that rebuild settings from the environment, so
    # every choice made here travels through it.
    overrides = {ENV_HOST: args.host, ENV_PORT: args.port, ENV_WORKERS: args.workers, ENV_CONFIG: args.config}
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value)
    settings = announce_generated_key(load_settings())
    os.environ[ENV_SECURITY_KEY] = settings.security_key
    # Create missing tables once, before workers start and race each other to it; each
    # worker checks the files' modes as it starts, so there is one warning with one worker.
    storage = open_storage(settings)
    storage.start(check_files=False)
    storage.close()
    # Process-wide settings belong here, where the process is owned (README, "serve").
    raise_open_file_limit()
    metrics_dir = None
    if settings.workers > 1:
        # Each worker counts in files here, so /metrics from any worker reports all of them.
        metrics_dir = prepare_multiprocess_dir()
    uvicorn.run(
        FACTORY, factory=True, host=settings.host, port=settings.port, workers=settings.workers,
        log_level=args.log_level, log_config=logging_config(args.log_level), access_log=not args.no_access_log,
        # Bounded request heads, and JSON refusals; a partial of a module-level class, so
        # spawned workers get it too.
        http=functools.partial(BoundedH11Protocol, request_timeout_s=settings.request_timeout_ms / 1000),
        h11_max_incomplete_event_size=H11_MAX_INCOMPLETE_EVENT_SIZE,
    )  # fmt: skip
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _seed(args: argparse.Namespace) -> int:
    from storage.seed import seed_sessions

    storage = open_storage(load_settings(config_file=args.config))
    try:
        target = storage.locate(args.db_id, args.table)
        ids = seed_sessions(target.database, target.session_table, count=args.count, runs_per_session=args.runs)
    finally:
        storage.close()
    print("\n".join(ids))
    return 0


def _quoted(session_id: str) -> str:
    # Ids may hold anything, newlines included: one finding stays on one line.
    return json.dumps(session_id, ensure_ascii=False)


def _kinds(rows: dict[str, int]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in rows.items())


def _databases(storage, db_id: str | None) -> list:
    return [storage.locate(db_id, None).database] if db_id else list(storage.databases.values())


def _scan(args: argparse.Namespace, settings) -> int:
    from storage.residue import scan

    storage = open_storage(settings)
    try:
        found = [residue for database in _databases(storage, args.db_id) for residue in scan(database, args.session_ids, audit_table=settings.audit_table)]
    finally:
        storage.close()
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in found], ensure_ascii=False))
    else:
        for r in found:
            print(f"{r.db_id}: {r.table}.{r.column}: {r.rows} row(s) hold {_quoted(r.session_id)}")
        held = len({r.session_id for r in found})
        print(f"scan: {held} of {len(set(args.session_ids))} id(s) found in {len(found)} column(s)" if found
              else "scan: no row holds these ids")  # fmt: skip
    return 1 if found else 0


def _orphans(args: argparse.Namespace, settings) -> int:
    from agentos_sessions.observability import audit_lines_to, audit_sweep, sweep_audit_entry
    from storage.residue import find_orphans, sweep_orphans

    if args.erase:
        audit_lines_to(sys.stderr)  # stdout is the report
    storage = open_storage(settings)
    audit = sweep_audit_entry()
    report = []
    try:
        for database in _databases(storage, args.db_id):
            found = find_orphans(database, erase_traces=settings.erase_traces)
            swept = {}
            if args.erase:
                swept = sweep_orphans(database, [o.session_id for o in found], erase_traces=settings.erase_traces,
                                      audit_table=settings.audit_table, audit=audit)  # fmt: skip
                for session_id, rows in swept.items():
                    audit_sweep(audit, database.id, database.settings.default_session_table.name, session_id, rows)
            report += [{"db_id": o.db_id, "session_id": o.session_id, "rows": o.rows,
                        "swept": swept[o.session_id].counts if o.session_id in swept else None} for o in found]  # fmt: skip
    finally:
        storage.close()
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        for o in report:
            done = f"swept {_kinds(o['swept'])}" if o["swept"] else _kinds(o["rows"])
            print(f"{o['db_id']}: {_quoted(o['session_id'])} has no session: {done}")
        if args.erase:  # an id whose session came back keeps its rows
            counted = [o["swept"] for o in report if o["swept"]]
        else:
            counted = [o["rows"] for o in report]
        rows = sum(sum(c.values()) for c in counted)
        verb = "swept" if args.erase else "found"
        print(f"orphans: {verb} {rows} row(s) under {len(counted)} id(s) with no session" if report
              else "orphans: none")  # fmt: skip
    return 1 if report and not args.erase else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            from agentos_sessions.check import main as check_main

            return check_main(args)
        if args.command == "serve":
            return _serve(args)
        if args.command in ("scan", "orphans"):
            return _residue(args)
        return _seed(args)
    except SettingsError as exc:
        print(f"agentos-sessions: configuration error: {exc}", file=sys.stderr)
        return 2


def _residue(args: argparse.Namespace) -> int:
    """scan and orphans: a database that cannot be read, or an unknown --db-id, is exit 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from storage import TargetError

    settings = load_settings(config_file=args.config)
    try:
        return (_scan if args.command == "scan" else _orphans)(args, settings)
    except TargetError as exc:
        print(f"agentos-sessions: {exc}", file=sys.stderr)
    except SQLAlchemyError as exc:
        # The driver's own message: what failed, never the URL's password.
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"agentos-sessions: the database could not be read: {reason}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
