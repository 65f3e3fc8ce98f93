"""Rollout engines: one interface to sample completions from the current policy.

`RolloutEngine.generate(prompts, n, sampling)` returns, per prompt, n `Completion`s with text,
token ids, the sampling-time per-token log-probs and the finish reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class SamplingConfig:
    """How to sample. Log-probs are reported under the temperature-scaled distribution."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    min_p: float = 0.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    text: str
    token_ids: list[int]
    logprobs: list[float]  # per completion token, at sampling time
    finish_reason: str  # "stop" (EOS or a stop string) or "length"


class RolloutEngine(Protocol):
    """Anything that samples n completions per prompt; `use_adapter=False` samples the base policy."""

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingConfig, *, use_adapter: bool = True
    ) -> list[list[Completion]]: ...
