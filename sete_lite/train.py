"""`python -m sete_lite.train`: the whole SENT method from one command.

    python -m sete_lite.train                                   # built-in tiny CPU default
    python -m sete_lite.train --config configs/r1_distill_qwen_1.5b_dapo.yaml --output-dir runs/r1
    python -m sete_lite.train --config X --output-dir D --resume
    python -m sete_lite.train --config X --set mode=grpo --set learning_rate=2e-6

Steps: check the config and the data (cheap, before any model is loaded); load the 4-bit/LoRA
policy; score every prompt's semantic entropy with the adapters off (cached in D/se_scores,
resumable); cut the prompts into stages by SE; train stage by stage with SENTTrainer; save the
adapter at each stage end (D/adapter/stage-K) and at the end (D/adapter); write D/metrics.jsonl
and the plots in D/plots; optionally evaluate on held-out problems before training and after each
stage (D/eval).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sete_lite.config import parse_config, read_values
from sete_lite.model import import_unsloth_first

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny_cpu.yaml"


@dataclass
class RunConfig:
    """What the run optimises and with which engine; the rest lives in the other config classes."""

    reward_funcs: list[str] = field(default_factory=lambda: ["accuracy", "format"])
    rollout_engine: str = "auto"  # auto | transformers | vllm | unsloth (shared with ScoreConfig)
    num_threads: int | None = None  # torch CPU threads; None = torch's default
    # Held-out evaluation (the eval_* keys of sete_lite.eval.EvalConfig say on what and how).
    eval_before_training: bool = False  # the base policy, in D/eval/before
    eval_at_stage_end: bool = False  # after each curriculum stage, in D/eval/stage-K


def config_classes() -> list[type]:
    from sete_lite.data import DataConfig
    from sete_lite.eval import EvalConfig
    from sete_lite.model import ModelConfig
    from sete_lite.score import ScoreConfig
    from sete_lite.trainer import SENTConfig

    return [ModelConfig, DataConfig, ScoreConfig, RunConfig, EvalConfig, SENTConfig]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sete_lite.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name})")
    parser.add_argument("--output-dir", type=Path, default=None, help="run directory (default: the config's)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the run dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config_path = args.config or DEFAULT_CONFIG
    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    import_unsloth_first(read_values(config_path, overrides))  # before TRL is imported to parse the config
    configs = parse_config(config_classes(), config_path, overrides)
    summary, _ = run(*configs, output_dir=Path(configs[-1].output_dir), resume=args.resume)
    return summary


def run(model_cfg, data_cfg, score_cfg, run_cfg, eval_cfg, train_cfg, *, output_dir: Path, resume: bool = False):
    """Score, stage and train; returns (the summary dict that is also printed, the trainer)."""
    import datasets
    import torch
    from transformers import PrinterCallback, ProgressCallback

    from sete_lite.curriculum import stage_indices
    from sete_lite.data import load_records, policy_prompts
    from sete_lite.eval import benchmark_prompts, evaluate_and_write, format_table, load_benchmarks
    from sete_lite.model import load_policy
    from sete_lite.rewards import resolve_reward_functions
    from sete_lite.rollout import check_context, context_limit, make_engine
    from sete_lite.rundir import (
        RewardEntropyBar,
        RunRecorder,
        last_complete_checkpoint,
        save_adapter_atomically,
        trainer_step,
        truncate_log,
    )
    from sete_lite.score import model_producer, score_dataset, write_score_report
    from sete_lite.trainer import SENTTrainer

    # Everything cheap first: a bad config or dataset fails before a model is loaded.
    check_settings(model_cfg, run_cfg, train_cfg)
    if run_cfg.num_threads:
        torch.set_num_threads(run_cfg.num_threads)
    reward_funcs = resolve_reward_functions(run_cfg.reward_funcs)
    records = load_records(data_cfg)
    evaluating = run_cfg.eval_before_training or run_cfg.eval_at_stage_end
    heldout = load_benchmarks(eval_cfg) if evaluating else {}
    if train_cfg.curriculum and len(records) < train_cfg.num_stages:
        raise ValueError(f"{len(records)} prompts cannot fill {train_cfg.num_stages} curriculum stages")
    checkpoint = last_complete_checkpoint(output_dir) if resume else None
    if resume and checkpoint is None:
        print(f"--resume: no complete checkpoint in {output_dir}; starting from the beginning")
    if not resume and any(output_dir.glob("checkpoint-*")):
        raise ValueError(f"{output_dir} holds checkpoints of an earlier run: pass --resume, or another --output-dir")
    output_dir.mkdir(parents=True, exist_ok=True)

    model, tokenizer = load_policy(model_cfg)
    records = policy_prompts(records, tokenizer, data_cfg)
    heldout = benchmark_prompts(heldout, tokenizer, eval_cfg)
    engine = make_engine(run_cfg.rollout_engine, model, tokenizer, model_cfg, seed=train_cfg.seed)
    limit = context_limit(model, engine)
    prompts = [r["prompt"] for r in records]
    check_context(tokenizer, prompts, train_cfg.max_completion_length, limit, "max_completion_length")
    check_context(tokenizer, prompts, score_cfg.se_max_tokens, limit, "se_max_tokens")
    heldout_prompts = [r["prompt"] for rows in heldout.values() for r in rows]
    check_context(tokenizer, heldout_prompts, eval_cfg.eval_max_tokens, limit, "eval_max_tokens")

    def evaluate_as(name: str, use_adapter: bool = True) -> None:
        results = evaluate_and_write(
            engine, heldout, eval_cfg, output_dir / "eval" / name, use_adapter=use_adapter, progress=False
        )
        print(f"held-out evaluation '{name}':\n{format_table(results, eval_cfg.eval_k, eval_cfg.eval_num_samples)}")

    if run_cfg.eval_before_training and checkpoint is None:
        evaluate_as("before", use_adapter=False)  # the base policy

    scores = score_dataset(engine, records, score_cfg, model_producer(model_cfg), scores_dir=output_dir / "se_scores")
    print(write_score_report(scores, output_dir / "se_scores", score_cfg))
    se = [row[f"se_{score_cfg.se_estimator}"] for row in scores]
    stages = stage_indices(se, train_cfg.num_stages) if train_cfg.curriculum else None
    stage_of = {i: k for k, stage in enumerate(stages or [range(len(records))]) for i in stage}
    train_dataset = datasets.Dataset.from_list(
        [
            {"prompt": r["prompt"], "answer": r["answer"], "id": r["id"], "se": se[i], "stage": stage_of[i]}
            for i, r in enumerate(records)
        ]
    )

    trainer = SENTTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=train_cfg,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        rollout_engine=engine,
        curriculum_stages=stages,
        callbacks=[recorder := RunRecorder(output_dir, model_cfg.model_name_or_path), RewardEntropyBar()],
    )
    if run_cfg.eval_at_stage_end:
        recorder.on_stage_end = lambda stage: evaluate_as(f"stage-{stage}")
    recorder.trainer = trainer
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    for log in (output_dir / "metrics.jsonl", output_dir / "rollouts.jsonl"):
        # A resumed run drops what the killed run logged after its checkpoint; a fresh run starts empty.
        truncate_log(log, trainer_step(checkpoint) if checkpoint else -1)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    save_adapter_atomically(trainer.model, output_dir / "adapter", model_cfg.model_name_or_path, tokenizer)
    return summarize(output_dir, time.perf_counter() - started), trainer


# ----------------------------------------------------------------------------------------------
# Checks that run before any heavy work


def check_settings(model_cfg, run_cfg, train_cfg) -> None:
    """Errors that name the fix for settings this machine or this method cannot honour."""
    import torch

    from sete_lite.model import resolve_backend
    from sete_lite.rollout import ENGINES

    resolve_backend(model_cfg)  # unsloth without the package, fast_inference without a GPU
    if run_cfg.rollout_engine not in ("auto", *ENGINES):
        raise ValueError(f"rollout_engine must be 'auto' or one of {ENGINES}, got '{run_cfg.rollout_engine}'")
    if train_cfg.num_generations < 2:
        raise ValueError(
            f"num_generations={train_cfg.num_generations}: group-relative advantages need at least 2 "
            "completions per prompt"
        )
    if not torch.cuda.is_available() and run_cfg.rollout_engine in ("vllm", "unsloth"):
        raise ValueError(
            f"rollout_engine: {run_cfg.rollout_engine} needs a CUDA GPU and none is available; on CPU use "
            "rollout_engine: transformers (or auto)"
        )


# ----------------------------------------------------------------------------------------------
# Run directory: metrics, checkpoints, adapter, summary


def evaluation_order(results_path: Path) -> tuple[int, int]:
    """D/eval/before first, then D/eval/stage-K by K (stage-10 after stage-9)."""
    name = results_path.parent.name
    return (0, 0) if name == "before" else (1, int(name.removeprefix("stage-")))


def summarize(output_dir: Path, seconds: float) -> dict[str, Any]:
    """Plots from metrics.jsonl and a short printed summary."""
    from sete_lite.atomic import read_jsonl
    from sete_lite.plots import plot_training_curves

    rows = read_jsonl(output_dir / "metrics.jsonl")
    plots = plot_training_curves(rows, output_dir / "plots")
    rewards = [row["reward"] for row in rows if "reward" in row]  # logged on rollout steps only
    entropies = [row["entropy"] for row in rows if "entropy" in row]
    summary = {
        "steps": rows[-1]["step"] if rows else 0,
        "train_seconds": round(seconds, 1),
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
        "entropy_first": entropies[0] if entropies else None,
        "entropy_last": entropies[-1] if entropies else None,
        "mean_step_time": sum(r.get("step_time", 0.0) for r in rows) / max(len(rows), 1),
        "adapter": str(output_dir / "adapter"),
        "eval": {
            path.parent.name: json.loads(path.read_text())["average"]
            for path in sorted((output_dir / "eval").glob("*/results.json"), key=evaluation_order)
        },
        "plots": [str(p) for p in plots],
    }
    print("\nSENT run summary")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    if summary["eval"]:  # the answer to "did training help?", in one line
        steps = " -> ".join(f"{name} {scores['avg']:.1%}" for name, scores in summary["eval"].items())
        print(f"held-out accuracy (mean over samples): {steps}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
