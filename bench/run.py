"""Drive the whole benchmark: seed, serve, load with wrk, verify, compare with both ceilings.

    python -m bench --quick            # iteration profile, a few minutes
    python -m bench                    # full profile (growth to 1M sessions, 10,000-run sessions)

Every number for "ours" is printed next to two ceilings measured in the same run on the
same machine with the same load generator: a bare Starlette app answering 204 (ASGI
ceiling) and the same erase transactions in a tight driver loop (storage ceiling).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil

from bench import seeding
from bench.verify import EITHER, GONE, KEPT, Expectation, verify

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "delete.lua"
CONNECTIONS = 32
DEFAULT_PG_URL = "postgresql+psycopg://app:app@127.0.0.1:5432/bench"


@dataclass
class Profile:
    name: str
    duration: float  # seconds of load per measurement (an upper bound; small tables end earlier)
    target_cap: int  # sessions erased at most per measurement
    sizes: tuple[int, ...]  # table sizes for the growth table
    pg_sizes: tuple[int, ...]
    run_counts: dict[int, int]  # runs per session -> sessions erased for the run-count growth
    pairs: int  # rounds of ours and the storage ceiling back to back at the main point
    main_size: int = 100_000


PROFILES = {
    "quick": Profile("quick", duration=6, target_cap=40_000, sizes=(10_000, 100_000), pg_sizes=(100_000,),
                     run_counts={1: 40_000, 100: 1_500, 10_000: 32}, pairs=2),
    "full": Profile("full", duration=15, target_cap=60_000, sizes=(10_000, 100_000, 1_000_000),
                    pg_sizes=(10_000, 100_000), run_counts={1: 60_000, 100: 3_000, 10_000: 32}, pairs=3),
}


@dataclass
class Result:
    kind: str  # ours | baseline (ours from another checkout) | asgi | storage
    backend: str
    workers: int
    table_sessions: int  # sessions in the table when the load started
    runs_per_session: int
    nominal_sessions: int = 0  # the table size this measurement stands for
    round: int = 1  # > 1: an extra pair at the main point (report.paired_rounds)
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    ok: int = 0
    errors: int = 0
    cpu_ms_per_request: float | None = None
    peak_rss_mb: float | None = None
    verified: str = "n/a"
    detail: dict = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def settle(url: str) -> None:
    """Finish what seeding set off before anything is measured.

    Seeding the 1M table leaves gigabytes of dirty pages; the kernel writing them back
    during the next measurement slowed every fsync in it (959 erases/s for ours, then
    1,231 and 1,535/s on the same table once settled). On PostgreSQL, the rows inserted
    (and those removed after the last measurement) would have autovacuum working
    through the tables during the next one; it is done here instead."""
    seeding.vacuum(url)
    os.sync()


def _peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def _with_commands(processes: list[psutil.Process]) -> list[tuple[psutil.Process, str]]:
    """Each process still alive, with its command line."""
    found = []
    for process in processes:
        try:
            found.append((process, " ".join(process.cmdline())))
        except psutil.NoSuchProcess:
            pass
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_id_files(directory: Path, ids: list[str], parts: int) -> list[list[str]]:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    slices = [ids[i::parts] for i in range(parts)]
    for index, part in enumerate(slices):
        (directory / f"ids-{index}.txt").write_text("\n".join(part) + "\n")
    return slices


def run_wrk(port: int, ids_dir: Path, token: str, duration: float, timeout: float) -> dict:
    command = [
        "wrk", f"-t{CONNECTIONS}", f"-c{CONNECTIONS}", f"-d{max(1, round(duration))}s", f"--timeout={timeout:g}s",
        "-s", str(LUA), f"http://127.0.0.1:{port}", "--", str(ids_dir), token,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=duration + timeout + 60)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise RuntimeError(f"wrk printed no result:\n{proc.stdout}\n{proc.stderr}")


class Server:
    """A server process tree on a loopback port: ours or the bare ASGI app."""

    def __init__(self, command: list[str], env: dict[str, str], port: int, workers: int, cwd: Path):
        self.port, self.workers = port, workers
        self.proc = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=open(cwd / "server.log", "ab"),
            start_new_session=True,
        )
        self.root = psutil.Process(self.proc.pid)

    def wait_ready(self, deadline_s: float = 60) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see server.log")
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{self.port}/sessions/warmup-probe", method="DELETE")
                urllib.request.urlopen(request, timeout=2)
            except urllib.error.HTTPError:
                if len(self.worker_processes()) >= self.workers:
                    time.sleep(0.5)  # let the last worker finish its startup
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            else:
                if len(self.worker_processes()) >= self.workers:
                    time.sleep(0.5)
                    return
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def worker_processes(self) -> list[psutil.Process]:
        if self.workers == 1:
            return [self.root]
        return [child for child, command in _with_commands(self.root.children()) if "resource_tracker" not in command]

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def event_loop_cpu_seconds(self) -> float:
        """CPU of the workers' main threads (the event loop); the rest is the writer threads'."""
        total = 0.0
        for process in self.worker_processes():
            try:
                with open(f"/proc/{process.pid}/task/{process.pid}/stat") as stat:
                    fields = stat.read().rpartition(")")[2].split()
            except FileNotFoundError:
                continue
            # utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def peak_rss_mb(self) -> float:
        """The largest worker's peak, with the peaks of any processes it started added:
        a worker is charged for all of them (an upper bound, as peaks may not coincide)."""
        peaks = []
        for worker in self.worker_processes():
            peaks.append(sum(_peak_rss_mb(process.pid) for process in [worker, *worker.children(recursive=True)]))
        return max(peaks) if peaks else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Bench:
    def __init__(self, profile: Profile, work: Path, pg_url: str, server_env: dict[str, str]):
        self.profile, self.work, self.pg_url = profile, work, pg_url
        self.server_env = server_env
        self.results: list[Result] = []
        self.token = secrets.token_urlsafe(24)
        self.filler: dict[str, int] = {}  # url -> filler sessions (3 runs each)
        self.spy_dir: Path | None = None

    # ---- data -------------------------------------------------------------------------
    def url_for(self, backend: str, size: int) -> str:
        if backend == "sqlite":
            return f"sqlite:///{self.work / f'sqlite-{size}.db'}"
        return self.pg_url

    def targets_for(self, size: int) -> int:
        return min(self.profile.target_cap, size // 2)

    def prepare(self, backend: str, size: int) -> str:
        url = self.url_for(backend, size)
        filler = size - self.targets_for(size)
        if self.filler.get(url) == filler:
            return url
        log(f"seeding {backend}: {filler:,} sessions x 3 runs (bulk)")
        seeding.reset(url)
        took = seeding.insert(url, seeding.new_ids(filler), seeding.Shape(3), bulk=True)
        settle(url)
        log(f"seeded in {took:.1f}s")
        self.filler[url] = filler
        return url

    def add_targets(self, url: str, count: int, runs: int) -> list[str]:
        ids = seeding.new_ids(count)
        took = seeding.insert(url, ids, seeding.Shape(runs))
        settle(url)
        log(f"inserted {count:,} target sessions x {runs} runs in {took:.1f}s")
        return ids

    def check(self, url: str, runs: int, states: dict[str, str]) -> str:
        filler = self.filler[url]
        problems = verify(url, Expectation(filler, filler * 3, runs, states))
        seeding.remove(url, states.keys())
        if problems:
            log("VERIFICATION FAILED: " + "; ".join(problems[:5]))
            return "FAILED: " + "; ".join(problems[:3])
        return "ok"

    # ---- measurements -------------------------------------------------------------------
    def _load(self, server: Server, ids: list[str], tag: str, timeout: float, warm: list[str]):
        """Warm up (its own ids), then the measured load; both runs' outputs come back for verification."""
        runs = []
        if warm:
            warm_dir = self.work / f"ids-{tag}-warm"
            warm_slices = write_id_files(warm_dir, warm, CONNECTIONS)
            runs.append((run_wrk(server.port, warm_dir, self.token, 3, timeout), warm_slices))
        ids_dir = self.work / f"ids-{tag}"
        slices = write_id_files(ids_dir, ids, CONNECTIONS)
        cpu_before, loop_before = server.cpu_seconds(), server.event_loop_cpu_seconds()
        spies = self._spy(server, tag)
        out = run_wrk(server.port, ids_dir, self.token, self.profile.duration, timeout)
        cpu = server.cpu_seconds() - cpu_before
        self.event_loop_share = (server.event_loop_cpu_seconds() - loop_before) / cpu if cpu else None
        for spy in spies:
            spy.wait(timeout=60)
        runs.append((out, slices))
        return out, runs, cpu, server.peak_rss_mb()

    def _spy(self, server: Server, tag: str) -> list[subprocess.Popen]:
        """py-spy on every worker for the measured load, as collapsed stacks (see bench/README.md)."""
        if not self.spy_dir or tag == "asgi":
            return []
        self.spy_dir.mkdir(parents=True, exist_ok=True)
        seconds = max(1, int(self.profile.duration) - 1)
        return [
            subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(p.pid), "--duration", str(seconds), "--rate", "250",
                              "--nonblocking", "--threads", "--format", "raw",
                              "--output", str(self.spy_dir / f"{tag}-{p.pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for p in server.worker_processes()
        ]

    def _fill(self, result: Result, out: dict, cpu: float | None, rss: float | None) -> None:
        answered = out["ok"] + out["bad"]
        span = out["span_us"] / 1e6 or 1e-9
        result.rps = answered / span
        result.p50_ms, result.p99_ms, result.p999_ms = (out[k] / 1000 for k in ("p50_us", "p99_us", "p999_us"))
        result.ok = out["ok"]
        result.errors = out["bad"] + sum(out["errors"].values()) - out["errors"]["status"]
        result.cpu_ms_per_request = cpu / answered * 1000 if cpu is not None and answered else None
        result.peak_rss_mb = rss
        result.detail = {"wrk_errors": out["errors"], "bad_statuses": [t["bad"] for t in out["threads"] if t["bad"]]}

    def ours(self, backend: str, size: int, workers: int, runs: int = 3, count: int | None = None,
             round_: int = 1, baseline: str | None = None) -> Result:
        """Our server under load; with ``baseline``, the server of that checkout instead."""
        url = self.prepare(backend, size if runs == 3 else self.profile.main_size)
        count = count or self.targets_for(size)
        warm = self.add_targets(url, CONNECTIONS * 10, runs) if runs == 3 else []
        ids = self.add_targets(url, count, runs)
        table_sessions = self.filler[url] + count + len(warm)
        kind = "baseline" if baseline else "ours"
        log(f"{kind}: {backend} {workers}w table={table_sessions:,} runs={runs}")
        env = {**self.server_env, "AGENTOS_SESSIONS_DB_URL": url, "OS_SECURITY_KEY": self.token}
        if baseline:
            env["PYTHONPATH"] = baseline
        port = free_port()
        command = [sys.executable, "-m", "agentos_sessions.cli", "serve", "--workers", str(workers),
                   "--no-access-log", "--port", str(port), "--log-level", "warning"]
        server = Server(command, env, port, workers, self.work)
        timeout = 120 if runs >= 1000 else 10
        try:
            server.wait_ready()
            out, loads, cpu, rss = self._load(server, ids, kind, timeout, warm)
        finally:
            server.stop()
        result = Result(kind, backend, workers, table_sessions, runs, size if runs == 3 else self.profile.main_size,
                        round=round_)
        self._fill(result, out, cpu, rss)
        result.detail["event_loop_cpu_share"] = self.event_loop_share
        states: dict[str, str] = {}
        for load, slices in loads:
            if load["errors"]["timeout"] + load["bad"]:
                result.detail.setdefault("warm_or_main_trouble", []).append(load["errors"])
            for thread in load["threads"]:
                part = slices[thread["index"]]
                # A non-204 or a timeout means "not acknowledged": the erase may or may not have happened.
                answered_state = GONE if not thread["bad"] else EITHER
                for position, sid in enumerate(part):
                    states[sid] = (answered_state if position < thread["answered"]
                                   else EITHER if position < thread["sent"] else KEPT)
        result.verified = self.check(url, runs, states)
        return self._record(result)

    def asgi(self, workers: int, backend: str) -> Result:
        log(f"asgi ceiling: {workers}w")
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--workers", str(workers),
                   "--no-access-log", "--port", str(port), "--log-level", "warning"]
        server = Server(command, {**self.server_env, "PYTHONPATH": str(ROOT)}, port, workers, self.work)
        fake = [f"s{n:07d}" for n in range(int(self.profile.duration * 30_000))]
        try:
            server.wait_ready()
            out, _loads, cpu, rss = self._load(server, fake, "asgi", 10, fake[: CONNECTIONS * 50])
        finally:
            server.stop()
        result = Result("asgi", backend, workers, 0, 0)
        self._fill(result, out, cpu, rss)
        return self._record(result)

    def storage(self, backend: str, size: int, runs: int = 3, count: int | None = None,
                layout: tuple[int, int] = (1, 1), round_: int = 1) -> Result:
        url = self.prepare(backend, size if runs == 3 else self.profile.main_size)
        count = count or self.targets_for(size)
        ids = self.add_targets(url, count, runs)
        processes, threads = layout
        log(f"storage ceiling: {backend} table={self.filler[url] + count:,} runs={runs} layout={processes}x{threads}")
        ids_dir = self.work / "ids-storage"
        slices = write_id_files(ids_dir, ids, processes * threads)
        files = [str(ids_dir / f"ids-{i}.txt") for i in range(processes * threads)]
        procs = [
            subprocess.Popen([sys.executable, "-m", "bench.storage_loop", url, str(self.profile.duration),
                              *files[p * threads : (p + 1) * threads]],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            for p in range(processes)
        ]
        outputs = [json.loads(p.communicate(timeout=self.profile.duration + 600)[0]) for p in procs]
        per_thread = [r for o in outputs for r in o["results"]]
        done = sum(r["done"] for r in per_thread)
        span = max(r["end"] for r in per_thread) - min(r["start"] for r in per_thread)
        latencies = sorted(x for r in per_thread for x in r["latencies"])
        result = Result("storage", backend, processes * threads, self.filler[url] + count, runs,
                        size if runs == 3 else self.profile.main_size, round=round_)
        result.rps = done / span
        result.ok = done - sum(r["missing"] for r in per_thread)
        result.errors = sum(r["missing"] for r in per_thread)
        pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0
        result.p50_ms, result.p99_ms, result.p999_ms = pct(0.50), pct(0.99), pct(0.999)
        result.detail = {"layout": f"{processes} process x {threads} thread"}
        states: dict[str, str] = {}
        for part, r in zip(slices, per_thread):
            for position, sid in enumerate(part):
                states[sid] = GONE if position < r["done"] else KEPT
        result.verified = self.check(url, runs, states)
        return self._record(result)

    def best_storage(self, backend: str, size: int, runs: int = 3, count: int | None = None,
                     round_: int = 1) -> Result:
        # One writer is the fastest SQLite can commit; PostgreSQL commits concurrent
        # transactions together, so its ceiling is the better of 1 and 32 clients.
        layouts = [(1, 1)] if backend == "sqlite" else [(1, 1), (2, 16)]
        results = [self.storage(backend, size, runs, count, layout, round_) for layout in layouts]
        best = max(results, key=lambda r: r.rps)
        best.detail["best_of"] = [round(r.rps) for r in results]
        return best

    def _record(self, result: Result) -> Result:
        self.results.append(result)
        log(f"  -> {result.kind} {result.rps:,.0f}/s p50 {result.p50_ms:.2f} p99 {result.p99_ms:.2f} "
            f"p99.9 {result.p999_ms:.2f} ms errors {result.errors} verified {result.verified}"
            + (f" cpu {result.cpu_ms_per_request:.2f} ms/req rss {result.peak_rss_mb:.0f} MB"
               if result.cpu_ms_per_request is not None else "")
            + (f" (event loop {result.detail['event_loop_cpu_share']:.0%} of it)"
               if result.detail.get("event_loop_cpu_share") else ""))
        return result


ALL_BACKENDS, ALL_WORKERS = "sqlite,postgres", "1,2"


def results_dir(args: argparse.Namespace) -> Path:
    """bench/results/ holds the table bench/README.md quotes, so only a complete run
    writes there by default; a narrowed or changed run (quick, one backend, --only,
    --env...) goes beside the scratch databases. Back-to-back quick runs once replaced
    a full run's results with an old code's quick ones."""
    if args.out:
        return Path(args.out)
    complete = (not (args.quick or args.skip_growth or args.only or args.env or args.duration)
                and args.backends == ALL_BACKENDS and args.workers == ALL_WORKERS)
    return HERE / "results" if complete else Path(args.work) / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="iteration profile (minutes, not the 1M table)")
    parser.add_argument("--backends", default=ALL_BACKENDS)
    parser.add_argument("--workers", default=ALL_WORKERS)
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--work", default="/tmp/agentos-bench", help="scratch directory for databases (not the repo)")
    parser.add_argument("--out", help="where results.json, table.md and plot.png go (default: see results_dir)")
    parser.add_argument("--skip-growth", action="store_true", help="only the main comparison")
    parser.add_argument("--duration", type=float, help="override the profile's seconds of load per measurement")
    parser.add_argument("--profile", metavar="DIR", help="record py-spy collapsed stacks of our workers into DIR")
    parser.add_argument("--only", choices=["ours", "main"], help="ours: only our server (no ceilings), main comparison only")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also measure the server of another checkout (e.g. a git worktree of main), right "
                        "before ours at every main-point measurement, for ours/baseline pairs")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for our server (e.g. a setting under test)")
    args = parser.parse_args(argv)

    profile = PROFILES["quick" if args.quick else "full"]
    if args.duration:
        profile.duration = args.duration
    work, out = Path(args.work), results_dir(args)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    backends = [b for b in args.backends.split(",") if b]
    workers_list = [int(w) for w in args.workers.split(",")]
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_SESSIONS_")}
    server_env.update(dict(item.split("=", 1) for item in args.env))
    bench = Bench(profile, work, args.pg_url, server_env)
    bench.spy_dir = Path(args.profile) if args.profile else None
    started = time.monotonic()

    top = max(workers_list)
    for backend in backends:
        # The main comparison: ours next to both ceilings, measured back to back.
        for workers in workers_list:
            if args.only != "ours":
                bench.asgi(workers, backend)
            if args.baseline:
                bench.ours(backend, profile.main_size, workers, baseline=args.baseline)
            bench.ours(backend, profile.main_size, workers)
        if args.only != "ours":
            bench.best_storage(backend, profile.main_size)
            # The ratio the targets are judged by, measured again in pairs: one pair can
            # straddle a slow minute (the same PostgreSQL code gave 0.38x and 0.67x).
            for round_ in range(2, profile.pairs + 1):
                if args.baseline:
                    bench.ours(backend, profile.main_size, top, round_=round_, baseline=args.baseline)
                bench.ours(backend, profile.main_size, top, round_=round_)
                bench.best_storage(backend, profile.main_size, round_=round_)
    if not args.skip_growth and not args.only:
        for backend in backends:
            sizes = profile.sizes if backend == "sqlite" else profile.pg_sizes
            for size in sizes:
                if size != profile.main_size:
                    bench.ours(backend, size, top)
                    bench.best_storage(backend, size)
        for runs, count in profile.run_counts.items():
            bench.ours(backends[0], profile.main_size, top, runs=runs, count=count)
            bench.best_storage(backends[0], profile.main_size, runs=runs, count=count)

    from bench.report import render

    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        "profile": profile.name,
        "main_sessions": profile.main_size,
        "duration_s": profile.duration,
        "connections": CONNECTIONS,
        "workers": top,
        "elapsed_s": round(time.monotonic() - started),
        "server_env": {k: v for k, v in (dict(item.split("=", 1) for item in args.env)).items()},
        "baseline": args.baseline,
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in bench.results]}, indent=1))
    table = render(meta, bench.results, out)
    print(table)
    failed = [r for r in bench.results if r.verified.startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
