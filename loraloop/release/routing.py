"""Who gets which version: models/routing.json maps a route id to {release, lineage, character,
base, base_hash, stable, canary, canary_share} (registry.update_routing writes it; `loraloop
serve` reads it). A route id is what a client asks for: a character id,
or <lineage>/<character> for a variant. A user goes to the canary when a hash of (route id, user
id) falls below canary_share, so a user keeps the version they got while the share stays the
same, and a larger share keeps them on it."""

from __future__ import annotations

import hashlib

from ..params import Params


def bucket(route: str, user_id: str) -> float:
    """A user's fixed place in [0, 1) for a route: the first 8 bytes of sha256(route, user id)."""
    digest = hashlib.sha256(f"{route}\0{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def route(routing: dict, route_id: str, user_id: str) -> dict:
    """The version entry (version, adapter) that serves this user of this route."""
    if route_id not in routing:
        raise KeyError(f"no route {route_id!r} in routing.json (routes: {', '.join(sorted(routing)) or 'none'})")
    e = routing[route_id]
    canary = e.get("canary")
    return canary if canary and bucket(route_id, user_id) < e["canary_share"] else e["stable"]


def missing_route(route_id: str, routing: dict, params: Params | None, decisions: dict) -> str:
    """Why a route is not in routing.json: no lineage serves it, or its lineage was not packaged
    yet, or package released none of its rounds (package's reason: the gates they failed).
    Without params (a serving host with routing.json alone) a route id is taken as its lineage's name."""
    routes = ", ".join(sorted(routing)) or "none"
    if params is None:
        owner = route_id if route_id in decisions else None
    else:
        owner = next((name for name in params.lineages if route_id in params.lineage(name).routes), None)
    if owner is None:
        return f"no route {route_id!r}: no lineage in params.yaml serves it (routes: {routes})"
    if owner not in decisions:
        return f"no route {route_id!r}: lineage {owner!r} is not packaged yet (run `dvc repro package`)"
    return f"no route {route_id!r}: package released no round of lineage {owner!r}: {decisions[owner]['reason']}"
