"""Release, push, tag, change, push, tag; then restore the first tag in a fresh clone from a real
S3 API server on loopback (moto's). Also experiments, plots and a remote that is down.

The base here is the tiny random model (base.source: local): the subject is what DVC stores and
restores, not model quality, and the embedded model's run is covered by test_e2e."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess

import pytest
from conftest import copy_repo, edit_params, repro, sh

from loraloop.commands import s3_local
from loraloop.files import sha256_file

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
def repo(tiny_fleet, tmp_path_factory, s3):
    """conftest's tiny two-lineage repo, with the loopback S3 as its remote."""
    repo = copy_repo(tiny_fleet[0], tmp_path_factory.mktemp("s3repo") / "repo")
    s3_local.configure_remote(repo, s3["port"], BUCKET)
    return repo


@pytest.fixture(scope="module")
def two_tags(repo):
    """v1 and v2 pushed and tagged; returns the files of v1 as they were when it was made."""
    repro(repo)
    sh(repo, "dvc", "push")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "v1", "--allow-empty")
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
    key = "models/rounds/tutor-r1/adapter/adapter_model.safetensors"
    assert v1[key] != v2[key]
    assert any(k.startswith("models/release/tutor/versions/") for k in v1)


def test_checkout_first_tag_and_pull_restores_it_byte_identical(repo, two_tags, s3, tmp_path):
    v1, _ = two_tags
    clone = fresh_clone(repo, tmp_path / "clone", s3["port"])
    sh(clone, "git", "checkout", "-q", "v1")
    sh(clone, "dvc", "pull")
    assert tree_hashes(clone) == v1
    # Everything is restored but the collected (unscrubbed) records, which are never stored: they
    # are rebuilt from data/raw, the same bytes, so nothing after collect runs again.
    status = json.loads(sh(clone, "dvc", "status", "--json").stdout)
    assert status == {
        "collect": [{"changed outs": {"data/collected": "deleted"}}],
        "scrub": [{"changed deps": {"data/collected": "deleted"}}],
        "version": [{"changed deps": {"data/collected/rejects.jsonl": "deleted"}}],
    }
    assert repro(clone) == {"collect"}
    assert sh(clone, "dvc", "status").stdout.strip().endswith("Data and pipelines are up to date.")
    assert tree_hashes(clone) == v1


def test_experiments_show_round_metrics(repo, two_tags):
    sh(repo, "dvc", "exp", "run", "-S", "train.lr=0.001", "--name", "lowlr")
    out = sh(repo, "dvc", "exp", "show", "--no-pager", "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    exp = next(r for r in rows if r["Experiment"] == "lowlr")
    for lineage, rid in (("tutor", "base"), ("tutor", "tutor-r1"), ("pirate", "pirate-r1")):
        assert exp[f"metrics/{lineage}/eval_{rid}.json:mean_score"] != ""
    assert exp["train.lr"] == "0.001"


def test_plots_render_to_html(repo, two_tags):
    sh(repo, "dvc", "plots", "show", "-o", "plots_html")
    html = (repo / "plots_html/index.html").read_text()
    assert "reports_plots_trajectory_tutor_csv" in html and "reports_plots_train_loss_tutor_csv" in html
    assert "Evaluation metrics by round" in html and "question_ratio" in html
    traj = list(csv.DictReader((repo / "reports/plots/trajectory/tutor.csv").open()))
    assert [r["round"] for r in traj] == ["base", "tutor-r1"]


def bucket_objects(port) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_local.endpoint(port),
        aws_access_key_id=s3_local.ACCESS_KEY,
        aws_secret_access_key=s3_local.SECRET_KEY,
        region_name="us-east-1",
    )
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    ]
    return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def raw_personal_data(repo) -> set[str]:
    """Emails and phone numbers planted in the demo's raw logs."""
    text = "".join(p.read_text(encoding="utf-8") for p in (repo / "data/raw").glob("*.jsonl"))
    found = set(re.findall(r"[\w.+-]+@[\w-]+\.[\w.]+", text)) | set(re.findall(r"01[016789]-\d{3,4}-\d{4}", text))
    assert len(found) >= 5
    return found


def test_the_remote_holds_no_unscrubbed_personal_data(repo, two_tags, s3):
    """dvc push sent datasets, adapters and releases, but not the collected records: no object in
    the bucket holds an email or phone number from the raw logs."""
    objects = bucket_objects(s3["port"])
    assert len(objects) > 20
    planted = raw_personal_data(repo)
    leaked = {k for k, body in objects.items() for pii in planted if pii.encode() in body}
    assert not leaked, sorted(leaked)[:5]


def test_forget_finds_a_users_versions_and_purges_them(repo, two_tags, s3, tmp_path):
    """A deletion request after two tagged versions: `loraloop forget USER` lists v1 and v2 with
    the files that hold the user's records; --purge deletes them locally and from the remote, and
    v1 can no longer be restored."""
    scrubbed = [json.loads(line) for line in (repo / "data/scrubbed/tutor/records.jsonl").read_text().splitlines()]
    raw_text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in (repo / "data/raw").glob("*.jsonl"))
    raw_ids = set(re.findall(r'"user_id": "([^"]+)"', raw_text))
    by_ref = {hashlib.sha256(str(u).encode()).hexdigest()[:16]: u for u in raw_ids if u}
    user, record = next((by_ref[r["user_ref"]], r["id"]) for r in scrubbed if r.get("user_ref") in by_ref)
    out = sh(repo, "loraloop", "forget", user).stdout
    assert "v1 (" in out and "v2 (" in out
    assert "  data/scrubbed/tutor/records.jsonl" in out and "  data/version/splits/tutor/" in out
    assert "rerun with --purge" in out
    assert any(record.encode() in body for body in bucket_objects(s3["port"]).values())

    out = sh(repo, "loraloop", "forget", user, "--purge").stdout
    assert "from the remote" in out
    assert not any(record.encode() in body for body in bucket_objects(s3["port"]).values())
    log = json.loads((repo / "data/forgotten.json").read_text())
    assert log[-1]["versions_no_longer_restorable"][:2] == ["v1", "v2"] and user not in json.dumps(log)
    clone = fresh_clone(repo, tmp_path / "after", s3["port"])
    sh(clone, "git", "checkout", "-q", "v1")
    res = sh(clone, "dvc", "pull", check=False)
    assert res.returncode != 0


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
