"""critic@<round>: the value head train.token_weighting: critic weighs tokens with (the WMTP
plan's critic, stage 1). A small MLP on the frozen base's last hidden states, fit to each scored
sample's score at every reply token: its estimate, token by token, of how good the reply will
be. Training (stage 2, loraloop/train/critic.py) weighs a token by how much it moves that
estimate.

It is fit on the round's own scored samples and judged on prompts it never saw: a head that
predicts the held-out scores worse than the training mean does (R^2 <= 0), or too few samples,
is marked unusable and training falls back to uniform weights. Saved as numbers (safetensors)
and CRITIC.json; a round that does not use the critic gets CRITIC.json alone, saying so."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..files import read_jsonl, replacing, sha256_file, write_json
from ..params import CriticParams, Params
from ..workspace import Base, Round

WEIGHTS, META = "value_head.safetensors", "CRITIC.json"


def held_out_prompts(prompt_ids: list[str], share: float, seed: int) -> set[str]:
    """The prompts kept out of the fit: a seeded hash order, so a sample's side never depends on
    which other samples there are."""
    ids = sorted(set(prompt_ids), key=lambda p: hashlib.sha256(f"{seed}:critic:{p}".encode()).hexdigest())
    n = max(1, round(len(ids) * share)) if len(ids) > 1 else 0
    return set(ids[:n])


def spaced(n: int, k: int) -> np.ndarray:
    """k positions of n, evenly spaced, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(int))


def build_head(hidden_size: int, width: int):
    import torch

    return torch.nn.Sequential(torch.nn.Linear(hidden_size, width), torch.nn.GELU(), torch.nn.Linear(width, 1))


class ValueHead:
    """Standardize the hidden state, then the MLP: a value per token."""

    def __init__(self, mean, scale, mlp):
        self.mean, self.scale, self.mlp = mean, scale, mlp

    def __call__(self, hidden):
        """[..., hidden] -> [...]: the estimated score after each token."""
        return self.mlp((hidden.float() - self.mean) / self.scale).squeeze(-1)

    def to(self, dev):
        self.mean, self.scale, self.mlp = self.mean.to(dev), self.scale.to(dev), self.mlp.to(dev)
        return self

    def state(self) -> dict:
        return {"mean": self.mean, "scale": self.scale, **{f"mlp.{k}": v for k, v in self.mlp.state_dict().items()}}


def fit(x: np.ndarray, y: np.ndarray, cp: CriticParams, seed: int) -> ValueHead:
    """The MLP fit by full-batch Adam on (hidden state, score) rows, with its standardization."""
    import torch

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    mean, scale = xt.mean(0), xt.std(0, unbiased=False)
    scale[scale == 0] = 1.0
    head = ValueHead(mean, scale, build_head(x.shape[1], cp.hidden))
    opt = torch.optim.AdamW(head.mlp.parameters(), lr=cp.lr, weight_decay=cp.weight_decay)
    for _ in range(cp.epochs):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(head(xt), yt)
        loss.backward()
        opt.step()
    head.mlp.eval()
    return head


def fit_report(pred: np.ndarray, y: np.ndarray, constant: float) -> dict:
    """Held-out R^2 against the training mean (a constant guess: 0 is no better than it) and the
    rank correlation of each sample's mean estimate with its score."""
    from scipy.stats import spearmanr

    sse, sst = float(((pred - y) ** 2).sum()), float(((constant - y) ** 2).sum())
    r2 = 1.0 - sse / sst if sst > 0 else float("-inf") if sse > 0 else 0.0
    rho = spearmanr(pred, y).statistic if len(set(y.tolist())) > 1 and len(set(pred.tolist())) > 1 else float("nan")
    return {"r2": round(r2, 6), "spearman": None if np.isnan(rho) else round(float(rho), 6)}


def sample_states(params: Params, base: Base, rows: list[dict]) -> list:
    """Each scored sample's reply-token hidden states under the frozen base."""
    from ..lm.model import load_base, load_tokenizer
    from .features import reply_states

    model, tok = load_base(base.dir).eval(), load_tokenizer(base.dir)
    items = [(r["messages"], r["response"], r["character_id"], r.get("tools")) for r in rows]
    cp = params.train.critic
    return list(reply_states(model, tok, items, params.train.max_length, cp.batch_size, desc="critic: hidden states"))


def train_critic(params: Params, base: Base, rows: list[dict]) -> tuple[ValueHead | None, dict]:
    """The value head on the samples of prompts not held out, and its report on the others."""
    cp, seed = params.train.critic, params.seed
    rows = [r for r in rows if r["response"].strip()]
    if len(rows) < cp.min_samples:
        return None, {"usable": False, "reason": f"{len(rows)} scored samples, fewer than critic.min_samples"}
    states = sample_states(params, base, rows)
    out = held_out_prompts([r["prompt_id"] for r in rows], cp.held_out, seed)
    fit_on = [i for i, r in enumerate(rows) if r["prompt_id"] not in out]
    judged = [i for i, r in enumerate(rows) if r["prompt_id"] in out]
    picked = {i: spaced(len(states[i]), cp.positions) for i in fit_on}
    x = np.concatenate([states[i][picked[i]].numpy() for i in fit_on])
    y = np.concatenate([np.full(len(picked[i]), rows[i]["score"]) for i in fit_on])
    head = fit(x, y.astype(np.float32), cp, seed)
    import torch

    with torch.no_grad():
        pred = np.array([float(head(states[i]).mean()) for i in judged])
    scores = np.array([rows[i]["score"] for i in judged], dtype=np.float64)
    report = {"samples": len(fit_on), "held_out_samples": len(judged), **fit_report(pred, scores, float(y.mean()))}
    usable = report["r2"] > 0
    reason = None if usable else f"held-out R^2 {report['r2']:.3f} <= 0: no better than the mean score"
    return head, {"usable": usable, **({"reason": reason} if reason else {}), **report}


def run(params: Params, r: Round, base: Base, out_dir: Path, metrics_file: Path) -> dict:
    """critic@<round>: the value head when the round trains with it, else a note that it does not."""
    params = params.for_round(r.id)
    meta: dict = {"round": r.id, "used": params.train.token_weighting == "critic"}
    head = None
    if meta["used"]:
        head, report = train_critic(params, base, list(read_jsonl(r.scored)))
        meta.update(report, base_hash=base.hash, scored_hash=sha256_file(r.scored), max_length=params.train.max_length)
    with replacing(out_dir, metrics_file) as (out_tmp, metrics_tmp):
        save(out_tmp, head if meta.get("usable") else None, meta)
        keys = ("usable", "r2", "spearman", "samples", "held_out_samples")
        write_json(metrics_tmp, {"critic": {k: meta[k] for k in keys if k in meta}} if meta["used"] else {})
    return {k: meta[k] for k in ("used", "usable", "r2", "spearman", "reason") if k in meta}


def save(out_dir: Path, head: ValueHead | None, meta: dict) -> None:
    """CRITIC.json, and the head's numbers beside it when there is a head to use."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if head is not None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in head.state().items()}, str(Path(out_dir) / WEIGHTS))
        meta = {**meta, "hidden": head.mlp[0].out_features}
    write_json(Path(out_dir) / META, meta)


def load(critic_dir: Path) -> tuple[ValueHead | None, dict]:
    """The saved value head (None when the stage marked it unusable or unused) and CRITIC.json."""
    from ..files import read_json

    meta = read_json(Path(critic_dir) / META)
    if not (meta.get("used") and meta.get("usable")):
        return None, meta
    from safetensors.torch import load_file

    state = load_file(str(Path(critic_dir) / WEIGHTS))
    mlp = build_head(state["mean"].shape[0], meta["hidden"])
    mlp.load_state_dict({k.removeprefix("mlp."): v for k, v in state.items() if k.startswith("mlp.")})
    mlp.eval()
    return ValueHead(state["mean"], state["scale"], mlp), meta
