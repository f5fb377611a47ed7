"""``python -m bench.report [RESULTS.json]``: docs/benchmarks.md's tables and charts from a
``bench.run`` results file (default: bench/results/latest.json).

The measured part of docs/benchmarks.md lies between the ``BEGIN RESULTS`` and ``END
RESULTS`` markers and is replaced; the prose around it is written by hand. The charts go to
docs/benchmarks/*.png and the results file is copied to docs/benchmarks/results.json, so
that every figure in the document can be traced to the run that measured it.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT

DOC = ROOT / "docs" / "benchmarks.md"
FIGURES = ROOT / "docs" / "benchmarks"
BEGIN, END = "<!-- BEGIN RESULTS -->", "<!-- END RESULTS -->"


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def failures(runs: list[dict[str, Any]]) -> str:
    failed = [r for r in runs if "error" in r]
    return "".join(f"\n\n{r['target']} failed: `{r['error']}`" for r in failed)


def measured(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if "error" not in r]


def idle_section(runs: list[dict[str, Any]]) -> str:
    rows = [
        (
            r["target"],
            r["streams"],
            r["open"],
            r["rss_per_stream_kib"],
            r["threads_added"],
            r["db_connections_added"],
            r["open_seconds"],
        )
        for r in measured(runs)
    ]
    header = ["target", "streams asked", "open", "RSS/stream (KiB)", "+threads", "+DB conns"]
    return table([*header, "time to open (s)"], rows) + failures(runs)


def latency_section(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in measured(runs):
        lat = r.get("latency_ms") or {}
        spread = r.get("spread_ms") or {}
        rows.append(
            (
                r["target"],
                f"{r['clients']:,} @ {r['rate']:g}/s",
                r["open"],
                lat.get("p50"),
                lat.get("p99"),
                spread.get("p99"),
                r["cpu_us_per_delivery"],
                f"{r['deliveries']:,} / {r['deliveries_expected']:,}",
                "yes" if r["all_delivered"] else "NO",
            )
        )
    header = ["target", "clients @ rate", "open", "p50 ms", "p99 ms", "spread p99 ms"]
    return table([*header, "CPU µs/delivery", "delivered", "all?"], rows) + failures(runs)


def accept_section(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        for attempt in r["runs"]:
            connect = attempt.get("connect_ms") or {}
            rows.append(
                (
                    r["target"],
                    attempt["backlog"],
                    f"{attempt['opened']:,} / {r['clients']:,}",
                    attempt["open_seconds"],
                    connect.get("p99"),
                )
            )
    return table(["target", "listen backlog", "opened", "all open after (s)", "p99 ms"], rows)


def replay_section(runs: list[dict[str, Any]]) -> str:
    rows = [
        (
            r["server"],
            r["events_behind"],
            (r["best"] or {}).get("events_per_second"),
            (r["best"] or {}).get("server_cpu_us_per_event"),
            "yes" if r["target_met"] else "no",
        )
        for r in runs
    ]
    return table(
        ["server", "events behind", "events/s (best)", "server µs/event", "≥ 20k/s?"], rows
    )


def storm_section(runs: list[dict[str, Any]]) -> str:
    rows = [
        (
            r["server"],
            f"{r['caught_up']:,} / {r['clients']:,}",
            r["events_behind"],
            r["all_caught_up_seconds"],
            r["caught_up_p50_seconds"],
            r["queries_per_reconnect"],
            r["connections_per_reconnect"],
            r.get("database_sessions_per_reconnect", "—"),
            r["server_cpu_ms_per_reconnect"],
        )
        for r in runs
    ]
    header = ["server", "caught up", "behind", "all caught up (s)", "p50 (s)", "queries/reconnect"]
    # Django's connection opens (from psycopg's pool: no new session) against PostgreSQL's
    # own count of new sessions.
    header += ["connections taken/reconnect", "new DB sessions/reconnect"]
    return table([*header, "server CPU ms/reconnect"], rows)


def publish_section(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        for phase in r["phases"]:
            rows.append(
                (
                    f"{phase['processes']} process(es), one event per publish",
                    phase["publishes_per_second"],
                    "yes" if phase["ordering_intact"] else "NO",
                )
            )
        bulk = r["bulk"]
        rows.append(
            (
                f"send_event --stdin, {bulk['lines']:,} lines",
                bulk["events_per_second"],
                "ids consecutive" if bulk.get("ids_consecutive") else "NO",
            )
        )
    return table(["how", "events/s", "ordering intact"], rows)


def pubsub_section(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        for m in r["runs"]:
            rows.append(
                (
                    m["subscribers"],
                    m["published_per_second"],
                    m["delivered_per_second_slowest"],
                    f"{m['redis_busy']:.0%}" if "redis_busy" in m else "—",
                    m.get("redis_cpu_us_per_publish"),
                    m.get("redis_cpu_us_per_delivery"),
                    m.get("redis_ceiling_publishes_per_second"),
                    "yes" if m["all_delivered"] else "NO",
                )
            )
    header = ["subscribers", "notices/s", "delivered/s (slowest)", "Redis busy"]
    header += ["Redis µs/notice", "Redis µs/delivery", "Redis ceiling notices/s", "all?"]
    return table(header, rows)


def bars(ax: Any, names: Sequence[str], series: dict[str, Sequence[float]]) -> None:
    """One group of bars per name, one bar per series in each, labelled under the group."""
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(names))], values, width, label=label)
    middle = width * (len(series) - 1) / 2
    ax.set_xticks([x + middle for x in range(len(names))], names, rotation=30, ha="right")


def charts(results: dict[str, Any]) -> list[str]:
    """Draw the charts; their Markdown image lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    images = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(FIGURES / f"{name}.png", dpi=100)
        plt.close(fig)
        images.append(f"![{title}](benchmarks/{name}.png)")

    scenarios = results["scenarios"]
    if latency_runs := measured(scenarios.get("latency", [])):
        groups = sorted({(r["clients"], r["rate"]) for r in latency_runs})
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
        for ax, (clients, rate) in zip(axes[0], groups, strict=True):
            runs = [r for r in latency_runs if (r["clients"], r["rate"]) == (clients, rate)]
            series = {
                p: [(r.get("latency_ms") or {}).get(p) or 0 for r in runs] for p in ("p50", "p99")
            }
            bars(ax, [r["target"] for r in runs], series)
            ax.set_ylabel("publish → client latency (ms)")
            ax.set_title(f"{clients:,} clients, {rate:g} events/s")
            ax.legend()
        save(fig, "latency", "Fan-out latency")
    if idle_runs := measured(scenarios.get("idle", [])):
        fig, ax = plt.subplots(figsize=(8, 4))
        names = sorted({r["target"] for r in idle_runs})
        series = {}
        for size in sorted({r["streams"] for r in idle_runs}):
            values = {
                r["target"]: r["rss_per_stream_kib"] or 0 for r in idle_runs if r["streams"] == size
            }
            series[f"{size:,} streams"] = [values.get(name, 0) for name in names]
        bars(ax, names, series)
        ax.set_ylabel("RSS per open stream (KiB)")
        ax.axhline(30, color="grey", linestyle="--", linewidth=1, label="target: 30 KB")
        ax.legend()
        save(fig, "idle", "Idle cost per stream")
    if accept_runs := scenarios.get("accept"):
        fig, ax = plt.subplots(figsize=(8, 4))
        backlogs = [str(a["backlog"]) for a in accept_runs[0]["runs"]]
        series = {
            f"backlog {backlog}": [
                next(a["open_seconds"] for a in r["runs"] if str(a["backlog"]) == backlog)
                for r in accept_runs
            ]
            for backlog in backlogs
        }
        bars(ax, [r["target"] for r in accept_runs], series)
        ax.set_ylabel(f"seconds to open {accept_runs[0]['clients']:,} connections at once")
        ax.legend()
        save(fig, "accept", "Connection acceptance")
    return images


SECTIONS = {
    "idle": ("Idle cost (items 1 and 6)", idle_section),
    "latency": ("Fan-out latency (items 2 and 6)", latency_section),
    "accept": ("Connection acceptance (item 3)", accept_section),
    "replay": ("Replay: one client 10,000 events behind (item 4)", replay_section),
    "storm": ("Reconnect storm (item 4)", storm_section),
    "publish": ("Publish throughput, PostgreSQL, ordering on (item 5)", publish_section),
    "pubsub": ("Redis pub/sub, one channel, one subscription per process", pubsub_section),
}


def render(results: dict[str, Any]) -> str:
    kind = "quick sizes" if results["quick"] else "full sizes"
    parts = [
        BEGIN,
        f"Run started {results['started']} ({kind}), "
        f"Python {results['machine']['python']}, {results['machine']['cores']} cores; "
        "raw figures in [benchmarks/results.json](benchmarks/results.json).",
        "",
        *charts(results),
    ]
    for name, (title, section) in SECTIONS.items():
        if name in results["scenarios"]:
            parts += ["", f"### {title}", "", section(results["scenarios"][name])]
        elif name in results["errors"]:
            parts += ["", f"### {title}", "", "Failed in this run: see the results file."]
    parts += ["", END]
    return "\n".join(parts)


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "results" / "latest.json"
    results = json.loads(source.read_text())
    text = DOC.read_text() if DOC.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + render(results) + tail)
    FIGURES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, FIGURES / "results.json")
    print(f"bench: wrote {DOC.relative_to(ROOT)} and {FIGURES.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
