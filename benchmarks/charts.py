"""PNG charts of a results file (matplotlib, so it runs in the peers' interpreter).

Usage: ``python -m benchmarks.charts RESULTS_JSON OUT_DIR``; prints the files it wrote,
relative to the repository root. Bars are medians; whiskers span min to max.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from benchmarks.report import ROOT, find, systems_in

CELERIAC = "#2e7d32"
PEER = "#90a4ae"
WHISKERS = {"elinewidth": 0.8, "ecolor": "#555555", "capsize": 2}  # thin: labels stay legible


def bars(
    ax: Any,
    doc: dict[str, Any],
    series: list[tuple[str, dict[str, str]]],
    systems: Sequence[str],
    *,
    log: bool = False,
    goals: Sequence[tuple[float, str]] = (),
) -> None:
    """Grouped bars: one group per system, one bar per (label, metric-lookup) series; a
    dashed line at each of celeriac's ``goals`` (value, label)."""
    width = 0.8 / len(series)
    for k, (label, where) in enumerate(series):
        xs, heights, lows, highs, colors = [], [], [], [], []
        for i, system in enumerate(systems):
            row = find(doc, system, **where)
            if row is None or "median" not in row:
                continue
            xs.append(i + (k - (len(series) - 1) / 2) * width)
            heights.append(row["median"])
            lows.append(row["median"] - row["min"])
            highs.append(row["max"] - row["median"])
            colors.append(CELERIAC if system == "celeriac" else PEER)
        alpha = 1.0 - 0.45 * k
        ax.bar(
            xs,
            heights,
            width,
            yerr=[lows, highs],
            color=colors,
            alpha=alpha,
            label=label,
            error_kw=WHISKERS,
        )
        for x, h in zip(xs, heights, strict=True):
            ax.annotate(short(h), (x, h), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(systems)), systems)
    if log:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    targets(ax, goals)


def short(value: float) -> str:
    """A bar's label: thousands separated, or three significant digits below 100."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def targets(ax: Any, lines: Sequence[tuple[float, str]]) -> None:
    """Dashed horizontal lines at celeriac's targets."""
    for value, label in lines:
        ax.axhline(value, color=CELERIAC, linestyle="--", linewidth=0.8)
        ax.annotate(label, (ax.get_xlim()[1], value), ha="right", va="bottom", fontsize=7)


def variant_bars(ax: Any, doc: dict[str, Any], variants: list[tuple[str, str]]) -> None:
    """celeriac's drain across variants (concurrency, payload): median and min-max."""
    found = [(label, find(doc, "celeriac", "drain", variant=v)) for v, label in variants]
    rows = [(label, row) for label, row in found if row is not None and "median" in row]
    xs = range(len(rows))
    heights = [row["median"] for _, row in rows]
    errors = [
        [row["median"] - row["min"] for _, row in rows],
        [row["max"] - row["median"] for _, row in rows],
    ]
    ax.bar(xs, heights, 0.6, yerr=errors, color=CELERIAC, error_kw=WHISKERS)
    for x, h in zip(xs, heights, strict=True):
        ax.annotate(short(h), (x, h), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [label for label, _ in rows])
    ax.grid(axis="y", alpha=0.3)


def chart(path: Path, title: str, ylabel: str, draw: Any) -> Path:
    """One figure, saved."""
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
    draw(ax)
    ax.set_title(title, fontsize=11)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_all(doc: dict[str, Any], out: Path) -> list[Path]:
    """Every chart of a results document."""
    systems = systems_in(doc)

    made = [
        chart(
            out / "enqueue.png",
            "Enqueue rate (higher is better)",
            "tasks/s (log scale)",
            lambda ax: bars(
                ax,
                doc,
                [
                    ("one call each", {"metric": "enqueue_single"}),
                    ("batch API", {"metric": "enqueue_batch"}),
                ],
                systems,
                log=True,
                goals=[(10_000, "target, one call each"), (100_000, "target, batch")],
            ),
        ),
        chart(
            out / "drain.png",
            "Drain of queued no-op tasks, 2 worker processes (higher is better)",
            "tasks/s",
            lambda ax: bars(
                ax,
                doc,
                [
                    ("from worker start", {"metric": "drain"}),
                    ("first to last completion", {"metric": "drain_steady"}),
                ],
                systems,
            ),
        ),
        chart(
            out / "latency.png",
            "Enqueue-to-start latency at low load (lower is better)",
            "ms (log scale)",
            lambda ax: bars(
                ax,
                doc,
                [("p50", {"metric": "latency_p50"}), ("p99", {"metric": "latency_p99"})],
                systems,
                log=True,
                goals=[(0.5, "target p50"), (2.0, "target p99")],
            ),
        ),
        chart(
            out / "memory.png",
            "Idle worker memory, all processes (lower is better)",
            "MiB",
            lambda ax: bars(
                ax,
                doc,
                [("RSS", {"metric": "idle_rss"}), ("PSS", {"metric": "idle_pss"})],
                systems,
                goals=[(75, "target RSS")],
            ),
        ),
        chart(
            out / "broker-bytes.png",
            "Redis memory per queued task (lower is better)",
            "bytes",
            lambda ax: bars(
                ax, doc, [("bytes", {"metric": "broker_bytes"})], systems, goals=[(200, "target")]
            ),
        ),
        chart(
            out / "celeriac-drain.png",
            "celeriac: drain on Redis by concurrency and argument size (from worker start)",
            "tasks/s",
            lambda ax: variant_bars(
                ax,
                doc,
                [
                    ("c1", "-c 1"),
                    ("", "-c 2"),
                    ("c4", "-c 4"),
                    ("100B", "-c 2, 100 B"),
                    ("10KiB", "-c 2, 10 KiB"),
                ],
            ),
        ),
    ]
    async_systems = [s for s in ("celeriac", "arq", "taskiq") if s in systems]
    if any(find(doc, s, "drain", variant="asyncio") for s in async_systems):
        made.append(
            chart(
                out / "asyncio-drain.png",
                "5 ms I/O-bound tasks, asyncio workers, 2 x 100 at once (higher is better)",
                "tasks/s",
                lambda ax: bars(
                    ax,
                    doc,
                    [
                        ("from worker start", {"metric": "drain", "variant": "asyncio"}),
                        ("first to last", {"metric": "drain_steady", "variant": "asyncio"}),
                    ],
                    async_systems,
                ),
            )
        )
    return made


def main(argv: list[str]) -> int:
    """Draw the charts of ``argv[1]`` into ``argv[2]``."""
    doc = json.loads(Path(argv[1]).read_text())
    out = Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for path in draw_all(doc, out):
        print(path.resolve().relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
