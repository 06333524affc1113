"""`loraloop status`: where the loop stands. Per lineage: the version in service, how many new
opt-in examples (served conversations, negatives) came in since it was released, and whether a
retrain is due (`retrain.min_new_examples`); then which DVC stages are out of date and what
`dvc repro` would run."""

from __future__ import annotations

from pathlib import Path

import click

from . import release
from .cli import params_of, say
from .params import Params
from .servelog import NEGATIVES, SERVED, read_rows


def new_examples(root: Path, characters: list[str], since: str | None) -> dict[str, int]:
    """Opt-in served exchanges and negatives of these characters logged after `since` (ISO time)."""
    counts = {"served": 0, "negatives": 0}
    for kind, folder in (("served", SERVED), ("negatives", NEGATIVES)):
        for row in read_rows(root / folder):
            if (
                row.get("character_id") in characters
                and row.get("opt_in")
                and (since is None or row["timestamp"] > since)
            ):
                counts[kind] += 1
    return counts


def lineage_status(params: Params, root: Path, release_root: Path) -> list[dict]:
    out = []
    for name in params.lineages:
        lin = params.lineage(name)
        rel = release_root / lin.release
        ro = release.rollout(rel) if rel.is_dir() else {"stable": None, "canary": None}
        serving = release.serving(rel) if rel.is_dir() else None
        since = serving["created_at"] if serving else None
        new = new_examples(root, lin.characters, since)
        total = sum(new.values())
        out.append(
            {
                "lineage": name,
                "release": lin.release,
                "stable": ro["stable"],
                "canary": ro["canary"],
                "released_at": since,
                "new_examples": new,
                "retrain_due": total >= params.retrain.min_new_examples,
                "min_new_examples": params.retrain.min_new_examples,
            }
        )
    return out


def stale_stages(root: Path) -> tuple[list[str], list[str]]:
    """(stages whose deps, params or outputs changed, every stage `dvc repro` would run: those and
    all downstream of them; DVC itself skips one whose inputs come out unchanged)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        changed = set(repo.status())
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        stale = [s for s in graph.nodes if s.addressing in changed]
        would_run = {s.addressing for s in stale}
        for s in stale:
            would_run |= {a.addressing for a in nx.ancestors(graph, s)}
        order = [s.addressing for s in reversed(list(nx.topological_sort(graph)))]
    return sorted(changed & set(order), key=order.index), [s for s in order if s in would_run]


@click.command()
@click.option("--release-dir", type=click.Path(path_type=Path), default=Path("models/release"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@click.pass_context
def cli(ctx, release_dir, as_json):
    """New examples since each release, whether a retrain is due, and what `dvc repro` would run."""
    params = params_of(ctx)
    root = Path.cwd()
    lineages = lineage_status(params, root, release_dir)
    stale, would_run = stale_stages(root)
    if as_json:
        return say({"lineages": lineages, "stale": stale, "repro_would_run": would_run})
    for s in lineages:
        serving = s["stable"] or "nothing released"
        canary = f", canary {s['canary']}" if s["canary"] else ""
        n = sum(s["new_examples"].values())
        detail = ", ".join(f"{k} {v}" for k, v in s["new_examples"].items())
        due = "retrain due" if s["retrain_due"] else f"retrain at {s['min_new_examples']}"
        click.echo(f"{s['lineage']}: {serving}{canary}; {n} new opt-in examples since release ({detail}); {due}")
    if not would_run:
        click.echo("dvc: everything is up to date")
    else:
        click.echo(f"dvc: {len(stale)} stage(s) out of date: {', '.join(stale)}")
        # DVC skips a stage whose deps come out byte-identical (a lineage's view after another's
        # new data), so this is the most it runs.
        click.echo(f"`dvc repro` would run up to {len(would_run)}: {', '.join(would_run)}")
