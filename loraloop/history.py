"""Rounds that leave the DAG, and rounds that start from history.

Every round in params.yaml is five DVC stages that DVC checks on every `dvc status` and `dvc
repro`, so a lineage that keeps all its rounds there grows its no-op cost forever. `loraloop round
retire` takes finished rounds out of params.yaml and dvc.lock and records them in
retired/<lineage>.dvc, one DVC data file per lineage whose meta lists each round's lineage, prev
and adapter hash. Its outputs are few, however long the history: the rounds no active round starts
from are packed into one directory, retired/<lineage>/<round>/{model,data,critic}; a round an
active one starts from stays at its stage paths (models/rounds/<round>, data/rounds/<lineage>/<round>,
models/critics/<round>), so that round's dependencies do not move (`round new --from` a packed
round moves it back). `dvc push`/`dvc pull` and `git checkout <tag>` carry the retired rounds as
they carried the active ones, their metrics stay in git (metrics/<lineage>/eval_<round>.json), and
report, package and the model card read the lineage's history from the archive and params.yaml
together.

`loraloop round new ID --from SRC` declares a round that starts from base, a round (active or
retired) or a released version (`release:tutor-v0.4`: the round that version released, with the
release's adapter hash recorded, which sample and train check)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from .files import parse_yaml, read_json
from .params import RETIRED, RETIRED_KEY, Params, ParamsError, RoundSpec, load_params
from .workspace import (
    BASE,
    CRITICS,
    METRICS,
    RELEASES,
    ROUNDS,
    ROUNDS_DATA,
    VIEWS,
    Release,
    Round,
    Workspace,
)

ROUND_STAGES = ("sample", "score", "critic", "train", "eval")  # dvc.yaml's stages of one round


def archive_file(root: Path, lineage: str) -> Path:
    return Path(root) / RETIRED / f"{lineage}.dvc"


def workspace_at(root: Path, params: Params) -> Workspace:
    """The project's layout under `root` (dvc.yaml's paths)."""
    return Workspace(
        params,
        root / BASE,
        root / ROUNDS,
        root / ROUNDS_DATA,
        root / METRICS,
        root / VIEWS,
        critics=root / CRITICS,
        retired=root / RETIRED,
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


def stale(root: Path, round_ids: list[str], lineages: list[str]) -> list[str]:
    """The rounds' stages and the lineages' archives that `dvc status` finds out of date (what the
    archive would freeze wrong, or lose: an archive not pulled)."""
    from dvc.repo import Repo

    targets = [f"{stage}@{r}" for r in round_ids for stage in ROUND_STAGES]
    targets += [str(p) for p in (archive_file(root, lineage) for lineage in lineages) if p.is_file()]
    with Repo(str(root)) as repo:
        return sorted(repo.status(targets=targets))


def retire(root: Path, params_file: Path, round_ids: list[str]) -> list[dict]:
    """Take the rounds out of params.yaml and dvc.lock into their lineages' archives, pack the
    retired rounds no active round starts from, and record it all with `dvc commit`. Returns what
    was retired, a row per round."""
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
    lineages = sorted({row["lineage"] for row in rows})
    out_of_date = stale(root, order, lineages)
    if out_of_date:
        raise ParamsError(
            f"out of date in dvc status: {', '.join(out_of_date)}; `dvc repro` (or `dvc pull` an archive) "
            "first, so the archive records what dvc.lock says the rounds are"
        )
    drop_rounds(params_file, order)
    drop_locked(root / "dvc.lock", order)
    for lineage in lineages:
        add_to_archive(root, ws, lineage, [row for row in rows if row["lineage"] == lineage])
        arrange(root, params_file, lineage)
    return rows


def add_to_archive(root: Path, ws: Workspace, lineage: str, rows: list[dict]) -> None:
    """The rounds' specs (as params.yaml had them, with their adapter hash) into the lineage's
    archive meta; arrange() then lays out their directories."""
    doc = read_archive(root, lineage)
    listed = doc["meta"][RETIRED_KEY]
    for row in rows:
        spec = ws.params.rounds[row["round"]].model_dump(exclude_none=True, exclude_defaults=True)
        listed[row["round"]] = {**spec, "adapter_hash": row["adapter_hash"]}
    write_archive(root, lineage, doc)


def read_archive(root: Path, lineage: str) -> dict:
    path = archive_file(root, lineage)
    doc = parse_yaml(path.read_text(encoding="utf-8")) if path.is_file() else None
    doc = doc or {}
    doc.setdefault("meta", {}).setdefault(RETIRED_KEY, {})
    doc.setdefault("outs", [])
    return doc


def write_archive(root: Path, lineage: str, doc: dict) -> None:
    path = archive_file(root, lineage)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (
        f"# {lineage}'s retired rounds (`loraloop round retire`): meta lists each round's lineage, prev and\n"
        f"# adapter hash. Packed rounds live in {lineage}/<round>/{{model,data,critic}}, one output; a round an\n"
        "# active round starts from stays at its stage paths, so that round's dependencies do not move.\n"
    )
    path.write_text(head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def arrange(root: Path, params_file: Path, lineage: str, keep: frozenset[str] = frozenset()) -> None:
    """The lineage's retired rounds laid out for the fewest DVC outputs: those no active round
    starts from (nor `keep` names) packed into retired/<lineage>/, one output however many there
    are; the others at their stage paths. Moves what must move, rewrites the archive's outputs and
    commits them (the files are already in the cache: nothing is copied)."""
    root = Path(root)
    params = load_params(params_file)
    ws = workspace_at(root, params)
    needed = {spec.prev for spec in params.rounds.values()} | set(keep)
    doc = read_archive(root, lineage)
    listed, in_place, left, came_back = doc["meta"][RETIRED_KEY], [], [], []
    for round_id in params.retired_of(lineage):
        pack = round_id not in needed
        if bool(listed[round_id].get("packed")) != pack:
            for here, inside in ws.homes(lineage, round_id):
                src, dst = (here, inside) if pack else (inside, here)
                if src.exists():
                    move(src, dst)
                    (left if pack else came_back).append(here)
        if pack:
            listed[round_id]["packed"] = True
        else:
            listed[round_id].pop("packed", None)
            in_place += [here for here, _ in ws.homes(lineage, round_id) if here.exists()]
    pack_dir = root / RETIRED / lineage
    prune(pack_dir)
    packed = [pack_dir] if pack_dir.is_dir() else []
    doc["outs"] = [{"path": Path(os.path.relpath(out, root / RETIRED)).as_posix()} for out in packed + in_place]
    write_archive(root, lineage, doc)
    gone = [] if packed else [pack_dir]  # the last packed round went back to its stage paths
    commit_archive(root, lineage, unignore=[*left, *gone], ignore=[*came_back, *packed])


def move(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)  # a stale copy: `src` is what the archive recorded (dvc status was clean)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))


def prune(pack_dir: Path) -> None:
    """The pack's directories that unpacking left empty, itself included."""
    for d in [*pack_dir.glob("*"), pack_dir]:
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def commit_archive(root: Path, lineage: str, unignore: list[Path], ignore: list[Path]) -> None:
    """`dvc commit` of the archive (the outputs' hashes recorded, their files linked from the
    cache), and .gitignore told which directories DVC now keeps out of git."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.commit(str(archive_file(root, lineage)), force=True)
        for path in unignore:
            repo.scm_context.ignore_remove(os.path.abspath(path))
        for path in ignore:
            repo.scm_context.ignore(os.path.abspath(path))


def bring_back(root: Path, params_file: Path, params: Params, round_id: str) -> bool:
    """A packed retired round that a new round is to start from, moved back to its stage paths
    (where the new round's stages depend on it). False when it is not packed."""
    if round_id == "base" or not params.round(round_id).packed:
        return False
    lineage = params.round(round_id).lineage
    out_of_date = stale(root, [], [lineage])
    if out_of_date:
        raise ParamsError(f"{', '.join(out_of_date)} is not in the workspace as recorded: `dvc pull` it first")
    arrange(root, params_file, lineage, keep=frozenset({round_id}))
    return True


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
