import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loraloop.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def edited(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert [(r.id, r.lineage, r.prev) for r in p.round_list] == [
        ("tutor-r1", "tutor", "base"),
        ("tutor-r2", "tutor", "tutor-r1"),
        ("pirate-r1", "pirate", "base"),
        ("pirate-r2", "pirate", "pirate-r1"),
    ]
    assert p.round("tutor-r2").prev == "tutor-r1"
    pirate = p.lineage("pirate")
    # A lineage's rules are score.rules with its own keys merged over them.
    assert pirate.rules.language == "ko" and pirate.rules.weights.tone == 1.0
    assert pirate.rules.weights.followup_question == p.score.rules.weights.followup_question
    assert pirate.rules.tone_keywords["tutor"] == p.score.rules.tone_keywords["tutor"]
    assert pirate.gates["language_compliance"].min == 0.6 and "tone_leakage_rate" in pirate.gates
    assert pirate.characters == ["pirate"] and pirate.release == "pirate" and pirate.routes == {"pirate": "pirate"}


def test_unknown_key_is_named(tmp_path):
    path = edited(tmp_path, lambda r: r["train"].update(learning_rate=0.1))
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert "train.learning_rate: unknown key" in str(e.value)


def test_wrong_type_names_key_and_type(tmp_path):
    path = edited(tmp_path, lambda r: r["train"].update(steps="many"))
    with pytest.raises(ParamsError) as e:
        load_params(path)
    msg = str(e.value)
    assert "train.steps" in msg and "integer" in msg and "'many'" in msg


def test_a_check_across_a_sections_keys_reads_as_its_own_message(tmp_path):
    """Not pydantic's "Value error, ..." nor the section's whole value: the keys and the way out."""
    path = edited(tmp_path, lambda r: r["train"].update(mtp_heads=3, mtp_head_data="examples", mtp_head_prompts=4))
    with pytest.raises(ParamsError) as e:
        load_params(path)
    line = str(e.value).splitlines()[-1].strip()
    assert line.startswith("train: mtp_head_prompts adds prompts") and "mtp_head_prompts: 0" in line
    assert "Value error" not in line and "got" not in line


def test_nested_wrong_type(tmp_path):
    path = edited(tmp_path, lambda r: r["train"]["lora"].update(r="eight"))
    with pytest.raises(ParamsError, match=r"train\.lora\.r: .*integer"):
        load_params(path)


def test_round_chain_must_point_backwards_within_its_lineage(tmp_path):
    t = {"lineage": "tutor"}
    path = edited(tmp_path, lambda r: r.update(rounds={"r1": {**t, "prev": "r2"}, "r2": {**t, "prev": "r1"}}))
    with pytest.raises(
        ParamsError, match=r"rounds.r1.prev is 'r2', which is neither 'base' nor an earlier \(or retired\) round"
    ):
        load_params(path)
    rounds = {"t1": {**t, "prev": "base"}, "p1": {"lineage": "pirate", "prev": "t1"}}
    path = edited(tmp_path, lambda r: r.update(rounds=rounds))
    with pytest.raises(ParamsError, match="rounds.p1.prev is 't1'.*of lineage 'pirate'"):
        load_params(path)


def test_round_and_lineage_names(tmp_path):
    for rounds, message in (
        ({"r1/../x": {"lineage": "tutor", "prev": "base"}}, "rounds.r1/../x: a round id is"),
        ({"base": {"lineage": "tutor", "prev": "base"}}, "rounds.base: a round id"),
        ({"r1": {"lineage": "nobody", "prev": "base"}}, "rounds.r1.lineage: 'nobody' is not under lineages"),
        ({"r1": {"prev": "base"}}, "rounds.r1.lineage: required key is missing"),
    ):
        path = edited(tmp_path, lambda r, rounds=rounds: r.update(rounds=rounds))
        with pytest.raises(ParamsError, match=re.escape(message)):
            load_params(path)


def test_lineage_rules_are_validated_where_they_are_written(tmp_path):
    path = edited(tmp_path, lambda r: r["lineages"]["pirate"]["rules"]["weights"].update(tone=-1))
    with pytest.raises(
        ParamsError, match="lineages.pirate.rules.weights.tone: Input should be greater than or equal to 0"
    ):
        load_params(path)
    path = edited(tmp_path, lambda r: r["lineages"]["pirate"]["rules"].update(colour="red"))
    with pytest.raises(ParamsError, match="lineages.pirate.rules.colour: Extra inputs"):
        load_params(path)
    path = edited(tmp_path, lambda r: r["lineages"]["pirate"].update(release="tutor"))
    with pytest.raises(ParamsError, match=r"lineages\.(pirate|tutor)\.release: 'tutor' is already the release of"):
        load_params(path)


def test_a_variant_lineage_is_routed_under_its_own_id(tmp_path):
    variant = {"system_prompts": {"tutor": "You are an ESL tutor."}, "rules": {"language": "en"}}
    path = edited(tmp_path, lambda r: r["lineages"].update({"tutor-esl": variant}))
    p = load_params(path)
    assert p.lineage("tutor").routes == {"tutor": "tutor"}
    assert p.lineage("tutor-esl").routes == {"tutor-esl/tutor": "tutor"}
    assert p.lineage("tutor-esl").rules.language == "en" and p.lineage("tutor-esl").release == "tutor-esl"


def test_local_base_needs_path(tmp_path):
    path = edited(tmp_path, lambda r: r["base"].update(source="local"))
    with pytest.raises(ParamsError, match="needs base.path"):
        load_params(path)


def test_cli_fails_before_work_with_the_key(tmp_path):
    path = edited(tmp_path, lambda r: r["sample"].update(temperature="hot"))
    out = tmp_path / "collected"
    res = subprocess.run(
        [sys.executable, "-m", "loraloop.cli", "--params", str(path), "collect", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0
    assert "sample.temperature" in res.stderr and "number" in res.stderr
    assert not out.exists()


def test_reference_start_needs_a_round_to_start_from(tmp_path):
    path = edited(tmp_path, lambda r: r["train"].update(method="dpo", init="fresh", reference="start"))
    with pytest.raises(ParamsError, match="reference: start is the adapter the round starts from"):
        load_params(path)
    path = edited(tmp_path, lambda r: r["train"].update(reference="previous"))
    with pytest.raises(ParamsError, match=r"train\.reference: .*'base' or 'start'"):
        load_params(path)


def test_score_rules_sit_under_one_key(tmp_path):
    """The rules eval and score share are one params key (dvc.yaml lists score.rules for both)."""
    path = edited(tmp_path, lambda r: r["score"].update(banned_words=["x"]))
    with pytest.raises(ParamsError, match="score.banned_words: unknown key"):
        load_params(path)
    assert load_params(ROOT / "params.yaml").score.rules.banned_words == ["the answer is", "정답은"]


def test_a_round_not_in_params_is_a_message_not_a_traceback(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "loraloop.cli",
            "--params",
            str(ROOT / "params.yaml"),
            "score",
            "--round",
            "r9",
            "--rounds-data",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "round 'r9' is not listed under rounds" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_yaml_alias_bomb_is_refused_before_any_work(tmp_path):
    """Nine levels of lists of nine aliases: 9**9 values once expanded. PyYAML loads it cheaply
    (aliases are shared); loraloop refuses it instead of expanding it while validating."""
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        bomb.append(
            f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]"
        )
    text = (ROOT / "params.yaml").read_text().replace("scrub:\n", "scrub:\n  names: *i\n", 1)
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(bomb) + "\n" + text)
    res = subprocess.run(
        [sys.executable, "-m", "loraloop.cli", "--params", str(path), "check-params"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1 and "more than 100,000 values" in res.stderr and "Traceback" not in res.stderr
