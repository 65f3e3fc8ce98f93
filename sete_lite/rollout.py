"""Rollout engines: one interface to sample completions from the current policy.

`RolloutEngine.generate(prompts, n, sampling)` returns, per prompt, n `Completion`s with text,
token ids, the sampling-time per-token log-probs and the finish reason.

Conventions shared by every engine:
- Prompts are strings, tokenized as given (apply the chat template before).
- `token_ids` are the generated tokens up to and including the one that ended the completion: the
  EOS token, or the token that completed a stop string. `text` is their decoding without special
  tokens, cut before the stop string (as vLLM does).
- `logprobs[t]` is log_softmax(logits / temperature)[token_ids[t]] over the whole vocabulary: the
  temperature-scaled distribution, which is what the trainer recomputes. Truncation by top_p, top_k
  and min_p changes which tokens can be sampled, not these numbers. With temperature 0 (greedy) the
  log-probs are those of the unscaled distribution.
- `use_adapter=False` samples the base policy (LoRA adapters off), as semantic-entropy scoring
  needs.

Engines:
- `TransformersEngine`: `model.generate` with left padding (CPU, and the fallback everywhere).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


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


def check_sampling(n: int, sampling: SamplingConfig) -> None:
    """Reject sampling settings that no engine can honour, before any work is done."""
    if n < 1:
        raise ValueError(f"n (completions per prompt) must be >= 1, got {n}")
    if sampling.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {sampling.temperature}")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.top_k < 0 or not 0 <= sampling.min_p < 1:
        raise ValueError(f"top_k must be >= 0 and min_p in [0, 1), got {sampling.top_k}, {sampling.min_p}")
    if sampling.max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {sampling.max_tokens}")


def adapters(model: Any, enabled: bool) -> contextlib.AbstractContextManager:
    """A context in which the model's LoRA adapters are on (`enabled`) or off."""
    if enabled:
        return contextlib.nullcontext()
    if not hasattr(model, "disable_adapter"):
        raise TypeError("use_adapter=False needs a PEFT model (with disable_adapter()); got a plain model")
    return model.disable_adapter()


def cut_at_stop_string(tokenizer: Any, token_ids: list[int], stop: list[str]) -> tuple[list[int], str, bool]:
    """Cut `token_ids` after the token that completes the earliest stop string.

    Returns (kept token ids, their text without the stop string and what follows, whether cut).
    """
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if not hits:
        return token_ids, text, False
    start, first = min(hits)
    end = start + len(first)
    # The decoded length of a prefix grows with the prefix: binary-search the shortest prefix whose
    # text reaches the end of the stop string.
    lo, hi = 1, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(token_ids[:mid], skip_special_tokens=True)) >= end:
            hi = mid
        else:
            lo = mid + 1
    return token_ids[:lo], text[:start], True


class TransformersEngine:
    """Rollouts with `model.generate` (batched, left padding, adapters on unless asked otherwise).

    Slow next to vLLM but runs anywhere the model runs. The sampling-time log-probs come from the
    raw logits of each decoding step (`output_logits`), so they are what the model computed while
    sampling, with the KV cache, not a second forward pass.
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size  # prompts per generate call (each expands to n sequences)
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def _generation_config(self, n: int, sampling: SamplingConfig) -> Any:
        from transformers import GenerationConfig

        greedy = sampling.temperature == 0
        # Every field that shapes the distribution is set explicitly: generate() fills unset ones
        # from the checkpoint's generation_config.json (Qwen ships repetition_penalty 1.05, top_k 20).
        return GenerationConfig(
            do_sample=not greedy,
            temperature=1.0 if greedy else sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            min_new_tokens=0,
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=n,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            stop_strings=sampling.stop or None,
            output_logits=True,
            return_dict_in_generate=True,
        )

    @torch.no_grad()
    def generate(
        self, prompts: list[str], n: int, sampling: SamplingConfig, *, use_adapter: bool = True
    ) -> list[list[Completion]]:
        check_sampling(n, sampling)
        was_training = self.model.training
        self.model.eval()  # no LoRA dropout while sampling
        device = next(self.model.parameters()).device
        # One seeded stream for the whole call, forked so the caller's RNG is left untouched.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            try:
                results: list[list[Completion]] = []
                for start in range(0, len(prompts), self.batch_size):
                    batch = prompts[start : start + self.batch_size]
                    with adapters(self.model, use_adapter):
                        results.extend(self._generate_batch(batch, n, sampling, device))
            finally:
                self.model.train(was_training)
        return results

    def _generate_batch(
        self, prompts: list[str], n: int, sampling: SamplingConfig, device: torch.device
    ) -> list[list[Completion]]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
        out = self.model.generate(
            **enc,
            generation_config=self._generation_config(n, sampling),
            tokenizer=self.tokenizer,  # needed by stop_strings
        )
        new_tokens = out.sequences[:, enc["input_ids"].shape[1] :]
        temperature = sampling.temperature or 1.0
        # One step at a time, so only one (rows, vocab) float32 block exists beyond generate's own.
        logprobs = torch.stack(
            [
                torch.log_softmax(step.float() / temperature, dim=-1).gather(-1, new_tokens[:, t, None])[:, 0]
                for t, step in enumerate(out.logits)
            ],
            dim=1,
        )
        pairs = zip(new_tokens.tolist(), logprobs.tolist(), strict=True)
        rows = [self._completion(ids, lps, sampling) for ids, lps in pairs]
        return [rows[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _completion(
        self, token_ids: list[int], logprobs: list[float], sampling: SamplingConfig
    ) -> Completion:
        # Rows that finished early are padded; the first EOS ends the completion (and is kept).
        eos_at = next((t for t, tok in enumerate(token_ids) if tok in self.eos_ids), None)
        finish = "length"
        if eos_at is not None:
            token_ids, finish = token_ids[: eos_at + 1], "stop"
        kept, text, hit = cut_at_stop_string(self.tokenizer, token_ids, sampling.stop)
        if hit:
            finish = "stop"
        return Completion(text=text, token_ids=kept, logprobs=logprobs[: len(kept)], finish_reason=finish)
