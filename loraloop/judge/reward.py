"""An optional reward model: a local sequence-classification model directory that scores a
conversation ending in the reply. Safetensors only, no remote code, nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from ..lm.chat import for_template, render


class RewardModel:
    def __init__(self, path: str | Path):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"score.reward_model.path {path}: no config.json there; it must be a local "
                "sequence-classification model directory (save_pretrained output)"
            )
        self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, use_safetensors=True, trust_remote_code=False, dtype=torch.float32
        ).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tok.pad_token_id

    @torch.inference_mode()
    def score(self, conversations: list[list[dict]], batch_size: int = 16) -> list[float]:
        """A reward in [0, 1] per conversation: sigmoid of a single logit, or the probability of
        the last label for a classifier with several."""
        out: list[float] = []
        for start in range(0, len(conversations), batch_size):
            texts = []
            for conv in conversations[start : start + batch_size]:
                msgs, tools = for_template(self.tok, conv, None)
                texts.append(render(self.tok, msgs, add_generation_prompt=False, tools=tools))
            enc = self.tok(
                texts, return_tensors="pt", padding=True, truncation=True, add_special_tokens=False, max_length=1024
            )
            logits = self.model(**enc).logits.float()
            probs = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, -1)[:, -1]
            out.extend(float(p) for p in probs)
        return out


class HfRewarder:
    """score.reward_model.kind hf: the external model, on each sample's conversation."""

    hash = None
    available = True

    def __init__(self, path: str, batch_size: int):
        self.model, self.batch_size = RewardModel(path), batch_size
        self.note = f"hf model {path}"

    def score(self, rows: list[dict], rule_values: list[dict]) -> list[float]:
        convs = [r["messages"] + [{"role": "assistant", "content": r["response"]}] for r in rows]
        return self.model.score(convs, self.batch_size)


class LearnedRewarder:
    """score.reward_model.kind learned: the lineage's judge (judge@<lineage>). When its stage could
    not train one (too few labels), `available` is False and score keeps the rules, saying why; the
    judge's hash goes into every scored row either way, so a retrained judge rescores the round."""

    def __init__(self, judge_dir: Path, base_dir: Path, max_length: int, batch_size: int):
        from .learned import LearnedReward

        self.judge = LearnedReward(judge_dir)
        self.hash, self.available = self.judge.hash, self.judge.available
        self.base_dir, self.batch_size = Path(base_dir), batch_size
        self.max_length = self.judge.meta.get("max_length", max_length)
        self._lm = None
        self.note = (
            f"learned judge {self.hash[:12]} ({self.judge.meta.get('feature_set')} features)"
            if self.available
            else f"learned judge {self.hash[:12]} unavailable ({self.judge.reason}): scored by the rules"
        )

    def score(self, rows: list[dict], rule_values: list[dict]) -> list[float]:
        """The judge's reward per row; `rule_values`: each row's rules, as score computed them."""
        import numpy as np

        from .features import FeatureCache, hidden_features, rule_features

        items = [
            (tuple(r["messages"]), r["response"], r.get("character_id"), tuple(r["tools"]) if r.get("tools") else None)
            for r in rows
        ]
        rules = rule_features(rule_values)
        hidden = np.zeros((len(items), 0), dtype=np.float32)
        if self.judge.meta["feature_set"] != "rules":  # the base reads the replies only when the judge uses it
            model, tok = self.lm()
            base_hash = self.judge.meta["base"]
            hidden = hidden_features(model, tok, base_hash, items, self.max_length, self.batch_size, FeatureCache(None))
        return [float(p) for p in self.judge.score(hidden, rules)]

    def lm(self):
        if self._lm is None:
            from ..lm.model import load_base, load_tokenizer

            self._lm = load_base(self.base_dir).eval(), load_tokenizer(self.base_dir)
        return self._lm
