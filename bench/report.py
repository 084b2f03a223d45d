"""The tables (markdown) and the plot of one benchmark run."""

from __future__ import annotations

from pathlib import Path
from statistics import median


def _fmt(value, spec=",.0f", missing="–"):
    if value is not None and spec == ",.0f" and value < 100:
        spec = ",.1f"  # 10,000-run sessions erase at a few per second
    return missing if value is None else format(value, spec)


def best_ceilings(results: list) -> dict:
    """The storage ceiling per (backend, table size, runs per session): the best layout measured."""
    storage: dict = {}
    for r in results:
        key = (r.backend, r.nominal_sessions, r.runs_per_session)
        if r.kind == "storage" and (key not in storage or r.rps > storage[key].rps):
            storage[key] = r
    return storage


def render(meta: dict, results: list, out: Path) -> str:
    first_round = [r for r in results if r.round == 1]
    ours = [r for r in first_round if r.kind == "ours"]
    baseline = {(r.backend, r.workers): r for r in first_round if r.kind == "baseline" and r.nominal_sessions}
    asgi = {(r.backend, r.workers): r for r in first_round if r.kind == "asgi"}
    storage = best_ceilings(first_round)
    lines = [
        f"Run: {meta['date']}, {meta['machine']}; profile {meta['profile']}, {meta['connections']} connections, "
        f"{meta['duration_s']:g} s per measurement, {meta['elapsed_s']} s in all."
        + (f" Server env: {meta['server_env']}." if meta.get("server_env") else ""),
        "",
        "Main comparison (3 runs per session, ~2 KiB JSON each):",
        "",
        "| backend | workers | sessions | ours req/s | ASGI ceiling | storage ceiling | ours/ASGI | ours/storage "
        "| ours/baseline | p50 ms | p99 ms | p99.9 ms | errors | CPU ms/req | peak RSS/worker MB | verified |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    main_size = meta.get("main_sessions", 100_000)
    for r in ours:
        if r.runs_per_session != 3 or (r.backend, r.workers) not in asgi or r.nominal_sessions != main_size:
            continue
        a, s = asgi[(r.backend, r.workers)], storage.get((r.backend, r.nominal_sessions, 3))
        b = baseline.get((r.backend, r.workers))
        lines.append(
            f"| {r.backend} | {r.workers} | {r.table_sessions:,} | {r.rps:,.0f} | {a.rps:,.0f} | {_fmt(s and s.rps)} "
            f"| {r.rps / a.rps:.2f} | {_fmt(s and r.rps / s.rps, '.2f')} | {_fmt(b and r.rps / b.rps, '.2f')} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.p999_ms:.2f} | {r.errors} | {_fmt(r.cpu_ms_per_request, '.2f')} | {_fmt(r.peak_rss_mb, '.0f')} "
            f"| {r.verified} |"
        )
    lines += [
        "",
        "Growth (the largest worker count; storage ceiling measured on the same table right after):",
        "",
        "| backend | sessions in table | runs/session | ours sessions/s | ours runs/s | p50 ms | p99 ms | p99.9 ms "
        "| CPU ms/req | storage ceiling/s | ours/storage | cost vs smallest table | verified |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    top = max((r.workers for r in ours), default=1)
    growth = sorted((r for r in ours if r.workers == top), key=lambda r: (r.backend, r.runs_per_session != 3,
                                                                          r.runs_per_session, r.nominal_sessions))
    smallest: dict[str, float] = {}
    for r in growth:
        s = storage.get((r.backend, r.nominal_sessions, r.runs_per_session))
        cost = ""
        if r.runs_per_session == 3:
            per_request = 1000 / r.rps if r.rps else 0
            base = smallest.setdefault(r.backend, per_request)
            cost = f"{per_request / base:.2f}x" if base else ""
        lines.append(
            f"| {r.backend} | {r.table_sessions:,} | {r.runs_per_session:,} | {_fmt(r.rps)} "
            f"| {r.rps * r.runs_per_session:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.p999_ms:.2f} "
            f"| {_fmt(r.cpu_ms_per_request, '.2f')} | {_fmt(s and s.rps)} | {_fmt(s and r.rps / s.rps, '.2f')} "
            f"| {cost} | {r.verified} |"
        )
    lines += paired_rounds(meta, results)
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    _plot(growth, storage, out / "latency.png")
    return table


def paired_rounds(meta: dict, results: list) -> list[str]:
    """Ours and the storage ceiling, back to back, at the main point, round by round."""
    main_size, workers = meta.get("main_sessions", 100_000), meta.get("workers")
    at_main = [r for r in results if r.nominal_sessions == main_size and r.runs_per_session == 3]
    rounds = sorted({(r.backend, r.round) for r in at_main})
    if not any(round_ > 1 for _backend, round_ in rounds):
        return []
    lines = [
        "",
        f"Paired rounds at the main point ({workers} workers): the baseline (if measured), ours, then the "
        "storage ceiling right after; round 1 is the main comparison's.",
        "",
        "| backend | round | baseline req/s | ours req/s | storage ceiling | ours/baseline | ours/storage | p99 ms "
        "| verified |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for backend in sorted({backend for backend, _round in rounds}):
        ratios, against_baseline = [], []
        for round_ in sorted(round_ for b, round_ in rounds if b == backend):
            this = [r for r in at_main if r.backend == backend and r.round == round_]
            ours = next((r for r in this if r.kind == "ours" and r.workers == workers), None)
            base = next((r for r in this if r.kind == "baseline" and r.workers == workers), None)
            ceiling = best_ceilings(this).get((backend, main_size, 3))
            if ours is None or ceiling is None:
                continue
            ratios.append(ours.rps / ceiling.rps)
            if base is not None:
                against_baseline.append(ours.rps / base.rps)
            verified = "ok" if ours.verified == ceiling.verified == "ok" else f"{ours.verified} / {ceiling.verified}"
            lines.append(f"| {backend} | {round_} | {_fmt(base and base.rps)} | {ours.rps:,.0f} | {ceiling.rps:,.0f} "
                         f"| {_fmt(base and ours.rps / base.rps, '.2f')} | {ratios[-1]:.2f} | {ours.p99_ms:.2f} "
                         f"| {verified} |")
        if ratios:
            paired = f"**{median(against_baseline):.2f}**" if against_baseline else ""
            lines.append(f"| {backend} | **median** | | | | {paired} | **{median(ratios):.2f}** | | |")
    return lines


def _plot(growth: list, storage: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_size, by_runs) = plt.subplots(1, 2, figsize=(12, 4.5))
    for backend in sorted({r.backend for r in growth}):
        sized = sorted((r for r in growth if r.backend == backend and r.runs_per_session == 3),
                       key=lambda r: r.nominal_sessions)
        if sized:
            xs = [r.nominal_sessions for r in sized]
            by_size.plot(xs, [r.p50_ms for r in sized], "o-", label=f"{backend} p50")
            by_size.plot(xs, [r.p99_ms for r in sized], "s--", label=f"{backend} p99")
        counted = sorted((r for r in growth if r.backend == backend and r.nominal_sessions == max(
            (g.nominal_sessions for g in growth if g.runs_per_session != 3), default=0)), key=lambda r: r.runs_per_session)
        counted = [r for r in counted if r.runs_per_session != 3 or True]
        if len(counted) > 1:
            xs = [r.runs_per_session for r in counted]
            by_runs.plot(xs, [r.p50_ms for r in counted], "o-", label=f"{backend} p50")
            by_runs.plot(xs, [r.p99_ms for r in counted], "s--", label=f"{backend} p99")
    by_size.set(xscale="log", yscale="log", xlabel="sessions in table", ylabel="latency (ms)",
                title="DELETE latency vs table size (3 runs/session)")
    by_runs.set(xscale="log", yscale="log", xlabel="runs in the erased session", ylabel="latency (ms)",
                title="DELETE latency vs runs per session")
    for axis in (by_size, by_runs):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    fig.suptitle(f"agentos-sessions, {CONNECTIONS_TEXT}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CONNECTIONS_TEXT = "32 connections, wrk, loopback"
