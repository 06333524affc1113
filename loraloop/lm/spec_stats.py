"""What a drafting run counts (lm/speculative.py): forwards, tokens, and per head the drafts
verified and kept; samples and serve's counters record its summary."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecStats:
    forwards: int = 0  # forwards of the model after the prompt's
    tokens: int = 0  # tokens made
    drafted: list[int] = field(default_factory=list)  # per head: drafts verified
    accepted: list[int] = field(default_factory=list)  # per head: drafts kept

    @classmethod
    def for_heads(cls, n: int) -> SpecStats:
        return cls(drafted=[0] * n, accepted=[0] * n)

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.forwards, 1)

    def acceptance(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.accepted, self.drafted)]

    def add(self, other: SpecStats) -> None:
        self.forwards += other.forwards
        self.tokens += other.tokens
        self.drafted = [a + b for a, b in zip(self.drafted, other.drafted)]
        self.accepted = [a + b for a, b in zip(self.accepted, other.accepted)]

    def summary(self) -> dict:
        return {
            "acceptance": [round(a, 4) for a in self.acceptance()],
            "tokens_per_forward": round(self.tokens_per_forward, 4),
            "forwards": self.forwards,
            "tokens": self.tokens,
        }
