"""train@rN: LoRA training of the round's adapter. Reads top to bottom: data, losses, the reference,
model, checkpoints, setup, one SFT step, one DPO step, the loop, finish.

- method sft: the kept on-policy samples (weighted by score) mixed with the train split, loss on
  assistant tokens only (end-of-turn included); token_weighting rho1 keeps only the tokens where
  the model is furthest behind the reference (Rho-1 selective language modelling).
- method dpo: score's best-vs-worst pairs and the users' feedback pairs (bad reply vs correction).
- The reference of DPO and Rho-1 (train.reference): `base`, the adapter switched off, or `start`,
  the adapter this round starts from, loaded as a second, frozen adapter on the same base. Its
  values are fixed, so they are computed once before the loop (train.reference_logps).
- The same loop runs on CPU, one GPU, or several under `accelerate launch` (train.launcher).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import lean_lora
from .chat import training_ids
from .cli import PATH, lineage_view, params_of, round_options, say
from .io import read_json, read_jsonl, replacing, sha256_file, sha256_tree, write_json
from .lm_loss import CountedTokenLoss, collate, split_loss, token_losses, tokenize
from .model import load_base, load_round, load_tokenizer, round_info
from .params import Params, TrainParams
from .paths import round_paths
from .prompts import in_character, reference_conversations
from .splits import SPLITS, load_split

# --- data ---------------------------------------------------------------------------------------


def build_mix(
    params: Params, system_prompts: dict[str, str], scored_file: Path, version_dir: Path, rng: random.Random
) -> list[dict]:
    """The kept on-policy samples and enough train-split conversations of the lineage's characters
    (the keys of system_prompts) for `mix_ratio`."""
    onpolicy = [
        {
            "messages": r["messages"] + [{"role": "assistant", "content": r["response"]}],
            "tools": r.get("tools"),
            "weight": r["weight"],
            "kind": "onpolicy",
        }
        for r in read_jsonl(scored_file)
        if r["keep"] and r["response"].strip()
    ]
    rows = load_split(version_dir, "train", sorted(system_prompts))
    mix = params.train.mix_ratio
    n_anchor = min(len(rows), round(len(onpolicy) * (1 - mix) / mix)) if onpolicy else len(rows)
    anchors = [
        {
            "messages": in_character(system_prompts, r["character_id"], r["messages"]),
            "tools": r.get("tools"),
            "weight": r["weight"],
            "kind": "anchor",
        }
        for r in rng.sample(rows, n_anchor)
    ]
    return onpolicy + anchors


def build_pairs(
    params: Params, system_prompts: dict[str, str], pairs_file: Path | None, version_dir: Path
) -> list[dict]:
    """score's on-policy pairs (best vs worst reply of a prompt) and, with train.feedback_pairs,
    the version's feedback pairs (a reply users marked bad and its correction), system prompt in front."""
    pairs = [{**p, "kind": "pair"} for p in read_jsonl(pairs_file)] if pairs_file and Path(pairs_file).is_file() else []
    if params.train.feedback_pairs:
        pairs += [
            {
                "messages": in_character(system_prompts, r["character_id"], r["prompt"]),
                "tools": r.get("tools"),
                "chosen": r["chosen"],
                "rejected": r["rejected"],
                "kind": "feedback_pair",
            }
            for r in load_split(version_dir, "dpo", sorted(system_prompts))
        ]
    return pairs


def tokenize_pairs(tok, pairs: list[dict], max_length: int) -> tuple[list[dict], int]:
    """DPO pairs as (chosen, rejected) tokenized conversations; a pair either side of which
    max_length empties is dropped and counted."""
    out, dropped = [], 0
    for p in pairs:
        sides = [
            training_ids(tok, p["messages"] + [{"role": "assistant", "content": p[k]}], max_length, p.get("tools"))
            for k in ("chosen", "rejected")
        ]
        if None in sides:
            dropped += 1
            continue
        (c_ids, c_mask), (r_ids, r_mask) = sides
        out.append(
            {
                "chosen": {"ids": c_ids, "mask": c_mask},
                "rejected": {"ids": r_ids, "mask": r_mask},
                "ids": c_ids + r_ids,  # only for length grouping
                "kind": p["kind"],
            }
        )
    return out, dropped


def batches(examples: list[dict], batch_size: int, rng: random.Random):
    """Endless epochs; inside each, chunks of 8 batches are sorted by length so a batch pads little."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        chunk = batch_size * 8
        for c in range(0, len(order), chunk):
            part = sorted(order[c : c + chunk], key=lambda i: len(examples[i]["ids"]))
            groups = [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
            rng.shuffle(groups)
            yield from groups


def schedule(examples: list[dict], tp: TrainParams, rng: random.Random, processes: int) -> list[list]:
    """For each step, its `processes * grad_accum` micro-batches (lists of example indices), in the
    order processes take them: process k trains on `plan[step][k::processes]`."""
    stream = batches(examples, tp.batch_size, rng)
    return [[next(stream) for _ in range(processes * tp.grad_accum)] for _ in range(tp.steps)]


def collate_pairs(pairs: list[dict], pad_id: int, dev, aligned: bool = False) -> dict:
    """Chosen rows first, then rejected, in one batch: one forward pass serves both."""
    return collate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id, dev, aligned)


# --- losses -------------------------------------------------------------------------------------


def weighted_loss(tok_loss: torch.Tensor, tmask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean token loss per example over its counted tokens, then the weight-averaged mean."""
    m = tmask.float()
    per_example = (tok_loss * m).sum(1) / m.sum(1).clamp(min=1)
    return (per_example * weight).sum() / weight.sum().clamp(min=1e-8)


def rho1_mask(tok_loss: torch.Tensor, ref_loss: torch.Tensor, tmask: torch.Tensor, keep: float) -> torch.Tensor:
    """Rho-1: of the batch's assistant tokens, the `keep` fraction with the highest excess loss
    (current model minus reference), i.e. the tokens still worth learning."""
    excess = (tok_loss.detach() - ref_loss).masked_fill(~tmask, float("-inf")).flatten()
    k = max(1, math.ceil(keep * int(tmask.sum())))
    chosen = torch.zeros_like(excess, dtype=torch.bool)
    chosen[excess.topk(k).indices] = True
    return chosen.view_as(tmask) & tmask


def sequence_logps(tok_loss: torch.Tensor, tmask: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Log-probability of each row's counted tokens. Each row is summed over its own length only,
    so a row's value does not depend on how wide its batch was padded."""
    lengths = attn.sum(1).tolist()
    return torch.stack([-(tok_loss[i, : n - 1] * tmask[i, : n - 1]).sum() for i, n in enumerate(lengths)])


def dpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, float]:
    """The DPO loss over a batch laid out [chosen..., rejected...], and the share of pairs where
    the policy already prefers the chosen reply more than the reference does."""
    n = policy_logps.shape[0] // 2
    margin = (policy_logps[:n] - ref_logps[:n]) - (policy_logps[n:] - ref_logps[n:])
    return -F.logsigmoid(beta * margin).mean(), float((margin > 0).float().mean())


# --- the reference --------------------------------------------------------------------------------

REFERENCE_ADAPTER = "reference"


def uses_reference(tp: TrainParams) -> bool:
    return tp.method == "dpo" or tp.token_weighting == "rho1"


def reference_of(tp: TrainParams, base_dir: Path, prev_dir: Path) -> dict | None:
    """What DPO / Rho-1 measure against, by hash: the base, or the adapter the round starts from."""
    if not uses_reference(tp):
        return None
    prev = round_info(prev_dir)
    if tp.reference == "start" and prev["adapter"] is not None:
        return {"kind": "start", "round": prev["id"], "adapter_hash": prev["adapter_hash"]}
    return {"kind": tp.reference, "round": "base", "base_hash": read_json(Path(base_dir) / "base.json")["hash"]}


@contextlib.contextmanager
def reference_model(model, reference: dict):
    """Forwards inside run the reference: the base (adapter off) or the frozen start adapter.
    PEFT's set_adapter also changes which weights require grad; they are put back as they were."""
    was_training = model.training
    model.eval()  # the reference is a fixed function: no dropout
    try:
        if reference["round"] == "base":
            with model.disable_adapter():
                yield
            return
        trainable = {p: p.requires_grad for p in model.parameters()}
        model.set_adapter(REFERENCE_ADAPTER)
        try:
            yield
        finally:
            model.set_adapter("default")
            for p, flag in trainable.items():
                p.requires_grad_(flag)
    finally:
        model.train(was_training)


@torch.no_grad()
def reference_values(net, model, reference: dict, rows: list[dict], tp: TrainParams, pad_id: int, dev) -> torch.Tensor:
    """The reference's values for a batch of rows: per-token losses [B, T'-1] for Rho-1 (T' the
    aligned width), the sequence log-probabilities [2B] (chosen..., rejected...) for DPO. Aligned
    batches, so each row's values are the same whichever rows it is computed with."""
    with reference_model(model, reference):
        if tp.method == "dpo":
            batch = collate_pairs(rows, pad_id, dev, aligned=True)
            tok_loss, tmask = token_losses(net, batch)
            return sequence_logps(tok_loss, tmask, batch["attn"])
        return token_losses(net, collate(rows, pad_id, dev, aligned=True))[0]


def precompute_reference(
    net, model, reference: dict, examples: list[dict], plan: list, tp: TrainParams, pad_id: int, dev
) -> None:
    """The reference's values of every example the schedule uses, once, before the loop (they do
    not change while training); stored on the examples as `ref`. Every process computes the whole
    set in the same order, so wrappers that talk between processes in a forward stay in step."""
    used = sorted({i for step in plan for group in step for i in group}, key=lambda i: (len(examples[i]["ids"]), i))
    for start in tqdm(range(0, len(used), tp.batch_size), desc="reference", unit="batch", leave=False):
        idx = used[start : start + tp.batch_size]
        values = reference_values(net, model, reference, [examples[i] for i in idx], tp, pad_id, dev).cpu()
        for j, i in enumerate(idx):
            if tp.method == "dpo":
                examples[i]["ref"] = (values[j], values[len(idx) + j])
            else:
                examples[i]["ref"] = values[j, : len(examples[i]["ids"]) - 1].clone()


def stored_reference(rows: list[dict], tp: TrainParams, width: int, dev) -> torch.Tensor:
    """The precomputed reference values of a batch, laid out as reference_values would give them."""
    if tp.method == "dpo":
        return torch.stack([r["ref"][0] for r in rows] + [r["ref"][1] for r in rows]).to(dev)
    out = torch.zeros(len(rows), width - 1)
    for i, r in enumerate(rows):
        out[i, : len(r["ref"])] = r["ref"]
    return out.to(dev)


# --- model --------------------------------------------------------------------------------------


def load_quantized_base(base_dir: Path):
    """The base in 4-bit NF4 through bitsandbytes (QLoRA). CUDA only."""
    if not torch.cuda.is_available():
        raise TrainingStopped(
            "train.quantize: 4bit (QLoRA) needs a CUDA GPU with bitsandbytes; this machine has "
            "no CUDA device. Set train.quantize: none to train in full precision here."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TrainingStopped("train.quantize: 4bit needs the bitsandbytes package: pip install bitsandbytes") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from .model import compute_dtype

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(),
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_dir,
        quantization_config=config,
        device_map={"": torch.cuda.current_device()},
        dtype=compute_dtype(),
        use_safetensors=True,
        trust_remote_code=False,
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def build_model(params: Params, base_dir: Path, prev_dir: Path, reference: dict | None):
    """Continue the previous round's adapter (init: prev) or start a fresh LoRA on the base; with
    reference: start, the previous adapter once more beside it, frozen, as the reference."""
    from peft import LoraConfig, PeftModel, get_peft_model

    tp = params.train
    base = load_quantized_base(base_dir) if tp.quantize == "4bit" else None
    info = round_info(prev_dir)
    if tp.init == "prev" and info["adapter"] is not None:
        adapter = Path(prev_dir) / info["adapter"]
        if base is None:
            model = load_round(base_dir, prev_dir, trainable=True)
        else:
            model = PeftModel.from_pretrained(base, adapter, is_trainable=True)
        if reference is not None and reference["kind"] == "start":
            model.load_adapter(adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
            model.set_adapter("default")
        return model
    lp = tp.lora
    config = LoraConfig(
        r=lp.r,
        lora_alpha=lp.alpha,
        lora_dropout=lp.dropout,
        target_modules=lp.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base if base is not None else load_base(base_dir), config)


def stable_adapter_config(path: Path) -> None:
    """PEFT keeps target_modules as a set, so its JSON order follows string hashing and changes from
    process to process; sort it so the same training writes the same bytes."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --- checkpoints --------------------------------------------------------------------------------


def fingerprint(
    params: Params, round_id: str, base_dir: Path, version_dir: Path, prev_dir: Path, data_files: list[Path]
) -> str:
    """What a checkpoint belongs to: a checkpoint of other inputs or params is never resumed."""
    splits = Path(version_dir) / SPLITS
    parts = {
        "round": round_id,
        "seed": params.seed,
        "train": params.train.model_dump(mode="json"),
        "system_prompts": params.lineage_of(round_id).system_prompts,
        "base": read_json(Path(base_dir) / "base.json")["hash"],
        "prev": round_info(prev_dir).get("adapter_hash"),
        "data": [sha256_file(p) for p in data_files],
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


# --- setup --------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the loop needs, built once by setup()."""

    params: Params
    round_id: str
    acc: object  # accelerate.Accelerator
    tok: object
    examples: list[dict]
    truncated_away: int
    held_out: list[dict]
    model: object  # the PeftModel
    net: object  # CountedTokenLoss around it, prepared by accelerate: every forward goes through it
    opt: object
    trainable: list
    plan: list  # per step, every process's micro-batches
    reference: dict | None
    key: str  # checkpoint fingerprint
    ckpt_dir: Path
    start: int = 0
    tokens_before: int = 0
    live: object = None
    checkpoint_every: int = 0
    extra: dict = field(default_factory=dict)  # method-specific values to log


def load_examples(
    params: Params,
    round_id: str,
    tok,
    scored_file: Path,
    pairs_file: Path | None,
    version_dir: Path,
    rng: random.Random,
) -> tuple[list[dict], int]:
    """The round's tokenized training examples (SFT mix or DPO pairs); an empty set stops here."""
    tp = params.train
    if tp.method == "dpo":
        examples, cut = tokenize_pairs(
            tok, build_pairs(params, params.lineage_of(round_id).system_prompts, pairs_file, version_dir), tp.max_length
        )
        if not examples:
            feedback = "feedback pairs on" if tp.feedback_pairs else "train.feedback_pairs off"
            raise TrainingStopped(
                f"train@{round_id}: method dpo but no usable pairs (score's {pairs_file}, {feedback}, "
                f"{cut} cut away by max_length); for on-policy pairs set sample.samples_per_prompt >= 2 "
                "or lower score.pair_min_margin, or add feedback data"
            )
        return examples, cut
    prompts = params.lineage_of(round_id).system_prompts
    examples, cut = tokenize(tok, build_mix(params, prompts, scored_file, version_dir, rng), tp.max_length)
    if not examples:
        raise TrainingStopped(
            f"train@{round_id}: no trainable examples ({cut} dropped because train.max_length="
            f"{tp.max_length} leaves no assistant token; empty samples and train split otherwise)"
        )
    return examples, cut


def setup(
    params: Params,
    round_id: str,
    base_dir: Path,
    version_dir: Path,
    prev_dir: Path,
    scored_file: Path,
    pairs_file: Path | None,
    ckpt_dir: Path,
) -> Run:
    """Data, model, optimizer, the schedule, a checkpoint to resume from, the reference values."""
    from accelerate import Accelerator

    tp = params.train
    acc = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(params.seed)
    rng = random.Random(f"{params.seed}:train:{round_id}")
    tok = load_tokenizer(base_dir)
    examples, truncated_away = load_examples(params, round_id, tok, scored_file, pairs_file, version_dir, rng)
    held_out = reference_conversations(
        params.lineage_of(round_id).system_prompts, version_dir, "eval", tp.eval_examples
    )
    reference = reference_of(tp, base_dir, prev_dir)
    model = build_model(params, base_dir, prev_dir, reference)
    lean_lora.install(model)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=tp.lr, weight_decay=0.0)

    data_files = [Path(scored_file)] + ([Path(pairs_file)] if pairs_file and Path(pairs_file).is_file() else [])
    key = fingerprint(params, round_id, base_dir, version_dir, prev_dir, data_files)
    ckpt_dir = Path(ckpt_dir)
    start, tokens_before = load_checkpoint(ckpt_dir, model, opt, key) if tp.checkpoint_every else (0, 0)
    if start:
        acc.print(f"train@{round_id}: resuming from the checkpoint at step {start}")
    elif acc.is_main_process:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    net, opt = acc.prepare(CountedTokenLoss(model), opt)
    plan = schedule(examples, tp, rng, acc.num_processes)
    if reference is not None and tp.reference_logps == "precompute":
        precompute_reference(net, model, reference, examples, plan[start:], tp, tok.pad_token_id, acc.device)
    checkpoint_every = tp.checkpoint_every
    if checkpoint_every and acc.distributed_type in ("FSDP", "DEEPSPEED"):
        acc.print(
            f"train.checkpoint_every: step checkpoints are saved for single-process and DDP runs only, "
            f"not under {acc.distributed_type}; training without them"
        )
        checkpoint_every = 0

    from dvclive import Live

    # DVCLive writes next to the checkpoint while training, so a resumed run continues its curves;
    # the finished logs move into the round's directory at the end.
    live = (
        Live(dir=str(ckpt_dir / "live"), dvcyaml=None, save_dvc_exp=False, report=None, resume=bool(start))
        if acc.is_main_process
        else None
    )
    return Run(
        params,
        round_id,
        acc,
        tok,
        examples,
        truncated_away,
        held_out,
        model,
        net,
        opt,
        trainable,
        plan,
        reference,
        key,
        ckpt_dir,
        start,
        tokens_before,
        live,
        checkpoint_every,
    )


# --- one step -----------------------------------------------------------------------------------


def batch_reference(r: Run, rows: list[dict], width: int) -> torch.Tensor:
    """The reference's values for these rows: stored before the loop, or a forward now."""
    tp = r.params.train
    if tp.reference_logps == "precompute":
        return stored_reference(rows, tp, width, r.acc.device)
    values = reference_values(r.net, r.model, r.reference, rows, tp, r.tok.pad_token_id, r.acc.device)
    return values if tp.method == "dpo" else values[:, : width - 1]


def sft_step(r: Run, rows: list[dict]) -> tuple[torch.Tensor, int]:
    """The loss of one SFT micro-batch (Rho-1: on the tokens furthest behind the reference) and
    its token count."""
    tp = r.params.train
    batch = collate(rows, r.tok.pad_token_id, r.acc.device)
    tok_loss, tmask = token_losses(r.net, batch)
    if tp.token_weighting == "rho1":
        tmask = rho1_mask(tok_loss, batch_reference(r, rows, batch["ids"].shape[1]), tmask, tp.rho1_keep)
    return weighted_loss(tok_loss, tmask, batch["weight"]), int(batch["attn"].sum())


def dpo_step(r: Run, rows: list[dict]) -> tuple[torch.Tensor, int]:
    """The DPO loss of one micro-batch of pairs and its token count; logs the reward accuracy."""
    batch = collate_pairs(rows, r.tok.pad_token_id, r.acc.device)
    tok_loss, tmask = token_losses(r.net, batch)
    policy = sequence_logps(tok_loss, tmask, batch["attn"])
    loss, r.extra["reward_accuracy"] = dpo_loss(
        policy, batch_reference(r, rows, batch["ids"].shape[1]), r.params.train.dpo_beta
    )
    return loss, int(batch["attn"].sum())


def optimizer_step(r: Run, step: int) -> tuple[float, int]:
    """One optimizer step over this process's micro-batches; gradients are all-reduced between
    processes only on the last one (no_sync before it). Returns the mean loss and tokens."""
    tp = r.params.train
    lr = lr_at(step, tp)
    for group in r.opt.param_groups:
        group["lr"] = lr
    groups = r.plan[step][r.acc.process_index :: r.acc.num_processes]
    one_step = dpo_step if tp.method == "dpo" else sft_step
    r.opt.zero_grad(set_to_none=True)
    step_loss, tokens = 0.0, 0
    for j, idx in enumerate(groups):
        sync = j == len(groups) - 1
        with contextlib.nullcontext() if sync else r.acc.no_sync(r.net):
            loss, n = one_step(r, [r.examples[i] for i in idx])
            if not math.isfinite(loss.item()):
                raise not_finite(r, step, "loss", loss.item())
            r.acc.backward(loss / len(groups))
        step_loss += loss.item() / len(groups)
        tokens += n
    norm = float(r.acc.clip_grad_norm_(r.trainable, tp.grad_clip))
    if not math.isfinite(norm):
        raise not_finite(r, step, "gradient norm", norm)
    r.opt.step()
    if r.live is not None:
        r.live.log_metric("train/loss", step_loss)
        r.live.log_metric("train/lr", lr)
        for k, v in r.extra.items():
            r.live.log_metric(f"train/{k}", v)
    return step_loss, tokens


class TrainingStopped(RuntimeError):
    """Training cannot go on, for a reason the message explains to the person running it."""


def not_finite(r: Run, step: int, what: str, value: float) -> TrainingStopped:
    tp = r.params.train
    return TrainingStopped(
        f"train@{r.round_id}: the {what} is {value} at step {step + 1} of {tp.steps}; nothing was written. "
        f"The usual cause is a learning rate too high for this data (train.lr is {tp.lr}, lr at this step "
        f"{lr_at(step, tp):.3g}): lower it, or train.grad_clip ({tp.grad_clip}); also check the round's data."
    )


def out_of_memory(r_params: Params, round_id: str) -> TrainingStopped:
    tp = r_params.train
    return TrainingStopped(
        f"train@{round_id}: CUDA out of memory. Knobs, from the cheapest: train.batch_size ({tp.batch_size}) "
        f"down with train.grad_accum ({tp.grad_accum}) up by the same factor (same effective batch); "
        f"train.max_length ({tp.max_length}) down; train.quantize: 4bit (now {tp.quantize}) for QLoRA; "
        f"train.lora.r ({tp.lora.r}) down; or more GPUs (train.launcher: accelerate)."
    )


def lr_at(step: int, tp: TrainParams) -> float:
    warmup = max(1, int(tp.steps * tp.warmup_fraction))
    if step < warmup:
        return tp.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, tp.steps - warmup)
    return tp.lr * 0.5 * (1 + math.cos(math.pi * progress))


# --- the loop -----------------------------------------------------------------------------------


def run(
    params: Params,
    round_id: str,
    base_dir: Path,
    version_dir: Path,
    prev_dir: Path,
    scored_file: Path,
    out_dir: Path,
    pairs_file: Path | None,
    ckpt_dir: Path,
    stop_after: int | None = None,
) -> dict:
    """`ckpt_dir` holds checkpoints and the live logs while training (outside the DVC outputs,
    which DVC clears before a run); `stop_after`: stop as if killed after that many steps."""
    try:
        return train_loop(
            params, round_id, base_dir, version_dir, prev_dir, scored_file, out_dir, pairs_file, ckpt_dir, stop_after
        )
    except torch.cuda.OutOfMemoryError:
        raise out_of_memory(params, round_id) from None


def train_loop(
    params: Params,
    round_id: str,
    base_dir: Path,
    version_dir: Path,
    prev_dir: Path,
    scored_file: Path,
    out_dir: Path,
    pairs_file: Path | None,
    ckpt_dir: Path,
    stop_after: int | None,
) -> dict:
    r = setup(params, round_id, base_dir, version_dir, prev_dir, scored_file, pairs_file, ckpt_dir)
    tp = params.train
    n_tokens, step_loss, eval_loss, t0 = 0, None, None, time.perf_counter()
    bar = tqdm(range(r.start, tp.steps), desc=f"train@{round_id}", unit="step", disable=not r.acc.is_main_process)
    for step in bar:
        step_loss, tokens = optimizer_step(r, step)
        n_tokens += tokens
        done = step + 1
        at_checkpoint = r.checkpoint_every and done % r.checkpoint_every == 0 and done < tp.steps
        if r.held_out and (at_checkpoint or done == tp.steps):
            eval_loss = split_loss(r.net, r.tok, r.held_out, tp.max_length, tp.batch_size)
            if r.live is not None:
                r.live.log_metric("eval/loss", eval_loss)
        if r.live is not None:
            r.live.next_step()
        if at_checkpoint and r.acc.is_main_process:
            save_checkpoint(r.ckpt_dir, done, r.tokens_before + n_tokens, r.model, r.opt, r.key)
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{n_tokens / (time.perf_counter() - t0):.0f}")
        if stop_after is not None and done >= stop_after:
            raise KeyboardInterrupt(f"stopped after step {done} (stop_after)")
    seconds = time.perf_counter() - t0
    stats = finish(r, base_dir, prev_dir, out_dir, r.tokens_before + n_tokens, step_loss, eval_loss)
    if not stats:
        return {}
    return {
        **stats,
        "resumed_from": r.start,
        "tokens_per_s": n_tokens * r.acc.num_processes / seconds if seconds else 0.0,
    }


# --- finish -------------------------------------------------------------------------------------


def finish(
    r: Run,
    base_dir: Path,
    prev_dir: Path,
    out_dir: Path,
    tokens: int,
    final_loss: float | None,
    eval_loss: float | None,
) -> dict:
    """Gather the adapter, write it with its curves and ROUND.json; drop the checkpoint."""
    tp = r.params.train
    r.acc.wait_for_everyone()
    # Gathered from every process under FSDP / DeepSpeed; named as the PeftModel names them. Only
    # the trained adapter is written: the reference adapter (train.reference: start) is not.
    state = {k.removeprefix("model."): v for k, v in r.acc.get_state_dict(r.net).items()}
    if not r.acc.is_main_process:
        return {}
    r.live.end()
    ex = r.examples
    stats = {
        "method": tp.method,
        "examples": len(ex),
        "onpolicy": sum(e["kind"] == "onpolicy" for e in ex),
        "anchor": sum(e["kind"] == "anchor" for e in ex),
        "pairs": sum(e["kind"] == "pair" for e in ex),
        "feedback_pairs": sum(e["kind"] == "feedback_pair" for e in ex),
        "truncated_away": r.truncated_away,
        "steps": tp.steps,
        "processes": r.acc.num_processes,
        "tokens": tokens * r.acc.num_processes,
        "final_loss": final_loss,
        "eval_loss": eval_loss,
    }
    with replacing(out_dir) as tmp:
        tmp.mkdir(parents=True)
        shutil.copytree(r.ckpt_dir / "live", tmp / "live")
        r.model.save_pretrained(
            tmp / "adapter", state_dict=state, safe_serialization=True, selected_adapters=["default"]
        )
        stable_adapter_config(tmp / "adapter" / "adapter_config.json")
        write_json(
            tmp / "ROUND.json",
            {
                "id": r.round_id,
                "prev": round_info(prev_dir)["id"],
                "adapter": "adapter",
                "adapter_hash": sha256_file(tmp / "adapter" / "adapter_model.safetensors"),
                "base_hash": read_json(base_dir / "base.json")["hash"],
                "init": tp.init,
                "reference": r.reference,
                "train": stats,
            },
        )
    shutil.rmtree(r.ckpt_dir, ignore_errors=True)
    return stats


# --- the command ----------------------------------------------------------------------------------

LAUNCHED = "LORALOOP_LAUNCHED"


def accelerate_launch(tp: TrainParams, argv: list[str]) -> int:
    """This same command again under `accelerate launch`, with the config file from params."""
    config = Path(tp.accelerate_config)
    if not config.is_file():
        raise click.ClickException(f"train.accelerate_config: {config} not found (see configs/accelerate/)")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        str(tp.num_processes),
        "-m",
        "stages.cli",
        *argv,
    ]
    click.echo(f"launching: {' '.join(cmd)}", err=True)
    return subprocess.call(cmd, env={**os.environ, LAUNCHED: "1"})


@click.command()
@round_options
@click.option("--scored", type=PATH, default=None, help="Default: <rounds-data>/<round>/scored.jsonl")
@click.option("--pairs", type=PATH, default=None, help="Default: <rounds-data>/<round>/pairs.jsonl")
@click.option("--checkpoints", type=PATH, default=None, help="Default: checkpoints/<round> (untracked)")
@click.pass_context
def cli(ctx, round_id, rounds_data, rounds_dir, version_dir, base_dir, scored, pairs, checkpoints):
    """Train the round's LoRA adapter (under `accelerate launch` when train.launcher says so)."""
    p = params_of(ctx)
    r = p.round(round_id)
    prev = round_paths(r.prev, r.lineage, rounds_data, rounds_dir)
    if p.train.launcher == "accelerate" and not os.environ.get(LAUNCHED):
        sys.exit(accelerate_launch(p.train, sys.argv[1:]))
    rp = round_paths(round_id, r.lineage, rounds_data, rounds_dir)
    version_dir = lineage_view(version_dir, r.lineage)
    ckpt = checkpoints or Path("checkpoints") / round_id
    try:
        result = run(
            p, round_id, base_dir, version_dir, prev.model, scored or rp.scored, rp.model, pairs or rp.pairs, ckpt
        )
    except TrainingStopped as exc:
        raise click.ClickException(str(exc)) from None
    if result:  # only the main process reports
        say(result)
