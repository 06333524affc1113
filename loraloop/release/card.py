"""The model card (README.md) of a released version: Hugging Face front matter with its
model-index, each round's metrics against the base and the previous version, plots, the data."""

from __future__ import annotations

from pathlib import Path

import yaml


def model_index(metadata: dict) -> list[dict]:
    """Hugging Face's model-index: the released round's evaluation as results."""
    ev = metadata["evaluation"][metadata["round"]]
    metrics = [{"type": k, "name": k, "value": round(v, 4)} for k, v in ev.items() if isinstance(v, float)]
    dataset = {"name": f"{metadata.get('lineage', metadata['name'])} held-out prompts", "type": "loraloop"}
    dataset["revision"] = metadata["data"]["manifest_sha256"][:16]
    return [
        {
            "name": metadata["version"],
            "results": [{"task": {"type": "text-generation"}, "dataset": dataset, "metrics": metrics}],
        }
    ]


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)


def rounds_table(metadata: dict) -> str:
    """Every float metric of the released round: the base, each round, the previous version, and
    the change against the previous version."""
    evals = metadata["evaluation"]
    ev = evals[metadata["round"]]
    prev = metadata.get("changes_from_previous") or {}
    cols = list(evals)
    head = "| metric | " + " | ".join(cols)
    if prev.get("evaluation"):
        head += f" | {prev['from_version']} | change"
    lines = [head + " |", "|---" * (len(head.split("|")) - 2) + "|"]
    for k, v in ev.items():
        if not isinstance(v, float):
            continue
        row = [_cell(evals[c].get(k)) for c in cols]
        if prev.get("evaluation"):
            old = prev["evaluation"].get(k)
            row += [_cell(old), f"{v - old:+.4f}" if isinstance(old, (int, float)) else "-"]
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def data_summary(metadata: dict) -> str:
    data = metadata["data"]
    prev = metadata.get("changes_from_previous") or {}
    before = prev.get("by_source_before") or {}
    lines = ["| source | records | since " + (prev.get("from_version") or "-") + " |", "|---|---|---|"]
    for src, n in (data.get("by_source") or {}).items():
        change = f"{n - before.get(src, 0):+d}" if prev.get("from_version") else "new"
        lines.append(f"| {src} | {n} | {change} |")
    notes = []
    if data.get("negatives"):
        notes.append(f"Trained against {data['negatives']} negatives (replies users should not get).")
    if prev:
        notes.append(
            "The data changed since the previous version."
            if prev["data_changed"]
            else "Same data as the previous version."
        )
    if prev.get("base_changed"):
        notes.append("**The base model changed**: this is a new major version.")
    return "\n".join(lines) + ("\n\n" + " ".join(notes) if notes else "")


def judges_section(metadata: dict) -> str:
    """The learned judges on held-out conversations against the rule score, for the card."""
    j = metadata.get("judges")
    if not j:
        return ""
    rw, pe = j["reward"], j["persona"]
    if rw["available"]:
        ho, rb = rw["held_out"], rw["rule_baseline"]
        lines = ["| judge | ROC-AUC | pairwise accuracy | Brier |", "|---|---|---|---|"]
        for name, f in (("learned reward model", ho), ("rule score", rb)):
            lines.append(f"| {name} | {_cell(f['roc_auc'])} | {_cell(f['pairwise_accuracy'])} | {_cell(f['brier'])} |")
        text = "\n".join(lines) + f"\n\nLabels: {rw['labels']['good']} good, {rw['labels']['bad']} bad."
    else:
        text = f"No learned reward model: {rw['reason']}."
    if pe["available"]:
        text += f" Persona classifier accuracy on held-out replies: {_cell(pe['held_out']['accuracy'])}."
    if j.get("scored_by"):
        text += f" This round's samples were scored by judge `{j['scored_by'][:12]}`."
    return f"## Judges (held-out conversations)\n\n{text}\n\n"


def model_card(metadata: dict) -> str:
    base = metadata["base_model"]
    base_id = base.get("hub_id") or base.get("path") or "SmolLM2-135M-Instruct"
    front = {
        "base_model": base_id,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["lora", "loraloop", *metadata["characters"]],
        "model-index": model_index(metadata),
    }
    ref = metadata["training"].get("reference")
    against = f" against the reference `{ref['kind']}` (round `{ref['round']}`)" if ref else ""
    plots = "".join(f"![{Path(p).stem}]({p})\n" for p in metadata.get("plots", []) if p.endswith(".svg"))
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---\n\n"
        f"# {metadata['version']}\n\n"
        f"LoRA adapter for `{base_id}` (base sha256 tree hash `{base['hash'][:16]}`), trained by loraloop "
        f"round `{metadata['round']}` with `{metadata['training']['method']}`{against}.\n\n"
        f"Characters: {', '.join(metadata['characters'])}. Released {metadata['created_at']}.\n\n"
        f"## Evaluation: each round against the base and the previous version (held-out prompts)\n\n"
        f"{rounds_table(metadata)}\n\n"
        + judges_section(metadata)
        + (f"## Plots\n\n{plots}\n" if plots else "")
        + f"## Data\n\n{data_summary(metadata)}\n\n"
        "## Use\n\n```python\nfrom peft import PeftModel\n"
        'model = PeftModel.from_pretrained(base_model, "adapter")\n```\n\n'
        f"Training data: {metadata['data']['manifest_sha256'][:16]} (data/version/manifest.json sha256).\n"
    )
