from pathlib import Path

import yaml
from conftest import conversation, write_lines

from loraloop.data import version
from loraloop.data.collect import record_id
from loraloop.files import read_json, read_jsonl, sha256_file
from loraloop.params import VersionParams

ROOT = Path(__file__).resolve().parents[1]


def records(n, start=0):
    out = []
    for i in range(start, start + n):
        c = conversation(f"What is {i} plus {i}?", f"What do you get when you double {i}?")
        out.append({**c, "id": record_id("tutor", c["messages"]), "dataset_source": "logs", "weight": 1.0})
    return out


def split_map(out_dir):
    return {
        r["id"]: split for split in ("train", "eval") for r in read_jsonl(out_dir / "splits/tutor" / f"{split}.jsonl")
    }


def scrubbed(tmp_path, name, rows):
    write_lines(tmp_path / name / "tutor/records.jsonl", rows)
    return tmp_path / name


def test_split_is_stable_when_data_is_added(tmp_path):
    params = VersionParams(eval_fraction=0.2)
    version.run(params, scrubbed(tmp_path, "a", records(200)), tmp_path / "v1")
    version.run(params, scrubbed(tmp_path, "b", records(300)[::-1]), tmp_path / "v2")
    first, second = split_map(tmp_path / "v1"), split_map(tmp_path / "v2")
    assert len(second) == 300
    assert all(second[i] == s for i, s in first.items())
    n_eval = sum(s == "eval" for s in second.values())
    assert 30 <= n_eval <= 90  # ~20% of 300


def test_manifest_hashes_and_bytes_are_reproducible(tmp_path):
    src = scrubbed(tmp_path, "a", records(50))
    m1 = version.run(VersionParams(), src, tmp_path / "v1")
    m2 = version.run(VersionParams(), src, tmp_path / "v2")
    assert m1 == m2
    for rel, digest in m1["files"].items():
        assert sha256_file(tmp_path / "v1/splits" / rel) == digest
    assert (tmp_path / "v1/manifest.json").read_bytes() == (tmp_path / "v2/manifest.json").read_bytes()
    counts = read_json(tmp_path / "v1/manifest.json")["counts"]["tutor"]
    assert counts["train"]["total"] + counts["eval"]["total"] == 50
    row = next(read_jsonl(tmp_path / "v1/splits/tutor/train.jsonl"))
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]


def test_changelog_diffs_against_the_committed_version(tmp_path):
    """Real git + DVC: the changelog reads the previous manifest from git and the previous ids
    from the DVC cache, and says what was added and why records went away."""
    from conftest import sh

    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "ci@example.com"],
        ["git", "config", "user.name", "ci"],
        ["dvc", "init", "-q"],
    ):
        sh(repo, *cmd)
    # The plain hash split (no min_eval: 20 records are a small character, whose eval share it
    # would raise, and a raised share moves records as data is added).
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["version"]["min_eval"] = 0
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))

    (repo / "dvc.yaml").write_text(
        "stages:\n  version:\n"
        "    cmd: loraloop version --in scrubbed --out data/version --metrics m.json --collect-rejects rejects.jsonl\n"
        "    deps: [scrubbed, rejects.jsonl]\n"
        "    outs:\n      - data/version/splits\n"
        "      - data/version/manifest.json: {cache: false}\n      - data/version/CHANGELOG.md: {cache: false}\n"
    )
    first = records(20)
    write_lines(repo / "scrubbed/tutor/records.jsonl", first)
    write_lines(repo / "rejects.jsonl", [])
    sh(repo, "dvc", "repro")
    log = (repo / "data/version/CHANGELOG.md").read_text()
    assert "First version." in log
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "v1")

    # v2: two records gone (one deleted on request, one no longer in the sources), five new.
    write_lines(repo / "scrubbed/tutor/records.jsonl", first[2:] + records(5, start=100))
    write_lines(repo / "rejects.jsonl", [{"reason": "deleted_on_request", "id": first[0]["id"]}])
    sh(repo, "dvc", "repro")
    log = (repo / "data/version/CHANGELOG.md").read_text()
    assert "Added 5 records; removed 2 (deleted_on_request: 1, no_longer_in_sources: 1)." in log
    assert log.index("Added 5 records") < log.index("First version.")  # newest first, history kept
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "v2")
    assert "Added 5 records" in sh(repo, "git", "log", "-p", "--", "data/version/CHANGELOG.md").stdout


def test_a_negative_goes_from_feedback_to_a_pair_against_it(tmp_path):
    """A bad reply with no correction: collect keeps it, scrub does not judge its (weight-0) reply,
    version puts it in the negatives split, sample asks its prompt, score pairs the best answer
    against it."""
    from loraloop.data import collect, scrub
    from loraloop.data.prompts import negative_prompts
    from loraloop.judge import score
    from loraloop.params import CollectParams, ScoreParams, ScrubParams, SourceParams

    ctx = [{"role": "user", "content": "How do I solve 2x = 10?"}]
    bad = "As an AI language model, the answer is x = 5."  # scrub's meta filter would drop it as data
    rows = [{"character_id": "tutor", "opt_in": True, "messages": ctx, "feedback": "bad", "response": bad}]
    served = [{"character_id": "tutor", "opt_in": True, "messages": [*ctx, {"role": "assistant", "content": bad}]}]
    sources = [
        SourceParams(path=str(write_lines(tmp_path / "served.jsonl", served))),  # the logged exchange
        SourceParams(path=str(write_lines(tmp_path / "neg.jsonl", rows)), kind="feedback"),
    ]
    collect.run(CollectParams(sources=sources), tmp_path / "collected")
    stats = scrub.run(
        ScrubParams(meta_filter=False), tmp_path / "collected/records.jsonl", tmp_path / "scrubbed", tmp_path / "d.json"
    )
    assert stats["reasons"] == {"turned_down": 1}  # the exchange itself is no example to imitate
    version.run(VersionParams(), tmp_path / "scrubbed", tmp_path / "version")
    (neg,) = read_jsonl(tmp_path / "version/splits/tutor/negatives.jsonl")
    assert neg["prompt"] == ctx and neg["rejected"] == bad
    assert not (tmp_path / "version/splits/tutor/train.jsonl").exists()  # nothing to imitate
    (prompt,) = negative_prompts(tmp_path / "version", 8, {"tutor": "Be a tutor."})
    assert prompt["negative"] == bad and prompt["messages"][0]["content"] == "Be a tutor."
    samples = [
        {**prompt, "sample_index": k, "response": text}
        for k, text in enumerate(["What could you divide both sides by?", "x is 5."])
    ]
    sp = ScoreParams()
    score.score_rows(samples, sp)
    (pair,) = score.dpo_pairs(samples, sp.pair_min_margin, sp)
    assert pair["chosen"] == "What could you divide both sides by?" and pair["rejected"] == bad
    assert pair["rejected_score"] < pair["chosen_score"]


def test_a_small_character_still_gets_its_eval_records_and_a_large_one_keeps_its_split(tmp_path):
    """version.min_eval: 21 records of a new character get 8 eval records (the hash split alone
    gives it about 3), while a character with enough data splits exactly as the hash says."""
    small = [{**r, "character_id": "aria"} for r in records(21, start=1000)]
    for r in small:
        r["id"] = record_id("aria", r["messages"])
    large = records(200)
    write_lines(tmp_path / "scrubbed/aria/records.jsonl", small)
    write_lines(tmp_path / "scrubbed/tutor/records.jsonl", large)
    manifest = version.run(VersionParams(), tmp_path / "scrubbed", tmp_path / "v")
    assert manifest["records"]["aria/eval.jsonl"] == 8 and manifest["records"]["aria/train.jsonl"] == 13
    plain = version.run(VersionParams(min_eval=0), tmp_path / "scrubbed", tmp_path / "plain")
    assert plain["records"].get("aria/eval.jsonl", 0) < 8
    assert split_map(tmp_path / "v") == split_map(tmp_path / "plain")  # the tutor's files, as the hash says
    tiny = [{**r, "character_id": "solo", "id": record_id("solo", r["messages"])} for r in records(5, start=5000)]
    write_lines(tmp_path / "scrubbed/solo/records.jsonl", tiny)
    few = version.run(VersionParams(), tmp_path / "scrubbed", tmp_path / "few")
    assert few["records"]["solo/eval.jsonl"] == 2  # at most half of what it has
