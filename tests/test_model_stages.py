"""sample → score → train → eval → package on the tiny model, in-process."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from stages import eval as eval_stage
from stages import package, sample, score, train
from stages.io import read_json, read_jsonl, write_json
from stages.params import Params

ROOT = Path(__file__).resolve().parents[1]


def small_params(**train_overrides) -> Params:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["sample"].update(num_prompts=6, batch_size=4, max_new_tokens=8)
    raw["eval"].update(num_prompts=4, batch_size=4, max_new_tokens=8)
    raw["train"].update(steps=3, batch_size=2, max_length=128, **train_overrides)
    return Params.model_validate(raw)


@pytest.fixture(scope="module")
def project(tiny_base, demo_version, tmp_path_factory):
    """A workspace with models/ (tiny base) and data/version/ from the demo data."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(tiny_base, root / "models")
    shutil.copytree(demo_version, root / "version")
    return root


def run_round(p: Params, root: Path, rid: str, out_name: str | None = None) -> Path:
    prev = p.round(rid).prev
    d = root / "rounds" / rid
    sample.run(p, rid, root / "models/base", root / "version", root / "models/rounds" / prev, d / "samples.jsonl")
    score.run(p.score, d / "samples.jsonl", d / "scored.jsonl")
    out = root / "models/rounds" / (out_name or rid)
    train.run(p, rid, root / "models/base", root / "version", root / "models/rounds" / prev, d / "scored.jsonl", out)
    return out


def test_sample_records_settings_and_is_reproducible(project, tmp_path):
    p = small_params()
    args = (p, "r1", project / "models/base", project / "version", project / "models/rounds/base")
    stats = sample.run(*args, tmp_path / "a.jsonl")
    sample.run(*args, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    rows = list(read_jsonl(tmp_path / "a.jsonl"))
    assert len(rows) == 6 and stats["tokens"] > 0
    base_hash = read_json(project / "models/base/base.json")["hash"]
    for r in rows:
        assert r["messages"][0]["role"] == "system" and r["messages"][-1]["role"] == "user"
        assert (r["seed"], r["temperature"], r["top_p"], r["max_new_tokens"]) == (1234, 0.9, 0.95, 8)
        assert r["base_hash"] == base_hash and r["policy"] == "base" and r["adapter_hash"] is None


def test_train_is_deterministic_and_changes_the_adapter(project):
    p = small_params()
    a = run_round(p, project, "r1")
    b = run_round(p, project, "r1", out_name="r1_again")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (a / "adapter" / name).read_bytes() == (b / "adapter" / name).read_bytes(), name
    # PEFT's target_modules is a set; across processes its order would differ unless sorted.
    modules = read_json(a / "adapter/adapter_config.json")["target_modules"]
    assert modules == sorted(p.train.lora.target_modules)
    weights = load_file(a / "adapter/adapter_model.safetensors")
    # PEFT initializes lora_B to zero: a non-zero B means the optimizer moved it.
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in weights.items())
    info = read_json(a / "ROUND.json")
    assert info["prev"] == "base" and info["train"]["onpolicy"] == 3 and info["train"]["anchor"] == 3
    assert info["train"]["truncated_away"] == 0
    assert (a / "live/plots/metrics/train/loss.tsv").is_file()


def test_init_prev_continues_and_fresh_restarts(project):
    p = small_params()
    r2_prev = run_round(p, project, "r2", out_name="r2_prev")
    assert read_json(r2_prev / "ROUND.json")["init"] == "prev"
    fresh = small_params(init="fresh")
    r2_fresh = run_round(fresh, project, "r2", out_name="r2_fresh")
    a = load_file(r2_prev / "adapter/adapter_model.safetensors")
    b = load_file(r2_fresh / "adapter/adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_weighted_loss_ignores_zero_weight_examples():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    ids = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.bool)
    both = {"ids": ids, "mask": mask, "weight": torch.tensor([1.0, 0.0])}
    first = {"ids": ids[:1], "mask": mask[:1], "weight": torch.tensor([1.0])}
    assert torch.allclose(train.weighted_loss(logits, both), train.weighted_loss(logits[:1], first))
    # Only assistant positions count: changing a prompt-position target changes nothing.
    ids2 = ids.clone()
    ids2[0, 1] = (ids2[0, 1] + 1) % 11
    assert torch.allclose(train.weighted_loss(logits[:1], first), train.weighted_loss(logits[:1], {**first, "ids": ids2[:1]}))


def test_eval_and_package(project, tmp_path):
    p = small_params()
    for rid in ("r1", "r2"):
        if not (project / "models/rounds" / rid / "ROUND.json").exists():
            run_round(p, project, rid)
    metrics = tmp_path / "metrics"
    write_json(metrics / "data.json", {"scrub": {"kept": 1}})
    res = {}
    for rid, prev in (("base", None), ("r1", "base"), ("r2", "r1")):
        res[rid] = eval_stage.run(
            p, rid, project / "models/base", project / "version", project / "models/rounds" / rid,
            prev_metrics=metrics / f"eval_{prev}.json" if prev else None,
            base_metrics=metrics / "eval_base.json" if prev else None,
            out_file=metrics / f"eval_{rid}.json", samples_file=tmp_path / rid / "eval_samples.jsonl",
            prev_samples=tmp_path / prev / "eval_samples.jsonl" if prev else None)
    for key in ("question_ratio", "mean_response_chars", "mean_score", "followup_rate"):
        assert key in res["r2"]
    assert res["r2"]["delta_vs_prev"]["mean_score"] == pytest.approx(res["r2"]["mean_score"] - res["r1"]["mean_score"])
    assert "delta_vs_prev" not in res["base"]
    # A blinded A/B set against the previous round, on the same prompts (4 here: fewer than ab_prompts).
    assert not (tmp_path / "base/ab.csv").exists()
    ab_rows = (tmp_path / "r2/ab.csv").read_text().splitlines()
    assert ab_rows[0] == "item,context,response_a,response_b,preferred" and len(ab_rows) == 5
    assert read_json(tmp_path / "r2/ab_key.json")["vs"] == "r1"

    assert "passed" in res["r2"] and isinstance(res["r2"]["failed_gates"], list)
    # The tiny random model cannot pass the shipped gates: release nothing, say why.
    rel = tmp_path / "release"
    decision = package.run(p, project / "models/base", project / "models/rounds", metrics, project / "version",
                           metrics / "data.json", rel, tmp_path / "routing.json", tmp_path / "package.json")
    assert decision["released"] is False and "failed gates" in decision["reason"]
    assert read_json(tmp_path / "routing.json") == {}

    open_gates = Params.model_validate({**p.model_dump(), "eval": {**p.eval.model_dump(), "gates": {}}})
    for rid in ("r1", "r2"):
        m = read_json(metrics / f"eval_{rid}.json")
        write_json(metrics / f"eval_{rid}.json", {**m, "passed": True, "failed_gates": []})
    decision = package.run(open_gates, project / "models/base", project / "models/rounds", metrics, project / "version",
                           metrics / "data.json", rel, tmp_path / "routing.json", tmp_path / "package.json")
    assert decision == {**decision, "released": True, "version": "tutor-v0.1", "round": "r2"}
    out = rel / "tutor"
    assert (out / "adapter/adapter_model.safetensors").read_bytes() == \
        (project / "models/rounds/r2/adapter/adapter_model.safetensors").read_bytes()
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["base_model"]["hash"] == read_json(project / "models/base/base.json")["hash"]
    assert set(meta["evaluation"]) == {"base", "r1", "r2"} and meta["characters"] == ["tutor"]
    assert read_json(tmp_path / "routing.json")["tutor"]["version"] == "tutor-v0.1"


def test_merged_release_matches_base_plus_adapter_and_chat_runs(project, tmp_path):
    import subprocess
    import sys

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from stages.model import load_base

    p = small_params()
    if not (project / "models/rounds/r1/ROUND.json").exists():
        run_round(p, project, "r1")
    p = Params.model_validate({**p.model_dump(), "rounds": {"r1": {"prev": "base"}},
                               "package": {**p.package.model_dump(), "merge": True}})
    metrics = tmp_path / "metrics"
    write_json(metrics / "data.json", {"scrub": {"kept": 1}})
    for rid in ("base", "r1"):
        write_json(metrics / f"eval_{rid}.json", {"round": rid, "mean_score": 0.5, "passed": True, "failed_gates": []})
    rel = tmp_path / "release"
    decision = package.run(p, project / "models/base", project / "models/rounds", metrics, project / "version",
                           metrics / "data.json", rel, tmp_path / "routing.json", tmp_path / "package.json")
    assert decision["released"]

    ids = torch.tensor([[1, 4093, 198, 1780, 314, 216, 39]])
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(load_base(project / "models/base"), rel / "tutor/adapter")(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(rel / "tutor/merged", use_safetensors=True)
        assert torch.allclose(merged(ids).logits, peft_logits, atol=1e-4)
    assert not list((rel / "tutor/merged").glob("*.bin"))

    res = subprocess.run(
        [sys.executable, "-m", "stages.cli", "--params", str(ROOT / "params.yaml"), "chat", "--round", "r1",
         "--max-new-tokens", "4"],
        cwd=project, input="hello there\nand then?\n\n", capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("tutor> ") == 2
