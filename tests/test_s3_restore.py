"""Release, push, tag, change, push, tag; then restore the first tag in a fresh clone from a real
S3 API server on loopback (moto's). Also experiments, plots and a remote that is down.

The base here is the tiny random model (base.source: local): the subject is what DVC stores and
restores, not model quality, and the embedded model's run is covered by test_e2e."""

from __future__ import annotations

import csv
import io
import subprocess

import pytest
from conftest import edit_params, project_repo, repro, sh

from stages import s3_local
from stages.io import sha256_file

pytestmark = pytest.mark.e2e
BUCKET = "loraloop-test"
# What DVC restores (manifest.json, CHANGELOG.md and metrics live in git).
RESTORED = ("data/version/splits", "data/rounds", "models/rounds", "models/release", "models/base")


@pytest.fixture(scope="module")
def s3():
    port = s3_local.free_port()
    proc = s3_local.start_server(port)
    s3_local.make_bucket(port, BUCKET)
    yield {"port": port, "proc": proc}
    proc.kill()
    proc.wait()


def tree_hashes(repo):
    out = {}
    for top in RESTORED:
        for p in sorted((repo / top).rglob("*")):
            if p.is_file():
                out[p.relative_to(repo).as_posix()] = sha256_file(p)
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model_dir, s3):
    def shrink(p):
        p["base"].update(source="local", path=str(tiny_model_dir))
        p["sample"].update(num_prompts=4, batch_size=4, max_new_tokens=6)
        p["eval"].update(num_prompts=4, batch_size=4, max_new_tokens=6, gates={})
        p["train"].update(steps=2, batch_size=2, max_length=160)

    return project_repo(
        tmp_path_factory.mktemp("s3repo"),
        shrink,
        setup=lambda repo: s3_local.configure_remote(repo, s3["port"], BUCKET),
    )


@pytest.fixture(scope="module")
def two_tags(repo):
    """v1 and v2 pushed and tagged; returns the files of v1 as they were when it was made."""
    repro(repo)
    sh(repo, "dvc", "push")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "v1")
    sh(repo, "git", "tag", "v1")
    v1 = tree_hashes(repo)

    edit_params(repo, lambda p: p["train"].update(lr=0.005))
    repro(repo)
    sh(repo, "dvc", "push")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "v2")
    sh(repo, "git", "tag", "v2")
    return v1, tree_hashes(repo)


def fresh_clone(repo, dst, port):
    subprocess.run(["git", "clone", "-q", str(repo), str(dst)], check=True)
    s3_local.configure_remote(dst, port, BUCKET)  # .dvc/config.local is not cloned
    assert not (dst / ".dvc/cache").exists()
    return dst


def test_tags_differ_in_adapters(two_tags):
    v1, v2 = two_tags
    key = "models/rounds/r1/adapter/adapter_model.safetensors"
    assert v1[key] != v2[key]
    assert any(k.startswith("models/release/tutor/versions/") for k in v1)


def test_checkout_first_tag_and_pull_restores_it_byte_identical(repo, two_tags, s3, tmp_path):
    v1, _ = two_tags
    clone = fresh_clone(repo, tmp_path / "clone", s3["port"])
    sh(clone, "git", "checkout", "-q", "v1")
    sh(clone, "dvc", "pull")
    assert tree_hashes(clone) == v1
    assert sh(clone, "dvc", "status").stdout.strip().endswith("Data and pipelines are up to date.")


def test_experiments_show_round_metrics(repo, two_tags):
    sh(repo, "dvc", "exp", "run", "-S", "train.lr=0.001", "--name", "lowlr")
    out = sh(repo, "dvc", "exp", "show", "--no-pager", "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    exp = next(r for r in rows if r["Experiment"] == "lowlr")
    for rid in ("base", "r1", "r2"):
        assert exp[f"metrics/eval_{rid}.json:mean_score"] != ""
    assert exp["train.lr"] == "0.001"


def test_plots_render_to_html(repo, two_tags):
    sh(repo, "dvc", "plots", "show", "-o", "plots_html")
    html = (repo / "plots_html/index.html").read_text()
    assert "reports_plots_trajectory_csv" in html and "reports_plots_train_loss_csv" in html
    assert "Evaluation metrics by round" in html and "question_ratio" in html
    traj = list(csv.DictReader((repo / "reports/plots/trajectory.csv").open()))
    assert [r["round"] for r in traj] == ["base", "r1", "r2"]


def test_remote_down_fails_clearly_and_writes_nothing(repo, two_tags, s3, tmp_path):
    clone = fresh_clone(repo, tmp_path / "down", s3["port"])
    sh(clone, "git", "checkout", "-q", "v2")
    s3["proc"].kill()
    s3["proc"].wait()
    # botocore's own retries (5 by default, per object) only make the failure slower.
    res = sh(clone, "dvc", "pull", check=False, env={"AWS_MAX_ATTEMPTS": "1"})
    assert res.returncode != 0
    err = res.stdout + res.stderr
    assert "failed to" in err.lower() or "unable to" in err.lower(), err
    for top in RESTORED:
        assert not any(p.is_file() for p in (clone / top).rglob("*")), top
