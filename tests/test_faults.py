"""Faults: a stage that fails halfway leaves its previous outputs as they were; non-finite numbers
are refused before any work and stop training with a message; a damaged checkpoint is reported by
path and the round starts over to the same bytes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import conversation, round_in, run_round, small_params, write_lines

from loraloop.data import collect, scrub, version
from loraloop.files import read_json, sha256_file, sha256_tree
from loraloop.judge import score
from loraloop.judge.gates import check_gates
from loraloop.params import (
    CollectParams,
    ParamsError,
    ScoreParams,
    ScrubParams,
    SourceParams,
    VersionParams,
    load_params,
)
from loraloop.train import loop as train
from loraloop.train.errors import TrainingStopped
from loraloop.workspace import Base

ROOT = Path(__file__).resolve().parents[1]


def snapshot(*paths: Path) -> dict:
    """Every file under the paths, by content; what a failed stage must leave unchanged."""
    out = {}
    for p in paths:
        if p.is_dir():
            out.update({f"{p}/{k}": v for k, v in sha256_tree(p)[1].items()})
        elif p.exists():
            out[str(p)] = sha256_file(p)
    return out


def leftovers(*dirs: Path) -> list[str]:
    """Temporary siblings a failed stage must not leave behind."""
    return [p.name for d in dirs for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


GOOD = [conversation(f"What is {i} plus {i}?", f"What do you get when you double {i}?") for i in range(12)]


def test_collect_that_fails_keeps_the_previous_run(tmp_path):
    src = write_lines(tmp_path / "raw.jsonl", GOOD)
    out = tmp_path / "collected"
    collect.run(CollectParams(sources=[SourceParams(path=str(src))]), out)
    before = snapshot(out)
    # A source it refuses after the first one was read: a datasets directory with no shards.
    (tmp_path / "empty_dataset").mkdir()
    (tmp_path / "empty_dataset/dataset_info.json").write_text("{}")
    refused = CollectParams(sources=[SourceParams(path=str(src)), SourceParams(path=str(tmp_path / "empty_dataset"))])
    with pytest.raises(ValueError, match="no \\*.arrow shards"):
        collect.run(refused, out)
    assert snapshot(out) == before and not leftovers(tmp_path)


def test_collect_that_fails_midway_through_a_file_keeps_the_previous_run(tmp_path, monkeypatch):
    src = write_lines(tmp_path / "raw.jsonl", GOOD)
    out = tmp_path / "collected"
    collect.run(CollectParams(sources=[SourceParams(path=str(src))]), out)
    before = snapshot(out)
    read_source = collect.read_source

    def failing_disk(path, fmt):
        for i, row in enumerate(read_source(path, fmt)):
            if i == 5:
                raise OSError(5, "Input/output error")
            yield row

    monkeypatch.setattr(collect, "read_source", failing_disk)
    with pytest.raises(OSError):
        collect.run(CollectParams(sources=[SourceParams(path=str(src))]), out)
    assert snapshot(out) == before and not leftovers(tmp_path)


def test_scrub_that_fails_keeps_its_outputs_and_metrics(tmp_path):
    records = tmp_path / "records.jsonl"
    write_lines(records, [{**c, "id": str(i), "dataset_source": "x", "weight": 1.0} for i, c in enumerate(GOOD)])
    out, metrics = tmp_path / "scrubbed", tmp_path / "metrics/data.json"
    scrub.run(ScrubParams(), records, out, metrics)
    before = snapshot(out, metrics)
    # The same conversation under two characters fails the stage, after every record was written.
    clash = {**GOOD[0], "character_id": "knight", "id": "k", "dataset_source": "x", "weight": 1.0}
    with records.open("a") as f:
        f.write(json.dumps(clash) + "\n")
    with pytest.raises(scrub.CharacterConflict):
        scrub.run(ScrubParams(), records, out, metrics)
    assert snapshot(out, metrics) == before and not leftovers(tmp_path, tmp_path / "metrics")


def test_version_that_fails_midway_keeps_splits_manifest_and_changelog(tmp_path, monkeypatch):
    from loraloop.data.collect import record_id

    rows = [{**c, "id": record_id("tutor", c["messages"]), "dataset_source": "x", "weight": 1.0} for c in GOOD]
    write_lines(tmp_path / "scrubbed/tutor/records.jsonl", rows)
    out = tmp_path / "version"
    version.run(VersionParams(), tmp_path / "scrubbed", out)
    before = snapshot(out)
    split_of, calls = version.split_of, []

    def flaky(record_id, fraction):
        calls.append(record_id)
        if len(calls) == 6:
            raise MemoryError
        return split_of(record_id, fraction)

    monkeypatch.setattr(version, "split_of", flaky)
    with pytest.raises(MemoryError):
        version.run(VersionParams(eval_fraction=0.5), tmp_path / "scrubbed", out)
    assert snapshot(out) == before and not leftovers(out)


def test_score_that_fails_keeps_scored_and_pairs(tmp_path, monkeypatch):
    samples = write_lines(
        tmp_path / "samples.jsonl",
        [
            {
                "prompt_id": "p",
                "sample_index": i,
                "messages": c["messages"][:1],
                "response": c["messages"][1]["content"],
                "character_id": "tutor",
            }
            for i, c in enumerate(GOOD)
        ],
    )
    scored, pairs = tmp_path / "scored.jsonl", tmp_path / "pairs.jsonl"
    score.run(ScoreParams(), samples, scored, pairs)
    before = snapshot(scored, pairs)
    monkeypatch.setattr(score, "dpo_pairs", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        score.run(ScoreParams(keep_top_fraction=0.2), samples, scored, pairs)
    assert snapshot(scored, pairs) == before and not leftovers(tmp_path)


# --- numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value",
    [
        ("eval.gates.mean_score.min", ".nan"),
        ("train.lr", ".inf"),
        ("train.dpo_beta", ".inf"),
        ("train.grad_clip", ".inf"),
        ("train.lora.alpha", ".inf"),
        ("sample.temperature", ".inf"),
        ("eval.temperature", "-.inf"),
        ("score.rules.weights.question_ratio", ".inf"),
        ("score.weight_floor", ".nan"),
    ],
)
def test_non_finite_numbers_are_refused_with_their_key(tmp_path, key, value):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    node = raw
    *parents, last = key.split(".")
    for k in parents:
        node = node[k]
    node[last] = "PLACEHOLDER"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw).replace("PLACEHOLDER", value))
    with pytest.raises(ParamsError, match=rf"{key}: Input should be a finite number"):
        load_params(path)


def test_a_nan_metric_fails_its_gate():
    from loraloop.params import Gate

    gates = {"eval_loss": Gate(max=5.0), "mean_score": Gate(min=0.5)}
    failed = check_gates({"eval_loss": math.nan, "mean_score": 0.7}, gates)
    assert [g["metric"] for g in failed] == ["eval_loss"]


def test_training_that_goes_non_finite_stops_naming_step_and_round_and_writes_nothing(project, r1, tmp_path):
    out = tmp_path / "tutor-r2"
    p = small_params(lr=1e30, steps=4, warmup_fraction=0.0)
    with pytest.raises(
        TrainingStopped, match=r"train@tutor-r2: the (loss|gradient norm) is (nan|inf) at step [2-4] of 4"
    ):
        train.run(
            p,
            round_in(p, project, "tutor-r2", out),
            Base(project / "models/base"),
            tmp_path / "ckpt",
            scored=project / "rounds/tutor/tutor-r1/scored.jsonl",
            pairs=project / "rounds/tutor/tutor-r1/pairs.jsonl",
        )
    assert not out.exists()


def test_cuda_out_of_memory_says_which_knobs_to_turn(project, r1, tmp_path, monkeypatch):
    def oom(r, step):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "optimizer_step", oom)
    with pytest.raises(TrainingStopped) as exc:
        train.run(
            small_params(),
            round_in(small_params(), project, "tutor-r2", tmp_path / "out"),
            Base(project / "models/base"),
            tmp_path / "ckpt",
            scored=project / "rounds/tutor/tutor-r1/scored.jsonl",
        )
    msg = str(exc.value)
    assert msg.startswith("train@tutor-r2: CUDA out of memory")
    assert all(
        k in msg
        for k in ("train.batch_size (2)", "train.grad_accum (1)", "train.max_length (256)", "train.quantize: 4bit")
    )


# --- checkpoints ----------------------------------------------------------------------------------


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_in_place(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)  # same size, other numbers: safetensors still loads it
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [damage_truncate, damage_in_place], ids=["truncated", "same-size"])
@pytest.mark.parametrize("name", ["weights.safetensors", "optimizer.safetensors"])
def test_a_damaged_checkpoint_is_reported_and_the_round_restarts_to_the_same_bytes(project, capfd, damage, name):
    p = small_params(steps=4, checkpoint_every=2)
    whole = run_round(p, project, "tutor-r1", out_name="r1_ckpt_whole")
    tag = f"r1_ckpt_{damage.__name__}_{name.split('.')[0]}"
    with pytest.raises(KeyboardInterrupt):
        run_round(p, project, "tutor-r1", out_name=tag, stop_after=3)
    ckpt = project / "checkpoints" / tag / "last"
    damage(ckpt / name)
    capfd.readouterr()
    again = run_round(p, project, "tutor-r1", out_name=tag)
    err = capfd.readouterr().err
    assert f"checkpoint {ckpt} is not resumed: {ckpt / name}" in err and "the round starts over" in err
    assert (again / "adapter/adapter_model.safetensors").read_bytes() == (
        whole / "adapter/adapter_model.safetensors"
    ).read_bytes()


def test_the_train_command_reports_a_stop_without_a_traceback(project, r1, tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"].update(lr=1e30, steps=3, batch_size=2, max_length=128, eval_examples=0, warmup_fraction=0.0)
    raw["lineages"] = {"tutor": raw["lineages"]["tutor"]}
    raw["rounds"] = {k: v for k, v in raw["rounds"].items() if v["lineage"] == "tutor"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "loraloop.cli",
            "--params",
            str(tmp_path / "params.yaml"),
            "train",
            "--round",
            "tutor-r2",
            "--base",
            str(project / "models/base"),
            "--data",
            str(project / "lineages/tutor"),
            "--rounds-dir",
            str(project / "models/rounds"),
            "--rounds-data",
            str(project / "rounds"),
            "--checkpoints",
            str(tmp_path / "ckpt"),
            "--scored",
            str(project / "rounds/tutor/tutor-r1/scored.jsonl"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 1 and "Error: train@tutor-r2: the " in res.stderr and "Traceback" not in res.stderr
    assert read_json(r1 / "ROUND.json")["id"] == "tutor-r1"
    # An input that is not there is named, not a traceback.
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "loraloop.cli",
            "--params",
            str(tmp_path / "params.yaml"),
            "score",
            "--round",
            "tutor-r2",
            "--rounds-data",
            str(tmp_path / "nowhere"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"{tmp_path / 'nowhere/tutor/tutor-r2/samples.jsonl'}: No such file or directory" in res.stderr


# --- paths ----------------------------------------------------------------------------------------


def test_every_stage_writes_only_where_its_options_say(tiny_model_dir, tmp_path, monkeypatch):
    """Each stage's command run in an empty directory with every path option pointed under given/:
    afterwards nothing else is there (a hard-coded default path would show up beside it)."""
    from click.testing import CliRunner

    from loraloop.cli import main

    monkeypatch.chdir(tmp_path)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/make_demo_data.py"), "--out", "given/raw"], check=True, capture_output=True
    )
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["base"].update(source="local", path=str(tiny_model_dir))
    for src in raw["collect"]["sources"]:
        src["path"] = "given/raw/" + Path(src["path"]).name
    raw["collect"]["deletions"] = ["given/raw/deletions.txt"]
    raw["sample"].update(num_prompts=4, batch_size=4, max_new_tokens=4)
    raw["eval"].update(num_prompts=4, batch_size=4, max_new_tokens=4, gates={})
    raw["train"].update(steps=2, batch_size=2, max_length=128, eval_examples=2, checkpoint_every=1)
    raw["lineages"] = {"tutor": raw["lineages"]["tutor"]}
    raw["rounds"] = {"r1": {"lineage": "tutor", "prev": "base"}}
    Path("params.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True))
    g = "given"
    rounds = [
        "--base",
        f"{g}/models/base",
        "--data",
        f"{g}/lineages/tutor",
        "--rounds-dir",
        f"{g}/models/rounds",
        "--rounds-data",
        f"{g}/rounds",
    ]
    commands = [
        ["collect", "--out", f"{g}/collected"],
        ["scrub", "--in", f"{g}/collected/records.jsonl", "--out", f"{g}/scrubbed", "--metrics", f"{g}/m/data.json"],
        [
            "version",
            "--in",
            f"{g}/scrubbed",
            "--out",
            f"{g}/version",
            "--metrics",
            f"{g}/m/data.json",
            "--collect-rejects",
            f"{g}/collected/rejects.jsonl",
        ],
        ["base", "--out", f"{g}/models/base", "--rounds-dir", f"{g}/models/rounds"],
        ["view", "--lineage", "tutor", "--data", f"{g}/version", "--out", f"{g}/lineages/tutor"],
        ["eval", "--round", "base", "--lineage", "tutor", *rounds, "--metrics-dir", f"{g}/m"],
        ["sample", "--round", "r1", *rounds],
        ["score", "--round", "r1", "--rounds-data", f"{g}/rounds"],
        ["train", "--round", "r1", *rounds, "--checkpoints", f"{g}/ckpt"],
        ["eval", "--round", "r1", *rounds, "--metrics-dir", f"{g}/m"],
        [
            "leakage",
            "--base",
            f"{g}/models/base",
            "--rounds-dir",
            f"{g}/models/rounds",
            "--views",
            f"{g}/lineages",
            "--out",
            f"{g}/m/leakage.json",
        ],
        [
            "package",
            "--base",
            f"{g}/models/base",
            "--rounds-dir",
            f"{g}/models/rounds",
            "--metrics-dir",
            f"{g}/m",
            "--data",
            f"{g}/version",
            "--out",
            f"{g}/release",
            "--routing",
            f"{g}/routing.json",
            "--report",
            f"{g}/package.json",
        ],
        ["report", "--metrics-dir", f"{g}/m", "--rounds-dir", f"{g}/models/rounds", "--plots-dir", f"{g}/plots"],
    ]
    runner = CliRunner()
    for argv in commands:
        res = runner.invoke(main, argv, catch_exceptions=False)
        assert res.exit_code == 0, (argv, res.output[-2000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["given", "params.yaml"]
    assert (tmp_path / "given/rounds/tutor/r1/eval_samples.jsonl").is_file() and (
        tmp_path / "given/rounds/tutor/r1/ab.csv"
    ).is_file()
    stable = read_json(tmp_path / "given/routing.json")["tutor"]["stable"]
    assert stable["adapter"] == f"given/release/tutor/versions/{stable['version']}/adapter"


def test_training_in_a_repository_without_a_commit_says_to_commit(tmp_path, monkeypatch):
    """DVCLive asks git for HEAD; a fresh `git init` has none. A message, not its traceback."""
    import subprocess
    from types import SimpleNamespace

    from loraloop.train.errors import TrainingStopped
    from loraloop.train.setup import live_logger

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainingStopped, match="commit once first"):
        live_logger(SimpleNamespace(is_main_process=True), tmp_path / "ckpt", resumed=False)
