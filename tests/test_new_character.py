"""Adding a character touches only that character: README's "Adding a character" recipe under real
DVC on the tiny fleet, and the errors and warnings a small character meets on the way (an empty
split, a key no data has, a reshuffle, few eval prompts, a round below the base, a missing route)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from conftest import ROOT, copy_repo, edit_params, sh, write_lines

from loraloop.data.manifest import character_warnings
from loraloop.data.splits import EmptySplit, write_view
from loraloop.files import read_json, write_json
from loraloop.judge import report
from loraloop.params import load_params
from loraloop.release.routing import missing_route
from loraloop.serve.status import change_warnings
from loraloop.workspace import Workspace

FIXTURE = ROOT / "tests/fixtures/study_buddy_sharegpt.json"


def readme_recipe() -> tuple[dict, str]:
    """The params.yaml block and the shell block of README's "Adding a character" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Adding a character", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    (params,) = [b for lang, b in blocks if lang == "yaml"]
    (shell,) = [b for lang, b in blocks if lang == "sh"]
    return yaml.safe_load(params), shell


def add_recipe(raw: dict, recipe: dict) -> None:
    raw["collect"]["sources"] += recipe["collect"]["sources"]
    raw["lineages"].update(recipe["lineages"])
    raw["rounds"].update(recipe["rounds"])


def ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


@pytest.mark.e2e
def test_the_readme_recipe_adds_a_character_and_reruns_nothing_of_the_others(tiny_fleet, tmp_path):
    repo = copy_repo(tiny_fleet[0], tmp_path / "repo")
    recipe, shell = readme_recipe()
    before = {p: (repo / p).read_bytes() for p in ("models/routing.json", "reports/package.json")}
    lock_before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]

    shutil.copy(FIXTURE, repo / "data/raw/study_buddy.json")
    edit_params(repo, lambda raw: add_recipe(raw, recipe))
    for command in ("loraloop check-params", "loraloop status", "dvc repro", "loraloop report", "loraloop route aria"):
        assert command in shell  # the commands below are the recipe's

    checked = sh(repo, "loraloop", "check-params")
    assert "warning" not in checked.stderr and "3 lineages" in checked.stdout
    status = sh(repo, "loraloop", "status").stdout
    assert "train@aria-r2" in status and "warning" not in status  # no other lineage retrains

    stages = ran(sh(repo, "dvc", "repro").stdout)
    aria = {"view@aria", "eval_base@aria", "judge@aria"} | {
        f"{s}@aria-{r}" for s in ("sample", "score", "critic", "train", "eval") for r in ("r1", "r2")
    }
    fleet_wide = {"collect", "scrub", "version", "persona", "leakage", "package", "report"}
    # The other views re-check their files and come out byte-identical: nothing of theirs after them runs.
    assert stages == aria | fleet_wide | {"params", "view@tutor", "view@pirate"}
    lock_after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for name in ("tutor", "pirate"):
        assert lock_after[f"view@{name}"]["outs"] == lock_before[f"view@{name}"]["outs"]
        for stage in (s for s in lock_before if s.endswith(f"@{name}-r1") or s == f"eval_base@{name}"):
            assert lock_after[stage] == lock_before[stage], stage

    manifest = read_json(repo / "data/version/manifest.json")
    assert manifest["records"]["aria/eval.jsonl"] == 8  # version.min_eval; the hash split gives 5
    assert read_json(repo / "models/rounds/aria-r1/ROUND.json")["train"]["steps"] == 40  # the round's own key
    decisions = read_json(repo / "reports/package.json")
    for name in ("tutor", "pirate"):
        assert decisions[name]["released"] is False and decisions[name]["version"] == f"{name}-v0.1"
    routing = read_json(repo / "models/routing.json")
    assert {k: v for k, v in routing.items() if k != "aria"} == json.loads(before["models/routing.json"])
    assert routing["aria"]["stable"]["version"] == "aria-v0.1"

    table = sh(repo, "loraloop", "report")
    lines = table.stdout.split("\n\n")[0].splitlines()  # the rounds' table (the judges' follow it)
    assert lines[0].split()[:3] == ["lineage", "round", "n"]
    assert [line.split()[:3] for line in lines[2:] if line.startswith("aria")] == [
        ["aria", r, "4"] for r in ("base", "aria-r1", "aria-r2")
    ]
    assert "warning: aria: its eval rests on 4 prompt(s) (under 8)" in table.stderr
    assert sh(repo, "loraloop", "route", "aria", "--user", "u1").stdout.startswith("aria-v0.1\t")
    assert sh(repo, "dvc", "status").stdout.strip().endswith("Data and pipelines are up to date.")


def test_a_view_without_eval_records_stops_in_one_line_naming_the_lineage_and_the_fix(tmp_path):
    version = tmp_path / "version"
    rows = [{"id": f"r{i}", "character_id": "aria", "messages": []} for i in range(3)]
    write_lines(version / "splits/aria/train.jsonl", rows)
    with pytest.raises(EmptySplit) as err:
        write_view("aria", ["aria"], version, tmp_path / "view")
    message = str(err.value)
    assert "\n" not in message and message.startswith("lineage 'aria': no eval records")
    assert "(3 train)" in message and "version.min_eval" in message
    assert not (tmp_path / "view").exists()


def test_check_params_names_a_character_no_data_has(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["lineages"]["aria"] = {"system_prompts": {"arya": "You are Aria."}, "rules": {}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    p = load_params(tmp_path / "params.yaml")
    manifest = {"records": {"tutor/train.jsonl": 9, "pirate/eval.jsonl": 3, "aria/train.jsonl": 20}}
    (warning, untrained) = character_warnings(p, manifest)
    assert warning.startswith("lineages.aria.system_prompts.arya: 'arya' is in neither the dataset version")
    assert "known: aria, pirate, tutor" in warning
    assert untrained == "character 'aria' has data in the dataset version but no lineage trains on it"
    res = sh(tmp_path, "loraloop", "check-params")
    assert "warning: lineages.aria.system_prompts.arya" in res.stderr  # before any data: no manifest here
    assert character_warnings(load_params(ROOT / "params.yaml"), read_json(ROOT / "data/version/manifest.json")) == []


def test_a_lineage_without_rules_is_refused_with_the_fix(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["lineages"]["aria"] = {"system_prompts": {"aria": "You are Aria."}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    res = sh(tmp_path, "loraloop", "check-params", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "lineages.aria.rules: required key is missing (write `rules: {}`" in res.stderr


def test_status_warns_before_a_reshuffle_and_before_retraining_several_lineages(tmp_path):
    p = load_params(ROOT / "params.yaml")
    lock = {"stages": {"version": {"params": {"params.yaml": {"version": {"eval_fraction": 0.1, "min_eval": 8}}}}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (reshuffle, retrain) = change_warnings(p, tmp_path, ["version", "train@tutor-r1", "train@pirate-r1"])
    assert reshuffle.startswith("version.eval_fraction changed (0.1 -> 0.15): every character's train/eval split")
    assert "version.min_eval instead" in reshuffle
    assert retrain.startswith("`dvc repro` would retrain 2 lineages (pirate: pirate-r1; tutor: tutor-r1)")
    lock["stages"]["version"]["params"]["params.yaml"]["version"] = p.version.model_dump()
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert change_warnings(p, tmp_path, ["train@tutor-r1", "train@tutor-r2", "eval@pirate-r1"]) == []


def test_report_warns_on_few_prompts_and_a_round_below_the_base(tmp_path):
    p = load_params(ROOT / "params.yaml")
    ws = Workspace(p, metrics=tmp_path / "metrics")
    scores = {"base": 0.60, "tutor-r1": 0.55, "tutor-r2": 0.70, "pirate-r1": 0.9, "pirate-r2": 0.9}
    for round_id, score in scores.items():
        for lineage in ("tutor", "pirate") if round_id == "base" else (p.rounds[round_id].lineage,):
            n = 5 if lineage == "tutor" else 32
            write_json(ws.round(round_id, lineage).metrics, {"n": n, "mean_score": score, "passed": True})
    warnings = report.warnings(ws)
    assert warnings == [
        "tutor: its eval rests on 5 prompt(s) (under 8): one reply moves a rate by 0.20; add conversations "
        "or raise version.min_eval",
        "tutor: tutor-r1 0.550 score below the base on mean_score (0.600)",
    ]
    assert report.table(ws).splitlines()[2].split()[:3] == ["tutor", "base", "5"]


def test_a_missing_route_says_why():
    p = load_params(ROOT / "params.yaml")
    decisions = {"pirate": {"reason": "pirate-r2 failed its gates: mean_score 0.41 < 0.5; pirate-r1 failed its gates"}}
    routing = {"tutor": {}}
    assert missing_route("pirate", routing, p, decisions) == (
        "no route 'pirate': package released no round of lineage 'pirate': " + decisions["pirate"]["reason"]
    )
    assert (
        missing_route("aria", routing, p, decisions)
        == "no route 'aria': no lineage in params.yaml serves it (routes: tutor)"
    )
    assert "not packaged yet" in missing_route("tutor", {}, p, {})
    assert "package released no round" in missing_route("pirate", routing, None, decisions)
