"""Shared fixtures: a tiny random Llama with the real SmolLM2 tokenizer, and a small dataset."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# No usage reports from the DVC processes the tests start (there is no network to send them to).
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny random model (tests/tiny_model.py); a copy `make gpu-wheels` prepared where
    LORALOOP_TINY_MODEL names it (a machine without the GGUF wheel)."""
    import tiny_model

    ready = os.environ.get("LORALOOP_TINY_MODEL")
    if ready:
        return Path(ready)
    return tiny_model.build(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_base(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model materialized by the base stage (source: local), as a project would have it:
    returns the models/ directory holding base/ and rounds/base/."""
    from loraloop.lm import materialize
    from loraloop.params import BaseParams

    models = tmp_path_factory.mktemp("models")
    materialize.run(BaseParams(source="local", path=str(tiny_model_dir)), models / "base", models / "rounds")
    return models


def small_params(lineages=("tutor",), **train_overrides):
    """The shipped params.yaml, shrunk for the tiny model, with only the given lineages and their
    rounds; train keys overridden as given."""
    from loraloop.params import Params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["lineages"] = {k: v for k, v in raw["lineages"].items() if k in lineages}
    raw["rounds"] = {k: v for k, v in raw["rounds"].items() if v["lineage"] in lineages}
    for spec in raw["rounds"].values():  # the test's train keys, not the demo's per-round ones
        spec.pop("train", None)
    raw["sample"].update(num_prompts=6, batch_size=4, max_new_tokens=8, samples_per_prompt=1, max_negatives=0)
    raw["score"].update(keep_top_k=None)
    raw["eval"].update(num_prompts=4, batch_size=4, max_new_tokens=8)
    raw["train"].update({"steps": 3, "batch_size": 2, "max_length": 256, "eval_examples": 4, **train_overrides})
    return Params.model_validate(raw)


@pytest.fixture(scope="session")
def project(tiny_base, demo_version, tmp_path_factory):
    """A workspace with models/ (tiny base), data/version/ from the demo data and every lineage's
    view of it under lineages/<lineage>."""
    from loraloop.data.splits import write_view

    root = tmp_path_factory.mktemp("project")
    shutil.copytree(tiny_base, root / "models")
    shutil.copytree(demo_version, root / "version")
    p = small_params(lineages=("tutor", "pirate"))
    for name in p.lineages:
        write_view(name, p.lineage(name).characters, root / "version", root / "lineages" / name)
    return root


def workspace(p, root: Path):
    """The `project` fixture's layout as a workspace: rounds' data under rounds/, models under
    models/rounds/, evaluations under metrics/, lineage views under lineages/."""
    from loraloop.workspace import Workspace

    return Workspace(
        p,
        root / "models/base",
        root / "models/rounds",
        root / "rounds",
        root / "metrics",
        views=root / "lineages",
        version=root / "version",
        critics=root / "models/critics",
    )


def round_in(p, root: Path, rid: str, model: Path | None = None):
    """Round `rid` of the `project` fixture's layout, its model written to `model` if given."""
    import dataclasses

    r = workspace(p, root).round(rid)
    return r if model is None else dataclasses.replace(r, model=model)


def run_round(p, root: Path, rid: str, out_name: str | None = None, stop_after: int | None = None) -> Path:
    """sample, score, critic and train of one round, in-process; out_name keeps variants apart."""
    import dataclasses

    from loraloop.judge import critic, score
    from loraloop.lm import sampling
    from loraloop.train import loop as train

    ws = workspace(p, root)
    r = ws.round(rid)
    if out_name:
        parent = lambda path: path.parent / out_name  # noqa: E731
        r = dataclasses.replace(r, data=parent(r.data), model=parent(r.model), critic=parent(r.critic))
    sampling.run(p, r, ws.base)
    score.run(p.score_of(r.lineage), r.samples, r.scored, r.pairs)
    critic.run(p, r, ws.base, r.critic, root / "metrics" / r.lineage / f"critic_{r.critic.name}.json")
    train.run(p, r, ws.base, root / "checkpoints" / r.model.name, stop_after=stop_after)
    return r.model


@pytest.fixture(scope="session")
def r1(project) -> Path:
    """Round tutor-r1 trained with small_params() (its data under project/rounds/tutor/tutor-r1)."""
    return run_round(small_params(), project, "tutor-r1")


@pytest.fixture(scope="session")
def r2(project, r1) -> Path:
    """Round tutor-r2, continuing tutor-r1's adapter."""
    return run_round(small_params(), project, "tutor-r2")


def conversation(user: str, assistant: str, character_id: str = "tutor", **extra) -> dict:
    return {
        "character_id": character_id,
        "opt_in": True,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        **extra,
    }


def write_lines(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="session")
def demo_version(tmp_path_factory) -> Path:
    """The demo raw data run through collect, scrub and version: a real data/version directory."""
    from loraloop.data import collect, scrub, version
    from loraloop.params import load_params

    root = tmp_path_factory.mktemp("demo_data")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/make_demo_data.py"), "--out", str(root / "raw")],
        check=True,
        capture_output=True,
    )
    params = load_params(ROOT / "params.yaml")
    for folder in ("served", "negatives"):  # what serve and monitor write to, empty in the demo
        (root / "raw" / folder).mkdir(parents=True, exist_ok=True)
    raw = lambda p: str(root / "raw" / Path(p).name)  # noqa: E731
    sources = params.collect.model_copy(
        update={
            "sources": [s.model_copy(update={"path": raw(s.path)}) for s in params.collect.sources],
            "deletions": [raw(p) for p in params.collect.deletions],
        }
    )
    collect.run(sources, root / "collected")
    scrub.run(params.scrub, root / "collected/records.jsonl", root / "scrubbed", root / "metrics/data.json")
    version.run(params.version, root / "scrubbed", root / "version", data_metrics=root / "metrics/data.json")
    return root / "version"


def copy_project(dst: Path) -> Path:
    """The project's tracked files (as a clone would have them) copied into dst."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


BIN = Path(sys.executable).parent


def sh(repo: Path, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command in a project copy; `loraloop` there runs that copy's stages/ (PYTHONPATH), so an
    edit to its code is what DVC reruns."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo), **(env or {})}
    res = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def repro(repo: Path) -> set[str]:
    out = sh(repo, "dvc", "repro").stdout
    return set(re.findall(r"Running stage '([^']+)'", out))


def edit_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))


def only_lineages(raw: dict, *names: str) -> None:
    """Keep only these lineages, and their rounds, in a raw params dict."""
    raw["lineages"] = {k: v for k, v in raw["lineages"].items() if k in names}
    raw["rounds"] = {k: v for k, v in raw["rounds"].items() if v["lineage"] in names}


def project_repo(dst: Path, edit, setup=None) -> Path:
    """The project copied into a fresh git repo, params edited, committed. `setup(repo)` runs
    before the commit (e.g. to configure a remote)."""
    dst.mkdir(parents=True, exist_ok=True)
    repo = copy_project(dst)
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "ci@example.com")
    sh(repo, "git", "config", "user.name", "ci")
    edit_params(repo, edit)
    if setup:
        setup(repo)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "fixture")
    return repo


FLEET_LINEAGES = ("tutor", "pirate")


@pytest.fixture(scope="session")
def tiny_fleet(tmp_path_factory, tiny_model_dir):
    """A project repo on the tiny model with both lineages (one round each), built by `dvc repro`
    and committed once per session: (repo, the stages that first repro ran). Modules copy it
    (`copy_repo`) instead of building their own."""

    def shrink(p):
        p["base"].update(source="local", path=str(tiny_model_dir))
        p["sample"].update(num_prompts=4, batch_size=4, max_new_tokens=6, samples_per_prompt=1)
        p["score"].update(keep_top_k=None)
        p["eval"].update(num_prompts=4, batch_size=4, max_new_tokens=6, gates={}, leakage_prompts=2)
        p["train"].update(steps=2, batch_size=2, max_length=192, eval_examples=2)
        p["judge"].update(max_length=48)
        for lineage in p["lineages"].values():
            lineage.pop("gates", None)  # the tiny random model passes no real gate
        p["rounds"] = {f"{name}-r1": {"lineage": name, "prev": "base"} for name in FLEET_LINEAGES}

    def build(where: Path) -> tuple[Path, set[str]]:
        repo = project_repo(where / "repo", shrink)
        ran = repro(repo)
        sh(repo, "git", "add", "-A")
        sh(repo, "git", "commit", "-qm", "both lineages")
        return repo, ran

    return built_once(tmp_path_factory, "fleet", build)


def built_once(tmp_path_factory, name: str, build):
    """build(dir) -> (repo, stages run), once per test session: under pytest-xdist the workers
    share one build (the first to ask builds it under a file lock, the others wait and read it)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / name  # the session's directory, above the workers'
    with FileLock(str(shared) + ".lock"):
        done = shared / "ran.json"
        if not done.is_file():
            shared.mkdir(exist_ok=True)
            repo, ran = build(shared)
            done.write_text(json.dumps({"repo": str(repo), "ran": sorted(ran)}))
        got = json.loads(done.read_text())
    return Path(got["repo"]), set(got["ran"])


def copy_repo(src: Path, dst: Path) -> Path:
    """A copy of a built repo (workspace, git, DVC cache): its own to change."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


# The longest test files first: `make test` hands files to its workers in collection order, so a
# long file collected last would run alone at the end (tests/test_e2e.py is about 8 minutes).
SLOW_FIRST = (
    "test_e2e.py",
    "test_fleet.py",
    "test_new_character.py",
    "test_s3_restore.py",
    "test_retire.py",
    "test_serve_clients.py",
    "test_model_stages.py",
    "test_faults.py",
    "test_serve.py",
    "test_gpu_check.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order
