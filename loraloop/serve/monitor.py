"""`loraloop monitor`: how each served version is doing, from what `loraloop serve` logged.

Per character and version: requests, reply length (mean, p95), latency (p50, p95), tokens in and
out, banned-word, repetition, meta-leak and language-compliance rates and the tool-call validity
of the replies that call (the rules eval uses, so the numbers compare with the round's
evaluation), and the thumbs-up share. A version in service outside
`monitor.alerts` is unhealthy: monitor says so and prints the rollback command.

Problem replies (a rule broken, or a thumbs down) of users who opted in are written as feedback
`bad` records, with the user's correction when there is one, to data/raw/negatives/monitor.jsonl:
a collect source, so the next data version trains against them. The file is rebuilt from the logs
on every run (same logs, same bytes), so running monitor twice adds nothing twice.

The report goes to monitor/monitor.json, not metrics/: package and report read metrics/ whole, and
a monitor run must not make them out of date."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from ..files import read_json, replacing, write_json, write_jsonl
from ..judge.charts import line_chart, write_svg
from ..judge.gates import check_gates
from ..lm.tool_calls import written
from ..params import MonitorParams
from .logs import COUNTERS, FEEDBACK, NEGATIVES, SERVED, read_rows


def quantile(values: list[float], q: float) -> float | None:
    """The nearest-rank quantile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def problems_of(rules: dict, mp: MonitorParams) -> list[str]:
    """The rules a reply broke, from the rule values serve logged for it."""
    out = []
    if rules.get("banned_words", 1.0) < 1:
        out.append("banned_words")
    if rules.get("meta_leakage", 1.0) < 1:
        out.append("meta_leakage")
    if rules.get("language", 1.0) < 0.5:
        out.append("language")
    if rules.get("repetition", 1.0) < mp.min_unique_ngrams:
        out.append("repetition")
    if rules.get("tool_call_valid", 1.0) < 1:
        out.append("tool_call_invalid")
    return out


def summarize(rows: list[dict], reactions: list[dict]) -> dict:
    """The metrics of one version's completions and the reactions to them."""
    rules = lambda k: [r["rules"][k] for r in rows if k in r.get("rules", {})]  # noqa: E731
    up = sum(f["reaction"] == "up" for f in reactions)
    return {
        "requests": len(rows),
        "opt_in_share": mean([float(r["opt_in"]) for r in rows]),
        "reply_chars_mean": mean([r["reply_chars"] for r in rows]),
        "reply_chars_p95": quantile([r["reply_chars"] for r in rows], 0.95),
        "latency_p50_ms": quantile([r["latency_ms"] for r in rows], 0.5),
        "latency_p95_ms": quantile([r["latency_ms"] for r in rows], 0.95),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "completion_tokens_mean": mean([r["completion_tokens"] for r in rows]),
        "banned_word_rate": mean([1.0 - v for v in rules("banned_words")]),
        "meta_leak_rate": mean([1.0 - v for v in rules("meta_leakage")]),
        "repetition_rate": mean([1.0 - v for v in rules("repetition")]),
        "language_compliance": mean(rules("language")),
        # Over the replies that tried to call a tool: every call parsed, declared and schema-valid.
        "tool_call_valid_rate": mean(rules("tool_call_valid")),
        "tool_call_replies": len(rules("tool_call_valid")),
        "reactions": len(reactions),
        "thumbs_up": up,
        "thumbs_down": len(reactions) - up,
        "thumbs_up_share": up / len(reactions) if reactions else None,
    }


def in_service(routing: dict) -> dict[str, str]:
    """version -> 'stable' | 'canary' for what routing.json serves now."""
    out = {}
    for e in routing.values():
        out[e["stable"]["version"]] = "stable"
        if e.get("canary"):
            out[e["canary"]["version"]] = "canary"
    return out


def judge(metrics: dict, mp: MonitorParams) -> list[dict]:
    """The alerts a version breaks; none below min_requests or for a metric with no value yet."""
    if metrics["requests"] < mp.min_requests:
        return []
    measured = {k: g for k, g in mp.alerts.items() if metrics.get(k) is not None}
    unknown = [k for k in mp.alerts if k not in metrics]
    if unknown:
        raise KeyError(f"params.yaml monitor.alerts: no metric {unknown} (have {sorted(metrics)})")
    return check_gates(metrics, measured, later=set())


def negatives(completions: list[dict], reactions: list[dict], root: Path, mp: MonitorParams) -> list[dict]:
    """Feedback `bad` records for opt-in replies that broke a rule or got a thumbs down."""
    texts = {r["response_id"]: r for r in read_rows(root / SERVED) if "response_id" in r}
    corrections = {f["response_id"]: f for f in read_rows(root / FEEDBACK) if "response_id" in f}
    why: dict[str, list[str]] = defaultdict(list)
    for c in completions:
        why[c["response_id"]].extend(problems_of(c.get("rules", {}), mp))
    for f in reactions:
        if f["reaction"] == "down":
            why[f["response_id"]].append("thumbs_down")
    out = []
    for response_id, problems in sorted(why.items()):
        if not problems or response_id not in texts:  # no text: the user did not opt in
            continue
        ex = texts[response_id]
        *context, reply = ex["messages"]
        row = {
            "response_id": response_id,
            "character_id": ex["character_id"],
            "dataset_source": "negatives",
            "timestamp": ex["timestamp"],
            "opt_in": True,
            "user_id": ex.get("user_id"),
            "messages": context,
            "response": written(reply),
            **({"tools": ex["tools"]} if ex.get("tools") else {}),
            "feedback": "bad",
            "problems": sorted(set(problems)),
            "version": ex["version"],
        }
        fix = corrections.get(response_id, {}).get("corrected")
        if fix:
            row["corrected"] = fix
        out.append(row)
    return sorted(out, key=lambda r: (r["timestamp"], r["response_id"]))


def write_plots(completions: list[dict], reactions: list[dict], plots_dir: Path) -> list[str]:
    """Per character: a CSV of the daily metrics by version, and an SVG chart of them."""
    days: dict[tuple, list] = defaultdict(list)
    for c in completions:
        days[(c["character"], c["timestamp"][:10], c["version"])].append(c)
    liked: dict[tuple, list] = defaultdict(list)
    for f in reactions:
        liked[(f["character"], f["timestamp"][:10], f["version"])].append(f)
    written = []
    with replacing(plots_dir) as tmp:
        tmp.mkdir(parents=True)
        for character in sorted({k[0] for k in days}):
            rows = []
            for key in sorted(k for k in days if k[0] == character):
                m = summarize(days[key], liked.get(key, []))
                rows.append({"day": key[1], "version": key[2], **m})
            with (tmp / f"{character}.csv").open("w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
            chart = line_chart(rows, "day", ["latency_p95_ms"], f"{character}: p95 latency by version", color="version")
            write_svg(chart, tmp / f"{character}_latency.svg")
            written.append(character)
    return written


def run(mp: MonitorParams, root: Path, routing_file: Path, out: Path, plots_dir: Path) -> dict:
    skipped: list[str] = []
    rows = list(read_rows(root / COUNTERS, skipped))
    completions = [r for r in rows if r.get("event") == "completion"]
    reactions = [r for r in rows if r.get("event") == "feedback"]
    routing = read_json(routing_file) if routing_file.is_file() else {}
    serving = in_service(routing)
    release_of = {e["stable"]["version"]: e["release"] for e in routing.values()}
    release_of.update({e["canary"]["version"]: e["release"] for e in routing.values() if e.get("canary")})
    by_version: dict[tuple, list] = defaultdict(list)
    for c in completions:
        by_version[(c["character"], c["version"])].append(c)
    reacted: dict[tuple, list] = defaultdict(list)
    for f in reactions:
        reacted[(f["character"], f["version"])].append(f)
    report: dict = {"characters": {}, "unhealthy": []}
    for (character, version), group in sorted(by_version.items()):
        metrics = summarize(group, reacted.get((character, version), []))
        status = serving.get(version, "retired")
        failed = judge(metrics, mp) if status != "retired" else []
        metrics.update(rollout=status, healthy=not failed, alerts=failed)
        report["characters"].setdefault(character, {})[version] = metrics
        if failed:
            report["unhealthy"].append(
                {
                    "character": character,
                    "version": version,
                    "rollout": status,
                    "alerts": failed,
                    "rollback": f"loraloop release rollback {release_of.get(version, group[0]['release'])}",
                }
            )
    bad = negatives(completions, reactions, root, mp)
    write_jsonl(root / NEGATIVES / "monitor.jsonl", bad)
    report["negatives"] = {
        "file": (NEGATIVES / "monitor.jsonl").as_posix(),
        "records": len(bad),
        "with_correction": sum("corrected" in b for b in bad),
        "by_problem": {
            p: sum(p in b["problems"] for b in bad) for p in sorted({p for b in bad for p in b["problems"]})
        },
    }
    report["read"] = {"completions": len(completions), "reactions": len(reactions), "unreadable_lines": skipped}
    report["plots"] = write_plots(completions, reactions, plots_dir) if completions else []
    write_json(out, report)
    return report


def fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
