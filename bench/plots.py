"""The benchmark plots on docs/benchmarks.md: PNG files under docs/images/, drawn with
matplotlib from a benchmark's saved results.

    python -m bench.plots            # redraw every plot from bench/results/*.json

A benchmark run with `--docs` draws its own plot when it refreshes its table.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .report import RESULTS, ROOT

__all__ = ["IMAGES", "latency_plot", "main"]

IMAGES = ROOT / "docs" / "images"

#: Plotted results: bench/results/<file>.json -> the docs block (and image) it belongs to.
PLOTTED = {"trace_bench": "trace", "trace_models": "trace_models", "ray_bench": "ray"}

TITLES = {
    "trace": "Submit to image, one Poisson trace: batch-level vs step-level scheduling",
    "trace_models": "Submit to image, the trace over two models",
    "ray": "Submit to image, the trace: local engine vs Ray Serve replicas",
}


def _latencies(run: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[float]:
    """Every request's latency of a run (a run repeated: all its repeats together)."""
    repeats = [run] if isinstance(run, Mapping) else run
    return sorted(x for r in repeats for x in r.get("latencies_s", []))


def latency_plot(result: Mapping[str, Any], name: str) -> Path | None:
    """The distribution of submit-to-image latency of each run in `result` (its `runs`, each
    with `latencies_s`), one step curve per run, written to docs/images/bench-<name>.png;
    None when the runs recorded no latencies."""
    runs = {label: _latencies(run) for label, run in result.get("runs", {}).items()}
    runs = {label: values for label, values in runs.items() if values}
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for label, values in runs.items():
        share = [(i + 1) / len(values) for i in range(len(values))]
        p50 = statistics.median(values)
        ax.step(values, share, where="post", label=f"{label} (p50 {p50:.2f} s, n={len(values)})")
    ax.set_xlabel("seconds from submit to image")
    ax.set_ylabel("share of requests")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    machine = result.get("machine", {})
    device = machine.get("gpu") or f"CPU ({machine.get('cores', '?')} cores)"
    ax.set_title(f"{TITLES.get(name, name)}\n{device}, {machine.get('date', '')}", fontsize=9)
    fig.tight_layout()
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"bench-{name}.png"
    fig.savefig(path, metadata={"Software": None})  # same results, same bytes
    plt.close(fig)
    return path


def main() -> None:
    for stem, name in PLOTTED.items():
        source = RESULTS / f"{stem}.json"
        if source.exists():
            path = latency_plot(json.loads(source.read_text()), name)
            print(f"{source.relative_to(ROOT)} -> {path.relative_to(ROOT) if path else 'no plot'}")


if __name__ == "__main__":
    main()
