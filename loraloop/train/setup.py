"""Everything a round's training loop needs, built once before it: the data and its schedule,
the model with its LoRA, the optimizer, a checkpoint to resume from, the reference's values and
the curves' logger. The order is the RNG's: seeding, LoRA init, a resumed RNG state, the schedule."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.prompts import reference_conversations
from ..lm import lean_lora
from ..lm.loss import CountedTokenLoss
from ..lm.model import load_tokenizer
from ..params import Params
from ..workspace import Base, Round
from . import dpo, sft
from .checkpoints import fingerprint, load_checkpoint
from .critic import load_critic, precompute_weights
from .data import Inputs, schedule
from .errors import TrainingStopped
from .model import build_model
from .reference import precompute_reference, reference_of

METHODS = {"sft": sft, "dpo": dpo}  # train.method -> its examples, step and reference layout


@dataclass
class Run:
    """Everything the loop needs, built once by setup()."""

    params: Params
    inputs: Inputs
    base: Base
    method: object  # the module of train.method: sft or dpo
    acc: object  # accelerate.Accelerator
    tok: object
    examples: list[dict]
    truncated_away: int
    held_out: list[dict]
    model: object  # the PeftModel
    net: object  # CountedTokenLoss around it, prepared by accelerate: every forward goes through it
    opt: object
    trainable: list  # the adapter's parameters (the heads' are clipped apart: they do not move its norm)
    plan: list  # per step, every process's micro-batches
    reference: dict | None
    key: str  # checkpoint fingerprint
    ckpt_dir: Path
    start: int = 0
    tokens_before: int = 0
    live: object = None
    checkpoint_every: int = 0
    extra: dict = field(default_factory=dict)  # method-specific values to log
    critic: dict | None = None  # train.token_weighting critic: the value head's fit, or its fallback
    heads: object = None  # the model's multi-token heads (lm/mtp.py), if it trains any
    trained: object = None  # what a checkpoint holds when it is more than the model: the model and its heads

    @property
    def checkpointed(self):
        return self.model if self.trained is None else self.trained

    @property
    def round_id(self) -> str:
        return self.inputs.round.id


def trainable_model(tp, base: Base, start: Round, reference: dict | None):
    """The model with its LoRA (lean forward installed, in training mode), its multi-token heads
    (None with train.mtp_heads: 1), the trained parameters and their optimizer."""
    model = build_model(tp, base.dir, start, reference)
    lean_lora.install(model)
    model.train()
    heads = mtp_heads(tp, model, start)
    trainable = [p for p in model.parameters() if p.requires_grad]
    every = trainable + ([] if heads is None else list(heads.parameters()))
    return model, heads, trainable, torch.optim.AdamW(every, lr=tp.lr, weight_decay=0.0)


def mtp_heads(tp, model, start: Round):
    """train.mtp_heads - 1 heads: the previous round's when it has as many (init: prev), else new."""
    if tp.mtp_heads == 1:
        return None
    from ..lm import mtp

    saved = start.adapter / mtp.HEADS_FILE if tp.init == "prev" and start.adapter is not None else None
    if saved is not None and saved.is_file():
        heads = mtp.load(saved)
        if len(heads) == tp.mtp_heads - 1:
            return heads.train()
    return mtp.MTPHeads(model.config.hidden_size, tp.mtp_heads - 1).train()


def checkpoint_every(acc, every: int) -> int:
    """train.checkpoint_every where this launch can save checkpoints; 0 where it cannot."""
    if every and acc.distributed_type in ("FSDP", "DEEPSPEED"):
        acc.print(
            f"train.checkpoint_every: step checkpoints are saved for single-process and DDP runs only, "
            f"not under {acc.distributed_type}; training without them"
        )
        return 0
    return every


def live_logger(acc, ckpt_dir: Path, resumed: bool):
    """DVCLive writes next to the checkpoint while training, so a resumed run continues its curves;
    the finished logs move into the round's directory at the end. Only the main process logs."""
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    if not acc.is_main_process:
        return None
    try:
        return Live(dir=str(ckpt_dir / "live"), dvcyaml=None, save_dvc_exp=False, report=None, resume=resumed)
    except SCMError as exc:  # DVCLive asks git for HEAD, which a repository without a commit has not
        raise TrainingStopped(
            f"train: DVCLive cannot read the git repository here ({exc}); in a new project, commit once "
            "first (git add -A && git commit -m start), then run it again"
        ) from None


def setup(params: Params, inputs: Inputs, base: Base, ckpt_dir: Path) -> Run:
    """Data, model, optimizer, the schedule, a checkpoint to resume from, the reference values."""
    from accelerate import Accelerator

    tp, r = params.train, inputs.round
    head, critic_info = load_critic(r) if tp.token_weighting == "critic" else (None, None)  # before any work
    acc = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(params.seed)
    rng = random.Random(f"{params.seed}:train:{r.id}")
    tok = load_tokenizer(base.dir)
    method = METHODS[tp.method]
    examples, truncated_away = method.examples(params, inputs, tok, rng)
    system_prompts = params.lineage(r.lineage).system_prompts
    held_out = reference_conversations(system_prompts, r.view, "eval", tp.eval_examples)
    reference = reference_of(tp, base, r.prev)
    model, heads, trainable, opt = trainable_model(tp, base, r.prev, reference)
    key, ckpt_dir = fingerprint(params, inputs, base), Path(ckpt_dir)
    trained = None if heads is None else torch.nn.ModuleDict({"model": model, "heads": heads})
    held = model if trained is None else trained  # what a checkpoint holds
    start, tokens_before = load_checkpoint(ckpt_dir, held, opt, key) if tp.checkpoint_every else (0, 0)
    if start:
        acc.print(f"train@{r.id}: resuming from the checkpoint at step {start}")
    elif acc.is_main_process:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    net, opt = acc.prepare(CountedTokenLoss(model, heads, tp.mtp_joint), opt)
    plan = schedule(examples, tp, rng, acc.num_processes)
    run = Run(
        params=params,
        inputs=inputs,
        base=base,
        method=method,
        acc=acc,
        tok=tok,
        examples=examples,
        truncated_away=truncated_away,
        held_out=held_out,
        model=model,
        heads=heads,
        trained=trained,
        net=net,
        opt=opt,
        trainable=trainable,
        plan=plan,
        reference=reference,
        key=key,
        ckpt_dir=ckpt_dir,
        start=start,
        tokens_before=tokens_before,
    )
    if reference is not None and tp.reference_logps == "precompute":
        precompute_reference(run, plan[start:])
    run.critic = critic_info
    if head is not None:
        precompute_weights(run, head)
    elif critic_info is not None:
        acc.print(f"train@{r.id}: the critic is not usable ({critic_info.get('reason')}); uniform token weights")
    run.checkpoint_every = checkpoint_every(acc, tp.checkpoint_every)
    run.live = live_logger(acc, ckpt_dir, resumed=bool(start))
    return run
