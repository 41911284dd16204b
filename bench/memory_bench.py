"""Memory of the bot: RSS idle after start-up and peak under load, with `builtin:tiny`.

The figures come from the load benchmark's run (`bench.load`, same options): the RSS of
the `imagine-bot` process (and any children) is sampled from `/proc` every 100 ms; idle is
the mean over `--idle` seconds after the gateway is ready, before any command; the start-up
peak is `VmHWM` then; `VmHWM` is then reset (`/proc/PID/clear_refs`) so the peak under load
is exactly the load's.

    python -m bench.memory_bench [--users 200] [--docs]
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .load.main import fail_without_delivery, parser, run
from .load.report import caption, format_mib
from .report import markdown_table, save, update_docs


def table(result: dict[str, Any]) -> str:
    mem = result["memory"]
    peak = mem["load_peak_hwm_mib"] or mem["load_peak_rss_sampled_mib"]
    rows = [
        ["idle, after start-up (mean RSS)", format_mib(mem["idle_rss_mib"])],
        ["peak during start-up (VmHWM)", format_mib(mem["startup_peak_mib"])],
        [f"peak under load ({result['accounting']['requested']} jobs)", format_mib(peak)],
    ]
    head = "Memory of the bot process. " + caption(result)
    return head + "\n\n" + markdown_table(["bot RSS", "value"], rows)


def main() -> None:
    p = parser()
    p.description = __doc__.splitlines()[0]
    args = p.parse_args()
    started = time.perf_counter()
    result = asyncio.run(run(args))
    result["wall_seconds"] = time.perf_counter() - started
    text = table(result)
    print(text)
    fail_without_delivery("memory_bench", result)
    path = save("memory_bench", {"benchmark": "memory", **{k: result[k] for k in MEMORY_KEYS}})
    print(f"wrote {path}")
    if args.readme:
        update_docs("memory", text)
        print("updated docs/benchmarks.md")


MEMORY_KEYS = ("machine", "settings", "memory", "accounting", "ready_seconds", "wall_seconds")


if __name__ == "__main__":
    main()
