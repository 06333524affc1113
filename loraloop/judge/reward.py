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
