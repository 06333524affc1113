"""The whole pipeline under real DVC, on the embedded SmolLM2 base, in a temp git repo with
shrunken params. The tests run in file order against one repo: each step builds on the last."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import yaml
from conftest import edit_params, project_repo, repro, sh

pytestmark = pytest.mark.e2e

ALL_STAGES_R2 = {
    "collect",
    "scrub",
    "version",
    "base",
    "eval_base",
    "sample@r1",
    "score@r1",
    "train@r1",
    "eval@r1",
    "sample@r2",
    "score@r2",
    "train@r2",
    "eval@r2",
    "package",
    "report",
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    def shrink(p):
        p["sample"].update(num_prompts=4, batch_size=4, max_new_tokens=8)
        p["eval"].update(num_prompts=4, batch_size=4, max_new_tokens=8, gates={})
        p["train"].update(steps=2, batch_size=2, max_length=160, eval_examples=2)

    return project_repo(tmp_path_factory.mktemp("e2e"), shrink)


def test_first_repro_runs_every_stage_and_writes_outputs(repo):
    assert repro(repo) == ALL_STAGES_R2
    for rel in (
        "models/base/model.safetensors",
        "models/rounds/base/ROUND.json",
        "models/rounds/r2/adapter/adapter_model.safetensors",
        "data/rounds/r1/scored.jsonl",
        "data/version/manifest.json",
        "data/version/CHANGELOG.md",
        "data/version/splits/tutor/dpo.jsonl",
        "data/scrubbed/tutor/review_sample.jsonl",
        "metrics/data.json",
        "models/release/tutor/metadata.yaml",
        "models/routing.json",
        "reports/plots/trajectory.csv",
    ):
        assert (repo / rel).is_file(), rel
    meta = yaml.safe_load((repo / "models/release/tutor/metadata.yaml").read_text())
    assert meta["round"] in {"r1", "r2"} and set(meta["evaluation"]) == {"base", "r1", "r2"}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == ALL_STAGES_R2
    table = sh(repo, "loraloop", "report").stdout
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["base", "r1", "r2"]
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "first run")


def test_second_repro_runs_nothing(repo):
    assert repro(repo) == set()


def test_code_edit_reruns_the_stages_that_run_it_and_what_follows(repo):
    """stages/score.py runs only in score@rN (tests/test_deps.py keeps dvc.yaml's deps equal to
    each stage's imports): an edit to it dirties those, reruns what their outputs feed, and
    nothing upstream."""
    path = repo / "stages/score.py"
    code = path.read_text()
    assert code.count('max(row["score"], params.weight_floor)') == 1
    path.write_text(
        code.replace('max(row["score"], params.weight_floor)', 'max(row["score"] ** 2, params.weight_floor)')
    )
    status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    assert set(status) == {"score@r1", "score@r2"}
    assert status["score@r1"] == [{"changed deps": {"stages/score.py": "modified"}}]
    ran = repro(repo)
    assert ran == {
        "score@r1",
        "train@r1",
        "eval@r1",
        "sample@r2",
        "score@r2",
        "train@r2",
        "eval@r2",
        "package",
        "report",
    }


def test_score_param_edit_reruns_only_what_it_touches(repo):
    edit_params(repo, lambda p: p["score"].update(keep_top_fraction=0.25))
    ran = repro(repo)
    assert {"score@r1", "train@r1", "eval@r1", "score@r2", "train@r2", "eval@r2", "package", "report"} <= ran
    assert not ran & {"collect", "scrub", "version", "base", "eval_base", "sample@r1"}


def test_adding_a_round_runs_only_that_round(repo):
    edit_params(repo, lambda p: p["rounds"].update(r3={"prev": "r2"}))
    assert repro(repo) == {"sample@r3", "score@r3", "train@r3", "eval@r3", "package", "report"}
    assert (repo / "metrics/eval_r3.json").is_file()


def test_dpo_on_sampled_pairs(repo):
    """Three samples per prompt, best vs worst as pairs (and the users' feedback pairs), DPO against
    the adapter-disabled base."""
    edit_params(
        repo,
        lambda p: (
            p["sample"].update(samples_per_prompt=3),
            p["score"].update(pair_min_margin=0.0),
            p["train"].update(method="dpo", init="fresh"),
        ),
    )
    ran = repro(repo)
    assert {"sample@r1", "score@r1", "train@r1", "eval@r1", "sample@r3", "train@r3"} <= ran
    assert not ran & {"collect", "scrub", "version", "base", "eval_base"}
    pairs = (repo / "data/rounds/r1/pairs.jsonl").read_text().splitlines()
    info = yaml.safe_load((repo / "models/rounds/r1/ROUND.json").read_text())
    assert info["train"]["method"] == "dpo" and info["train"]["pairs"] == len(pairs) >= 1
    assert info["train"]["feedback_pairs"] >= 1
    m = yaml.safe_load((repo / "metrics/eval_r1.json").read_text())
    base = yaml.safe_load((repo / "metrics/eval_base.json").read_text())
    assert m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
    assert 0.0 <= m["meta_leak_rate"] <= 1.0 and m["mean_turn_depth"] >= 1.0
    assert m["delta_vs_base"]["eval_loss"] == pytest.approx(m["eval_loss"] - base["eval_loss"])


def test_exp_show_has_per_round_metric_columns(repo):
    out = sh(repo, "dvc", "exp", "show", "--no-pager", "--csv").stdout
    header = next(csv.reader(io.StringIO(out)))
    for rid in ("base", "r1", "r2", "r3"):
        for metric in ("mean_score", "question_ratio", "mean_response_chars", "followup_rate"):
            assert f"metrics/eval_{rid}.json:{metric}" in header


def test_mistyped_param_fails_before_any_work(repo):
    lock_before = (repo / "dvc.lock").read_bytes()
    edit_params(repo, lambda p: p["train"].update(steps="many"))
    res = sh(repo, "dvc", "repro", check=False)
    assert res.returncode != 0
    assert "train.steps" in res.stdout + res.stderr and "integer" in res.stdout + res.stderr
    assert (repo / "dvc.lock").read_bytes() == lock_before
