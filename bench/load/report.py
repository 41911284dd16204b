"""A load run's figures as text: the caption and table the README keeps, and where the time
went (loop stalls, ledger calls, py-spy)."""

from __future__ import annotations

import collections
from typing import Any

from bot.ledger import ACTIVE_STATUSES
from bot.ops.metrics import LAG_PROBE_INTERVAL

from ..report import device, markdown_table

__all__ = ["caption", "format_mib", "goal_lines", "ms", "profile_text", "table"]

KIND_NAMES = {"imagine": "/imagine", "info": "/info", "cancel": "Cancel", "reroll": "Reroll"}


def ms(value: float | None) -> str:
    """Seconds as whole milliseconds ("n/a" for None)."""
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def format_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MiB"


def _goal(met: bool) -> str:
    return "met" if met else "**missed**"


#: How each of `analysis.goals`' names reads in a note.
GOAL_TEXT = {
    "first_answer_p99_lt_100ms": "first answer p99 < 100 ms",
    "first_answer_p99_le_15ms": "first answer p99 <= 15 ms at 200 over 10 s",
    "loop_lag_p99_lt_50ms": "loop lag p99 < 50 ms",
    "queued_p99_lt_1000ms": '"queued" p99 < 1 s',
    "reserve_p99_le_105ms": "`reserve` p99 <= 105 ms at 200 over 10 s",
    "every_job_delivered_once": "every job delivered once",
}


def _goals_note(goals: dict[str, Any], prefix: str) -> str:
    """The notes of the goals named `prefix...`, e.g. "p99 < 100 ms: met"."""
    return "; ".join(
        f"{GOAL_TEXT.get(name, name)}: {_goal(goal['met'])}"
        for name, goal in goals.items()
        if name.startswith(prefix)
    )


def goal_lines(result: dict[str, Any]) -> list[str]:
    """One line per goal of issue 24: its measure, its limit, met or missed."""
    lines = []
    for name, goal in result["goals"].items():
        value, limit = goal["value"], goal["limit"]
        shown = str(value) if isinstance(value, bool) or value is None else ms(value)
        limit_text = "" if isinstance(limit, bool) else f" (limit {ms(limit)})"
        lines.append(
            f"goal {GOAL_TEXT.get(name, name)}: {'met' if goal['met'] else 'MISSED'}, "
            f"{shown}{limit_text}"
        )
    return lines


def caption(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    return (
        f"Bot under load: {s['users']} users, one `/imagine` each over {s['duration']:g} s "
        f"(Poisson, seed {s['seed']}), {s['steps']} steps, builtin:tiny 64x64, batch "
        f"{s['batch']}; {s['info_share']:.0%} also run `/info`, {s['cancel_share']:.0%} press "
        f"Cancel, {s['reroll_share']:.0%} press Reroll; {s['channels']} channel(s), SQLite, "
        f"OMP_NUM_THREADS={s['omp_threads']}" + f". {device(m)}, load average "
        f"{m['loadavg_before'][0]} before the run, torch {m.get('torch')}, {m['date']}."
    )


def table(result: dict[str, Any]) -> str:
    rows = _answer_rows(result) + _delivery_rows(result)
    return caption(result) + "\n\n" + markdown_table(["measure", "value", "note"], rows)


def _answer_rows(result: dict[str, Any]) -> list[list[Any]]:
    first, lag, goals = result["first_answer_s"], result["loop_lag_s"], result["goals"]
    beat, queued = lag["heartbeat_gap_load"], result["command_to_queued_s"]
    server = result["server_loop_lag_s"]
    reserve = ((result.get("ledger") or {}).get("calls") or {}).get("reserve") or {}
    return [
        [
            "time to first answer (p50 / p99 / max)",
            f"{ms(first['p50'])} / {ms(first['p99'])} / {ms(first['max'])} "
            f"({first['n']} interactions, {first['over_3s']} over 3 s, "
            f"{first['unanswered']} unanswered)",
            _goals_note(goals, "first_answer_"),
        ],
        [
            "first answer p99 by kind",
            ", ".join(
                f"{KIND_NAMES.get(k, k)} {ms(v['p99'])} (n={v['n']})"
                for k, v in result["first_answer_by_kind_s"].items()
            ),
            "Discord's limit: 3 s",
        ],
        [
            "event-loop lag while generating (p50 / p99 / max)",
            f"{ms(lag['load']['p50'])} / {ms(lag['load']['p99'])} / {ms(lag['load']['max'])}"
            f" (20 ms probe, {lag['load']['n']} samples)",
            _goals_note(goals, "loop_lag_")
            + ("" if lag["load"]["n"] else " (from the heartbeat delay)"),
        ],
        [
            'command to its "queued" message (p50 / p99 / max)',
            f"{ms(queued['p50'])} / {ms(queued['p99'])} / {ms(queued['max'])} "
            f"({queued['n']} jobs; {queued['never_queued']} requests never queued)",
            _goals_note(goals, "queued_") + "; from the dispatch to the progress message",
        ],
        [
            "ledger `reserve` (p50 / p99 / max)",
            f"{ms(reserve.get('p50'))} / {ms(reserve.get('p99'))} / {ms(reserve.get('max'))}",
            _goals_note(goals, "reserve_") or "as the bot timed it (`bench.botprobe`)",
        ],
        [
            "heartbeat delay while generating (p50 / p99 / max)",
            f"{ms(beat['p50'])} / {ms(beat['p99'])} / {ms(beat['max'])}",
            "outside estimate of loop lag",
        ],
        [
            "the test server's own loop lag (p50 / p99 / max)",
            f"{ms(server['p50'])} / {ms(server['p99'])} / {ms(server['max'])}",
            "the benchmark's process: its lag delays what the server records",
        ],
        [
            "the bot's own metrics during the load (bucket bounds)",
            bot_metrics_text(result.get("bot_metrics") or {}),
            "`/metrics` with `[ops] listen`",
        ],
    ]


def _delivery_rows(result: dict[str, Any]) -> list[list[Any]]:
    image, acc, mem = result["command_to_image_s"], result["accounting"], result["memory"]
    failed = acc["failed_interactions"]
    return [
        [
            "command to delivered image (p50 / p95 / max)",
            f"{_s(image['p50'])} / {_s(image['p95'])} / {_s(image['max'])}",
            f"{result['images_per_s']:.2f} images/s over {result['load_seconds']:.0f} s",
        ],
        [
            "jobs requested / database rows / delivered",
            f"{acc['requested']} / {acc['db_rows']} / {acc['delivered_jobs']} "
            f"({acc['requested_reroll']} rerolls"
            + (f", {failed} never acknowledged in time" if failed else "")
            + "; rows: "
            + ", ".join(f"{n} {k}" for k, n in sorted(acc["db_status"].items()))
            + ")",
            ("consistent (nothing lost or doubled)" if acc["consistent"] else inconsistency(acc))
            + "; "
            + _goals_note(result["goals"], "every_job"),
        ],
        [
            "memory: bot RSS idle / peak at start-up / peak under load",
            f"{format_mib(mem['idle_rss_mib'])} / {format_mib(mem['startup_peak_mib'])} / "
            f"{format_mib(mem['load_peak_hwm_mib'] or mem['load_peak_rss_sampled_mib'])}",
            f"{mem['processes']} process(es)",
        ],
    ]


def bot_metrics_text(metrics: dict[str, Any]) -> str:
    timer = f"loop lag ({LAG_PROBE_INTERVAL * 1000:.0f} ms timer)"
    parts = []
    for key, what in (("loop_lag_s", timer), ("first_answer_s", "first answer")):
        found = metrics.get(key)
        if found and found["count"]:
            parts.append(
                f"{what} p99 <= {ms(found['p99_at_most'])}, mean {ms(found['mean'])} "
                f"(n={found['count']:.0f})"
            )
    return "; ".join(parts) or "not available (no `[ops] listen` or no metric)"


def inconsistency(acc: dict[str, Any]) -> str:
    parts = []
    named = {
        "delivered_not_done": "delivered but not `done` in the ledger",
        "done_not_delivered": "`done` but never delivered",
        "done_with_other_message_id": "`done` with another message id",
    }
    for key, what in named.items():
        if acc[key]:
            status = ""
            if key == "delivered_not_done":
                rows = [acc["diagnosis"].get(str(j), {}).get("row") or {} for j in acc[key]]
                found = collections.Counter(r.get("status") for r in rows)
                status = " (" + ", ".join(f"{n} {k}" for k, n in found.items()) + ")"
            jobs = ", ".join(f"#{j}" for j in acc[key][:6])
            parts.append(f"{len(acc[key])} job(s) {what}{status}: {jobs}")
    if acc["doubled_deliveries"]:
        parts.append(f"{len(acc['doubled_deliveries'])} job(s) delivered twice")
    if acc["requests_without_row"]:
        parts.append(f"{acc['requests_without_row']} answered request(s) without a row")
    if acc["rows_without_request"]:
        parts.append(f"{acc['rows_without_request']} row(s) no user asked for")
    if acc["rows_per_interaction_max"] > 1:
        parts.append("an interaction has several rows")
    active = sum(acc["db_status"].get(status, 0) for status in ACTIVE_STATUSES)
    if active:
        parts.append(f"{active} job(s) still queued/running")
    return "**inconsistent**: " + "; ".join(parts or ["image counts differ"])


def profile_text(result: dict[str, Any]) -> str:
    """Where the time went, one Markdown bullet per source that has figures."""
    lines = [
        _stalls_line(result.get("loop_stalls") or {}),
        _ledger_line(result.get("ledger") or {}),
        _gc_line(result.get("gc") or {}),
    ]
    for thread in (result.get("pyspy") or {}).get("threads", [])[:2]:
        lines.append(
            f"py-spy, {thread['thread']}: busy {thread['busy_share_of_wall']:.0%} of the time; "
            + ", ".join(
                f"{e['function']} {e['share_of_busy']:.0%}"
                for e in thread["top_innermost_bot_frame"][:6]
            )
            + " (innermost bot/engine frame)"
        )
    return "\n".join(f"- {line}" for line in lines if line)


def _stalls_line(stalls: dict[str, Any]) -> str:
    if not stalls.get("samples"):
        return ""
    return (
        f"Loop stalls (loop > {stalls['threshold_seconds'] * 1000:.0f} ms late): "
        f"{stalls['samples']} samples of {stalls['sample_seconds'] * 1000:.0f} ms; "
        "innermost bot frame: "
        + ", ".join(
            f"{e['function']} {e['share']:.0%}" for e in stalls["top_innermost_bot_frame"][:5]
        )
        + "; innermost frame: "
        + ", ".join(f"{e['function']} {e['share']:.0%}" for e in stalls["top_leaf"][:5])
    )


def _gc_line(found: dict[str, Any]) -> str:
    """The bot's garbage collections while the commands arrived, and during the whole load."""
    parts = []
    for key, what in (("arrivals", "while the commands arrived"), ("load", "during the load")):
        g = found.get(key) or {}
        if g.get("window_s"):
            parts.append(
                f"{what} ({g['window_s']:.1f} s) {g['n']} collections, {ms(g['seconds'])} "
                f"in all, the longest {ms(g['longest_s'])}"
            )
    return "The bot's garbage collection: " + "; ".join(parts) if parts else ""


def _ledger_line(ledger: dict[str, Any]) -> str:
    if not ledger.get("calls"):
        return ""
    calls = ", ".join(
        f"{name} {ms(c['p50'])} / {ms(c['p99'])} / {ms(c['max'])}"
        + (
            f" ({c['pool_full_at_start']} began with the pool full)"
            if c["pool_full_at_start"]
            else ""
        )
        for name, c in _ledger_calls(ledger["calls"])
    )
    slowest = sorted(ledger["statements"].items(), key=lambda kv: -(kv[1]["p99"] or 0))[:3]
    return (
        f"Ledger calls (p50 / p99 / max; pool of {ledger['pool_limit']} connections): "
        + calls
        + "; slowest SQL: "
        + ", ".join(f"{kind} p99 {ms(c['p99'])} max {ms(c['max'])}" for kind, c in slowest)
    )


def _ledger_calls(calls: dict[str, Any]) -> list[tuple[str, Any]]:
    """The six costliest ledger calls, and `get_job` (what Cancel and Reroll wait for)."""
    shown = list(calls.items())[:6]
    if "get_job" in calls and "get_job" not in dict(shown):
        shown.append(("get_job", calls["get_job"]))
    return shown
