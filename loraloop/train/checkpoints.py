"""Step checkpoints of a round in training (train.checkpoint_every), under checkpoints/<round>/
(untracked): the trained weights, the optimizer's moments and the RNG state as safetensors, the
curves so far, and state.json last with their sha256. A killed run resumes from the last one and
ends with the same adapter bytes as an uninterrupted one; a checkpoint of other inputs or params,
or a damaged one, is never resumed."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

from ..data.splits import SPLITS
from ..files import read_json, sha256_file, sha256_tree, write_json
from ..params import Params
from ..workspace import Base
from .data import Inputs


def fingerprint(params: Params, inputs: Inputs, base: Base) -> str:
    """What a checkpoint belongs to: a checkpoint of other inputs or params is never resumed."""
    r = inputs.round
    splits = Path(r.view) / SPLITS
    parts = {
        "round": r.id,
        "seed": params.seed,
        "train": params.train.model_dump(mode="json"),
        "system_prompts": params.lineage(r.lineage).system_prompts,
        "base": base.hash,
        "prev": r.prev.adapter_hash,
        "data": [sha256_file(p) for p in inputs.files],
        "splits": sha256_tree(splits)[0] if splits.is_dir() else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _trainable(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The trained parameters in model order: their index names their optimizer moments."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def save_checkpoint(ckpt_dir: Path, step: int, tokens: int, model, opt, key: str) -> None:
    """Trainable weights, optimizer moments and the RNG state, as safetensors (no pickles), then
    state.json last: a checkpoint without it is incomplete and ignored."""
    from safetensors.torch import save_file

    tmp = ckpt_dir / "next"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = _trainable(model)
    save_file({n: p.detach().cpu().contiguous() for n, p in trainable}, tmp / "weights.safetensors")
    moments = {
        f"{i}.{k}": v.detach().cpu().contiguous()
        for i, (_, p) in enumerate(trainable)
        for k, v in opt.state.get(p, {}).items()
    }
    moments["rng"] = torch.get_rng_state()
    save_file(moments, tmp / "optimizer.safetensors")
    if (ckpt_dir / "live").is_dir():  # the curves up to this step, for a resumed run to continue
        shutil.copytree(ckpt_dir / "live", tmp / "live")
    write_json(
        tmp / "state.json",
        {
            "step": step,
            "tokens": tokens,
            "fingerprint": key,
            "params": [n for n, _ in trainable],
            # resume verifies these: a damaged file is a fresh start, never a silently other adapter
            "sha256": {f: sha256_file(tmp / f) for f in CHECKPOINT_FILES},
        },
    )
    final = ckpt_dir / "last"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


CHECKPOINT_FILES = ("weights.safetensors", "optimizer.safetensors")


def checkpoint_problem(last: Path, key: str) -> str | None:
    """Why the checkpoint in `last` cannot be resumed, or None if it can."""
    if not (last / "state.json").is_file():
        return "it has no state.json (it was cut off while being written)"
    try:
        state = read_json(last / "state.json")
    except (OSError, ValueError) as exc:
        return f"its state.json is unreadable ({type(exc).__name__})"
    if state.get("fingerprint") != key:
        return "it is for other inputs or params"
    for name in CHECKPOINT_FILES:
        path = last / name
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != state.get("sha256", {}).get(name):
            return f"{path} does not match the checksum in state.json (damaged or partly written)"
    return None


def load_checkpoint(ckpt_dir: Path, model, opt, key: str) -> tuple[int, int]:
    """The step to resume from and the tokens trained so far ((0, 0) without a usable checkpoint:
    none, another run's, or a damaged one, which is reported by path and removed)."""
    from safetensors.torch import load_file

    last = ckpt_dir / "last"
    if not last.exists():
        return 0, 0
    problem = checkpoint_problem(last, key)
    if problem:
        print(f"checkpoint {last} is not resumed: {problem}; the round starts over", file=sys.stderr)
        shutil.rmtree(last, ignore_errors=True)
        return 0, 0
    state = read_json(last / "state.json")
    weights = load_file(last / "weights.safetensors")
    trainable = _trainable(model)
    with torch.no_grad():
        for name, p in trainable:
            p.copy_(weights[name])
    moments = load_file(last / "optimizer.safetensors")
    per_param: dict[str, dict] = {}
    for key_name, v in moments.items():
        if key_name != "rng":
            i, k = key_name.split(".", 1)
            per_param.setdefault(i, {})[k] = v
    for i, (_, p) in enumerate(trainable):
        if str(i) in per_param:
            opt.state[p] = {k: v if k == "step" else v.to(p.device) for k, v in per_param[str(i)].items()}
    torch.set_rng_state(moments["rng"])
    shutil.rmtree(ckpt_dir / "live", ignore_errors=True)  # drop steps logged after the checkpoint
    if (last / "live").is_dir():
        shutil.copytree(last / "live", ckpt_dir / "live")
    return state["step"], state["tokens"]
