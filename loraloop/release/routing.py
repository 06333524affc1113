"""Who gets which version: models/routing.json maps a route id to {release, lineage, character,
base, base_hash, stable, canary, canary_share} (registry.update_routing writes it; `loraloop
serve` reads it). A route id is what a client asks for: a character id,
or <lineage>/<character> for a variant. A user goes to the canary when a hash of (route id, user
id) falls below canary_share, so a user keeps the version they got while the share stays the
same, and a larger share keeps them on it."""

from __future__ import annotations

import hashlib


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
