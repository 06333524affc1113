"""Reading a dataset version's manifest.json (written by the version stage): shared by version's
changelog and package's model card."""

from __future__ import annotations

from collections import Counter

from ..params import Params


def records_by_source(counts: dict) -> dict[str, int]:
    """manifest counts (character -> split -> {by_source, total}) summed per source."""
    out: Counter = Counter()
    for splits in counts.values():
        for split in splits.values():
            out.update(split["by_source"])
    return dict(sorted(out.items()))


def characters_in(manifest: dict) -> set[str]:
    """The characters a dataset version holds records of."""
    return {rel.split("/", 1)[0] for rel in manifest.get("records", {})}


def character_warnings(params: Params, manifest: dict | None) -> list[str]:
    """A lineage's character that no data has (its view would fail after collect, scrub and
    version ran), and a character with data that no lineage trains on. The data's characters: the
    last dataset version's (if any), the sources' character_id and collect.default_character_id."""
    declared = {s.character_id for s in params.collect.sources if s.character_id}
    declared |= {params.collect.default_character_id} - {None}
    versioned = characters_in(manifest or {})
    known, out = declared | versioned, []
    for name in params.lineages:
        for character in params.lineage(name).characters:
            if character not in known:
                out.append(
                    f"lineages.{name}.system_prompts.{character}: {character!r} is in neither the dataset "
                    f"version nor a source's character_id (known: {', '.join(sorted(known)) or 'none'}); set "
                    f"character_id: {character} on its source in collect.sources, or fix the key"
                )
    trained = {c for name in params.lineages for c in params.lineage(name).characters}
    for character in sorted(versioned - trained):
        out.append(f"character {character!r} has data in the dataset version but no lineage trains on it")
    return out
