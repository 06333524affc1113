"""The multi-token heads' own steps (train.mtp_head_steps), after the adapter's: the heads alone,
on the hidden states of the finished adapted model, Medusa-1's recipe.

Why after: the heads draft from the finished model's states, and during the loop they learn from
states the LoRA is still moving; and they start at zero (predicting what the next-token head
does) while the adapter's few steps are set for the adapter. On the demo's tutor data, 14 steps
left the t+2 head at 0.20 top-1 accuracy on the eval split; the same heads given 112 steps on
frozen states reached 0.82, and drafted 1.81 tokens per forward instead of 1.34 (README:
Multi-token heads). A head step costs the heads and the output layer only: the model's forward
over a batch is made once and kept while later steps come back to it."""

from __future__ import annotations

import random

import torch
from tqdm import tqdm

from ..lm import mtp
from ..lm.loss import causal_lm, collate
from .sft import mtp_loss


def head_batches(n_examples: int, batch_size: int, steps: int, rng: random.Random) -> list[list[int]]:
    """Which examples each head step reads: the examples in batches, each pass over them in a new
    order, as many passes as `steps` needs. A batch holds the same examples on every pass, so the
    model's states for it are computed once."""
    order = list(range(n_examples))
    rng.shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]
    plan: list[list[int]] = []
    while len(plan) < steps:
        rng.shuffle(batches)
        plan += batches
    return plan[:steps]


def last_turn_start(mask: list[bool]) -> int:
    """Where a tokenized example's last run of assistant tokens (its last reply) starts."""
    end = len(mask) - 1 - mask[::-1].index(True)
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return start


def more_prompts(r) -> list[list[int]]:
    """train.mtp_head_prompts train-split prompts of the round's lineage (each conversation cut
    before a random assistant turn, as sample@rN cuts them), as token ids; a prompt that leaves no
    room for a reply within train.max_length is left out (train_heads_alone counts those used)."""
    tp = r.params.train
    if not tp.mtp_head_prompts:
        return []
    from ..data.prompts import prompts_from_split
    from ..lm.chat import prompt_ids

    rnd = r.inputs.round
    system_prompts = r.params.lineage(rnd.lineage).system_prompts
    convs = prompts_from_split(
        rnd.view, "train", tp.mtp_head_prompts, f"{r.params.seed}:head-prompts:{r.round_id}", system_prompts
    )
    ids = [prompt_ids(r.tok, c["messages"], c.get("tools")) for c in convs]
    return [p for p in ids if len(p) < tp.max_length]


def reply_rows(r, examples: list[dict], more: list[list[int]] = ()) -> list[dict]:
    """The examples as the heads will draft them: each one's last reply replaced by the adapted
    model's own greedy reply to what precedes it, only that reply counted; then the prompts `more`
    (more_prompts) with the model's replies to them. The sampler writes the replies
    (sample.batch_size rows at a time, at most sample.max_new_tokens and train.max_length in all).
    Verifying keeps a draft when it is the model's own next token, so the heads learn to predict
    the model, not the data (Medusa-2's self-distillation): on the demo's tutor-r2, 64 head steps
    drafted 1.91 tokens per forward on the eval prompts against 1.71 from the examples' own tokens."""
    from ..lm.generate import generate

    sp, tp = r.params.sample, r.params.train
    prompts = [ex["ids"][: last_turn_start(ex["mask"])] for ex in examples] + list(more)
    made: list[list[int]] = [[] for _ in prompts]
    generate(
        r.model, r.tok, prompts, batch_size=sp.batch_size, max_new_tokens=sp.max_new_tokens, temperature=0.0,
        top_p=1.0, seed=0, desc=f"replies@{r.round_id}", progress=r.acc.is_main_process,
        on_token=lambda i, token: made[i].append(token),
    )  # fmt: skip
    rows = []
    sources = list(examples) + [{"weight": 1.0, "kind": "head prompt"} for _ in more]
    for src, p, reply in zip(sources, prompts, made):
        reply = reply[: tp.max_length - len(p)]
        rows.append({**src, "ids": p + reply, "mask": [False] * len(p) + [True] * len(reply)})
    return rows


def train_heads_alone(r) -> dict:
    """train.mtp_head_steps AdamW steps (at train.lr) of the heads alone over the run's examples,
    the adapted model frozen in eval mode; tokens weigh as the examples do, with no token
    weighting: a head must draft every token the model writes, not only those the adapter learned
    most from. Returns what ROUND.json records: the steps, what they read (and how many more
    prompts), and the heads' loss at the first step and the last."""
    tp = r.params.train
    if r.acc.num_processes > 1:  # a sharded model (FSDP, DeepSpeed) has no whole forward in one process
        r.acc.print(
            f"train.mtp_head_steps: the heads' own steps run in single-process training only, not across "
            f"{r.acc.num_processes} processes; the heads are saved as the loop left them"
        )
        return {"head_steps": 0, "head_steps_skipped": f"{r.acc.num_processes} processes"}
    was = r.model.training
    r.model.eval()
    more = more_prompts(r)
    examples = reply_rows(r, r.examples, more) if tp.mtp_head_data == "replies" else r.examples
    rng = random.Random(f"{r.params.seed}:heads:{r.round_id}")
    plan = head_batches(len(examples), tp.batch_size, tp.mtp_head_steps, rng)
    lm = causal_lm(r.model)
    decoder, out_layer, dev = lm.get_decoder(), lm.get_output_embeddings(), r.acc.device
    reused = len({tuple(b) for b in plan}) < len(plan)
    states: dict[tuple, tuple] = {}
    opt = torch.optim.AdamW(r.heads.parameters(), lr=tp.lr, weight_decay=0.0)
    r.heads.train()
    losses = []
    for idx in tqdm(plan, desc=f"heads@{r.round_id}", unit="step", disable=not r.acc.is_main_process):
        key = tuple(idx)
        if key not in states:
            rows = [examples[i] for i in idx]
            batch = collate(rows, r.tok.pad_token_id, dev)
            with torch.no_grad():
                hidden = decoder(input_ids=batch["ids"], attention_mask=batch["attn"]).last_hidden_state
            got = (rows, batch, hidden)
            if reused:
                states[key] = got
        else:
            got = states[key]
        rows, batch, hidden = got
        head_losses = mtp.head_token_losses(r.heads, out_layer, hidden, batch["ids"], batch["mask"])
        loss = mtp_loss(r, rows, head_losses, batch["mask"][:, 1:], batch["weight"], None)
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(r.heads.parameters()), tp.grad_clip)
        opt.step()
    r.model.train(was)
    return {
        "head_steps": len(plan),
        "head_data": tp.mtp_head_data,
        "head_prompts": len(more),
        "head_loss": [round(losses[0], 6), round(losses[-1], 6)],
    }
