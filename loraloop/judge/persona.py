"""The persona classifier: which of a lineage's characters a reply sounds like, or none of them.
Character n-grams (TF-IDF, so it reads Korean and English alike and needs no tokenizer) and a
linear classifier, trained on the characters' own replies against the other characters' and the
base model's ("none"), evaluated on conversations it never saw.

eval reports persona_match (the share of a round's replies classified as the character they were
for) and leakage persona_leakage (the share of its replies to other lineages' prompts classified
as one of its own characters). Saved as numbers and a vocabulary, never pickled."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..files import write_json
from ..params import JudgeParams

WEIGHTS, META = "persona.safetensors", "persona.json"
NONE = "none"
NGRAMS = (2, 4)
MAX_FEATURES = 20000
MAX_PER_CLASS = 2000  # replies per class trained on: other characters' are many in a big fleet


def vectorizer(vocabulary: dict | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=NGRAMS,
        sublinear_tf=True,
        max_features=None if vocabulary else MAX_FEATURES,
        vocabulary=vocabulary,
    )


def capped(texts: list[str], labels: list[str], groups: list[str]) -> tuple[list, list, list]:
    """At most MAX_PER_CLASS replies per class, the same ones every run (by a hash of the reply)."""
    order = sorted(range(len(texts)), key=lambda i: hashlib.sha256(texts[i].encode()).hexdigest())
    seen: dict[str, int] = {}
    keep = []
    for i in order:
        seen[labels[i]] = seen.get(labels[i], 0) + 1
        if seen[labels[i]] <= MAX_PER_CLASS:
            keep.append(i)
    keep.sort()
    return [texts[i] for i in keep], [labels[i] for i in keep], [groups[i] for i in keep]


def train(texts: list[str], labels: list[str], groups: list[str], classes: list[str], params: JudgeParams, seed: int):
    """(vectorizer, classifier) and the report; (None, report with the reason) when a class has too
    few replies or no split holds every class on both sides."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupShuffleSplit

    texts, labels, groups = capped(texts, labels, groups)
    counts = {c: labels.count(c) for c in classes}
    report: dict = {"available": False, "classes": classes, "replies": counts}
    if min(counts.values()) < params.min_per_class:
        return None, {**report, "reason": f"too few replies: {counts} (judge.min_per_class is {params.min_per_class})"}
    y, g = np.asarray(labels), np.asarray(groups)
    for attempt in range(20):
        splitter = GroupShuffleSplit(n_splits=1, test_size=params.held_out, random_state=seed + attempt)
        tr, te = next(splitter.split(y, y, g))
        if set(y[tr]) == set(classes) and set(y[te]) == set(classes):
            break
    else:
        return None, {**report, "reason": "no split by conversation holds every class on both sides"}
    vec = vectorizer()
    x_tr = vec.fit_transform([texts[i] for i in tr])
    clf = LogisticRegression(C=10.0, class_weight="balanced", max_iter=5000).fit(x_tr, y[tr])
    pred = clf.predict(vec.transform([texts[i] for i in te]))
    recall = {c: float((pred[y[te] == c] == c).mean()) for c in classes}
    report.update(
        available=True,
        held_out={"accuracy": float((pred == y[te]).mean()), "recall": recall, "n": int(len(te))},
        n_train=int(len(tr)),
    )
    return (vec, clf), report


def save(out_dir: Path, fitted, report: dict, meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {}
    if fitted is not None:
        from safetensors.numpy import save_file

        vec, clf = fitted
        coef, intercept = clf.coef_, clf.intercept_
        if len(clf.classes_) == 2:  # sklearn keeps one row for two classes: the second's score
            coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
        # contiguous copies: safetensors writes an array's buffer as it lies in memory, and sklearn's
        # coefficients may be column-major
        tensors = {"idf": vec.idf_, "coef": coef, "intercept": intercept}
        save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, str(out_dir / WEIGHTS))
        extra = {
            "order": [str(c) for c in clf.classes_],
            "vocabulary": {k: int(v) for k, v in sorted(vec.vocabulary_.items())},
        }
    write_json(out_dir / META, {**meta, **report, **extra})


class Persona:
    """A saved persona classifier; `available` False (with `reason`) when its stage had too little."""

    def __init__(self, judge_dir: Path):
        meta_file = Path(judge_dir) / META
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} is missing: run the judge stage first (`dvc repro judge@<lineage>`)")
        self.meta = json.loads(meta_file.read_text(encoding="utf-8"))
        self.available = bool(self.meta.get("available"))
        self.reason = self.meta.get("reason")
        if self.available:
            from safetensors.numpy import load_file

            t = load_file(str(Path(judge_dir) / WEIGHTS))
            self.vec = vectorizer(self.meta["vocabulary"])
            self.vec.idf_ = t["idf"]
            self.coef, self.intercept = t["coef"], t["intercept"]
            self.order = self.meta["order"]

    def predict(self, texts: list[str]) -> list[str]:
        if not texts:
            return []
        scores = self.vec.transform(texts) @ self.coef.T + self.intercept
        return [self.order[i] for i in np.asarray(scores).argmax(1)]

    def share(self, texts: list[str], characters) -> float | None:
        """The share of texts classified as one of `characters`; None without texts or a model."""
        if not self.available or not texts:
            return None
        allowed = set(characters)
        return sum(p in allowed for p in self.predict(texts)) / len(texts)
