"""train@rN: LoRA training of the round's adapter. Reads top to bottom: data, losses, model,
checkpoints, the loop, save.

- method sft: the kept on-policy samples (weighted by score) mixed with the train split, loss on
  assistant tokens only (end-of-turn included); token_weighting rho1 keeps only the tokens where
  the model is furthest behind the reference (Rho-1 selective language modelling).
- method dpo: score's best-vs-worst pairs and the users' feedback pairs (bad reply vs correction),
  with the base (the adapter disabled) as the reference, so no second model is loaded.
- The same loop runs on CPU, one GPU, or several under `accelerate launch` (train.launcher).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .chat import training_ids, with_system
from .io import read_json, read_jsonl, sha256_file, write_json
from .model import load_base, load_round, load_tokenizer, round_info
from .params import Params, TrainParams
from .prompts import system_prompt_for
from .version import load_split

# --- data ---------------------------------------------------------------------------------------


def build_mix(params: Params, scored_file: Path, version_dir: Path, rng: random.Random) -> list[dict]:
    """The kept on-policy samples and enough train-split conversations for `mix_ratio`."""
    onpolicy = [
        {"messages": r["messages"] + [{"role": "assistant", "content": r["response"]}], "weight": r["weight"], "kind": "onpolicy"}
        for r in read_jsonl(scored_file) if r["keep"] and r["response"].strip()
    ]
    rows = load_split(version_dir, "train")
    mix = params.train.mix_ratio
    n_anchor = min(len(rows), round(len(onpolicy) * (1 - mix) / mix)) if onpolicy else len(rows)
    anchors = [
        {"messages": with_system(system_prompt_for(params.system_prompts, r["character_id"]), r["messages"]),
         "weight": r["weight"], "kind": "anchor"}
        for r in rng.sample(rows, n_anchor)
    ]
    return onpolicy + anchors


def reference_conversations(params: Params, version_dir: Path, split: str, n: int) -> list[dict]:
    """The first n records of a split (in its stable order), system prompt in front: the fixed set
    the eval loss is measured on."""
    return [{"messages": with_system(system_prompt_for(params.system_prompts, r["character_id"]), r["messages"]),
             "weight": 1.0, "kind": split}
            for r in load_split(version_dir, split)[:n]]


def tokenize(tok, examples: list[dict], max_length: int) -> tuple[list[dict], int]:
    """Tokenized examples, and how many were dropped because max_length cut off every
    assistant token (counted in ROUND.json, so a too-small max_length shows)."""
    out, dropped = [], 0
    for ex in examples:
        enc = training_ids(tok, ex["messages"], max_length)
        if enc is None:
            dropped += 1
            continue
        out.append({"ids": enc[0], "mask": enc[1], "weight": ex["weight"], "kind": ex["kind"]})
    return out, dropped


def build_pairs(params: Params, pairs_file: Path | None, version_dir: Path) -> list[dict]:
    """score's on-policy pairs (best vs worst reply of a prompt) and, with train.feedback_pairs,
    the version's feedback pairs (a reply users marked bad and its correction), system prompt in front."""
    pairs = [{**p, "kind": "pair"} for p in read_jsonl(pairs_file)] if pairs_file and Path(pairs_file).is_file() else []
    if params.train.feedback_pairs:
        pairs += [{"messages": with_system(system_prompt_for(params.system_prompts, r["character_id"]), r["prompt"]),
                   "chosen": r["chosen"], "rejected": r["rejected"], "kind": "feedback_pair"}
                  for r in load_split(version_dir, "dpo")]
    return pairs


def tokenize_pairs(tok, pairs: list[dict], max_length: int) -> tuple[list[dict], int]:
    """DPO pairs as (chosen, rejected) tokenized conversations; a pair either side of which
    max_length empties is dropped and counted."""
    out, dropped = [], 0
    for p in pairs:
        sides = [training_ids(tok, p["messages"] + [{"role": "assistant", "content": p[k]}], max_length)
                 for k in ("chosen", "rejected")]
        if None in sides:
            dropped += 1
            continue
        (c_ids, c_mask), (r_ids, r_mask) = sides
        out.append({"chosen": {"ids": c_ids, "mask": c_mask}, "rejected": {"ids": r_ids, "mask": r_mask},
                    "ids": c_ids + r_ids, "kind": p["kind"]})   # ids: only for length grouping
    return out, dropped


def batches(examples: list[dict], batch_size: int, rng: random.Random):
    """Endless epochs; inside each, chunks of 8 batches are sorted by length so a batch pads little."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        chunk = batch_size * 8
        for c in range(0, len(order), chunk):
            part = sorted(order[c:c + chunk], key=lambda i: len(examples[i]["ids"]))
            groups = [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
            rng.shuffle(groups)
            yield from groups


def collate(rows: list[dict], pad_id: int, dev) -> dict:
    """Right-padded ids, assistant mask, attention mask and weights of tokenized rows."""
    width = max(len(r["ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["ids"])
        ids[i, :n] = torch.tensor(r["ids"])
        mask[i, :n] = torch.tensor(r["mask"])
        attn[i, :n] = 1
    weight = torch.tensor([r.get("weight", 1.0) for r in rows], dtype=torch.float32)
    return {"ids": ids.to(dev), "mask": mask.to(dev), "attn": attn.to(dev), "weight": weight.to(dev)}


def collate_pairs(pairs: list[dict], pad_id: int, dev) -> dict:
    """Chosen rows first, then rejected, in one batch: one forward pass serves both."""
    return collate([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id, dev)


# --- losses -------------------------------------------------------------------------------------


def _causal_lm(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def _head_splits(model) -> bool:
    """Whether running the decoder, then the output layer on chosen positions, gives the model's
    own logits. Models that change logits after the output layer (soft-capping, scaling) fail the
    check and keep the full forward."""
    lm = _causal_lm(model)
    if not (hasattr(lm, "get_decoder") and hasattr(lm, "get_output_embeddings")) or lm.get_output_embeddings() is None:
        return False
    was_training = model.training
    model.eval()
    try:
        ids = torch.arange(1, 9, device=next(model.parameters()).device)[None]
        full = model(input_ids=ids).logits.float()
        split = lm.get_output_embeddings()(lm.get_decoder()(input_ids=ids).last_hidden_state).float()
        return full.shape == split.shape and torch.allclose(full, split, rtol=1e-2, atol=1e-2)
    finally:
        model.train(was_training)


class CountedTokenLoss(torch.nn.Module):
    """Next-token cross-entropy of a causal LM at the positions that count (assistant tokens).

    The output layer is as wide as the vocabulary (49k columns for SmolLM2, 150k for Qwen), so on
    every position of a padded batch it costs about as much as the whole decoder of a small model;
    here it runs only where a loss is taken. A module, so that DDP/FSDP wrap the whole forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.split = _head_splits(model)
        # FSDP's transformer auto-wrap looks for the layer classes on the module it is given.
        self._no_split_modules = getattr(_causal_lm(model), "_no_split_modules", None)

    def forward(self, ids: torch.Tensor, attn: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """[B, T-1]: the loss of predicting token t+1 at position t, 0 where t+1 does not count."""
        counted = mask[:, 1:]
        if self.split:
            lm = _causal_lm(self.model)
            hidden = lm.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state
            logits = lm.get_output_embeddings()(hidden[:, :-1][counted])
        else:
            logits = self.model(input_ids=ids, attention_mask=attn).logits[:, :-1][counted]
        loss = F.cross_entropy(logits.float(), ids[:, 1:][counted], reduction="none")
        return torch.zeros(counted.shape, dtype=loss.dtype, device=loss.device).masked_scatter(counted, loss)


def token_losses(net: CountedTokenLoss, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy [B, T-1] and the mask of tokens that count (assistant tokens)."""
    return net(batch["ids"], batch["attn"], batch["mask"]), batch["mask"][:, 1:]


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


def sequence_logps(tok_loss: torch.Tensor, tmask: torch.Tensor) -> torch.Tensor:
    return -(tok_loss * tmask.float()).sum(1)


def dpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> tuple[torch.Tensor, float]:
    """The DPO loss over a batch laid out [chosen..., rejected...], and the share of pairs where
    the policy already prefers the chosen reply more than the reference does."""
    n = policy_logps.shape[0] // 2
    margin = (policy_logps[:n] - ref_logps[:n]) - (policy_logps[n:] - ref_logps[n:])
    return -F.logsigmoid(beta * margin).mean(), float((margin > 0).float().mean())


@torch.no_grad()
def reference_losses(net, peft_model, batch: dict) -> torch.Tensor:
    """Token losses of the base: the same model with its adapter switched off."""
    with peft_model.disable_adapter():
        return token_losses(net, batch)[0]


@torch.no_grad()
def split_loss(net: CountedTokenLoss, tok, conversations: list[dict], max_length: int, batch_size: int) -> float:
    """Mean assistant-token loss of a model on fixed conversations (teacher forcing)."""
    examples, _ = tokenize(tok, conversations, max_length)
    if not examples:
        return float("nan")
    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    total, count = 0.0, 0
    examples = sorted(examples, key=lambda e: len(e["ids"]))
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], tok.pad_token_id, dev)
        loss, tmask = token_losses(net, batch)
        total += float(loss.sum())
        count += int(tmask.sum())
    net.train(was_training)
    return total / max(count, 1)


def lr_at(step: int, tp: TrainParams) -> float:
    warmup = max(1, int(tp.steps * tp.warmup_fraction))
    if step < warmup:
        return tp.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, tp.steps - warmup)
    return tp.lr * 0.5 * (1 + math.cos(math.pi * progress))


# --- model --------------------------------------------------------------------------------------


def load_quantized_base(base_dir: Path):
    """The base in 4-bit NF4 through bitsandbytes (QLoRA). CUDA only."""
    if not torch.cuda.is_available():
        raise RuntimeError("train.quantize: 4bit (QLoRA) needs a CUDA GPU with bitsandbytes; this machine has "
                           "no CUDA device. Set train.quantize: none to train in full precision here.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError("train.quantize: 4bit needs the bitsandbytes package: pip install bitsandbytes") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from .model import compute_dtype

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute_dtype())
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, quantization_config=config, device_map={"": torch.cuda.current_device()}, dtype=compute_dtype(),
        use_safetensors=True, trust_remote_code=False)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def build_model(params: Params, base_dir: Path, prev_dir: Path):
    """Continue the previous round's adapter (init: prev) or start a fresh LoRA on the base."""
    from peft import LoraConfig, PeftModel, get_peft_model

    tp = params.train
    base = load_quantized_base(base_dir) if tp.quantize == "4bit" else None
    info = round_info(prev_dir)
    if tp.init == "prev" and info["adapter"] is not None:
        if base is None:
            return load_round(base_dir, prev_dir, trainable=True)
        return PeftModel.from_pretrained(base, Path(prev_dir) / info["adapter"], is_trainable=True)
    lp = tp.lora
    config = LoraConfig(
        r=lp.r, lora_alpha=lp.alpha, lora_dropout=lp.dropout, target_modules=lp.target_modules,
        bias="none", task_type="CAUSAL_LM",
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


def fingerprint(params: Params, round_id: str, base_dir: Path, version_dir: Path, prev_dir: Path,
                data_files: list[Path]) -> str:
    """What a checkpoint belongs to: a checkpoint of other inputs or params is never resumed."""
    manifest = Path(version_dir) / "manifest.json"
    parts = {
        "round": round_id, "seed": params.seed, "train": params.train.model_dump(mode="json"),
        "system_prompts": params.system_prompts,
        "base": read_json(Path(base_dir) / "base.json")["hash"],
        "prev": round_info(prev_dir).get("adapter_hash"),
        "data": [sha256_file(p) for p in data_files],
        "version": sha256_file(manifest) if manifest.is_file() else None,
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
    moments = {f"{i}.{k}": v.detach().cpu().contiguous()
               for i, (_, p) in enumerate(trainable) for k, v in opt.state.get(p, {}).items()}
    moments["rng"] = torch.get_rng_state()
    save_file(moments, tmp / "optimizer.safetensors")
    if (ckpt_dir / "live").is_dir():  # the curves up to this step, for a resumed run to continue
        shutil.copytree(ckpt_dir / "live", tmp / "live")
    write_json(tmp / "state.json", {"step": step, "tokens": tokens, "fingerprint": key,
                                    "params": [n for n, _ in trainable]})
    final = ckpt_dir / "last"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def load_checkpoint(ckpt_dir: Path, model, opt, key: str) -> tuple[int, int]:
    """The step to resume from and the tokens trained so far ((0, 0) without a usable checkpoint)."""
    from safetensors.torch import load_file

    last = ckpt_dir / "last"
    if not (last / "state.json").is_file():
        return 0, 0
    state = read_json(last / "state.json")
    if state["fingerprint"] != key:
        print(f"checkpoint {last} is for other inputs or params; starting over")
        return 0, 0
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
    shutil.rmtree(ckpt_dir / "live", ignore_errors=True)   # drop steps logged after the checkpoint
    if (last / "live").is_dir():
        shutil.copytree(last / "live", ckpt_dir / "live")
    return state["step"], state["tokens"]


# --- the loop -----------------------------------------------------------------------------------


def run(params: Params, round_id: str, base_dir: Path, version_dir: Path, prev_dir: Path,
        scored_file: Path, out_dir: Path, pairs_file: Path | None, ckpt_dir: Path,
        stop_after: int | None = None) -> dict:
    """`ckpt_dir` holds checkpoints and the live logs while training (outside the DVC outputs,
    which DVC clears before a run); `stop_after`: stop as if killed after that many steps."""
    from accelerate import Accelerator

    tp = params.train
    acc = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(params.seed)
    rng = random.Random(f"{params.seed}:train:{round_id}")

    tok = load_tokenizer(base_dir)
    if tp.method == "dpo":
        examples, truncated_away = tokenize_pairs(tok, build_pairs(params, pairs_file, version_dir), tp.max_length)
        if not examples:
            feedback = "feedback pairs on" if tp.feedback_pairs else "train.feedback_pairs off"
            raise RuntimeError(
                f"train@{round_id}: method dpo but no usable pairs (score's {pairs_file}, {feedback}, "
                f"{truncated_away} cut away by max_length); for on-policy pairs set sample.samples_per_prompt >= 2 "
                "or lower score.pair_min_margin, or add feedback data")
    else:
        examples, truncated_away = tokenize(tok, build_mix(params, scored_file, version_dir, rng), tp.max_length)
        if not examples:
            raise RuntimeError(
                f"train@{round_id}: no trainable examples ({truncated_away} dropped because train.max_length="
                f"{tp.max_length} leaves no assistant token; empty samples and train split otherwise)"
            )
    held_out = reference_conversations(params, version_dir, "eval", tp.eval_examples)
    model = build_model(params, base_dir, prev_dir)
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
    net, opt = acc.prepare(CountedTokenLoss(model), opt)   # every forward goes through net (DDP/FSDP see it)
    checkpoint_every = tp.checkpoint_every
    if checkpoint_every and acc.distributed_type in ("FSDP", "DEEPSPEED"):
        acc.print(f"train.checkpoint_every: step checkpoints are saved for single-process and DDP runs only, "
                  f"not under {acc.distributed_type}; training without them")
        checkpoint_every = 0

    from dvclive import Live

    # DVCLive writes next to the checkpoint while training, so a resumed run continues its curves;
    # the finished logs move into the round's directory at the end.
    live = Live(dir=str(ckpt_dir / "live"), dvcyaml=None, save_dvc_exp=False, report=None, resume=bool(start)) \
        if acc.is_main_process else None
    # Every process walks the same batch stream and takes its own share of each step's groups.
    stream = batches(examples, tp.batch_size, rng)
    per_step = acc.num_processes * tp.grad_accum
    for _ in range(start * per_step):
        next(stream)
    n_tokens, t0, extra = 0, time.perf_counter(), {}   # extra: method-specific values to log
    bar = tqdm(range(start, tp.steps), desc=f"train@{round_id}", unit="step", disable=not acc.is_main_process)
    for step in bar:
        lr = lr_at(step, tp)
        for group in opt.param_groups:
            group["lr"] = lr
        groups = [next(stream) for _ in range(per_step)][acc.process_index::acc.num_processes]
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for idx in groups:
            if tp.method == "dpo":
                batch = collate_pairs([examples[i] for i in idx], tok.pad_token_id, acc.device)
                tok_loss, tmask = token_losses(net, batch)
                ref = sequence_logps(reference_losses(net, model, batch), tmask)
                loss, extra["reward_accuracy"] = dpo_loss(sequence_logps(tok_loss, tmask), ref, tp.dpo_beta)
            else:
                batch = collate([examples[i] for i in idx], tok.pad_token_id, acc.device)
                tok_loss, tmask = token_losses(net, batch)
                if tp.token_weighting == "rho1":
                    tmask = rho1_mask(tok_loss, reference_losses(net, model, batch), tmask, tp.rho1_keep)
                loss = weighted_loss(tok_loss, tmask, batch["weight"])
            acc.backward(loss / len(groups))
            step_loss += loss.item() / len(groups)
            n_tokens += int(batch["attn"].sum())
        acc.clip_grad_norm_(trainable, tp.grad_clip)
        opt.step()
        done = step + 1
        if live is not None:
            live.log_metric("train/loss", step_loss)
            live.log_metric("train/lr", lr)
            for k, v in extra.items():
                live.log_metric(f"train/{k}", v)
        at_checkpoint = checkpoint_every and done % checkpoint_every == 0 and done < tp.steps
        if held_out and (at_checkpoint or done == tp.steps):
            eval_loss = split_loss(net, tok, held_out, tp.max_length, tp.batch_size)
            if live is not None:
                live.log_metric("eval/loss", eval_loss)
        if live is not None:
            live.next_step()
        if at_checkpoint and acc.is_main_process:
            save_checkpoint(ckpt_dir, done, tokens_before + n_tokens, model, opt, key)
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{n_tokens / (time.perf_counter() - t0):.0f}")
        if stop_after is not None and done >= stop_after:
            raise KeyboardInterrupt(f"stopped after step {done} (stop_after)")
    seconds = time.perf_counter() - t0
    acc.wait_for_everyone()
    # Gathered from every process under FSDP / DeepSpeed; named as the PeftModel names them.
    state = {k.removeprefix("model."): v for k, v in acc.get_state_dict(net).items()}
    if not acc.is_main_process:
        return {}

    live.end()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    shutil.copytree(ckpt_dir / "live", out_dir / "live")
    model.save_pretrained(out_dir / "adapter", state_dict=state, safe_serialization=True)
    stable_adapter_config(out_dir / "adapter" / "adapter_config.json")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    adapter_hash = sha256_file(out_dir / "adapter" / "adapter_model.safetensors")
    stats = {
        "method": tp.method,
        "examples": len(examples),
        "onpolicy": sum(e["kind"] == "onpolicy" for e in examples),
        "anchor": sum(e["kind"] == "anchor" for e in examples),
        "pairs": sum(e["kind"] == "pair" for e in examples),
        "feedback_pairs": sum(e["kind"] == "feedback_pair" for e in examples),
        "truncated_away": truncated_away,
        "steps": tp.steps,
        "processes": acc.num_processes,
        "tokens": (tokens_before + n_tokens) * acc.num_processes,
        "final_loss": step_loss if tp.steps > start else None,
        "eval_loss": eval_loss if held_out else None,
    }
    write_json(out_dir / "ROUND.json", {
        "id": round_id,
        "prev": round_info(prev_dir)["id"],
        "adapter": "adapter",
        "adapter_hash": adapter_hash,
        "base_hash": read_json(base_dir / "base.json")["hash"],
        "init": tp.init,
        "train": stats,
    })
    return {**stats, "resumed_from": start, "tokens_per_s": n_tokens * acc.num_processes / seconds if seconds else 0.0}
