"""A fleet of characters: lineages kept apart (views, the leak check, tone leakage) in-process, and
under real DVC on the tiny model: both lineages built and routed, an edit to one lineage dirties
nothing of the other, new data for one character reruns only its lineage, a leaked record stops
its stage."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time

import pytest
from conftest import FLEET_LINEAGES as BOTH
from conftest import conversation, copy_repo, edit_params, repro, sh, small_params, workspace, write_lines

from loraloop.data.splits import ForeignRecord, load_split, write_view
from loraloop.files import read_json, read_jsonl
from loraloop.judge import leakage


def test_a_view_holds_only_its_characters_and_refuses_a_foreign_record(project, tmp_path):
    counts = write_view("pirate", ["pirate"], project / "version", tmp_path / "pirate")
    rows = load_split(tmp_path / "pirate", "train", ["pirate"])
    assert counts["train"] == len(rows) > 0 and {r["character_id"] for r in rows} == {"pirate"}
    assert sorted(p.name for p in (tmp_path / "pirate/splits").iterdir()) == ["pirate"]

    # A pirate record inside the tutor's split (a version bug, a hand edit): the view refuses it.
    doctored = tmp_path / "version"
    doctored_tutor = doctored / "splits/tutor"
    doctored_tutor.mkdir(parents=True)
    tutor_rows = list(read_jsonl(project / "version/splits/tutor/train.jsonl"))
    write_lines(doctored_tutor / "train.jsonl", [*tutor_rows[:3], rows[0], *tutor_rows[3:5]])
    with pytest.raises(ForeignRecord, match=rf"train.jsonl:4: record '{rows[0]['id']}' belongs to character 'pirate'"):
        write_view("tutor", ["tutor"], doctored, tmp_path / "tutor")
    assert not (tmp_path / "tutor").exists()  # nothing half-written
    # A lineage asked to read another character's directory is refused too.
    with pytest.raises(ForeignRecord, match="a split of character 'pirate' in a lineage of"):
        load_split(tmp_path / "pirate", "train", ["tutor"])


def test_tone_leakage_is_measured_on_the_other_lineages_prompts_and_remembered(project, r1, monkeypatch):
    p = small_params(lineages=BOTH)
    p = p.model_copy(update={"rounds": {"tutor-r1": p.rounds["tutor-r1"]}})
    out = project / "metrics_leakage/leakage.json"
    rates = leakage.run(workspace(p, project), out)
    entry = read_json(out)["tutor-r1"]
    pirate = entry["by_lineage"]["pirate"]
    # The tutor's own tone words, less any the pirate uses itself, on the pirate's prompts.
    assert set(pirate["keywords"]) == set(p.lineage("tutor").rules.tone_keywords["tutor"]) - set(
        p.lineage("pirate").rules.tone_keywords["pirate"]
    )
    assert pirate["n"] == len(pirate["replies"]) == p.eval.leakage_prompts
    leaked = sum(any(k.lower() in r.lower() for k in pirate["keywords"]) for r in pirate["replies"])
    assert (
        rates["tutor-r1"]["tone_leakage_rate"] == entry["tone_leakage_rate"] == pirate["rate"] == leaked / pirate["n"]
    )

    # Nothing changed: the next run keeps the entry and generates nothing.
    monkeypatch.setattr(leakage, "measure", lambda *a, **k: pytest.fail("regenerated an unchanged round"))
    leakage.run(workspace(p, project), out)
    assert read_json(out)["tutor-r1"] == entry


# --- under real DVC -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tiny_fleet, tmp_path_factory):
    """conftest's tiny fleet repo, copied for this module, and the stages its first repro ran."""
    src, ran = tiny_fleet
    return copy_repo(src, tmp_path_factory.mktemp("fleet_copy") / "repo"), ran


@pytest.fixture(scope="module")
def repo(built):
    return built[0]


def lineage_stages(lineage: str, rounds=("r1",)) -> set[str]:
    per_round = {f"{s}@{lineage}-{r}" for s in ("sample", "score", "critic", "train", "eval") for r in rounds}
    return per_round | {f"view@{lineage}", f"eval_base@{lineage}", f"judge@{lineage}"}


@pytest.mark.e2e
def test_both_lineages_are_built_released_and_routed(built):
    repo, ran_all = built
    # they run when the checkout's code or params moved since dvc.lock was recorded
    ran = ran_all - {"code", "params"}
    assert ran == {"collect", "scrub", "version", "base", "persona", "leakage", "package", "report"} | lineage_stages(
        "tutor"
    ) | lineage_stages("pirate")
    # Each stage's wall time, recorded while DVC ran it; printed slowest first and cleared.
    times = sh(repo, "loraloop", "stage-times").stdout.splitlines()
    assert {line.split()[0] for line in times[:-1]} == ran_all and times[-1].startswith("all stages")
    seconds = [float(line.split()[1]) for line in times[:-1]]
    assert all(line.endswith(" MB peak") and int(line.split()[3].replace(",", "")) > 0 for line in times[:-1])
    assert seconds == sorted(seconds, reverse=True) and not (repo / ".dvc/tmp/stage-times.jsonl").exists()
    routing = read_json(repo / "models/routing.json")
    assert set(routing) == {"tutor", "pirate"}
    assert routing["pirate"]["release"] == "pirate" and routing["pirate"]["stable"]["version"] == "pirate-v0.1"
    samples = list(read_jsonl(repo / "data/rounds/pirate/pirate-r1/samples.jsonl"))
    assert {s["character_id"] for s in samples} == {"pirate"} and "pirate ship" in samples[0]["messages"][0]["content"]
    leak = read_json(repo / "metrics/leakage.json")
    assert set(leak) == {"tutor-r1", "pirate-r1", "base@tutor", "base@pirate"}
    assert set(leak["pirate-r1"]["by_lineage"]) == {"tutor"}
    # The learned judges: each lineage's reward model on its demo labels, the fleet's persona
    # classifier, and what the leakage stage measured with it, gateable in package.
    persona = read_json(repo / "metrics/persona.json")
    assert persona["available"] and persona["classes"] == ["pirate", "tutor", "none"]
    for lineage in BOTH:
        reward = read_json(repo / f"metrics/{lineage}/judge.json")["reward"]
        assert reward["available"] and {"roc_auc", "pairwise_accuracy", "brier"} <= set(reward["rule_baseline"])
        assert (repo / f"models/judges/{lineage}/reward.safetensors").is_file()
        for rid in (f"{lineage}-r1", f"base@{lineage}"):
            assert 0.0 <= leak[rid]["persona_match"] <= 1.0
        assert 0.0 <= leak[f"{lineage}-r1"]["persona_leakage"] <= 1.0
    meta = (repo / "models/release/pirate/metadata.yaml").read_text()
    assert "persona_match:" in meta and "judges:" in meta

    table = sh(repo, "loraloop", "report").stdout
    table, judges = table.split("\n\nreward models on held-out conversations (the rule score beside):\n")
    assert [line.split()[0] for line in judges.splitlines()[2:4]] == list(BOTH)
    assert "persona classifier: held-out accuracy" in judges
    main, tools = table.split("\n\ntool use on the gold tool conversations:\n")
    assert [line.split()[:2] for line in main.splitlines()[2:]] == [
        [lineage, rid] for lineage in BOTH for rid in ("base", f"{lineage}-r1")
    ]
    assert [line.split()[:2] for line in tools.splitlines()[2:]] == [["tutor", "base"], ["tutor", "tutor-r1"]]
    header = next(csv.reader(io.StringIO(sh(repo, "dvc", "exp", "show", "--no-pager", "--csv").stdout)))
    for lineage in BOTH:
        for rid in ("base", f"{lineage}-r1"):
            assert f"metrics/{lineage}/eval_{rid}.json:mean_score" in header
        assert f"metrics/{lineage}/judge.json:reward.held_out.roc_auc" in header
    sh(repo, "dvc", "plots", "show", "-o", "plots_html")
    html = (repo / "plots_html/index.html").read_text()
    for lineage in BOTH:
        assert f"reports_plots_trajectory_{lineage}_csv" in html  # one plot per lineage
        assert f"reports_judges_{lineage}_learned_csv" in html  # the reward model's calibration
    assert repro(repo) == set()


@pytest.mark.e2e
def test_editing_one_lineages_rules_dirties_no_stage_of_another(repo):
    """Rules are read by score and eval (sample and train follow score's output if it changes);
    gates by eval and package alone, so a gate-only edit rescores, resamples and retrains nothing."""
    edit_params(repo, lambda p: p["lineages"]["pirate"]["rules"]["weights"].update(tone=0.5))
    assert set(json.loads(sh(repo, "dvc", "status", "--json").stdout)) == {"params", "leakage", "package", "report"}
    dirty = json.loads(sh(repo, "loraloop", "status", "--json").stdout)  # which stages read the key
    judged = {"judge@pirate", "score@pirate-r1", "eval@pirate-r1", "eval_base@pirate"}
    assert set(dirty["stale"]) == judged | {"params", "leakage", "package", "report"}
    assert set(dirty["params_changed"]) == judged
    assert dirty["params_changed"]["score@pirate-r1"] == ["lineages.pirate.rules.weights.tone"]
    sh(repo, "git", "checkout", "params.yaml")
    edit_params(repo, lambda p: p["lineages"]["pirate"].update(gates={"language_compliance": {"min": 0.7}}))
    dirty = set(json.loads(sh(repo, "loraloop", "status", "--json").stdout)["stale"])
    assert dirty == {"params", "eval@pirate-r1", "eval_base@pirate", "leakage", "package", "report"}
    # The params stage rewrites only the slices that moved; then DVC names those stages itself.
    sh(repo, "dvc", "repro", "params")
    assert set(json.loads(sh(repo, "dvc", "status", "--json").stdout)) == dirty - {"params"}
    sh(repo, "git", "checkout", "params.yaml")
    sh(repo, "dvc", "repro", "params")
    assert sh(repo, "dvc", "status").stdout.strip().endswith("Data and pipelines are up to date.")


@pytest.mark.e2e
def test_new_data_for_one_character_reruns_only_its_lineage(repo):
    new = conversation(
        "선장님, 북쪽 빙하 바다에도 보물이 있나요? 얼음섬 지도를 새로 샀어요!",
        "하하, 얼음섬이라! 이 몸도 그 바다는 두 번밖에 못 가 봤다. 지도에 고래 그림이 있나?",
        character_id="pirate",
    )
    with (repo / "data/raw/pirate_logs.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(new, ensure_ascii=False) + "\n")
    # Up to the views, then ask DVC what is out of date: the rounds would run as they always do,
    # and running them here costs a minute of CI.
    out = sh(repo, "dvc", "repro", "view@tutor", "view@pirate").stdout
    assert {"collect", "scrub", "version", "view@pirate", "view@tutor"} <= set(
        re.findall(r"Running stage '([^']+)'", out)
    )
    # dvc status names the stages whose own deps changed: those that read the pirate's view
    # (the rest of the lineage follows them), and none of the tutor's: its view was rebuilt
    # byte-identical. The fleet's persona classifier reads every character's data.
    dirty = set(json.loads(sh(repo, "dvc", "status", "--json").stdout))
    assert {"sample@pirate-r1", "train@pirate-r1", "eval_base@pirate", "eval@pirate-r1", "judge@pirate"} <= dirty
    assert dirty <= lineage_stages("pirate") | {"persona", "leakage", "package", "report"}
    pirate_texts = [m["content"] for r in load_split(repo / "data/lineages/pirate", "train") for m in r["messages"]]
    pirate_texts += [m["content"] for r in load_split(repo / "data/lineages/pirate", "eval") for m in r["messages"]]
    assert any("얼음섬" in t for t in pirate_texts)
    sh(repo, "git", "checkout", "data/raw/pirate_logs.jsonl")  # back to the recorded state
    sh(repo, "dvc", "repro", "view@tutor", "view@pirate")
    assert sh(repo, "dvc", "status").stdout.strip().endswith("Data and pipelines are up to date.")


@pytest.mark.e2e
def test_tool_metrics_are_measured_and_gated_under_dvc(repo):
    """The tutor's eval split holds gold tool conversations: every tutor round has the tool metrics
    (and the pirate's, without tool data, has none), and a gate on one reruns eval and package
    only (leakage rereads lineages, keeps its entries) and keeps a failing round from release, saying which gate."""
    m = read_json(repo / "metrics/tutor/eval_tutor-r1.json")
    assert m["n_tool_items"] > 0 and m["tool_selection"] is not None
    assert 0.0 <= m["tool_selection"] <= 1.0 and "tool_call_accuracy" in m["delta_vs_base"]
    samples = list(read_jsonl(repo / "data/rounds/tutor/tutor-r1/tool_samples.jsonl"))
    assert len(samples) == m["n_tool_items"] and all(s["tools"] and "response" in s for s in samples)
    assert read_json(repo / "metrics/pirate/eval_pirate-r1.json")["n_tool_items"] == 0
    edit_params(repo, lambda p: p["lineages"]["tutor"].update(gates={"tool_selection": {"min": 1.01}}))
    ran = repro(repo)
    assert ran == {"params", "eval_base@tutor", "eval@tutor-r1", "leakage", "package", "report"}, ran
    decision = read_json(repo / "reports/package.json")["tutor"]
    assert not decision["released"] and "tutor-r1 failed gates (tool_selection=" in decision["reason"]
    sh(repo, "git", "checkout", "params.yaml")
    repro(repo)


@pytest.mark.e2e
def test_adding_a_round_runs_only_that_round(repo):
    edit_params(repo, lambda p: p["rounds"].update({"tutor-r2": {"lineage": "tutor", "prev": "tutor-r1"}}))
    r2 = {f"{stage}@tutor-r2" for stage in ("sample", "score", "critic", "train", "eval")}
    assert repro(repo) == r2 | {"params", "leakage", "package", "report"}
    assert read_json(repo / "metrics/tutor/eval_tutor-r2.json")["delta_vs_prev"]
    assert read_json(repo / "models/rounds/tutor-r2/ROUND.json")["prev"] == "tutor-r1"


@pytest.mark.e2e
def test_dpo_on_sampled_pairs(repo):
    """Three samples per prompt, best vs worst as pairs (and the users' feedback pairs), DPO against
    the adapter-disabled base, in every lineage."""
    edit_params(
        repo,
        lambda p: (
            p["sample"].update(samples_per_prompt=3),
            p["score"].update(pair_min_margin=0.0),
            p["train"].update(method="dpo", init="fresh"),
        ),
    )
    # Only the tutor's first round here (the pirate's stages are as dirty, and would run the same way).
    out = sh(repo, "dvc", "repro", "eval@tutor-r1").stdout
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    # critic: new scores; params: the edit moves the slices
    assert ran == {"params"} | {f"{s}@tutor-r1" for s in ("sample", "score", "critic", "train", "eval")}
    pairs = (repo / "data/rounds/tutor/tutor-r1/pairs.jsonl").read_text().splitlines()
    info = read_json(repo / "models/rounds/tutor-r1/ROUND.json")
    assert info["train"]["method"] == "dpo" and info["train"]["pairs"] == len(pairs) >= 1
    assert info["train"]["feedback_pairs"] >= 1
    m = read_json(repo / "metrics/tutor/eval_tutor-r1.json")
    base = read_json(repo / "metrics/tutor/eval_base.json")
    assert m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
    assert 0.0 <= m["meta_leak_rate"] <= 1.0 and m["mean_turn_depth"] >= 1.0
    assert m["delta_vs_base"]["eval_loss"] == pytest.approx(m["eval_loss"] - base["eval_loss"])


@pytest.mark.e2e
def test_a_leaked_record_fails_the_stage_that_reads_it(repo):
    """A pirate record put into the tutor's view (and recorded there with `dvc commit`): the next
    tutor stage that reads the view stops and names the file, line and record."""
    pirate_row = load_split(repo / "data/lineages/pirate", "train")[0]
    path = repo / "data/lineages/tutor/splits/tutor/train.jsonl"
    n = len(path.read_text(encoding="utf-8").splitlines())
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(pirate_row, ensure_ascii=False) + "\n")
    sh(repo, "dvc", "commit", "-f", "view@tutor")
    res = sh(repo, "dvc", "repro", "sample@tutor-r1", check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"train.jsonl:{n + 1}: record '{pirate_row['id']}' belongs to character 'pirate'" in out, out[-3000:]
    assert "Traceback" not in out


@pytest.mark.e2e
def test_queued_experiments_run_two_at_once_and_the_winner_applies(tiny_fleet, tmp_path):
    """The sweep as DVC users run one: two experiments queued and run with -j 2 (each in its own
    temporary workspace: collect's uncached output rebuilt there), one of them weighing tokens by
    the critic (its critic@ stage fits a value head there), both in `dvc exp show` and `loraloop
    report --exps`, and `dvc exp apply` of the winner reproduces it."""
    repo = copy_repo(tiny_fleet[0], tmp_path / "repo")
    experiments = {
        "lr_low": ["-S", "train.lr=0.0005"],
        "critic": ["-S", "train.token_weighting=critic", "-S", "train.critic.min_samples=2"],
    }
    NAMES = [[n] for n in experiments]  # noqa: N806
    CRITIC = "metrics/tutor/critic_tutor-r1.json"  # noqa: N806
    for name, sets in experiments.items():  # the tutor's round only: the test's time
        sh(repo, "dvc", "exp", "run", "--queue", "-n", name, *sets, "eval@tutor-r1")
    sh(repo, "dvc", "queue", "start", "-j", "2")
    deadline = time.monotonic() + 600
    while True:
        status = sh(repo, "dvc", "queue", "status").stdout
        states = {line.split()[1]: line.split()[-1] for line in status.splitlines() if line.split()[1:2] in NAMES}
        if len(states) == 2 and set(states.values()) <= {"Success", "Failed"}:
            break
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert states == {"lr_low": "Success", "critic": "Success"}, sh(
        repo, "dvc", "queue", "logs", "critic", check=False
    ).stdout[-3000:]

    rows = list(csv.DictReader(io.StringIO(sh(repo, "dvc", "exp", "show", "--no-pager", "--csv").stdout)))
    by_exp = {r["Experiment"]: r for r in rows if r["Experiment"] in experiments}
    loss = {name: float(r["metrics/tutor/eval_tutor-r1.json:eval_loss"]) for name, r in by_exp.items()}
    assert set(loss) == set(experiments) and loss["lr_low"] != loss["critic"]
    # the value head's fit, in exp show (named without its file while no other file has the key)
    usable = next(c for c in rows[0] if c.endswith("critic.usable") and c.split(":")[0] in ("critic.usable", CRITIC))
    columns = list(rows[0])  # the rounds' evaluations first, the data counters after everything else
    evals = [i for i, c in enumerate(columns) if "/eval_" in c and ":" in c]  # metrics (path:key), not deps
    assert evals and max(evals) < min(i for i, c in enumerate(columns) if c.startswith(("collect.", "scrub.")))
    assert not [c for c in columns[: evals[0]] if ":" in c]  # no other file's metric before them
    assert by_exp["critic"][usable] in ("True", "False") and by_exp["lr_low"][usable] in ("", "-")

    table = sh(repo, "loraloop", "report", "--exps", "--metric", "eval_loss").stdout.splitlines()
    by_name = {line.split()[0]: line for line in table[2:]}
    assert set(by_name) == {"baseline", *experiments} and "train.token_weighting=critic" in by_name["critic"]
    winner = min(loss, key=loss.get)
    assert by_name[winner].rstrip().endswith("*")  # the lowest eval_loss is marked best
    assert (repo / "reports/exps/ablation.svg").is_file()

    sh(repo, "dvc", "exp", "apply", winner)
    applied = read_json(repo / "metrics/tutor/eval_tutor-r1.json")["eval_loss"]
    assert applied == loss[winner]
    assert sh(repo, "dvc", "status", "eval@tutor-r1").stdout.strip().endswith("Data and pipelines are up to date.")
    for stage in ("train@tutor-r1", "eval@tutor-r1"):  # retrain and re-evaluate the winner here
        sh(repo, "dvc", "repro", "-f", "-s", stage)
    assert read_json(repo / "metrics/tutor/eval_tutor-r1.json")["eval_loss"] == applied
