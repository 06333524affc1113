"""Learned judges (judge@<lineage>): the reward model's grouped splits, training, calibration and
pickle-free loading, the fallback to the rules when labels are too few, A/B sheets as labels with
their rejects, and the whole stage on the tiny model (score with the learned judge, persona_match,
persona_leakage). The stage under real DVC is in tests/test_fleet.py."""

from __future__ import annotations

import csv
import dataclasses
import pickle

import numpy as np
import pytest
from conftest import small_params, workspace

from loraloop.files import read_json, read_jsonl, write_jsonl
from loraloop.judge import features, judges, leakage, learned, score
from loraloop.judge.labels import from_ab_sheets
from loraloop.judge.persona import Persona
from loraloop.judge.reward import LearnedRewarder
from loraloop.params import JudgeParams, ScoreParams


def synthetic(n_pairs: int = 40, seed: int = 0, signal: float = 3.0):
    """Preference pairs (a conversation each): one hidden column carries the label, the rule
    values and the rule score are noise."""
    rng = np.random.default_rng(seed)
    y = np.tile([1, 0], n_pairs)
    groups = np.repeat([f"c{i}" for i in range(n_pairs)], 2)
    pairs = list(groups)
    hidden = rng.normal(size=(2 * n_pairs, 6))
    hidden[:, 2] += signal * (y - 0.5)
    rules = rng.uniform(size=(2 * n_pairs, len(features.RULES)))
    return hidden.astype(np.float32), rules.astype(np.float32), rng.uniform(size=2 * n_pairs), y, groups, pairs


def test_splits_never_cut_a_conversation():
    _, _, _, y, groups, _ = synthetic(30)
    tr, te = learned.held_out_split(groups, y, 0.25, seed=3)
    assert not set(groups[tr]) & set(groups[te]) and set(y[tr]) == set(y[te]) == {0, 1}
    assert len(set(groups[te])) == pytest.approx(30 * 0.25, abs=1)
    folds = learned.grouped_folds(groups[tr], y[tr], 5, seed=3)
    assert len(folds) == 5
    for a, b in folds:
        assert not set(groups[tr][a]) & set(groups[tr][b])
    # One class only: no split can hold both labels on both sides.
    assert learned.held_out_split(groups, np.ones_like(y), 0.25, seed=3) is None


def test_the_reward_model_learns_reports_against_the_rules_and_loads_without_pickle(tmp_path, monkeypatch):
    hidden, rules, rule_scores, y, groups, pairs = synthetic()
    params = JudgeParams(min_per_class=10)
    model, report = learned.train(hidden, rules, rule_scores, y, groups, pairs, params, seed=1)
    assert report["available"] and report["feature_set"] == "all" and report["C"] in params.C
    ho, rb = report["held_out"], report["rule_baseline"]
    assert ho["n"] == rb["n"] and ho["n_pairs"] == rb["n_pairs"] == ho["n"] // 2
    assert ho["roc_auc"] > 0.9 and ho["pairwise_accuracy"] > 0.8 and ho["roc_auc"] > rb["roc_auc"]
    assert 0 <= ho["brier"] < rb["brier"]
    assert {p["judge"] for p in report["calibration"]} == {"learned", "rules"}

    learned.save(tmp_path, model, report, {"max_length": 64})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reward.json", "reward.safetensors"]

    def refuse(*a, **k):
        raise AssertionError("a judge must load without unpickling")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = learned.LearnedReward(tmp_path)
    assert loaded.available and len(loaded.hash) == 64
    np.testing.assert_allclose(loaded.score(hidden, rules), model.proba(learned.columns("all", hidden, rules)))


def test_too_few_labels_leave_score_to_the_rules_and_say_so(tiny_base, tmp_path):
    hidden, rules, rule_scores, y, groups, pairs = synthetic(8)
    model, report = learned.train(hidden, rules, rule_scores, y, groups, pairs, JudgeParams(), seed=1)
    assert model is None and not report["available"]
    assert "too few labels: {'good': 8, 'bad': 8} (judge.min_per_class is 20)" in report["reason"]
    learned.save(tmp_path / "reward", None, report, {"max_length": 64})

    rows = [
        {"prompt_id": f"p{i}", "sample_index": 0, "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
        | {"response": reply, "character_id": "tutor"}
        for i, reply in enumerate(["What do you get if you count on from 2?", "The answer is 5.", "Let's think?"])
    ]
    write_jsonl(tmp_path / "samples.jsonl", rows)
    sp = ScoreParams.model_validate(
        {**small_params().score_of("tutor").model_dump(), "reward_model": {"kind": "learned"}}
    )
    rewarder = LearnedRewarder(tmp_path / "reward", tiny_base / "base", 64, 4)
    summary = score.run(sp, tmp_path / "samples.jsonl", tmp_path / "scored.jsonl", tmp_path / "pairs.jsonl", rewarder)
    assert "unavailable (too few labels" in summary["reward_model"] and "scored by the rules" in summary["reward_model"]
    scored = list(read_jsonl(tmp_path / "scored.jsonl"))
    rules_only = score.run(
        small_params().score_of("tutor"), tmp_path / "samples.jsonl", tmp_path / "r.jsonl", tmp_path / "q.jsonl"
    )
    assert summary["mean_score"] == rules_only["mean_score"]
    assert all(r["judge"] == rewarder.hash and "reward_model" not in r["scores"] for r in scored)
    # kind learned outside the stage (no judge given) is a message, not a silent rules-only score
    with pytest.raises(Exception, match="scores with the lineage's judge"):
        score.run(sp, tmp_path / "samples.jsonl", tmp_path / "s.jsonl", tmp_path / "t.jsonl")


def test_ab_sheets_give_preference_pairs_and_malformed_rows_are_rejects(tmp_path):
    sheet = tmp_path / "tutor-r2.csv"
    with sheet.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item", "context", "response_a", "response_b", "preferred"])
        w.writerow([1, "user: What is 3 x 4?", "What is 3 x 2?", "12.", "A"])
        w.writerow([2, "user: Hi\nassistant: Hello!\nuser: 5 + 5?", "Ten.", "What is 5 + 4?", "b"])
        w.writerow([3, "user: 2 + 2?", "4", "What is 2 + 1?", "tie"])
        w.writerow([4, "user: 2 + 9?", "11", "Count on from 9?", ""])
        w.writerow([5, "user: 7 - 1?", "6", "What comes before 7?", "maybe"])
        w.writerow([6, "user: 8 / 2?", "", "Half of 8?", "B"])
    (tmp_path / "old.csv").write_text("item,context\n1,x\n", encoding="utf-8")
    examples, rejects = from_ab_sheets(tmp_path, "tutor")
    assert [(e.reply, e.label) for e in examples] == [
        ("What is 3 x 2?", 1),
        ("12.", 0),
        ("What is 5 + 4?", 1),
        ("Ten.", 0),
    ]
    assert examples[2].context == (
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "5 + 5?"},
    )
    assert examples[0].group == examples[1].group and examples[0].pair == examples[1].pair != examples[2].pair
    assert [(r["file"].endswith(name), r["line"]) for r, name in zip(rejects, ["old.csv", *["tutor-r2.csv"] * 2])] == [
        (True, 1),
        (True, 8),  # the row that starts on line 8 (row 2's context spans lines 3-5)
        (True, 9),
    ]
    assert "missing column(s)" in rejects[0]["reason"] and "'maybe' is not A, B, tie or blank" in rejects[1]["reason"]
    assert rejects[2]["reason"] == "an empty response"


@pytest.fixture(scope="module")
def pirate_judge(project, tmp_path_factory):
    p = small_params(lineages=("tutor", "pirate"))
    p = p.model_copy(update={"judge": JudgeParams(max_length=48, base_replies=12, batch_size=8)})
    root = tmp_path_factory.mktemp("judge")
    ws = workspace(p, project)
    args = (p, p.lineage("pirate"), project / "lineages/pirate", ws.base)
    outs = (root / "judges/pirate", root / "metrics/judge.json", root / "plots", root / "cache/features.safetensors")
    result = judges.run(*args, *outs)
    return p, args, outs, result


def test_the_judge_stage_trains_the_reward_model_on_the_demo_labels(pirate_judge, monkeypatch):
    p, args, (out, metrics, plots, cache), result = pirate_judge
    m = read_json(metrics)
    rw = m["reward"]
    assert rw["available"] and rw["labels"]["good"] >= 20 and rw["labels"]["bad"] >= 20
    assert set(m["label_sources"]) == {"feedback", "pair", "negative"} and m["label_rejects"] == 0
    assert rw["held_out"]["n"] + rw["n_train"] == rw["labels"]["good"] + rw["labels"]["bad"]
    assert rw["held_out"]["n_pairs"] > 0 and rw["rule_baseline"]["n_pairs"] == rw["held_out"]["n_pairs"]
    assert result["reward"] == rw["held_out"]["roc_auc"]
    for judge in ("learned", "rules"):
        rows = list(csv.DictReader((plots / f"{judge}.csv").open()))
        assert rows and all(0 <= float(r["predicted"]) <= 1 and 0 <= float(r["observed"]) <= 1 for r in rows)
    assert sorted(f.name for f in out.iterdir()) == ["rejects.jsonl", "reward.json", "reward.safetensors"]

    # A rerun on the same labels embeds nothing (the cache holds every reply) and writes the same judge.
    before = (out / "reward.json").read_bytes()
    monkeypatch.setattr(features, "embed", lambda *a, **k: pytest.fail("embedded a cached reply"))
    judges.run(*args, out, metrics, plots, cache)
    assert (out / "reward.json").read_bytes() == before


def test_score_uses_the_learned_judge(pirate_judge, project, tmp_path):
    p, args, (out, *_), _ = pirate_judge
    own = list(read_jsonl(project / "lineages/pirate/splits/pirate/eval.jsonl"))
    rows = [
        {"prompt_id": f"p{i}", "sample_index": 0, "character_id": "pirate", "messages": r["messages"][:1]}
        | {"response": r["messages"][1]["content"]}
        for i, r in enumerate(own)
    ]
    write_jsonl(tmp_path / "samples.jsonl", rows)
    sp = p.score_of("pirate")
    sp = sp.model_copy(update={"reward_model": sp.reward_model.model_copy(update={"kind": "learned"})})
    rewarder = LearnedRewarder(out, args[3].dir, 48, 8)
    summary = score.run(sp, tmp_path / "samples.jsonl", tmp_path / "scored.jsonl", tmp_path / "pairs.jsonl", rewarder)
    assert summary["reward_model"].startswith(f"learned judge {rewarder.hash[:12]}")
    scored = list(read_jsonl(tmp_path / "scored.jsonl"))
    assert all(0 <= r["scores"]["reward_model"] <= 1 and r["judge"] == rewarder.hash for r in scored)


def test_the_persona_classifier_tells_the_characters_apart_and_judges_rounds(project, tmp_path):
    p = small_params(lineages=("tutor", "pirate"))
    p = p.model_copy(update={"judge": JudgeParams(base_replies=24)})
    ws = workspace(p, project)
    result = judges.run_persona(p, project / "version", ws.base, tmp_path / "persona", tmp_path / "persona.json")
    report = read_json(tmp_path / "persona.json")
    assert report["available"] and report["classes"] == ["pirate", "tutor", "none"]
    assert result["accuracy"] == report["held_out"]["accuracy"] > 0.8
    assert report["replies"]["none"] == 24  # the base's own replies (distinct on the tiny model)
    judge = Persona(tmp_path / "persona")

    pirate = [r["messages"][1]["content"] for r in read_jsonl(project / "version/splits/pirate/eval.jsonl")]
    tutor = [r["messages"][1]["content"] for r in read_jsonl(project / "version/splits/tutor/eval.jsonl")][:20]
    r = ws.round("base", "pirate")
    r = dataclasses.replace(r, data=tmp_path / "round")
    write_jsonl(r.eval_samples, [{"character_id": "pirate", "response": t} for t in pirate])
    # the pirate's held-out answers read as the pirate; tutor replies to other prompts are no leak of it
    figs = leakage.persona_figures(judge, {"by_lineage": {"tutor": {"replies": tutor}}}, r, ["pirate"])
    assert figs["persona_match"] > 0.8 and figs["persona_leakage"] < 0.2
    figs = leakage.persona_figures(judge, {"by_lineage": {"tutor": {"replies": pirate}}}, r, ["pirate"])
    assert figs["persona_leakage"] > 0.8  # pirate talk in answers to the tutor's prompts is
    assert leakage.persona_figures(None, {}, r, ["pirate"]) == {"persona_match": None, "persona_leakage": None}


def test_a_saved_persona_classifier_predicts_as_the_fitted_one_without_pickle(tmp_path, monkeypatch):
    from loraloop.judge import persona

    texts = [f"하하, 선장이 보물 {i}개를 찾아 바다로 항해한다! 자네는?" for i in range(30)]
    texts += [f"What do you get if you add {i} and 2? Try counting on." for i in range(30)]
    texts += [f"Sure! Here is a summary of item {i} for you." for i in range(30)]
    labels = ["pirate"] * 30 + ["tutor"] * 30 + ["none"] * 30
    fitted, report = persona.train(
        texts, labels, [str(i) for i in range(90)], ["pirate", "tutor", "none"], JudgeParams(min_per_class=5), 1
    )
    persona.save(tmp_path, fitted, report, {})
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    probe = ["하하, 보물을 찾아 항해하자!", "What is 3 plus 4, do you think?", "Here is the summary you asked for.", ""]
    vec, clf = fitted
    assert Persona(tmp_path).predict(probe) == list(clf.predict(vec.transform(probe)))
    assert Persona(tmp_path).predict(probe)[:2] == ["pirate", "tutor"]
