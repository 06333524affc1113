"""The learned reward model: a logistic regression on the judge's features (the base's hidden
states of the reply, and the rules' values), its regularization and feature set chosen by a
cross-validation grouped by conversation, calibrated by Platt scaling on the out-of-fold scores,
and reported on conversations it never saw, beside the rule score on the same ones.

Saved as numbers, never pickled: reward.safetensors holds the standardization, the coefficients
and the calibration, reward.json what they mean and how well they did. A linear model, because
the labels number in the tens to thousands: a boosted tree fits those by heart, and a linear
model's coefficients export exactly."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import write_json
from ..params import JudgeParams

WEIGHTS, META = "reward.safetensors", "reward.json"
FEATURE_SETS = ("rules", "all")  # rules alone first: a tie goes to the simpler model


def columns(feature_set: str, hidden: np.ndarray, rules: np.ndarray) -> np.ndarray:
    return rules if feature_set == "rules" else np.hstack([hidden, rules])


@dataclass
class Linear:
    """Standardize, a linear score, a sigmoid calibrated on held-out scores."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    platt: tuple[float, float] = (1.0, 0.0)

    def decision(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept

    def proba(self, x: np.ndarray) -> np.ndarray:
        a, b = self.platt
        return 1.0 / (1.0 + np.exp(-(a * self.decision(x) + b)))


def fit_linear(x: np.ndarray, y: np.ndarray, c: float) -> Linear:
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64)  # what a saved model computes in, so it scores the same
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    lr = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, y)
    return Linear(mean, scale, lr.coef_[0].astype(np.float64), float(lr.intercept_[0]))


def fit_platt(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1.0, max_iter=5000).fit(
        scores.reshape(-1, 1), y
    )  # mild: separable folds would push it to 0/1
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def grouped_folds(groups: np.ndarray, y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds that never cut a conversation; a fold whose either side lacks a class is dropped."""
    from sklearn.model_selection import GroupKFold

    n = len(set(groups.tolist()))
    if n < 2:
        return []
    folds = GroupKFold(n_splits=min(k, n), shuffle=True, random_state=seed).split(y, y, groups)
    return [(tr, te) for tr, te in folds if len(set(y[tr])) == 2 and len(set(y[te])) == 2]


def choose(hidden, rules, y, groups, params: JudgeParams, seed: int) -> tuple[str, float, np.ndarray, float] | None:
    """(feature set, C, its out-of-fold scores, its mean fold AUC) with the best mean AUC over the
    grouped folds; None when no fold has both classes on both sides."""
    from sklearn.metrics import roc_auc_score

    folds = grouped_folds(groups, y, params.cv_folds, seed)
    if not folds:
        return None
    best = None
    for fs in FEATURE_SETS:
        x = columns(fs, hidden, rules)
        for c in params.C:
            oof, aucs = np.full(len(y), np.nan), []
            for tr, te in folds:
                oof[te] = fit_linear(x[tr], y[tr], c).decision(x[te])
                aucs.append(roc_auc_score(y[te], oof[te]))
            if best is None or np.mean(aucs) > best[3]:
                best = (fs, c, oof, float(np.mean(aucs)))
    return best


def held_out_split(groups: np.ndarray, y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Train and held-out indices, whole conversations on each side, both classes on both sides
    (a few seeds are tried); None when no such split exists."""
    from sklearn.model_selection import GroupShuffleSplit

    for attempt in range(20):
        tr, te = next(GroupShuffleSplit(n_splits=1, test_size=share, random_state=seed + attempt).split(y, y, groups))
        if len(set(y[tr])) == 2 and len(set(y[te])) == 2:
            return tr, te
    return None


def pairwise_accuracy(scores: np.ndarray, pairs: list, y: np.ndarray) -> tuple[float | None, int]:
    """Share of preference pairs whose preferred side scores higher (a tie counts half), over the
    pairs with both sides here; and how many pairs that is."""
    sides: dict[str, dict[int, float]] = {}
    for s, p, label in zip(scores, pairs, y):
        if p is not None:
            sides.setdefault(p, {})[int(label)] = float(s)
    both = [v for v in sides.values() if len(v) == 2]
    if not both:
        return None, 0
    won = sum(1.0 if v[1] > v[0] else 0.5 if v[1] == v[0] else 0.0 for v in both)
    return won / len(both), len(both)


def figures(scores: np.ndarray, y: np.ndarray, pairs: list) -> dict:
    from sklearn.metrics import roc_auc_score

    acc, n_pairs = pairwise_accuracy(scores, pairs, y)
    return {
        "roc_auc": float(roc_auc_score(y, scores)),
        "pairwise_accuracy": acc,
        "brier": float(np.mean((scores - y) ** 2)),
        "n": int(len(y)),
        "n_pairs": n_pairs,
    }


def train(hidden, rules, rule_scores, y, groups, pairs, params: JudgeParams, seed: int) -> tuple[Linear | None, dict]:
    """The reward model and its report; (None, report with the reason) when the labels cannot
    support one: too few of a class, or no split with both classes on both sides."""
    y, groups = np.asarray(y), np.asarray(groups)
    counts = {"good": int((y == 1).sum()), "bad": int((y == 0).sum())}
    report: dict = {"available": False, "labels": counts}
    if min(counts.values()) < params.min_per_class:
        return None, {**report, "reason": f"too few labels: {counts} (judge.min_per_class is {params.min_per_class})"}
    split = held_out_split(groups, y, params.held_out, seed)
    if split is None:
        return None, {**report, "reason": "no split by conversation leaves both labels on both sides"}
    tr, te = split
    chosen = choose(hidden[tr], rules[tr], y[tr], groups[tr], params, seed)
    if chosen is None:
        return None, {**report, "reason": "no cross-validation fold has both labels on both sides"}
    feature_set, c, oof, cv_auc = chosen
    x = columns(feature_set, hidden, rules)
    model = fit_linear(x[tr], y[tr], c)
    model.platt = fit_platt(oof, y[tr])
    p = model.proba(x[te])
    held_pairs = [pairs[i] for i in te]
    report.update(
        available=True,
        feature_set=feature_set,
        C=c,
        cv_roc_auc=cv_auc,
        n_train=int(len(tr)),
        held_out=figures(p, y[te], held_pairs),
        rule_baseline=figures(np.asarray(rule_scores)[te], y[te], held_pairs),
        calibration=calibration(p, y[te]) + calibration(np.asarray(rule_scores)[te], y[te], "rules"),
    )
    return model, report


def calibration(p: np.ndarray, y: np.ndarray, judge: str = "learned", bins: int = 5) -> list[dict]:
    """Reliability: per bin of predicted probability, its mean and the observed share of good."""
    out = []
    which = np.minimum((p * bins).astype(int), bins - 1)
    for b in range(bins):
        sel = which == b
        if sel.any():
            out.append(
                {
                    "judge": judge,
                    "predicted": float(p[sel].mean()),
                    "observed": float(y[sel].mean()),
                    "n": int(sel.sum()),
                }
            )
    return out


def save(out_dir: Path, model: Linear | None, report: dict, meta: dict) -> None:
    """reward.json (and reward.safetensors when there is a model): numbers, no pickle."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if model is not None:
        from safetensors.numpy import save_file

        tensors = {
            "mean": model.mean,
            "scale": model.scale,
            "coef": model.coef,
            "intercept": np.array([model.intercept]),
            "platt": np.array(model.platt),
        }
        tensors = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}
        save_file(tensors, str(out_dir / WEIGHTS))
    write_json(out_dir / META, {**meta, **report})


class LearnedReward:
    """A saved reward model: `available` False (with `reason`) when its stage could not train one."""

    def __init__(self, judge_dir: Path):
        judge_dir = Path(judge_dir)
        meta_file = judge_dir / META
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} is missing: run the judge stage first (`dvc repro judge@<lineage>`)")
        self.meta = json.loads(meta_file.read_text(encoding="utf-8"))
        self.available = bool(self.meta.get("available"))
        self.reason = self.meta.get("reason")
        self.hash = hashlib.sha256(meta_file.read_bytes() + _bytes(judge_dir / WEIGHTS)).hexdigest()
        self.model = None
        if self.available:
            from safetensors.numpy import load_file

            t = load_file(str(judge_dir / WEIGHTS))
            self.model = Linear(t["mean"], t["scale"], t["coef"], float(t["intercept"][0]), tuple(t["platt"].tolist()))

    def score(self, hidden: np.ndarray, rules: np.ndarray) -> np.ndarray:
        return self.model.proba(columns(self.meta["feature_set"], hidden, rules))


def _bytes(path: Path) -> bytes:
    return path.read_bytes() if path.is_file() else b""
