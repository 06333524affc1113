"""params/<kind>/<name>.json: the keys each lineage's and round's stage reads, which it depends on
instead of params.yaml (loraloop/params_deps.py). A key missing from a slice means `dvc repro`
says "up to date" after an edit that changes the stage's output; the checks here are that dvc.yaml
and the table agree, that an edit moves exactly the slices of the stages that read it, and that
the params stage leaves an unchanged slice's file alone."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from loraloop import params_deps
from loraloop.params import Params, load_params

ROOT = Path(__file__).resolve().parents[1]


def demo_raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def sliced(raw: dict) -> dict[str, dict]:
    return params_deps.slices(Params.model_validate(raw))


def moved(edit) -> set[str]:
    raw = demo_raw()
    before = sliced(raw)
    edited = copy.deepcopy(raw)
    edit(edited)
    after = sliced(edited)
    assert set(before) == set(after)
    return {rel.removesuffix(".json").replace("/", "@") for rel in before if before[rel] != after[rel]}


def test_dvc_yaml_and_the_table_agree():
    """Each foreach stage depends on its slice and declares no params of its own; the stages that
    exist once declare theirs; the params stage declares all of params.yaml."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    foreach = {name for name, stage in stages.items() if "foreach" in stage}
    assert foreach == set(params_deps.READS)
    for name in foreach:
        body = stages[name]
        assert f"params/{name}/${{key}}.json" in body["do"]["deps"], name
        assert "params" not in body["do"], name
        over = "${lineages}" if name in params_deps.PER_LINEAGE else "${rounds}"
        assert body["foreach"] == over, name
    assert stages["params"]["params"] == [{"params.yaml": None}]
    assert all("params" in stages[n] for n in ("collect", "scrub", "version", "base", "leakage", "package", "report"))


def test_every_stage_gets_a_slice_with_defaults_filled_in():
    raw = demo_raw()
    out = sliced(raw)
    rounds, lineages = list(raw["rounds"]), list(raw["lineages"])
    per_lineage = sum(1 for k in params_deps.READS if k in params_deps.PER_LINEAGE)
    per_round = len(params_deps.READS) - per_lineage
    assert len(out) == per_lineage * len(lineages) + per_round * len(rounds)
    assert set(out["train/tutor-r2.json"]) == {
        "seed",
        "train",
        "rounds.tutor-r2.lineage",
        "rounds.tutor-r2.prev",
        "rounds.tutor-r2.start",
        "lineages.tutor.system_prompts",
    }
    sample = out["sample/tutor-r2.json"]
    assert "max_negatives" in sample["sample"]  # a default the file does not write out
    # Writing a default out changes nothing: the slice holds the values the stage runs with.
    assert "max_negatives" not in raw["sample"]
    raw["sample"]["max_negatives"] = sample["sample"]["max_negatives"]
    assert sliced(raw) == out


def test_an_edit_moves_the_slices_of_the_stages_that_read_it():
    rounds = lambda lin: {r for r, spec in demo_raw()["rounds"].items() if spec["lineage"] == lin}  # noqa: E731
    every = lambda kind, names: {f"{kind}@{n}" for n in names}  # noqa: E731
    assert moved(lambda p: p["train"].update(lr=0.123)) == every("train", rounds("tutor") | rounds("pirate"))
    assert moved(lambda p: p["score"].update(keep_top_fraction=0.25)) == every(
        "score", rounds("tutor") | rounds("pirate")
    )
    pirate_rules = moved(lambda p: p["lineages"]["pirate"]["rules"].update(repetition_ngram=4))
    assert pirate_rules == {"judge@pirate", "eval_base@pirate"} | every("score", rounds("pirate")) | every(
        "eval", rounds("pirate")
    )
    gates = moved(lambda p: p["lineages"]["pirate"].update(gates={"language_compliance": {"min": 0.7}}))
    assert gates == {"eval_base@pirate"} | every("eval", rounds("pirate"))
    # A round's own keys move the stages that read their section, with the values they run with.
    assert moved(lambda p: p["rounds"]["tutor-r2"].update(train={"steps": 3})) == {"train@tutor-r2"}
    assert moved(lambda p: p["rounds"]["tutor-r2"].update(train={"critic": {"hidden": 8}})) == {
        "critic@tutor-r2",
        "train@tutor-r2",
    }
    assert moved(lambda p: p["rounds"]["tutor-r2"].update(sample={"num_prompts": 3})) == {"sample@tutor-r2"}
    new_prev = moved(lambda p: p["rounds"]["pirate-r2"].update(prev="base"))
    assert new_prev == {"sample@pirate-r2", "critic@pirate-r2", "train@pirate-r2"}
    # Writing out a section's own value as the round's changes nothing.
    assert moved(lambda p: p["rounds"]["pirate-r2"].update(train={"steps": p["train"]["steps"]})) == set()
    assert moved(lambda p: p["package"].update(major=1)) == set()  # package declares its own keys


def test_changed_keys_names_the_leaves():
    old = {"train": {"lr": 1, "lora": {"r": 8, "alpha": 16}}, "seed": 1}
    new = {"train": {"lr": 2, "lora": {"r": 8, "alpha": 32, "dropout": 0.1}}, "seed": 1}
    assert params_deps.changed_keys(old, new) == ["train.lora.alpha", "train.lora.dropout", "train.lr"]
    assert params_deps.changed_keys(None, {"seed": 1}) == ["seed"]


def test_run_rewrites_what_moved_and_drops_what_left(tmp_path):
    raw = demo_raw()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    out = tmp_path / "params"
    counts = params_deps.run(tmp_path / "params.yaml", out)
    assert counts["train"] == len(raw["rounds"]) and counts["view"] == len(raw["lineages"])
    kept = out / "train/tutor-r1.json"
    stamp = kept.stat().st_mtime_ns
    assert json.loads(kept.read_text())["rounds.tutor-r1.lineage"] == "tutor"
    raw["rounds"]["tutor-r2"]["train"] = {"steps": 3}
    gone = raw["rounds"].pop("pirate-r2")
    assert gone["prev"] == "pirate-r1"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    params_deps.run(tmp_path / "params.yaml", out)
    assert kept.stat().st_mtime_ns == stamp  # unchanged bytes are not written again
    assert json.loads((out / "train/tutor-r2.json").read_text())["train"]["steps"] == 3
    assert not list(out.rglob("*pirate-r2*"))
    assert load_params(tmp_path / "params.yaml").rounds.keys() == {r for r in raw["rounds"]}
