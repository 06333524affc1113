"""The whole pipeline under real DVC, on the embedded SmolLM2 base, in a temp git repo with
shrunken params and the tutor lineage (tests/test_fleet.py runs several lineages on the tiny
model). The tests run in file order against one repo: each step builds on the last."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml
from conftest import edit_params, only_lineages, project_repo, repro, sh

pytestmark = pytest.mark.e2e


def round_stages(*rounds: str) -> set[str]:
    return {f"{stage}@{r}" for stage in ("sample", "score", "critic", "train", "eval") for r in rounds}


FLEET = {"leakage", "package", "report"}
ALL_STAGES_R2 = (
    {"code", "params", "collect", "scrub", "version", "base", "view@tutor", "eval_base@tutor", "judge@tutor", "persona"}
    | FLEET
    | round_stages("tutor-r1", "tutor-r2")
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    def shrink(p):
        only_lineages(p, "tutor")
        p["sample"].update(num_prompts=4, batch_size=4, max_new_tokens=8)
        p["eval"].update(num_prompts=4, batch_size=4, max_new_tokens=8, gates={})
        p["train"].update(steps=2, batch_size=2, max_length=160, eval_examples=2)
        p["judge"].update(max_length=64, base_replies=20)
        for spec in p["rounds"].values():  # the demo's heads, reading replies to a few more prompts
            if "mtp_head_prompts" in spec.get("train", {}):
                spec["train"]["mtp_head_prompts"] = 8

    # Without the shipped dvc.lock: it also records the pirate lineage's stages, which this
    # tutor-only repo does not have (DVC keeps a removed stage's entry).
    return project_repo(tmp_path_factory.mktemp("e2e"), shrink, setup=lambda repo: (repo / "dvc.lock").unlink())


def test_first_repro_runs_every_stage_and_writes_outputs(repo):
    assert repro(repo) == ALL_STAGES_R2
    for rel in (
        "models/base/model.safetensors",
        "models/rounds/base/ROUND.json",
        "models/rounds/tutor-r2/adapter/adapter_model.safetensors",
        "data/rounds/tutor/tutor-r1/scored.jsonl",
        "data/lineages/tutor/splits/tutor/train.jsonl",
        "data/version/manifest.json",
        "data/version/CHANGELOG.md",
        "data/version/splits/tutor/dpo.jsonl",
        "data/scrubbed/tutor/review_sample.jsonl",
        "metrics/data.json",
        "models/release/tutor/metadata.yaml",
        "models/routing.json",
        "reports/plots/trajectory/tutor.csv",
    ):
        assert (repo / rel).is_file(), rel
    meta = yaml.safe_load((repo / "models/release/tutor/metadata.yaml").read_text())
    assert meta["round"] in {"tutor-r1", "tutor-r2"} and set(meta["evaluation"]) == {"base", "tutor-r1", "tutor-r2"}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == ALL_STAGES_R2
    table = sh(repo, "loraloop", "report").stdout
    assert [line.split()[:2] for line in table.split("\n\n")[0].splitlines()[2:]] == [
        ["tutor", "base"],
        ["tutor", "tutor-r1"],
        ["tutor", "tutor-r2"],
    ]
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "first run")


def test_second_repro_runs_nothing(repo):
    assert repro(repo) == set()


def test_a_code_or_param_edit_reruns_what_reads_it_and_what_follows(repo):
    """loraloop/judge/score.py runs only in score@<round> (code/score.json lists it, no other kind's
    fingerprint does) and score.keep_top_fraction is read only by score: each edit dirties exactly
    the two score stages (the code edit through the code stage, which `loraloop status` sees
    through); the repro reruns them, what their outputs feed, and nothing upstream. (One repro for
    both edits: the pipeline on the real model is the slow part.)"""
    path = repo / "loraloop/judge/score.py"
    code = path.read_text()
    assert code.count('max(row["score"], params.weight_floor)') == 1
    path.write_text(
        code.replace('max(row["score"], params.weight_floor)', 'max(row["score"] ** 2, params.weight_floor)')
    )
    status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    assert status == {"code": [{"changed deps": {"loraloop": "modified"}}]}  # DVC sees the source tree move
    mine = json.loads(sh(repo, "loraloop", "status", "--json").stdout)  # and loraloop which stages it moves
    assert mine["stale"] == ["code", "score@tutor-r1", "score@tutor-r2"]
    assert "sample@tutor-r1" not in mine["repro_will_run"] and "train@tutor-r2" in mine["repro_will_run"]
    edit_params(repo, lambda p: p["score"].update(keep_top_fraction=0.25))
    status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    assert set(status) == {"code", "params"}  # DVC sees params.yaml move; the params stage reads it
    mine = json.loads(sh(repo, "loraloop", "status", "--json").stdout)  # and loraloop which stages read the key
    assert mine["stale"] == ["code", "params", "score@tutor-r1", "score@tutor-r2"]
    assert mine["params_changed"] == {f"score@{r}": ["score.keep_top_fraction"] for r in ("tutor-r1", "tutor-r2")}
    assert repro(repo) == round_stages("tutor-r1", "tutor-r2") - {"sample@tutor-r1"} | FLEET | {"code", "params"}
    assert "loraloop/judge/score.py" in (repo / "code/score.json").read_text()


def test_exp_show_has_per_round_metric_columns(repo):
    out = sh(repo, "dvc", "exp", "show", "--no-pager", "--csv").stdout
    header = next(csv.reader(io.StringIO(out)))
    for rid in ("base", "tutor-r1", "tutor-r2"):
        for metric in ("mean_score", "question_ratio", "mean_response_chars", "followup_rate"):
            assert f"metrics/tutor/eval_{rid}.json:{metric}" in header


def test_mistyped_param_fails_before_any_work(repo):
    lock_before = (repo / "dvc.lock").read_bytes()
    edit_params(repo, lambda p: p["train"].update(steps="many"))
    res = sh(repo, "dvc", "repro", check=False)
    assert res.returncode != 0
    assert "train.steps" in res.stdout + res.stderr and "integer" in res.stdout + res.stderr
    assert (repo / "dvc.lock").read_bytes() == lock_before
