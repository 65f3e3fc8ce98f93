"""A training step of plain TRL GRPO against SENTTrainer, side by side on the real model, on CPU.

Three trainers on the same PEFT model (SmolLM2-135M-Instruct in float32 with LoRA r=16 on every
projection, builtin:smollm2-135m-instruct), the same prompts and the same settings:

- `trl_grpo`: TRL's own GRPOTrainer, loss_type dapo, beta 0.04 (so it runs a reference forward with
  the adapters off), TRL's own generation (`model.generate`);
- `sent_grpo`: SENTTrainer in mode grpo with the same beta, rollouts from sete_lite's TransformersEngine;
- `sent`: SENTTrainer in mode sent (its two-level KL needs the same reference forward).

TRL 1.15's GRPOTrainer cannot train on a CPU as installed: it always patches its fused LM head into
the model (trl/trainer/utils.py `add_fused_lm_head`) and computes every log-prob through it, a
Triton kernel (`'NoneType' object has no attribute 'apply'` without triton, `0 active drivers`
with it). So `trl_grpo` runs `UnfusedGRPOTrainer`, which overrides one method,
`_get_per_token_logps_and_entropies`, with TRL's own unfused path: the model's full logits for the
completion positions, divided by the temperature, then `trl.trainer.utils.selective_log_softmax` and
`entropy_from_logits` (TRL's functions, which the fused head replaced). Everything else is TRL's.

Each trainer runs in its own process on one thread: 1 warm-up step, then `--steps` timed steps.
Temperature 1.0 with 64 new tokens makes this model run to the token limit almost always, so every
trainer processes (nearly) the same number of tokens; the clipped ratio is reported to show it. Per
step, the time is split into generation (TRL's `_generate`, which calls sete_lite's engine for the
SENT trainers), log-probs with gradient (the policy forward of the loss), log-probs without gradient
(the reference pass, and old log-probs where TRL needs them), backward, and the rest (rewards,
advantages, the loss itself, the optimizer step). Peak RSS is the process's maximum resident memory.

Generation throughput is also compared on one batch (the first prompts x generations): plain
`model.generate` against sete_lite's TransformersEngine (which adds the sampling-time log-probs).

    python benchmarks/bench_trl_cpu.py                  # writes benchmarks/results/trl_vs_sent_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TRAINERS = ("trl_grpo", "sent_grpo", "sent")
PHASES = ("generation", "logprobs_grad", "logprobs_no_grad", "backward", "rest")


def settings(args: argparse.Namespace, trainer: str, output_dir: str) -> dict:
    """The training settings every trainer shares (GRPOConfig keys)."""
    common = {
        "output_dir": output_dir,
        "per_device_train_batch_size": args.prompts * args.generations,
        "num_generations": args.generations,
        "max_completion_length": args.max_tokens,
        "temperature": 1.0,
        "learning_rate": 1e-5,
        "beta": 0.04,
        "loss_type": "dapo",
        "max_steps": args.steps + 1,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "seed": 0,
        "disable_tqdm": True,
    }
    if trainer != "trl_grpo":
        common["mode"] = "grpo" if trainer == "sent_grpo" else "sent"
    if trainer == "sent":
        del common["beta"]  # sent's KL coefficients are its own (beta_low, beta_high)
    return common


class PhaseTimer:
    """Wall time per phase of the current step, from wrapped methods."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.current[name] += time.perf_counter() - start

    def wrap(self, owner, method: str, name_of_call) -> None:
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            with self.phase(name_of_call()):
                return original(*args, **kwargs)

        setattr(owner, method, timed)


def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    from sete_lite.data import DataConfig, apply_chat_template, load_records
    from sete_lite.model import ModelConfig, load_policy
    from sete_lite.rewards import resolve_reward_functions
    from sete_lite.rollout import SamplingConfig, TransformersEngine
    from sete_lite.trainer import SENTConfig, SENTTrainer

    class UnfusedGRPOTrainer(GRPOTrainer):
        """TRL's GRPOTrainer with TRL's unfused log-prob path (its fused LM head needs Triton on a GPU)."""

        def _get_per_token_logps_and_entropies(
            self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, **_
        ):
            batch_size = batch_size or input_ids.size(0)
            logps, entropies = [], []
            for start in range(0, input_ids.size(0), batch_size):
                ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep + 1).logits
                logits = logits[:, :-1] / self.temperature
                logps.append(selective_log_softmax(logits, ids[:, -logits_to_keep:]))
                if compute_entropy:
                    with torch.no_grad():
                        entropies.append(entropy_from_logits(logits))
            return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    model_cfg = ModelConfig(
        model_name_or_path="builtin:smollm2-135m-instruct",
        backend="transformers",
        load_in_4bit=False,
        lora_r=16,
        lora_alpha=32,
    )
    model, tokenizer = load_policy(model_cfg, seed=0)
    records = load_records(DataConfig(dataset_name_or_path="builtin:words-train", prompt_template="{question}"))
    records = apply_chat_template(records[: args.prompts * (args.steps + 1)], tokenizer)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in records])
    rewards = resolve_reward_functions(["accuracy"], answer_extraction="math_verify")
    output_dir = f"/tmp/bench_trl_cpu_{args.worker}"

    if args.worker == "generate":
        prompts = [r["prompt"] for r in records[: args.prompts]]
        return generation_throughput(model, tokenizer, prompts, args, TransformersEngine, SamplingConfig)

    values = settings(args, args.worker, output_dir)
    if args.worker == "trl_grpo":
        trainer_class, config, extra = UnfusedGRPOTrainer, GRPOConfig(**values), {}
    else:
        trainer_class, config = SENTTrainer, SENTConfig(**values)
        extra = {"rollout_engine": TransformersEngine(model, tokenizer)}
    trainer = trainer_class(
        model=model, reward_funcs=rewards, args=config, train_dataset=dataset, processing_class=tokenizer, **extra
    )

    timer = PhaseTimer()
    timer.wrap(trainer, "_generate", lambda: "generation")
    timer.wrap(
        trainer,
        "_get_per_token_logps_and_entropies",
        lambda: "logprobs_grad" if torch.is_grad_enabled() else "logprobs_no_grad",
    )
    timer.wrap(trainer.accelerator, "backward", lambda: "backward")

    class StepClock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timer.current.clear()
            self.started = time.perf_counter()

        def on_step_end(self, *a, **k):
            total = time.perf_counter() - self.started  # generation included: it runs inside training_step
            step = dict(timer.current)
            step["total"] = total
            step["rest"] = total - sum(step.get(p, 0.0) for p in PHASES if p != "rest")
            timer.steps.append(step)

    trainer.add_callback(StepClock())
    trainer.train()
    timed = timer.steps[1:]  # the first is the warm-up
    logged = [row for row in trainer.state.log_history if "completions/clipped_ratio" in row][1:]
    return {
        "trainer": args.worker,
        "class": type(trainer).__mro__[0].__name__,
        "steps": timed,
        "median": {k: statistics.median(step.get(k, 0.0) for step in timed) for k in (*PHASES, "total")},
        "completion_tokens_mean": statistics.fmean(row["completions/mean_length"] for row in logged),
        "clipped_ratio_mean": statistics.fmean(row["completions/clipped_ratio"] for row in logged),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def generation_throughput(model, tokenizer, prompts, args, engine_class, sampling_class) -> dict:
    """One batch (prompts x generations, up to max_tokens) through plain model.generate and through the engine."""
    import torch

    model.eval()
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    results = {}
    for repeat in range(2):  # the first of each is a warm-up
        torch.manual_seed(repeat)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **encoded,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=args.max_tokens,
                num_return_sequences=args.generations,
                pad_token_id=tokenizer.pad_token_id,
            )
        seconds = time.perf_counter() - start
        new = out[:, encoded["input_ids"].size(1) :].tolist()
        eos = tokenizer.eos_token_id  # each row's tokens up to and including its first EOS (pads follow it)
        tokens = sum(row.index(eos) + 1 if eos in row else len(row) for row in new)
        results["model.generate"] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
        engine = engine_class(model, tokenizer)
        start = time.perf_counter()
        groups = engine.generate(
            prompts, args.generations, sampling_class(temperature=1.0, max_tokens=args.max_tokens, seed=repeat)
        )
        seconds = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for group in groups for c in group)
        results["TransformersEngine"] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
    return {"trainer": "generate", "generation": results}


def run_worker(name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps), "--prompts", str(args.prompts)]
    command += ["--generations", str(args.generations), "--max-tokens", str(args.max_tokens)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=7200)
    if result.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"One training step on CPU ({platform.machine()}, one thread per process): SmolLM2-135M-Instruct float32,",
        f"LoRA r=16 on every projection; {args.prompts} prompts x {args.generations} completions of up to "
        f"{args.max_tokens} tokens at temperature 1.0; median of {args.steps} steps after a warm-up step. Seconds per",
        "step; `x TRL` is the step time against TRL's.",
        "",
        "| trainer | generation | log-probs (grad) | log-probs (no grad: reference) | backward | rest | step | x TRL |"
        " completion tokens | clipped | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = results["trl_grpo"]["median"]["total"]
    for name in TRAINERS:
        row = results[name]
        m = row["median"]
        cells = [name, *(f"{m[p]:.2f}" for p in PHASES), f"{m['total']:.2f}", f"{m['total'] / base:.2f}"]
        cells += [
            f"{row['completion_tokens_mean']:.1f}",
            f"{row['clipped_ratio_mean']:.2f}",
            f"{row['peak_rss_mib']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    generation = results["generate"]["generation"]
    lines += [
        "",
        "Generation of one batch (the same prompts, the same settings):",
        "",
        "| path | seconds | tokens | tokens/s |",
    ]
    lines += ["|---|---|---|---|"]
    for path, row in generation.items():
        lines.append(f"| {path} | {row['seconds']:.2f} | {row['tokens']} | {row['tokens_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=[*TRAINERS, "generate"], help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = {}
    for name in (*TRAINERS, "generate"):
        print(f"running {name} ...", flush=True)
        results[name] = run_worker(name, args)
    text = table(results, args)
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "trl_vs_sent_cpu.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS_DIR / "trl_vs_sent_cpu.md").write_text(text)


if __name__ == "__main__":
    main()
