"""Rounds that leave the DAG (loraloop/history.py), under real DVC on the tiny fleet: retire a
round, start the next from a released version, push, lose the workspace and pull it back, restore
the tag from before the retirement; and what `round retire` / `round new` refuse."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import copy_repo, edit_params, repro, sh

from loraloop.files import read_json, sha256_file

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e
ROUND_STAGES = ("sample", "score", "critic", "train", "eval")


def tree(repo, *tops):
    return {
        p.relative_to(repo).as_posix(): sha256_file(p)
        for top in tops
        for p in sorted((repo / top).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def repo(tiny_fleet, tmp_path_factory):
    """The tiny fleet with tutor-r2 after tutor-r1, a local DVC remote, committed and tagged `before`."""
    repo = copy_repo(tiny_fleet[0], tmp_path_factory.mktemp("retire") / "repo")
    remote = tmp_path_factory.mktemp("remote")
    sh(repo, "dvc", "remote", "add", "-f", "-d", "here", str(remote))
    edit_params(repo, lambda p: p["rounds"].update({"tutor-r2": {"lineage": "tutor", "prev": "tutor-r1"}}))
    repro(repo)
    sh(repo, "dvc", "push", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tutor-r2")
    sh(repo, "git", "tag", "before")
    return repo


def test_a_retired_round_leaves_params_and_the_lock_and_keeps_its_outputs(repo):
    kept = tree(repo, "models/rounds/tutor-r1", "data/rounds/tutor/tutor-r1")
    out = sh(repo, "loraloop", "round", "retire", "tutor-r1").stdout
    assert "retired tutor-r1 (tutor, from base" in out

    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert "tutor-r1" not in params["rounds"] and "tutor-r2" in params["rounds"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert not {f"{s}@tutor-r1" for s in ROUND_STAGES} & set(lock)
    archive = yaml.safe_load((repo / "retired/tutor.dvc").read_text())
    entry = archive["meta"]["loraloop_retired"]["tutor-r1"]
    assert entry["prev"] == "base" and entry["lineage"] == "tutor"
    assert entry["adapter_hash"] == read_json(repo / "models/rounds/tutor-r1/ROUND.json")["adapter_hash"]
    assert {o["path"] for o in archive["outs"]} == {
        "../models/rounds/tutor-r1",
        "../data/rounds/tutor/tutor-r1",
        "../models/critics/tutor-r1",
    }
    assert all(o["md5"].endswith(".dir") for o in archive["outs"])
    assert tree(repo, "models/rounds/tutor-r1", "data/rounds/tutor/tutor-r1") == kept

    # tutor-r2 still starts from tutor-r1 at the same paths: none of its stages is out of date;
    # only the fleet stages that read params.yaml's rounds are.
    dirty = set(json.loads(sh(repo, "dvc", "status", "--json").stdout))
    assert dirty <= {"params", "leakage", "package", "report"}, dirty
    ran = repro(repo)
    assert ran <= {"params", "leakage", "package", "report"}, ran
    assert not (repo / "params/train/tutor-r1.json").exists()  # the retired round reads no params
    assert "tutor-r1" in read_json(repo / "metrics/leakage.json")  # what it measured is kept
    assert "tutor-r1" in sh(repo, "loraloop", "report").stdout
    with (repo / "reports/plots/trajectory/tutor.csv").open() as f:
        assert [row["round"] for row in csv.DictReader(f)] == ["base", "tutor-r1", "tutor-r2"]
    rounds = sh(repo, "loraloop", "round", "list").stdout
    assert "tutor\ttutor-r1\tretired\tfrom base" in rounds and "tutor\ttutor-r2\tactive\tfrom tutor-r1" in rounds
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "retire tutor-r1")


def test_a_round_starts_from_a_released_version_of_a_retired_round(repo):
    from loraloop.release import registry

    released = registry.released_versions(repo / "models/release/tutor")[0]
    meta = yaml.safe_load((repo / f"models/release/tutor/versions/{released}/metadata.yaml").read_text())
    assert meta["round"] == "tutor-r1"  # the fleet's first release, now retired
    sh(repo, "loraloop", "round", "new", "tutor-r3", "--from", f"release:{released}")
    spec = yaml.safe_load((repo / "params.yaml").read_text())["rounds"]["tutor-r3"]
    assert spec == {
        "lineage": "tutor",
        "prev": "tutor-r1",
        "start": {"release": released, "adapter_hash": meta["adapter_sha256"]},
    }
    ran = repro(repo)
    assert {f"{s}@tutor-r3" for s in ROUND_STAGES} <= ran and not any("tutor-r2" in s for s in ran), ran
    samples = (repo / "data/rounds/tutor/tutor-r3/samples.jsonl").read_text().splitlines()
    assert json.loads(samples[0])["adapter_hash"] == meta["adapter_sha256"]  # sampled from the release
    assert read_json(repo / "metrics/tutor/eval_tutor-r3.json")["delta_vs_prev"]  # against the retired round

    # The model card of tutor's next release shows the retired round's line beside the active ones.
    from loraloop.params import load_params
    from loraloop.release.package import candidates
    from loraloop.workspace import Workspace

    p = load_params(repo / "params.yaml")
    ws = Workspace(
        p, repo / "models/base", repo / "models/rounds", repo / "data/rounds", repo / "metrics", repo / "data/lineages"
    )
    c = candidates(ws, p.lineage("tutor"), read_json(repo / "metrics/leakage.json"))
    assert list(c.history) == ["tutor-r1"] and set(c.evals) == {"tutor-r2", "tutor-r3"}
    sh(repo, "dvc", "push", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tutor-r3 from the release")


def packed(tree_: dict, round_id: str) -> dict:
    """A round's files as its stage paths had them, renamed to where packing puts them."""
    homes = {
        f"models/rounds/{round_id}/": f"retired/tutor/{round_id}/model/",
        f"data/rounds/tutor/{round_id}/": f"retired/tutor/{round_id}/data/",
        f"models/critics/{round_id}/": f"retired/tutor/{round_id}/critic/",
    }
    out = {}
    for path, digest in tree_.items():
        here = next(h for h in homes if path.startswith(h))
        out[homes[here] + path.removeprefix(here)] = digest
    return out


R2 = ("models/rounds/tutor-r2", "data/rounds/tutor/tutor-r2", "models/critics/tutor-r2")


def test_rounds_no_active_round_starts_from_are_packed_into_one_output(repo):
    kept = tree(repo, *R2)
    sh(repo, "loraloop", "round", "retire", "tutor-r2")

    # tutor-r3 starts from tutor-r1, which stays at its stage paths; tutor-r2 goes into the pack.
    archive = yaml.safe_load((repo / "retired/tutor.dvc").read_text())
    assert [o["path"] for o in archive["outs"]] == [
        "tutor",
        "../models/rounds/tutor-r1",
        "../data/rounds/tutor/tutor-r1",
        "../models/critics/tutor-r1",
    ]
    listed = archive["meta"]["loraloop_retired"]
    assert listed["tutor-r2"]["packed"] is True and "packed" not in listed["tutor-r1"]
    assert not any((repo / d).exists() for d in R2)
    assert tree(repo, "retired/tutor") == packed(kept, "tutor-r2")
    untracked = sh(repo, "git", "status", "--porcelain", "--untracked-files=all").stdout
    assert "retired/tutor/" not in untracked and "tutor-r2/" not in untracked, untracked
    assert "/tutor-r2" not in (repo / "models/critics/.gitignore").read_text()  # no stale entry

    ran = repro(repo)
    assert ran <= {"params", "leakage", "package", "report"}, ran
    assert json.loads(sh(repo, "dvc", "status", "--json").stdout) == {}
    with (repo / "reports/plots/trajectory/tutor.csv").open() as f:
        assert [row["round"] for row in csv.DictReader(f)] == ["base", "tutor-r1", "tutor-r2", "tutor-r3"]
    assert "tutor\ttutor-r2\tretired\tfrom tutor-r1" in sh(repo, "loraloop", "round", "list").stdout
    sh(repo, "dvc", "push", "-q")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "retire tutor-r2, packed")


def test_a_round_from_a_packed_round_moves_it_back(repo, tmp_path):
    scratch = copy_repo(repo, tmp_path / "scratch")
    kept = tree(scratch, "retired/tutor")
    out = sh(scratch, "loraloop", "round", "new", "tutor-r4", "--from", "tutor-r2").stdout
    assert "tutor-r2 unpacked from retired/tutor/" in out
    assert packed(tree(scratch, *R2), "tutor-r2") == kept
    assert not (scratch / "retired/tutor").exists()  # the pack held tutor-r2 alone
    archive = yaml.safe_load((scratch / "retired/tutor.dvc").read_text())
    assert "tutor" not in [o["path"] for o in archive["outs"]]
    assert "../models/rounds/tutor-r2" in [o["path"] for o in archive["outs"]]
    assert "/tutor-r2" in (scratch / "models/critics/.gitignore").read_text()
    status = json.loads(sh(scratch, "dvc", "status", "--json").stdout)
    assert "retired/tutor.dvc" not in status and "sample@tutor-r4" in status, status
    deps = status["sample@tutor-r4"][0]["changed deps"]  # never run, so "modified"; a missing one is "deleted"
    assert deps["models/rounds/tutor-r2"] == "modified", deps


def test_the_archive_and_the_old_tag_restore_from_the_remote(repo, tmp_path):
    kept = tree(repo, "models/rounds/tutor-r1", "data/rounds/tutor/tutor-r1", "retired/tutor")
    clone = tmp_path / "clone"
    sh(repo, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "pull", "-q")
    assert tree(clone, "models/rounds/tutor-r1", "data/rounds/tutor/tutor-r1", "retired/tutor") == kept
    sh(clone, "git", "checkout", "-q", "before")
    sh(clone, "dvc", "pull", "-q")  # what README says: git checkout <tag> + dvc pull
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    assert {"train@tutor-r1", "train@tutor-r2"} <= set(lock)
    assert not (clone / "retired/tutor.dvc").exists()
    assert packed(tree(clone, *R2), "tutor-r2") == tree(repo, "retired/tutor")  # at its stage paths again
    status = sh(clone, "dvc", "status", "--json").stdout
    assert not {s for s in json.loads(status) if "tutor-r1" in s}, status


def test_what_round_commands_refuse(repo, tmp_path):
    scratch = copy_repo(repo, tmp_path / "scratch")
    edit_params(scratch, lambda p: p["rounds"].update({"pirate-r2": {"lineage": "pirate", "prev": "pirate-r1"}}))
    res = sh(scratch, "loraloop", "round", "retire", "pirate-r2", check=False)
    assert res.returncode == 1 and "pirate-r2 starts from pirate-r1, which stays in params.yaml" in res.stderr
    res = sh(scratch, "loraloop", "round", "retire", "pirate-r2", "pirate-r1", check=False)  # in any order
    assert res.returncode == 1 and "pirate-r2 has not run" in res.stderr and "Traceback" not in res.stderr
    res = sh(scratch, "loraloop", "round", "retire", "tutor-r1", check=False)
    assert res.returncode == 1 and "already retired" in res.stderr
    res = sh(scratch, "loraloop", "round", "new", "tutor-r9", "--from", "release:tutor-v9.9", check=False)
    assert res.returncode == 1 and "no released version 'tutor-v9.9'" in res.stderr
    res = sh(scratch, "loraloop", "round", "new", "tutor-r1", "--from", "tutor-r2", check=False)
    assert res.returncode == 1 and "tutor-r1 is already a round here" in res.stderr

    # A hand-written release prev is explained, not a path DVC would not find.
    edit_params(scratch, lambda p: p["rounds"].update({"tutor-r9": {"lineage": "tutor", "prev": "release:tutor-v0.1"}}))
    res = sh(scratch, "loraloop", "check-params", check=False)
    assert res.returncode == 1 and "loraloop round new ID --from release:VERSION" in res.stderr

    # A round declared from a release whose adapter is no longer what its prev holds is stopped.
    edit_params(scratch, lambda p: p["rounds"].pop("tutor-r9"))
    shutil.copy(scratch / "retired/tutor/tutor-r2/model/ROUND.json", scratch / "models/rounds/tutor-r1/ROUND.json")
    res = sh(scratch, "loraloop", "sample", "--round", "tutor-r3", check=False)
    assert res.returncode == 1 and "rounds.tutor-r3.start" in res.stderr and "Traceback" not in res.stderr

    # A packed round that is not in the workspace (not pulled) is not moved, nor a round declared on it.
    shutil.rmtree(scratch / "retired/tutor")
    before = (scratch / "params.yaml").read_text()
    res = sh(scratch, "loraloop", "round", "new", "tutor-r5", "--from", "tutor-r2", check=False)
    assert res.returncode == 1 and "`dvc pull` it first" in res.stderr and "Traceback" not in res.stderr
    assert (scratch / "params.yaml").read_text() == before


def test_params_edits_keep_the_files_comments_and_layout(tmp_path):
    from loraloop.history import add_round, drop_rounds
    from loraloop.params import RoundSpec, load_params

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    before = params.read_text()
    drop_rounds(params, ["pirate-r2"])
    add_round(params, "pirate-r2", RoundSpec(lineage="pirate", prev="pirate-r1"))
    # The line it took out is the line it puts back; comments and values all kept (a flow mapping
    # wrapped by hand may come back on one line).
    assert params.read_text().split() == before.split()
    hash_ = "ab" * 32
    add_round(
        params,
        "tutor-r3",
        RoundSpec(lineage="tutor", prev="tutor-r2", start={"release": "tutor-v0.2", "adapter_hash": hash_}),
    )
    text = params.read_text()
    assert text.split()[: len(before.split())] == before.split() and text.endswith(
        f"  tutor-r3: {{lineage: tutor, prev: tutor-r2, start: {{release: tutor-v0.2, adapter_hash: {hash_}}}}}\n"
    )
    assert load_params(params).rounds["tutor-r3"].start.release == "tutor-v0.2"


@pytest.mark.parametrize(
    "text,message",
    [
        ("meta: [1, 2]\n", "no meta.loraloop_retired mapping"),
        ("", "no meta.loraloop_retired mapping"),
        (
            "meta:\n  loraloop_retired:\n    tutor-r0: {lineage: tutor, prev: 7}\n",
            "tutor-r0.prev: Input should be a valid string; got 7",
        ),
        ("meta:\n  loraloop_retired:\n    tutor-r0: {lineage: tutor}\n", "tutor-r0.prev: required key is missing"),
        ("meta: {a: 1}\n\t- x", "not valid YAML"),
    ],
)
def test_a_broken_archive_is_named_with_its_key(tmp_path, text, message):
    from loraloop.params import ParamsError, load_params

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "retired").mkdir()
    (tmp_path / "retired/tutor.dvc").write_text(text)
    with pytest.raises(ParamsError, match=f"retired/tutor.dvc: .*{message}"):
        load_params(tmp_path / "params.yaml")
