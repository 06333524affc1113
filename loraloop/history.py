"""Rounds that leave the DAG, and rounds that start from history.

Every round in params.yaml is five DVC stages that DVC checks on every `dvc status` and `dvc
repro`, so a lineage that keeps all its rounds there grows its no-op cost forever. `loraloop round
retire` takes finished rounds out of params.yaml and dvc.lock and records them in
retired/<lineage>.dvc, one DVC data file per lineage whose outputs are the rounds' own directories
at their own paths (models/rounds/<round>, data/rounds/<lineage>/<round>) and whose meta lists
each round's lineage, prev and adapter hash. So the paths a later round depends on do not move,
`dvc push`/`dvc pull` and `git checkout <tag>` carry the retired rounds as they carried the active
ones, their metrics stay in git (metrics/<lineage>/eval_<round>.json), and report, package and the
model card read the lineage's history from the archive and params.yaml together.

`loraloop round new ID --from SRC` declares a round that starts from base, a round (active or
retired) or a released version (`release:tutor-v0.4`: the round that version released, with the
release's adapter hash recorded, which sample and train check)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .files import parse_yaml, read_json
from .params import RETIRED, RETIRED_KEY, Params, ParamsError, RoundSpec, load_params
from .workspace import BASE, CRITICS, METRICS, RELEASES, ROUNDS, ROUNDS_DATA, VIEWS, Release, Round, Workspace

ROUND_STAGES = ("sample", "score", "critic", "train", "eval")  # dvc.yaml's stages of one round


def archive_file(root: Path, lineage: str) -> Path:
    return Path(root) / RETIRED / f"{lineage}.dvc"


def workspace_at(root: Path, params: Params) -> Workspace:
    """The project's layout under `root` (dvc.yaml's paths)."""
    return Workspace(
        params, root / BASE, root / ROUNDS, root / ROUNDS_DATA, root / METRICS, root / VIEWS, critics=root / CRITICS
    )


def round_dirs(r: Round) -> list[Path]:
    """What a retired round keeps under DVC: its model, its data (samples, scores, eval answers) and
    its critic's value head (a round retired before critics existed has none)."""
    return [r.model, r.data] + ([r.critic] if r.critic is not None and Path(r.critic).exists() else [])


def in_chain_order(params, round_ids: list[str]) -> list[str]:
    """The rounds to retire, each after its prev; refused where a round's prev would stay active."""
    unknown = [r for r in round_ids if r not in params.rounds]
    if unknown:
        retired = [r for r in unknown if r in params.retired]
        raise ParamsError(
            f"not a round of params.yaml: {', '.join(unknown)}"
            + (f" ({', '.join(retired)} already retired)" if retired else f" (rounds: {', '.join(params.rounds)})")
        )
    order = [r for r in params.rounds if r in round_ids]
    leaving = set(order)
    for r in order:
        prev = params.rounds[r].prev
        if prev != "base" and prev in params.rounds and prev not in leaving:
            raise ParamsError(f"{r} starts from {prev}, which stays in params.yaml: retire {prev} with it, or first")
    return order


def stale(root: Path, round_ids: list[str]) -> list[str]:
    """The rounds' stages that `dvc status` finds out of date (what the archive would freeze wrong)."""
    from dvc.repo import Repo

    targets = [f"{stage}@{r}" for r in round_ids for stage in ROUND_STAGES]
    with Repo(str(root)) as repo:
        return sorted(repo.status(targets=targets))


def retire(root: Path, params_file: Path, round_ids: list[str]) -> list[dict]:
    """Take the rounds out of params.yaml and dvc.lock into their lineages' archives, and record
    their directories there with `dvc commit`. Returns what was retired, a row per round."""
    root = Path(root)
    params = load_params(params_file)
    order = in_chain_order(params, round_ids)
    ws, rows = workspace_at(root, params), []
    for r in map(ws.round, order):
        missing = [p for p in (*round_dirs(r), r.model / "ROUND.json") if not p.exists()]
        if missing:
            shown = ", ".join(str(p.relative_to(root)) for p in missing)
            raise ParamsError(f"{r.id} has not run ({shown} missing): `dvc repro` it before retiring it")
        rows.append({"round": r.id, "lineage": r.lineage, "prev": r.prev.id, "adapter_hash": r.adapter_hash})
    out_of_date = stale(root, order)
    if out_of_date:
        raise ParamsError(
            f"out of date in dvc status: {', '.join(out_of_date)}; `dvc repro` first, so the archive "
            "records what dvc.lock says the rounds are"
        )
    drop_rounds(params_file, order)
    drop_locked(root / "dvc.lock", order)
    for lineage in dict.fromkeys(row["lineage"] for row in rows):
        add_to_archive(root, ws, lineage, [row for row in rows if row["lineage"] == lineage])
    commit_archives(root, sorted({row["lineage"] for row in rows}))
    return rows


def add_to_archive(root: Path, ws: Workspace, lineage: str, rows: list[dict]) -> None:
    """The rounds' specs (as params.yaml had them, with their adapter hash) into the lineage's
    archive meta, and their directories into its outputs."""
    path = archive_file(root, lineage)
    doc = parse_yaml(path.read_text(encoding="utf-8")) if path.is_file() else None
    doc = doc or {"meta": {RETIRED_KEY: {}}, "outs": []}
    listed = doc.setdefault("meta", {}).setdefault(RETIRED_KEY, {})
    for row in rows:
        spec = ws.params.rounds[row["round"]].model_dump(exclude_none=True, exclude_defaults=True)
        listed[row["round"]] = {**spec, "adapter_hash": row["adapter_hash"]}
        for d in round_dirs(ws.round(row["round"])):
            doc["outs"].append({"path": Path("..", d.relative_to(root)).as_posix()})
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (
        f"# {lineage}'s retired rounds (`loraloop round retire`): their models and data under DVC, at the\n"
        "# paths they had as stages; meta lists each round's lineage, prev and adapter hash.\n"
    )
    path.write_text(head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def commit_archives(root: Path, lineages: list[str]) -> None:
    """`dvc commit` of the archives: the outputs' hashes recorded, their files linked from the cache."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        for lineage in lineages:
            repo.commit(str(archive_file(root, lineage)), force=True)


def round_trip():
    """ruamel's round-trip YAML, set to write params.yaml as it is written: comments, quotes,
    `null`, long lines and its list indentation kept."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return rt


def edit_rounds(params_file: Path, edit) -> None:
    """params.yaml with `edit(rounds)` applied to its rounds mapping, comments and layout kept."""
    rt = round_trip()
    doc = rt.load(Path(params_file).read_text(encoding="utf-8"))
    edit(doc["rounds"])
    with open(params_file, "w", encoding="utf-8") as f:
        rt.dump(doc, f)


def drop_rounds(params_file: Path, round_ids: list[str]) -> None:
    """The rounds' entries out of params.yaml."""

    def drop(rounds):
        for r in round_ids:
            del rounds[r]

    edit_rounds(params_file, drop)


def drop_locked(lock_file: Path, round_ids: list[str]) -> None:
    """The rounds' stage entries out of dvc.lock (DVC keeps a removed stage's entry otherwise)."""
    if not lock_file.is_file():
        return
    from dvc.utils.serialize import dump_yaml, load_yaml

    lock = load_yaml(lock_file)
    names = {f"{stage}@{r}" for r in round_ids for stage in ROUND_STAGES}
    lock["stages"] = {k: v for k, v in lock.get("stages", {}).items() if k not in names}
    dump_yaml(lock_file, lock)


def resolve_start(root: Path, params, source: str, lineage: str | None) -> tuple[str, RoundSpec]:
    """What `round new --from SOURCE` means: (lineage, the new round's spec). SOURCE is base (with a
    lineage), a round of params.yaml or a retired one, or release:<version>."""
    if source == "base":
        if lineage is None:
            raise ParamsError("--from base needs --lineage")
        params.lineage(lineage)  # exists
        return lineage, RoundSpec(lineage=lineage, prev="base")
    if source.startswith("release:"):
        return from_release(root, params, source.removeprefix("release:"))
    prev = params.round(source)
    if lineage is not None and lineage != prev.lineage:
        raise ParamsError(f"{source} is a round of lineage {prev.lineage}, not {lineage}")
    return prev.lineage, RoundSpec(lineage=prev.lineage, prev=source)


def from_release(root: Path, params, version: str) -> tuple[str, RoundSpec]:
    """A released version's round, checked: the round is known (active or retired) and its adapter
    hashes as the release recorded."""
    for name in params.lineages:
        rel = Release(Path(root) / RELEASES / params.lineage(name).release)
        if (rel.version_dir(version) / "metadata.yaml").is_file():
            break
    else:
        raise ParamsError(
            f"no released version {version!r} under {RELEASES} (releases of: {', '.join(params.lineages)})"
        )
    meta = rel.metadata(version)
    round_id, want = meta["round"], meta["adapter_sha256"]
    try:
        r = params.round(round_id)
    except ParamsError:
        raise ParamsError(
            f"{version} released round {round_id}, which is neither in params.yaml nor retired here"
        ) from None
    model = workspace_at(Path(root), params).round(round_id).model
    have = read_json(model / "ROUND.json").get("adapter_hash") if (model / "ROUND.json").is_file() else None
    if have != want:
        raise ParamsError(
            f"{version}'s adapter is {want[:12]}..., but {ROUNDS / round_id} holds {str(have)[:12]}...: "
            f"restore it (`dvc pull`, or `dvc checkout {RETIRED}/{r.lineage}.dvc`)"
        )
    return r.lineage, RoundSpec(lineage=r.lineage, prev=round_id, start={"release": version, "adapter_hash": want})


def add_round(params_file: Path, round_id: str, spec: RoundSpec) -> None:
    """The round appended to params.yaml's rounds, as a one-line mapping like the others."""
    from ruamel.yaml.comments import CommentedMap

    def flow(value: dict) -> CommentedMap:
        m = CommentedMap({k: flow(v) if isinstance(v, dict) else v for k, v in value.items()})
        m.fa.set_flow_style()
        return m

    entry = flow(spec.model_dump(exclude_none=True, exclude_defaults=True))
    edit_rounds(params_file, lambda rounds: rounds.update({round_id: entry}))
