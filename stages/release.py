"""The release registry under models/release/<name>/: the current version at the top, every
released version archived under versions/, and an append-only history of what happened.

    models/release/tutor/
      adapter/  metadata.yaml  README.md      the current version (what routing.json points at)
      CHANGELOG.md                            one line per release or rollback, with metrics
      history.json                            every decision: release, keep (and why), rollback
      versions/<version>/{adapter/, metadata.yaml}
    models/routing.json                       character_id -> {base, adapter, version}
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path

import yaml

from .io import read_json, write_json

VERSION = re.compile(r"^(?P<name>.+)-v(?P<major>\d+)\.(?P<minor>\d+)(?:-(?P<tag>[A-Za-z0-9.]+))?$")


def now_utc() -> str:
    # SOURCE_DATE_EPOCH pins timestamps for byte-identical rebuilds.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.timezone.utc) if epoch else dt.datetime.now(dt.timezone.utc)
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def history(release_dir: Path) -> list[dict]:
    path = release_dir / "history.json"
    return read_json(path) if path.is_file() else []


REQUIRED = ("version", "round", "adapter_sha256", "evaluation")


def current(release_dir: Path) -> dict | None:
    path = release_dir / "metadata.yaml"
    if not path.is_file():
        return None
    meta = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise RuntimeError(
            f"{path} is not a loraloop release (no {', '.join(missing)}); "
            f"move {release_dir} aside to start a new release history"
        )
    return meta


def released_versions(release_dir: Path) -> list[str]:
    """Versions in the order they were first released."""
    out: list[str] = []
    for event in history(release_dir):
        if event["action"] == "release" and event["version"] not in out:
            out.append(event["version"])
    return out


def next_version(release_dir: Path, name: str, major: int, tag: str | None) -> str:
    minors = [
        int(m["minor"]) for v in released_versions(release_dir) if (m := VERSION.match(v)) and int(m["major"]) == major
    ]
    version = f"{name}-v{major}.{max(minors, default=0) + 1}"
    return f"{version}-{tag}" if tag else version


def record(release_dir: Path, event: dict) -> None:
    write_json(release_dir / "history.json", history(release_dir) + [{"at": now_utc(), **event}])


def changelog_line(release_dir: Path, line: str) -> None:
    path = release_dir / "CHANGELOG.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Releases\n\n"
    path.write_text(text + f"- {line}\n", encoding="utf-8")


def model_card(metadata: dict) -> str:
    base = metadata["base_model"]
    base_id = base.get("hub_id") or base.get("path") or "SmolLM2-135M-Instruct"
    front = {
        "base_model": base_id,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["lora", "loraloop", *metadata["characters"]],
    }
    ev = metadata["evaluation"][metadata["round"]]
    ref = metadata["training"].get("reference")
    against = f" against the reference `{ref['kind']}` (round `{ref['round']}`)" if ref else ""
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in ev.items() if isinstance(v, float))
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n"
        f"# {metadata['version']}\n\n"
        f"LoRA adapter for `{base_id}` (base sha256 tree hash `{base['hash'][:16]}`), trained by loraloop "
        f"round `{metadata['round']}` with `{metadata['training']['method']}`{against}.\n\n"
        f"Characters: {', '.join(metadata['characters'])}. Released {metadata['created_at']}.\n\n"
        f"## Evaluation (held-out prompts)\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        "## Use\n\n```python\nfrom peft import PeftModel\n"
        'model = PeftModel.from_pretrained(base_model, "adapter")\n```\n\n'
        f"Training data: {metadata['data']['manifest_sha256'][:16]} (data/version/manifest.json sha256).\n"
    )


def install(release_dir: Path, version: str) -> dict:
    """Make an archived version the current one: adapter, metadata and model card."""
    src = release_dir / "versions" / version
    if not src.is_dir():
        raise FileNotFoundError(
            f"{release_dir}: no archived version {version!r} (have {released_versions(release_dir)})"
        )
    if (release_dir / "adapter").exists():
        shutil.rmtree(release_dir / "adapter")
    shutil.copytree(src / "adapter", release_dir / "adapter")
    shutil.copy2(src / "metadata.yaml", release_dir / "metadata.yaml")
    metadata = yaml.safe_load((src / "metadata.yaml").read_text(encoding="utf-8"))
    (release_dir / "README.md").write_text(model_card(metadata), encoding="utf-8")
    return metadata


def update_routing(routing_file: Path, release_dir: Path, metadata: dict) -> None:
    routing = read_json(routing_file) if routing_file.is_file() else {}
    for character in metadata["characters"]:
        routing[character] = {
            "base": metadata["base_model"].get("hub_id") or "models/base",
            "base_hash": metadata["base_model"]["hash"],
            "adapter": (release_dir / "adapter").as_posix(),
            "version": metadata["version"],
        }
    write_json(routing_file, dict(sorted(routing.items())))


def archived(release_dir: Path, version: str) -> dict:
    """The metadata of a released version, from its archive."""
    return yaml.safe_load((release_dir / "versions" / version / "metadata.yaml").read_text(encoding="utf-8"))


def withdrawn(release_dir: Path) -> dict[str, str]:
    """Versions a rollback moved away from and no restore has brought back: version -> the sha256
    of its adapter. Package does not release those adapters again."""
    out: dict[str, str] = {}
    for event in history(release_dir):
        if event["action"] == "rollback":
            out[event["from"]] = archived(release_dir, event["from"])["adapter_sha256"]
            out.pop(event["version"], None)
        elif event["action"] == "restore":
            out.pop(event["version"], None)
    return out


def released(release_dir: Path, version: str) -> str:
    """`version` if history.json records its release, else an error naming what was released."""
    versions = released_versions(release_dir)
    if version not in versions:
        raise RuntimeError(
            f"{version!r} was never released from {release_dir} (released: {', '.join(versions) or 'none'})"
        )
    return version


def rollback(release_dir: Path, routing_file: Path, to: str | None = None) -> tuple[str, str]:
    """Point the release and routing at an earlier version (default: the one released before the
    current one). The version left is withdrawn: package will not release its adapter again until
    `restore`. Recorded in history; reversible with `to=<any released version>`."""
    cur = current(release_dir)
    if cur is None:
        raise RuntimeError(f"{release_dir}: nothing released yet")
    versions = released_versions(release_dir)
    if to is None:
        idx = versions.index(cur["version"]) if cur["version"] in versions else len(versions)
        if idx == 0:
            raise RuntimeError(f"{cur['version']} is the first release; there is nothing earlier to roll back to")
        to = versions[idx - 1]
    released(release_dir, to)
    if to == cur["version"]:
        raise RuntimeError(f"{to} is already the current version")
    metadata = install(release_dir, to)
    update_routing(routing_file, release_dir, metadata)
    record(release_dir, {"action": "rollback", "from": cur["version"], "version": to})
    changelog_line(release_dir, f"{now_utc()} rollback {cur['version']} -> {to} ({cur['version']} withdrawn)")
    return cur["version"], to


def restore(release_dir: Path, version: str) -> None:
    """Let package release a withdrawn version's adapter again (it does not make it current)."""
    released(release_dir, version)
    if version not in withdrawn(release_dir):
        raise RuntimeError(f"{version} is not withdrawn (withdrawn: {', '.join(withdrawn(release_dir)) or 'none'})")
    record(release_dir, {"action": "restore", "version": version})
    changelog_line(release_dir, f"{now_utc()} restore {version} (package may release it again)")
