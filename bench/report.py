"""Writing benchmark results: JSON under bench/results/, and a Markdown table (with its plot,
if any) on the docs' benchmarks page, docs/benchmarks.md."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
from argparse import Namespace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

__all__ = ["device", "machine", "markdown_table", "save", "settings_of", "update_docs"]


def machine() -> dict[str, Any]:
    """What ran the benchmark, for the caption of its table."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def device(info: dict[str, Any]) -> str:
    """The device of a `machine()` record, as a caption names it."""
    return info.get("gpu") or f"CPU ({info['cores']} cores)"


def settings_of(args: Namespace, *leave_out: str) -> dict[str, Any]:
    """A run's command-line settings for its JSON (paths as text), less `leave_out`."""
    return {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in leave_out
    }


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def update_docs(name: str, text: str, figure: Path | None = None) -> None:
    """Replace the block between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` on the
    benchmarks page with `text` and, if given, the picture `figure` (a file under docs/);
    a page without the block gets it at its end."""
    page = ROOT / "docs" / "benchmarks.md"
    body = page.read_text()
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    if figure is not None:
        link = figure.resolve().relative_to(page.parent).as_posix()
        text = f"{text.strip()}\n\n![{name}: latency distribution]({link})"
    block = f"{start}\n{text.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(body):
        body = pattern.sub(lambda _: block, body)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    page.write_text(body)
