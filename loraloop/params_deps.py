"""The params.yaml keys each lineage's and round's stage reads, written as one small file per stage:
params/<kind>/<lineage or round>.json, which that stage depends on instead of on params.yaml.

DVC parses params.yaml again for every stage that declares params in it, and finds each key by
walking the whole document; the document grows with the fleet and so does the number of stages,
so a no-op `dvc status` spent half its time there at 20 lineages and grew faster than the fleet.
The `params` stage (stages/params.py) declares the whole of params.yaml (so `dvc exp show`, `dvc
params diff` and `dvc exp run -S` see every key, as before) and writes these slices: DVC parses the
file once per run, and a slice whose keys did not change comes out byte-identical, so only the
stages that read an edited key rerun, as with per-stage params. The stages that exist once (collect,
scrub, version, base, persona, leakage, package, report) still declare their keys in dvc.yaml.

A slice holds the values the stage runs with: params.yaml validated, defaults filled in, so
writing out a default changes nothing and a new default in the code reruns what reads it.
`dvc status` names the slice (`modified: params/train/tutor-r2.json`); `loraloop status` names the
keys."""

from __future__ import annotations

from pathlib import Path

from .files import read_json, write_json
from .params import Params, load_params

# kind -> the keys its stages read; {lineage} and {round} are the stage's own. A foreach stage over
# lineages has {lineage} only; over rounds, both (the round's lineage), and its `sample` and
# `train` are the sections with the round's own keys over them (rounds.<round>.sample / .train), so
# a round's train keys reach the stages that read train and not its sample stage.
ROUND = ("rounds.{round}.lineage", "rounds.{round}.prev", "rounds.{round}.start")
READS: dict[str, tuple[str, ...]] = {
    "view": ("lineages.{lineage}.system_prompts",),
    "judge": ("seed", "judge", "score.rules", "lineages.{lineage}.rules"),
    "eval_base": ("seed", "eval", "score.rules", "train.max_length", "lineages.{lineage}"),
    "eval": ("seed", "eval", "score.rules", "train.max_length", "lineages.{lineage}"),
    "sample": ("seed", "sample", *ROUND, "lineages.{lineage}.system_prompts"),
    "score": ("score", "lineages.{lineage}.rules"),
    "critic": ("seed", "train.token_weighting", "train.max_length", "train.critic", *ROUND),
    "train": ("seed", "train", *ROUND, "lineages.{lineage}.system_prompts"),
}
PER_LINEAGE = ("view", "judge", "eval_base")  # foreach over lineages; the others over rounds


class MissingKey(KeyError):
    pass


def lookup(doc: dict, key: str):
    value = doc
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise MissingKey(key)
        value = value[part]
    return value


def instances(params: Params) -> list[tuple[str, str, str]]:
    """(kind, instance, lineage) for every stage that reads a slice: its DVC name is kind@instance."""
    out = []
    for kind in READS:
        if kind in PER_LINEAGE:
            out += [(kind, name, name) for name in params.lineages]
        else:
            out += [(kind, rid, spec.lineage) for rid, spec in params.rounds.items()]
    return out


def slices(params: Params) -> dict[str, dict]:
    """params/<kind>/<instance>.json (relative path) -> the keys that stage reads, with their values."""
    doc = params.model_dump(mode="json")
    own = {rid: as_round_reads(doc, params, rid) for rid in params.rounds}  # as a round's stages read it
    out = {}
    for kind, name, lineage in instances(params):
        keys = [k.format(lineage=lineage, round=name) for k in READS[kind]]
        source = doc if kind in PER_LINEAGE else own[name]
        out[f"{kind}/{name}.json"] = {key: lookup(source, key) for key in keys}
    return out


def as_round_reads(doc: dict, params: Params, round_id: str) -> dict:
    """The document with the round's own sample and train keys over those sections (for_round)."""
    spec = params.rounds[round_id]
    if not spec.sample and not spec.train:
        return doc
    mine = params.for_round(round_id)
    return {**doc, "sample": mine.sample.model_dump(mode="json"), "train": mine.train.model_dump(mode="json")}


def changed_keys(old: dict | None, new: dict) -> list[str]:
    """The dotted keys whose values differ between two slices (the leaves, so `train.lr` rather
    than `train`)."""

    def leaves(prefix: str, value) -> dict:
        if isinstance(value, dict) and value:
            return {k: v for key, sub in value.items() for k, v in leaves(f"{prefix}.{key}", sub).items()}
        return {prefix: value}

    before = {k: v for key, value in (old or {}).items() for k, v in leaves(key, value).items()}
    after = {k: v for key, value in new.items() for k, v in leaves(key, value).items()}
    return sorted(k for k in before.keys() | after.keys() if before.get(k, ...) != after.get(k, ...))


def read_json_or_none(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def run(params_file: Path, out_dir: Path) -> dict[str, int]:
    """Write every slice under out_dir, drop those of stages that no longer exist; returns how
    many stages of each kind read one."""
    out_dir = Path(out_dir)
    wanted = slices(load_params(params_file))
    for rel, values in wanted.items():
        if read_json_or_none(out_dir / rel) != values:  # an unchanged slice keeps its file untouched
            write_json(out_dir / rel, values)
    for path in out_dir.rglob("*.json"):
        if path.relative_to(out_dir).as_posix() not in wanted:
            path.unlink()  # a retired round, a removed lineage
    for folder in [p for p in out_dir.iterdir() if p.is_dir()] if out_dir.is_dir() else []:
        if not any(folder.iterdir()):
            folder.rmdir()
    counts: dict[str, int] = {}
    for rel in wanted:
        counts[rel.split("/")[0]] = counts.get(rel.split("/")[0], 0) + 1
    return counts
