"""The release registry under models/release/<name>/ (one per lineage): the stable version at the
top, every released version archived under versions/, what serves whom in rollout.json, and an
append-only history of what happened.

    models/release/tutor/
      adapter/  metadata.yaml  README.md      the stable version
      rollout.json                            {stable, canary, canary_share}
      CHANGELOG.md                            one line per release, promote or rollback, with metrics
      history.json                            every decision: release, keep (and why), promote, rollback
      versions/<version>/{adapter/, metadata.yaml}
    models/routing.json                       route id -> {release, character, base, stable, canary, canary_share}

The layout is workspace.Release's; who of a route's users gets the canary is routing.py's."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path

import yaml

from ..files import read_json, write_json
from ..workspace import Release
from . import card

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


def next_version(release_dir: Path, name: str, major: int, tag: str | None, first: int = 1) -> str:
    """The next minor of `major`; `first` when the major has none yet (0 after a base change: v1.0)."""
    minors = [
        int(m["minor"]) for v in released_versions(release_dir) if (m := VERSION.match(v)) and int(m["major"]) == major
    ]
    version = f"{name}-v{major}.{max(minors) + 1 if minors else first}"
    return f"{version}-{tag}" if tag else version


def record(release_dir: Path, event: dict) -> None:
    write_json(release_dir / "history.json", history(release_dir) + [{"at": now_utc(), **event}])


def changelog_line(release_dir: Path, line: str) -> None:
    path = release_dir / "CHANGELOG.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Releases\n\n"
    path.write_text(text + f"- {line}\n", encoding="utf-8")


def install(release_dir: Path, version: str) -> dict:
    """Make an archived version the current one: adapter, metadata and model card."""
    src = Release(release_dir).version_dir(version)
    if not src.is_dir():
        raise FileNotFoundError(
            f"{release_dir}: no archived version {version!r} (have {released_versions(release_dir)})"
        )
    if (release_dir / "adapter").exists():
        shutil.rmtree(release_dir / "adapter")
    shutil.copytree(src / "adapter", release_dir / "adapter")
    if (release_dir / "plots").exists():
        shutil.rmtree(release_dir / "plots")
    if (src / "plots").is_dir():
        shutil.copytree(src / "plots", release_dir / "plots")
    shutil.copy2(src / "metadata.yaml", release_dir / "metadata.yaml")
    metadata = Release(release_dir).metadata(version)
    (release_dir / "README.md").write_text(card.model_card(metadata), encoding="utf-8")
    return metadata


def rollout(release_dir: Path) -> dict:
    """Which versions serve: stable, and canary with the share of users it gets."""
    path = release_dir / "rollout.json"
    if path.is_file():
        return read_json(path)
    cur = current(release_dir)
    return {"stable": cur["version"] if cur else None, "canary": None, "canary_share": 0.0}


def set_rollout(release_dir: Path, stable: str | None, canary: str | None = None, share: float = 0.0) -> None:
    write_json(
        release_dir / "rollout.json",
        {"stable": stable, "canary": canary, "canary_share": share if canary else 0.0},
    )


def serving(release_dir: Path) -> dict | None:
    """The metadata of the newest version in service: the canary, or else the stable."""
    ro = rollout(release_dir)
    newest = ro["canary"] or ro["stable"]
    return archived(release_dir, newest) if newest else None


def update_routing(routing_file: Path, release_dir: Path, named: Path | None = None) -> None:
    """routing.json's entries of this release, from its rollout (entries of other releases stay).
    `named`: where the release directory will be, when release_dir is a copy being written."""
    ro = rollout(release_dir)
    routing = read_json(routing_file) if routing_file.is_file() else {}
    if ro["stable"] is None:
        return write_json(routing_file, routing)
    meta = archived(release_dir, ro["stable"])
    routing = {k: v for k, v in routing.items() if v.get("release") != meta["name"]}

    def entry(version):
        return {"version": version, "adapter": Release(named or release_dir).adapter(version).as_posix()}

    for route, character in meta["routes"].items():
        routing[route] = {
            "release": meta["name"],
            "lineage": meta["lineage"],
            "character": character,
            "base": meta["base_model"].get("hub_id") or "models/base",
            "base_hash": meta["base_model"]["hash"],
            "stable": entry(ro["stable"]),
            "canary": entry(ro["canary"]) if ro["canary"] else None,
            "canary_share": ro["canary_share"],
        }
    write_json(routing_file, dict(sorted(routing.items())))


def archived(release_dir: Path, version: str) -> dict:
    """The metadata of a released version, from its archive."""
    return Release(release_dir).metadata(version)


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


def stable_history(release_dir: Path) -> list[str]:
    """The versions that were stable, in the order they became so."""
    out = []
    for event in history(release_dir):
        if (event["action"] == "release" and event.get("rollout", "stable") == "stable") or (
            event["action"] == "promote" and event["share"] >= 1
        ):
            out.append(event["version"])
        elif event["action"] == "rollback":
            out.append(event["version"])
    return out


def make_stable(release_dir: Path, version: str) -> dict:
    metadata = install(release_dir, version)
    set_rollout(release_dir, version)
    return metadata


def promote(release_dir: Path, routing_file: Path, share: float, version: str | None = None) -> str:
    """The newest released version (or `version`) to canary for `share` of users; share 1: stable."""
    if not 0 < share <= 1:
        raise RuntimeError(f"--share must be in (0, 1]; got {share}")
    ro = rollout(release_dir)
    out = withdrawn(release_dir)
    if version is None:
        candidates = [v for v in released_versions(release_dir) if v not in out]
        if not candidates:
            raise RuntimeError(f"{release_dir}: nothing released yet")
        version = candidates[-1]
    released(release_dir, version)
    if version in out:
        raise RuntimeError(f"{version} was withdrawn by a rollback; `loraloop release restore` it first")
    if version == ro["stable"]:
        raise RuntimeError(f"{version} is already stable")
    if share >= 1:
        make_stable(release_dir, version)
    else:
        set_rollout(release_dir, ro["stable"], version, share)
    update_routing(routing_file, release_dir)
    record(release_dir, {"action": "promote", "version": version, "share": share})
    where = "stable" if share >= 1 else f"canary for {share:.0%} of users (stable: {ro['stable']})"
    changelog_line(release_dir, f"{now_utc()} promote {version} -> {where}")
    return version


def rollback(release_dir: Path, routing_file: Path, to: str | None = None) -> tuple[str, str]:
    """Back to the previous stable: a canary is dropped (its users return to the stable), or with
    no canary the stable before the current one serves again (`to`: any released version). The
    version left is withdrawn: package will not release its adapter again until `restore`."""
    ro = rollout(release_dir)
    if ro["stable"] is None:
        raise RuntimeError(f"{release_dir}: nothing released yet")
    if to is None and ro["canary"]:
        left, to = ro["canary"], ro["stable"]
        set_rollout(release_dir, to)
    else:
        left = ro["canary"] or ro["stable"]
        if to is None:
            out = withdrawn(release_dir)
            earlier = [v for v in stable_history(release_dir) if v != ro["stable"] and v not in out]
            if not earlier:
                raise RuntimeError(
                    f"{ro['stable']} is the first stable version; there is nothing earlier to roll back to"
                )
            to = earlier[-1]
        released(release_dir, to)
        if to == left:
            raise RuntimeError(f"{to} is already the current version")
        make_stable(release_dir, to)
    update_routing(routing_file, release_dir)
    record(release_dir, {"action": "rollback", "from": left, "version": to})
    changelog_line(release_dir, f"{now_utc()} rollback {left} -> {to} ({left} withdrawn)")
    return left, to


def restore(release_dir: Path, version: str) -> None:
    """Let package release a withdrawn version's adapter again (it does not make it current)."""
    released(release_dir, version)
    if version not in withdrawn(release_dir):
        raise RuntimeError(f"{version} is not withdrawn (withdrawn: {', '.join(withdrawn(release_dir)) or 'none'})")
    record(release_dir, {"action": "restore", "version": version})
    changelog_line(release_dir, f"{now_utc()} restore {version} (package may release it again)")
