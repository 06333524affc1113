"""package's release decisions, versions, routing and rollback, on a synthetic project layout
(adapter files are opaque bytes here; test_model_stages covers real adapters)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import sh

from loraloop.files import read_json, write_json
from loraloop.params import Params
from loraloop.release import package
from loraloop.release import registry as release
from loraloop.release.routing import route
from loraloop.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def params(rounds=("r1", "r2"), **package_overrides) -> Params:
    """The shipped params with only the tutor lineage and these rounds chained."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["lineages"] = {"tutor": raw["lineages"]["tutor"]}
    prev = "base"
    raw["rounds"] = {}
    for rid in rounds:
        raw["rounds"][rid] = {"lineage": "tutor", "prev": prev}
        prev = rid
    raw["package"].update(package_overrides)
    return Params.model_validate(raw)


class Project:
    def __init__(self, root: Path):
        self.root = root
        write_json(root / "models/base/base.json", {"source": "embedded", "hash": "b" * 64, "files": {}})
        (root / "models/base/tokenizer.json").write_text("{}")
        write_json(
            root / "version/manifest.json",
            {
                "counts": {
                    "tutor": {
                        "train": {"by_source": {"logs": 10}, "total": 10},
                        "eval": {"by_source": {"logs": 2}, "total": 2},
                    }
                },
                "files": {},
            },
        )
        write_json(root / "metrics/data.json", {"scrub": {"kept": 12}})
        self.round("base", None, score=0.3, passed=False)

    def round(self, rid, prev, score, passed=True, eval_config="cfg1", lineage="tutor", eval_prompts="p1", **metrics):
        d = self.root / "models/rounds" / rid
        if rid != "base":
            (d / "adapter").mkdir(parents=True, exist_ok=True)
            (d / "adapter/adapter_model.safetensors").write_bytes(f"weights of {rid} {score}".encode())
            write_json(d / "adapter/adapter_config.json", {"r": 8})
            write_json(
                d / "ROUND.json",
                {
                    "id": rid,
                    "prev": prev,
                    "adapter": "adapter",
                    "adapter_hash": f"{rid}-{score}",
                    "init": "prev",
                    "train": {"steps": 1},
                },
            )
        failed = [] if passed else [{"metric": "mean_score", "value": score, "min": 0.5, "max": None}]
        write_json(
            self.root / f"metrics/{lineage}/eval_{rid}.json",
            {
                "round": rid,
                "mean_score": score,
                "question_ratio": score,
                "passed": passed,
                "failed_gates": failed,
                "eval_config": eval_config,
                "eval_prompts": eval_prompts,
                **metrics,
            },
        )

    def package(self, p: Params, lineage: str | None = "tutor") -> dict:
        """package.run's decision for the lineage (all of them with lineage=None)."""
        r = self.root
        ws = Workspace(p, r / "models/base", r / "models/rounds", metrics=r / "metrics", version=r / "version")
        decisions = package.run(ws, r / "models/release", r / "models/routing.json", r / "package.json")
        return decisions if lineage is None else decisions[lineage]

    @property
    def rel(self) -> Path:
        return self.root / "models/release/tutor"

    def routing(self) -> dict:
        return read_json(self.root / "models/routing.json")


@pytest.fixture
def proj(tmp_path):
    return Project(tmp_path)


def test_latest_passing_round_is_released_and_reruns_keep_it(proj):
    proj.round("r1", "base", 0.6)
    proj.round("r2", "r1", 0.7, passed=False)
    d = proj.package(params())
    assert d["released"] and d["version"] == "tutor-v0.1" and d["round"] == "r1"
    assert "r1 passed its gates" in d["reason"]
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.1"
    assert (proj.rel / "adapter/adapter_model.safetensors").read_bytes() == b"weights of r1 0.6"

    again = proj.package(params())
    assert not again["released"] and again["version"] == "tutor-v0.1"
    assert "r2 failed gates (mean_score=0.700)" in again["reason"] and "already released" in again["reason"]
    assert read_json(proj.root / "package.json") == {"tutor": again}
    assert [e["action"] for e in release.history(proj.rel)] == ["release", "keep"]


def test_a_rerun_never_releases_an_earlier_round_over_the_latest(proj):
    """The first run releases the latest passing round though an earlier one scores higher; a
    rerun with nothing changed keeps it (the earlier round beats it, but came before it)."""
    proj.round("r1", "base", 0.8)
    proj.round("r2", "r1", 0.7)
    first = proj.package(params())
    assert first["released"] and first["round"] == "r2"
    again = proj.package(params())
    assert not again["released"] and again["version"] == "tutor-v0.1"
    assert again["reason"] == "r2 is already released as tutor-v0.1; r1 came before tutor-v0.1's round"


def test_a_round_must_beat_the_current_release(proj):
    proj.round("r1", "base", 0.6)
    proj.package(params(("r1",)))
    proj.round("r2", "r1", 0.55)
    d = proj.package(params())
    assert not d["released"] and "r2 mean_score=0.5500 does not beat tutor-v0.1 (0.6000)" in d["reason"]
    proj.round("r2", "r1", 0.8)
    d = proj.package(params())
    assert d["released"] and d["version"] == "tutor-v0.2" and d["round"] == "r2"
    meta = release.current(proj.rel)
    assert meta["changes_from_previous"]["from_version"] == "tutor-v0.1"
    assert meta["changes_from_previous"]["metric_deltas"]["mean_score"] == pytest.approx(0.2)
    lines = (proj.rel / "CHANGELOG.md").read_text().splitlines()
    assert sum(" tutor-v0." in line and " from r" in line for line in lines) == 2
    assert sorted(p.name for p in (proj.rel / "versions").iterdir()) == ["tutor-v0.1", "tutor-v0.2"]


def test_scores_under_another_eval_config_do_not_block_a_release(proj):
    proj.round("r1", "base", 0.9)
    proj.package(params(("r1",)))
    # New score rules (DVC re-evaluates every round): scores drop, which says nothing about quality.
    proj.round("r1", "base", 0.6, eval_config="cfg2")
    proj.round("r2", "r1", 0.7, eval_config="cfg2")
    d = proj.package(params())
    assert d["released"] and d["round"] == "r2" and "another eval config" in d["reason"]
    proj.round("r3", "r2", 0.65, eval_config="cfg2")
    d = proj.package(params(("r1", "r2", "r3")))
    assert not d["released"] and "r3 mean_score=0.6500 does not beat tutor-v0.2 (0.7000)" in d["reason"]


def test_version_major_and_tag(proj):
    proj.round("r1", "base", 0.6)
    assert proj.package(params(("r1",), major=1, tag="rc"))["version"] == "tutor-v1.1-rc"
    assert release.next_version(proj.rel, "tutor", 1, None) == "tutor-v1.2"
    assert release.next_version(proj.rel, "tutor", 2, None) == "tutor-v2.1"


TOOLS = {
    "n_tool_items": 6,
    "n_tool_calls": 4,
    "tool_call_valid_rate": 0.75,
    "tool_call_accuracy": 0.5,
    "tool_selection": 5 / 6,
    "tool_result_use": 1.0,
}


def test_a_round_judged_on_tool_conversations_is_a_tools_version_with_its_tool_accuracy(proj):
    """package.tools_tag names a round measured on gold tool conversations (v0.1-tools);
    metadata.yaml carries tool_accuracy and every tool metric, the model card shows them; a
    round without tool items gets neither, and package.tag wins over tools_tag."""
    proj.round("r1", "base", 0.6, **TOOLS)
    d = proj.package(params(("r1",), tools_tag="tools"))
    assert d["released"] and d["version"] == "tutor-v0.1-tools"
    meta = yaml.safe_load((proj.rel / "metadata.yaml").read_text())
    assert meta["tool_accuracy"] == 0.5 and meta["tool_use"] == TOOLS
    assert "tool_call_accuracy" in (proj.rel / "README.md").read_text()
    proj.round("r2", "r1", 0.7, **TOOLS)
    assert proj.package(params(("r1", "r2"), tools_tag="tools", tag="rc"))["version"] == "tutor-v0.2-rc"
    proj.round("r3", "r2", 0.8, n_tool_items=0)
    d = proj.package(params(("r1", "r2", "r3"), tools_tag="tools"))
    meta = yaml.safe_load((proj.rel / "metadata.yaml").read_text())
    assert d["version"] == "tutor-v0.3" and "tool_accuracy" not in meta


def test_a_gate_on_a_metric_with_nothing_to_measure_says_so(proj):
    gate = {"metric": "tool_selection", "value": None, "min": 0.5, "max": None}
    proj.round("r1", "base", 0.6, passed=False, failed_gates=[gate], tool_selection=None)
    d = proj.package(params(("r1",)))
    assert not d["released"] and "r1 failed gates (tool_selection=null (nothing to measure))" in d["reason"]


def test_model_card_front_matter(proj):
    proj.round("r1", "base", 0.6)
    proj.package(params(("r1",)))
    text = (proj.rel / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["library_name"] == "peft" and "tutor" in front["tags"] and front["base_model"]
    assert "# tutor-v0.1" in text and "mean_score" in text


def test_rollback_is_recorded_and_reversible(proj):
    proj.round("r1", "base", 0.6)
    proj.package(params(("r1",)))
    proj.round("r2", "r1", 0.8)
    proj.package(params())
    with pytest.raises(RuntimeError, match="already the current"):
        release.rollback(proj.rel, proj.root / "models/routing.json", to="tutor-v0.2")

    assert release.rollback(proj.rel, proj.root / "models/routing.json") == ("tutor-v0.2", "tutor-v0.1")
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.1"
    assert release.current(proj.rel)["round"] == "r1"
    assert (proj.rel / "adapter/adapter_model.safetensors").read_bytes() == b"weights of r1 0.6"
    with pytest.raises(RuntimeError, match="first stable version"):
        release.rollback(proj.rel, proj.root / "models/routing.json")

    assert release.rollback(proj.rel, proj.root / "models/routing.json", to="tutor-v0.2") == (
        "tutor-v0.1",
        "tutor-v0.2",
    )
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.2"
    assert [e["action"] for e in release.history(proj.rel)] == ["release", "release", "rollback", "rollback"]
    assert "rollback tutor-v0.2 -> tutor-v0.1" in (proj.rel / "CHANGELOG.md").read_text()


def test_rollback_cli(proj):
    proj.round("r1", "base", 0.6)
    proj.package(params(("r1",)))
    proj.round("r2", "r1", 0.8)
    proj.package(params())
    cmd = [sys.executable, "-m", "loraloop.cli", "release", "rollback", "tutor", "--no-dvc-commit"]
    res = subprocess.run(cmd, cwd=proj.root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "tutor-v0.2 -> tutor-v0.1" in res.stdout and "--to tutor-v0.2" in res.stdout
    res = subprocess.run([*cmd[:-2], "nobody", "--no-dvc-commit"], cwd=proj.root, capture_output=True, text=True)
    assert res.returncode == 1 and "models/release/nobody: no release history here" in res.stderr


def package_under_dvc(proj, p: Params) -> Path:
    """proj as a git + DVC repository with one stage, package; r1 passed and released by `dvc repro`."""
    root = proj.root
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "ci@example.com"],
        ["git", "config", "user.name", "ci"],
        ["dvc", "init", "-q"],
    ):
        sh(root, *cmd)
    (root / "params.yaml").write_text(yaml.safe_dump(p.model_dump(mode="json")))
    (root / "dvc.yaml").write_text(
        "stages:\n  package:\n"
        "    cmd: loraloop package --data version --out models/release --routing models/routing.json "
        "--report package.json\n"
        "    deps: [models/rounds, metrics, version/manifest.json]\n"
        "    outs:\n      - models/release: {persist: true}\n      - models/routing.json: {persist: true}\n"
    )
    proj.round("r1", "base", 0.6)
    proj.round("r2", "r1", 0.55, passed=False)
    sh(root, "dvc", "repro")
    return root


def test_rollback_is_recorded_in_dvc_so_repro_keeps_it(proj):
    """Under real DVC: two releases through `dvc repro`, then a rollback; dvc.lock follows it, so
    the workspace is clean and the next repro does not undo it."""
    root = package_under_dvc(proj, params())
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.1"
    proj.round("r2", "r1", 0.8)
    sh(root, "dvc", "repro")
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.2"

    out = sh(root, "loraloop", "release", "rollback", "tutor").stdout
    assert "tutor-v0.2 -> tutor-v0.1" in out
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.1"
    assert sh(root, "dvc", "status").stdout.strip().endswith("Data and pipelines are up to date.")
    assert "Running stage" not in sh(root, "dvc", "repro").stdout
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.1"


def test_promote_is_recorded_in_dvc_so_repro_keeps_it(proj):
    """Under real DVC with package.canary_share: the second release goes out as a canary; promote
    to 1 makes it stable; dvc.lock follows each step, so nothing is dirty and repro undoes nothing."""
    root = package_under_dvc(proj, params(canary_share=0.25))
    proj.round("r2", "r1", 0.8)
    sh(root, "dvc", "repro")
    entry = proj.routing()["tutor"]
    assert (entry["stable"]["version"], entry["canary"]["version"], entry["canary_share"]) == (
        "tutor-v0.1",
        "tutor-v0.2",
        0.25,
    )
    out = sh(root, "loraloop", "release", "promote", "tutor", "--share", "1").stdout
    assert "tutor-v0.2 is stable" in out
    assert sh(root, "dvc", "status").stdout.strip().endswith("Data and pipelines are up to date.")
    assert "Running stage" not in sh(root, "dvc", "repro").stdout
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.2" and proj.routing()["tutor"]["canary"] is None
    assert "promote tutor-v0.2 -> stable" in (proj.rel / "CHANGELOG.md").read_text()


def test_a_rolled_back_version_stays_withdrawn_until_restored(proj):
    """release r1, release r2, roll back to r1; package runs again (a new round that does not beat,
    an edited metric, a forced rerun): r2's adapter is not released again, and package says why."""
    proj.round("r1", "base", 0.6)
    proj.package(params(("r1",)))
    proj.round("r2", "r1", 0.8)
    proj.package(params())
    release.rollback(proj.rel, proj.root / "models/routing.json")
    assert release.withdrawn(proj.rel) == {"tutor-v0.2": "r2-0.8"}
    for _ in range(2):  # a plain rerun (dvc repro -f) and one after r3 appears
        d = proj.package(
            params(("r1", "r2", "r3")) if (proj.root / "metrics/tutor/eval_r3.json").exists() else params()
        )
        assert not d["released"] and d["version"] == "tutor-v0.1"
        assert "r2 is tutor-v0.2, withdrawn by a rollback" in d["reason"]
        assert "loraloop release restore tutor tutor-v0.2" in d["reason"]
        assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.1"
        proj.round("r3", "r2", 0.5, passed=False)
    release.restore(proj.rel, "tutor-v0.2")
    assert release.withdrawn(proj.rel) == {}
    d = proj.package(params())
    assert d["released"] and d["round"] == "r2" and d["version"] == "tutor-v0.3"


def test_rollback_and_restore_take_only_released_versions_and_release_names(proj):
    proj.round("r1", "base", 0.6)
    proj.package(params(("r1",)))
    proj.round("r2", "r1", 0.8)
    proj.package(params())
    (proj.root / "outside/adapter").mkdir(parents=True)
    (proj.root / "outside/metadata.yaml").write_text("version: x\nround: r9\nadapter_sha256: x\nevaluation: {}\n")
    for to in ("../../../outside", "tutor-v0.9", "tutor-v0.2/../../../outside"):
        with pytest.raises(RuntimeError, match="was never released"):
            release.rollback(proj.rel, proj.root / "models/routing.json", to=to)
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.2"
    with pytest.raises(RuntimeError, match="is not withdrawn"):
        release.restore(proj.rel, "tutor-v0.1")
    cli = [sys.executable, "-m", "loraloop.cli", "release"]
    for args in (
        ["rollback", "../release/tutor"],
        ["rollback", "tutor", "--to", "../../outside"],
        ["restore", "..", "tutor-v0.1"],
    ):
        res = subprocess.run([*cli, *args, "--no-dvc-commit"], cwd=proj.root, capture_output=True, text=True)
        assert res.returncode != 0 and "Traceback" not in res.stderr, args
        assert "not a release name" in res.stderr or "was never released" in res.stderr, res.stderr
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.2"


def test_canary_rollout_promote_and_rollback(proj):
    """package.canary_share sends a new release to a share of users; promote widens it or makes it
    stable; rollback returns to the previous stable and withdraws what it left."""
    routing = proj.root / "models/routing.json"
    proj.round("r1", "base", 0.6)
    proj.package(params(("r1",), canary_share=0.1))  # nothing stable yet: the first release is stable
    assert release.rollout(proj.rel) == {"stable": "tutor-v0.1", "canary": None, "canary_share": 0.0}
    proj.round("r2", "r1", 0.8)
    d = proj.package(params(canary_share=0.1))
    assert d["released"] and d["stable"] == "tutor-v0.1" and d["canary"] == "tutor-v0.2"
    entry = proj.routing()["tutor"]
    assert entry["stable"]["version"] == "tutor-v0.1" and entry["canary"]["version"] == "tutor-v0.2"
    assert entry["canary_share"] == 0.1 and entry["canary"]["adapter"].endswith("versions/tutor-v0.2/adapter")
    assert release.current(proj.rel)["version"] == "tutor-v0.1"  # the top of the release dir stays stable
    # A rerun does not release r2 again: it is in service as the canary.
    assert "already released as tutor-v0.2" in proj.package(params(canary_share=0.1))["reason"]

    users = [f"user-{i}" for i in range(10_000)]
    on_canary = {u for u in users if route(proj.routing(), "tutor", u)["version"] == "tutor-v0.2"}
    assert abs(len(on_canary) / len(users) - 0.1) <= 0.02
    assert all(route(proj.routing(), "tutor", u)["version"] == "tutor-v0.2" for u in sorted(on_canary)[:50])

    assert release.promote(proj.rel, routing, 0.5) == "tutor-v0.2"
    wider = {u for u in users if route(proj.routing(), "tutor", u)["version"] == "tutor-v0.2"}
    assert on_canary <= wider and abs(len(wider) / len(users) - 0.5) <= 0.02  # nobody on it is moved back

    # Rollback with a canary out: its users go back to the stable; the canary is withdrawn.
    assert release.rollback(proj.rel, routing) == ("tutor-v0.2", "tutor-v0.1")
    assert proj.routing()["tutor"]["canary"] is None and release.withdrawn(proj.rel) == {"tutor-v0.2": "r2-0.8"}
    with pytest.raises(RuntimeError, match="withdrawn"):
        release.promote(proj.rel, routing, 1.0, "tutor-v0.2")
    release.restore(proj.rel, "tutor-v0.2")
    release.promote(proj.rel, routing, 1.0, "tutor-v0.2")
    assert release.rollout(proj.rel) == {"stable": "tutor-v0.2", "canary": None, "canary_share": 0.0}
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.2"
    assert release.current(proj.rel)["version"] == "tutor-v0.2"
    # Rollback with no canary: the stable before the current one.
    assert release.rollback(proj.rel, routing) == ("tutor-v0.2", "tutor-v0.1")
    assert proj.routing()["tutor"]["stable"]["version"] == "tutor-v0.1"
    actions = [(e["action"], e.get("share")) for e in release.history(proj.rel) if e["action"] != "keep"]
    assert actions == [
        ("release", None),
        ("release", None),
        ("promote", 0.5),
        ("rollback", None),
        ("restore", None),
        ("promote", 1.0),
        ("rollback", None),
    ]
    log = (proj.rel / "CHANGELOG.md").read_text()
    assert "(canary for 10% of users)" in log and "promote tutor-v0.2 -> canary for 50% of users" in log
    assert "promote tutor-v0.2 -> stable" in log and "rollback tutor-v0.2 -> tutor-v0.1" in log


def test_promote_and_route_commands(proj):
    proj.round("r1", "base", 0.6)
    proj.package(params(("r1",)))
    proj.round("r2", "r1", 0.8)
    proj.package(params(canary_share=0.2))
    cli = [sys.executable, "-m", "loraloop.cli"]

    def run(*args):
        return subprocess.run([*cli, *args], cwd=proj.root, capture_output=True, text=True)

    versions = {run("route", "tutor", "--user", f"u{i}").stdout.split("\t")[0] for i in range(40)}
    assert versions == {"tutor-v0.1", "tutor-v0.2"}
    first = run("route", "tutor", "--user", "u7").stdout
    assert all(run("route", "tutor", "--user", "u7").stdout == first for _ in range(3))
    res = run("release", "promote", "tutor", "--share", "1", "--no-dvc-commit")
    assert res.returncode == 0 and "tutor-v0.2 is stable" in res.stdout, res.stderr
    assert {run("route", "tutor", "--user", f"u{i}").stdout.split("\t")[0] for i in range(10)} == {"tutor-v0.2"}
    for args, message in (
        (("route", "pirate", "--user", "u1"), "no route 'pirate'"),
        (("release", "promote", "tutor", "--share", "1.5", "--no-dvc-commit"), "--share must be in (0, 1]"),
        (("release", "promote", "tutor", "--share", "1", "--no-dvc-commit"), "tutor-v0.2 is already stable"),
    ):
        res = run(*args)
        assert res.returncode == 1 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def fleet_params(**lineage_extra) -> Params:
    """tutor and pirate lineages (as shipped) plus a tutor variant, two rounds each."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["lineages"]["tutor-esl"] = {
        "system_prompts": {"tutor": "You are a patient ESL tutor. Use simple English."},
        "rules": {"language": "en"},
        **lineage_extra,
    }
    raw["rounds"] = {
        f"{name}-r{i}": {"lineage": name, "prev": "base" if i == 1 else f"{name}-r{i - 1}"}
        for name in raw["lineages"]
        for i in (1, 2)
    }
    return Params.model_validate(raw)


def test_every_lineage_is_released_on_its_own_and_routed(proj):
    p = fleet_params()
    for name in p.lineages:
        proj.round("base", None, score=0.3, passed=False, lineage=name)
        proj.round(f"{name}-r1", "base", 0.6, lineage=name)
        proj.round(f"{name}-r2", f"{name}-r1", 0.7 if name != "pirate" else 0.5, passed=name != "pirate", lineage=name)
    decisions = proj.package(p, lineage=None)
    assert {k: (d["version"], d["round"]) for k, d in decisions.items()} == {
        "tutor": ("tutor-v0.1", "tutor-r2"),
        "pirate": ("pirate-v0.1", "pirate-r1"),
        "tutor-esl": ("tutor-esl-v0.1", "tutor-esl-r2"),
    }
    routing = proj.routing()
    # The variant serves the same character under its own route id.
    assert set(routing) == {"tutor", "pirate", "tutor-esl/tutor"}
    assert routing["tutor-esl/tutor"]["character"] == "tutor" and routing["tutor-esl/tutor"]["release"] == "tutor-esl"
    assert (
        routing["pirate"]["stable"]["adapter"]
        == (proj.root / "models/release/pirate/versions/pirate-v0.1/adapter").as_posix()
    )
    meta = release.current(proj.root / "models/release/pirate")
    assert (
        meta["characters"] == ["pirate"]
        and meta["lineage"] == "pirate"
        and set(meta["evaluation"])
        == {
            "base",
            "pirate-r1",
            "pirate-r2",
        }
    )
    assert meta["system_prompts"] == {"pirate": p.lineages["pirate"].system_prompts["pirate"]}


def test_a_tone_leakage_gate_keeps_a_round_from_release(proj):
    p = fleet_params()
    for name in p.lineages:
        proj.round("base", None, score=0.3, passed=False, lineage=name)
        proj.round(f"{name}-r1", "base", 0.6, lineage=name)
        proj.round(f"{name}-r2", f"{name}-r1", 0.7, lineage=name)
    write_json(
        proj.root / "metrics/leakage.json",
        {"tutor-r2": {"tone_leakage_rate": 0.9, "n": 8}, "tutor-r1": {"tone_leakage_rate": 0.1, "n": 8}},
    )
    d = proj.package(p)
    assert d["round"] == "tutor-r1" and "tutor-r2 failed gates (tone_leakage_rate=0.900)" in d["reason"]


def test_an_adapter_vllm_cannot_serve_is_not_released(proj):
    proj.round("r1", "base", 0.6)
    proj.round("r2", "r1", 0.7)
    write_json(proj.root / "models/rounds/r2/adapter/adapter_config.json", {"r": 8, "use_dora": True})
    d = proj.package(params())
    assert d["released"] and d["round"] == "r1"
    assert "r2 cannot be served by vLLM: use_dora: true" in d["reason"]
    cfg = {"r": 1024, "modules_to_save": ["lm_head"], "target_modules": ["q_proj", "embed_tokens"]}
    write_json(proj.root / "models/rounds/r2/adapter/adapter_config.json", cfg)
    d = proj.package(params())
    assert not d["released"]
    for why in ("modules_to_save ['lm_head']", "target_modules ['embed_tokens']", "rank 1024"):
        assert why in d["reason"]
    assert proj.package(params(vllm_servable=False))["round"] == "r2"  # the check is a choice


def test_a_new_base_is_a_new_major_version_and_the_card_says_what_changed(proj):
    proj.round("r1", "base", 0.8)
    assert proj.package(params(("r1",)))["version"] == "tutor-v0.1"
    write_json(proj.root / "models/base/base.json", {"source": "local", "hash": "c" * 64, "files": {}})
    proj.round("r1", "base", 0.6)  # DVC retrains every round on the new base: lower, but not comparable
    proj.round("r2", "r1", 0.7)
    d = proj.package(params())
    assert d["released"] and d["version"] == "tutor-v1.0" and "base model changed" in d["reason"]
    log = (proj.rel / "CHANGELOG.md").read_text()
    assert "base model changed (bbbbbbbbbbbb -> cccccccccccc), new major version" in log
    card = (proj.rel / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    (result,) = front["model-index"][0]["results"]
    assert {m["type"]: m["value"] for m in result["metrics"]}["mean_score"] == 0.7
    # the table: base, each round, the previous version and the change against it
    assert "| metric | base | r1 | r2 | tutor-v0.1 | change |" in card
    assert "| mean_score | 0.3000 | 0.6000 | 0.7000 | 0.8000 | -0.1000 |" in card
    assert "| logs | 12 | +0 |" in card and "**The base model changed**" in card
    assert "![trajectory](plots/trajectory.svg)" in card
    assert (proj.rel / "plots/trajectory.svg").read_text().lstrip().startswith("<svg")
    assert (proj.rel / "plots/trajectory.png").read_bytes()[:4] == b"\x89PNG"


def test_new_eval_prompts_compare_the_lift_over_the_base(proj):
    proj.round("r1", "base", 0.6)
    proj.package(params(("r1",)))  # tutor-v0.1: 0.6 on prompts p1, where the base had 0.3
    # New eval data: every round (the base too) answers other prompts, on which the base does better.
    proj.round("base", None, 0.5, passed=False, eval_prompts="p2")
    proj.round("r1", "base", 0.6, eval_prompts="p2")
    proj.round("r2", "r1", 0.75, eval_prompts="p2")
    d = proj.package(params())
    assert (
        not d["released"]
        and "r2 mean_score lift over the base +0.2500 does not beat tutor-v0.1's +0.3000" in d["reason"]
    )
    proj.round("r2", "r1", 0.85, eval_prompts="p2")
    d = proj.package(params())
    assert d["released"] and "lift over the base +0.3500 beats tutor-v0.1's +0.3000" in d["reason"]
