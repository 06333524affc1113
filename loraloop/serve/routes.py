"""What each model id a client asks for serves: models/routing.json, read again whenever the file
changes (so a rollback or promote takes effect on the next request), resolved to a version, its
adapter directory and the character's system prompt from the version's metadata."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import yaml

from ..files import read_json
from ..release import registry
from ..release.routing import route as route_of
from ..workspace import Release
from .protocol import ApiError


class Routes:
    """routing.json and the released versions behind it, for a server on one base."""

    def __init__(self, routing_file: Path, root: Path, base_hash: str):
        self.file, self.root, self.base_hash = routing_file, root.resolve(), base_hash
        self.seen: tuple | None = None
        self.routing: dict = {}
        self.metadata: dict[Path, dict] = {}

    def current(self) -> dict:
        try:
            st = self.file.stat()
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen != self.seen:
            self.routing = read_json(self.file) if seen else {}
            self.seen = seen
        return self.routing

    def adapter_dir(self, path: str) -> Path:
        """An adapter path from routing.json, refused if it leads outside the project."""
        p = (self.root / path).resolve()
        if not p.is_relative_to(self.root):
            raise ApiError(500, f"routing.json names an adapter outside the project: {path}")
        return p

    def release_of(self, route: str) -> Release:
        """The release a route's versions are archived in: where its stable version's adapter is."""
        try:
            return Release.of_adapter(self.adapter_dir(self.routing[route]["stable"]["adapter"]))[0]
        except ValueError as exc:
            raise ApiError(500, f"routing.json: {exc}") from None

    def version_metadata(self, adapter: Path) -> dict:
        if adapter not in self.metadata:
            meta = yaml.safe_load((adapter.parent / "metadata.yaml").read_text(encoding="utf-8"))
            self.metadata[adapter] = meta
        return self.metadata[adapter]

    def models(self) -> list[dict]:
        """OpenAI's Model objects: one per route id (created: when its stable version was
        released) and one per pinned <release>@<version>."""
        out = []
        for route, e in sorted(self.current().items()):
            out.append(model_object(route, self._created(self.adapter_dir(e["stable"]["adapter"]))))
        for pin, (route, version) in sorted(self.pinned().items()):
            out.append(model_object(pin, self._created(self.adapter_dir(str(self.release_of(route).adapter(version))))))
        return out

    def _created(self, adapter: Path) -> int:
        try:
            when = self.version_metadata(adapter).get("created_at")
            return int(dt.datetime.fromisoformat(str(when).replace("Z", "+00:00")).timestamp())
        except (OSError, ValueError, TypeError, AttributeError):
            return 0  # metadata without a release time (an old release): OpenAI's field stays an int

    def pinned(self) -> dict[str, tuple[str, str]]:
        """<release>@<version> (or <route>@<version> for a release with several routes) -> (route,
        version), for every released version not withdrawn."""
        out = {}
        by_release: dict[str, list[str]] = {}
        for route, e in self.current().items():
            by_release.setdefault(e["release"], []).append(route)
        for rel_name, routes in by_release.items():
            rel_dir = self.release_of(routes[0]).dir
            gone = registry.withdrawn(rel_dir)
            for version in registry.released_versions(rel_dir):
                if version in gone:
                    continue
                for route in routes:
                    out[f"{rel_name if len(routes) == 1 else route}@{version}"] = (route, version)
        return out

    def resolve(self, model: str, user: str | None) -> dict:
        """What serves this request: route, character, version, rollout, adapter dir, system prompt."""
        routing = self.current()
        if model in routing:
            e = routing[model]
            # A request without a user draws its own key, so anonymous traffic spreads over the
            # rollout at its share (one shared key would send all of it one way).
            chosen = route_of(routing, model, user if user is not None else f"anonymous:{secrets.token_hex(8)}")
            rollout = "canary" if e.get("canary") and chosen["version"] == e["canary"]["version"] else "stable"
            route, version, adapter = model, chosen["version"], self.adapter_dir(chosen["adapter"])
        else:
            pins = self.pinned() if "@" in model else {}
            if model not in pins:
                known = ", ".join(sorted(routing)) or "none (run `dvc repro package` first)"
                raise ApiError(404, f"model {model!r} does not exist; models: {known}", "model", "model_not_found")
            route, version = pins[model]
            e, rollout = routing[route], "pinned"
            adapter = self.adapter_dir(str(self.release_of(route).adapter(version)))
        if e["base_hash"] != self.base_hash:
            raise ApiError(
                409,
                f"{model} runs on base {e['base_hash'][:12]}, this server on {self.base_hash[:12]}: "
                "serve it with that base (--base)",
                "model",
            )
        meta = self.version_metadata(adapter)
        return {
            "route": route,
            "release": e["release"],
            "lineage": e["lineage"],
            "character": e["character"],
            "version": version,
            "rollout": rollout,
            "adapter": adapter,
            "system_prompt": meta["system_prompts"][e["character"]],
        }


def model_object(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "loraloop"}
