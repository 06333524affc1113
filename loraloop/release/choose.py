"""Which round of a lineage package releases: the latest that passed its gates (tone and persona
leakage included), that vLLM can serve, that is not already released or withdrawn, that is not earlier
than the round in service, and that beats the version in service on package.primary_metric
(higher is better). Scores measured under other
rules, prompts, decoding or another base do not compare: then the gates decide; other eval
prompts alone (the eval split grew) compare by the lift over the base each side measured."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..judge.gates import LATER, check_gates
from ..params import Lineage, Params


@dataclass
class Candidates:
    """What package weighs for one lineage."""

    evals: dict[str, dict]  # round -> its evaluation, tone leakage in
    adapters: dict[str, str]  # round -> its adapter's sha256
    unservable: dict[str, list[str]]  # round -> why vLLM could not serve its adapter (empty: it can)
    base_eval: dict | None  # the base under the same eval, for the lift when the eval prompts changed
    base_hash: str | None  # the base the rounds were trained on
    history: dict[str, dict] = field(default_factory=dict)  # retired round -> its evaluation (shown, not weighed)


def leakage_gates(evals: dict[str, dict], leakage: dict, gates: dict) -> None:
    """Puts what the leakage stage measured of each round (tone_leakage_rate, persona_leakage,
    persona_match) into its evaluation and fails the round on their gates (a figure not measured,
    no other lineage to leak into or no persona classifier, has nothing to fail)."""
    later = {k: g for k, g in gates.items() if k in LATER}
    for round_id, ev in evals.items():
        for metric in sorted(LATER):
            value = leakage.get(round_id, {}).get(metric)
            ev[metric] = value
            if value is not None and metric in later:
                failed = check_gates({metric: value}, {metric: later[metric]}, later=set())
                ev["failed_gates"] = ev["failed_gates"] + failed
                ev["passed"] = ev["passed"] and not failed


def _shown(value: float | None) -> str:
    return "null (nothing to measure)" if value is None else f"{value:.3f}"


def passed_over(round_id: str, lineage: Lineage, c: Candidates, cur: dict | None, withdrawn: dict) -> str | None:
    """Why the round cannot be released whatever its score, or None."""
    ev = c.evals[round_id]
    if not ev["passed"]:
        failed = ", ".join(f"{g['metric']}={_shown(g['value'])}" for g in ev["failed_gates"])
        return f"{round_id} failed gates ({failed})"
    if c.unservable.get(round_id):
        return f"{round_id} cannot be served by vLLM: {'; '.join(c.unservable[round_id])}"
    if cur is not None and c.adapters[round_id] == cur["adapter_sha256"]:
        return f"{round_id} is already released as {cur['version']}"
    by_hash = {h: v for v, h in withdrawn.items()}
    if c.adapters[round_id] in by_hash:
        version = by_hash[c.adapters[round_id]]
        return (
            f"{round_id} is {version}, withdrawn by a rollback "
            f"(`loraloop release restore {lineage.release} {version}` allows it again)"
        )
    return None


def against_current(metric: str, round_id: str, c: Candidates, cur: dict | None) -> tuple[bool, str]:
    """(whether the round beats the version in service, the reason either way)."""
    ev = c.evals[round_id]
    if cur is None:
        return True, "first release"
    cur_eval = cur["evaluation"][cur["round"]]
    cur_value = cur_eval[metric]
    same_base = c.base_hash is None or cur["base_model"]["hash"] == c.base_hash
    comparable = same_base and cur_eval.get("eval_config") == ev.get("eval_config")
    lift = comparable and cur_eval.get("eval_prompts") != ev.get("eval_prompts") and c.base_eval is not None
    if lift:
        value, against = ev[metric] - c.base_eval[metric], cur_value - cur["evaluation"]["base"][metric]
        why_lift = "other eval prompts: the eval split changed"
        if cur_eval.get("eval_prompts") is None:
            why_lift = f"{cur['version']} did not record its eval prompts"
        if value <= against:
            return False, (
                f"{round_id} {metric} lift over the base {value:+.4f} does not beat {cur['version']}'s "
                f"{against:+.4f} ({why_lift})"
            )
        return True, f"lift over the base {value:+.4f} beats {cur['version']}'s {against:+.4f} ({why_lift})"
    if comparable:
        if ev[metric] <= cur_value:
            return False, f"{round_id} {metric}={ev[metric]:.4f} does not beat {cur['version']} ({cur_value:.4f})"
        return True, f"beats {cur['version']} ({cur_value:.4f})"
    if not same_base:
        return True, f"the base model changed since {cur['version']}, so the values do not compare"
    return True, (
        f"{cur['version']} ({metric}={cur_value:.4f}) was measured under another eval config "
        f"(score rules, prompts or decoding), so the values do not compare"
    )


def choose(
    params: Params, lineage: Lineage, c: Candidates, cur: dict | None, withdrawn: dict[str, str] | None = None
) -> tuple[str | None, str]:
    """The round to release and why, or None and why not. `cur`: the metadata of the version in
    service; `withdrawn`: version -> adapter hash of the versions rolled back from (never released
    again)."""
    metric = params.package.primary_metric
    why_not = []
    for round_id in reversed(params.rounds_of(lineage.name)):
        ev = c.evals[round_id]
        if metric not in ev:
            raise KeyError(
                f"package.primary_metric {metric!r} is not in the evaluation of {round_id} (has {sorted(ev)})"
            )
        reason = passed_over(round_id, lineage, c, cur, withdrawn or {})
        if reason is None:
            beats, reason = against_current(metric, round_id, c, cur)
            if beats:
                skipped = f"; passed over: {'; '.join(why_not)}" if why_not else ""
                return round_id, f"{round_id} passed its gates, {metric}={ev[metric]:.4f}, {reason}{skipped}"
        why_not.append(reason)
        if cur is not None and round_id == cur["round"]:
            # An earlier round never replaces a later one in service: the first package run
            # released the latest passing round, and a rerun must not decide otherwise.
            earlier = params.rounds_of(lineage.name)[: params.rounds_of(lineage.name).index(round_id)]
            if earlier:
                why_not.append(f"{', '.join(earlier)} came before {cur['version']}'s round")
            break
    return None, "; ".join(why_not) or "no rounds"
