"""`python -m sete_lite.arith.study`: SENT against its baselines on the built-in arithmetic task, at an equal budget.

This module owns the toy study of docs/results/toy_study.md. Every method trains the same
warm-started base model (`builtin:arith-qwen2`) through the normal pipeline (`sete_lite.train.run`:
SE scoring, curriculum, SENTTrainer) with the same steps, prompts per step, rollouts per prompt and
completion length; only the loss mode and the curriculum switch differ (METHODS). After training,
each run is measured on the held-out split (builtin:arith-test):

- Avg@8 and Pass@8 (and Pass@1) through sete_lite.eval's unbiased estimator, temperature 1.0;
- on those held-out samples: mean token entropy, mean entropy over the low-entropy set (the lowest
  80% of tokens, SENT's T_low), response length, and KL(pi || ref) to the base model (the mean
  per-token log-ratio log pi - log ref of the sampled tokens, an unbiased estimate);
- over training (metrics.jsonl): reward and mean token entropy per step.

Each run writes result.json in its directory and is skipped when that file exists, so an
interrupted study resumes and the tables and plots are rebuilt from the JSON without retraining:

    python -m sete_lite.arith.study --out docs/results/toy_study            # the sweep, then methods x seeds
    python -m sete_lite.arith.study --out docs/results/toy_study --report   # tables and plots from result.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import shutil
import statistics
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import torch

from sete_lite.arith import DEFAULT_CONFIG
from sete_lite.atomic import write_text

# The methods of the paper's comparison (docs/method.md, section 4) as config overrides of the default run.
# Curriculum-free methods use TRL's shuffled sampler over the same prompts and the same max_steps.
METHODS: dict[str, dict[str, Any]] = {
    "grpo": {"mode": "grpo", "curriculum": False},
    "sent": {"mode": "sent", "curriculum": True},
    "sent_no_curriculum": {"mode": "sent", "curriculum": False},
    "curriculum_only": {"mode": "grpo", "curriculum": True},
    "kl_cov": {"mode": "kl_cov", "curriculum": False},
    "clip_cov": {"mode": "clip_cov", "curriculum": False},
    "entropy_bonus": {"mode": "entropy_bonus", "curriculum": False},
    "high_entropy_mask": {"mode": "high_entropy_mask", "curriculum": False},
    # With one optimizer step per rollout batch (the default) every update is on-policy: the ratio is
    # 1, so PPO clipping and KL-Cov's |log pi - log pi_old| penalty have zero gradient. Two steps per
    # batch (the same rollouts and steps) make the second update off-policy, where KL-Cov acts.
    "grpo_2_steps_per_batch": {"mode": "grpo", "curriculum": False, "steps_per_generation": 2},
    "kl_cov_2_steps_per_batch": {"mode": "kl_cov", "curriculum": False, "steps_per_generation": 2},
}
# The coefficients the paper leaves open (docs/method.md#defaults): kappa = high_cov_ratio, beta_low, beta_high.
# The first point is the provisional default; then kappa varies at those betas, and the KL
# scale (beta_high = 4 beta_low, as the released code's 2.0 / 0.5) varies at that kappa.
SWEEP_POINTS = [(0.002, 0.01, 0.04), (0.02, 0.01, 0.04), (0.2, 0.01, 0.04), (0.002, 0.1, 0.4), (0.002, 0.5, 2.0)]
SWEEP: dict[str, dict[str, Any]] = {
    f"sent_k{kappa}_bl{beta_low}_bh{beta_high}": {
        "mode": "sent",
        "curriculum": True,
        "high_cov_ratio": kappa,
        "beta_low": beta_low,
        "beta_high": beta_high,
    }
    for kappa, beta_low, beta_high in SWEEP_POINTS
}
CURVE_KEYS = ("step", "reward", "entropy", "kl", "sent/entropy_low_mean", "completions/mean_length")
SMOOTHING = 8  # steps in the moving average of the plotted training curves
LOW_ENTROPY_QUANTILE = 0.8  # T_low = the lowest 80% of tokens by entropy, as in the SENT loss


# ----------------------------------------------------------------------------------------------
# One run


@torch.no_grad()
def policy_statistics(model: Any, tokenizer: Any, samples: list[dict], prompts: dict[str, str]) -> dict[str, float]:
    """Entropy, low-entropy-set entropy, KL(pi || ref) and length over sampled held-out completions,
    computed as the trainer computes them (sete_lite.logprobs.completion_logprobs; the reference =
    the adapters switched off).

    The completions are re-tokenized from their text (the character-level tokenizer round-trips
    exactly) plus the EOS that ended them.
    """
    from sete_lite.logprobs import completion_logprobs
    from sete_lite.rollout import adapters, encode_prompts

    entropies, log_ratios, lengths = [], [], []
    model.eval()
    for start in range(0, len(samples), 32):
        rows, completion_lengths = [], []
        for s in samples[start : start + 32]:
            completion = tokenizer(s["text"], add_special_tokens=False)["input_ids"]
            if s["finish_reason"] == "stop":
                completion.append(tokenizer.eos_token_id)
            rows.append(encode_prompts(tokenizer, [prompts[s["id"]]])[0] + completion)
            completion_lengths.append(len(completion))
        # Left-padded, so every completion ends the row, as in the trainer's batches.
        width, k = max(map(len, rows)), max(completion_lengths)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        logp, entropy = completion_logprobs(model, ids, mask, k)
        with adapters(model, False):
            ref, _ = completion_logprobs(model, ids, mask, k)
        for row, n in enumerate(completion_lengths):
            if n:
                entropies.append(entropy[row, k - n :])
                log_ratios.append(logp[row, k - n :] - ref[row, k - n :])
                lengths.append(n)
    entropy = torch.cat(entropies)
    low = entropy.sort().values[: max(1, math.floor(LOW_ENTROPY_QUANTILE * len(entropy)))]
    return {
        "entropy": entropy.mean().item(),
        "entropy_low": low.mean().item(),
        "kl_ref": torch.cat(log_ratios).mean().item(),
        "length": statistics.fmean(lengths),
    }


def load_trained(settings: list[str], adapter: Path | None) -> tuple[Any, Any]:
    """The default config's policy (with `settings` applied), with a run's saved adapter when given."""
    from sete_lite.model import load_policy
    from sete_lite.train import parse_train_config

    configs = parse_train_config(DEFAULT_CONFIG, settings)
    model_cfg = configs.model
    if adapter is not None:
        model_cfg = dataclasses.replace(model_cfg, adapter_path=str(adapter))
    return load_policy(model_cfg, seed=configs.shared.seed)


def measure(model: Any, tokenizer: Any, seed: int) -> dict[str, float]:
    """Held-out Avg@8 / Pass@1 / Pass@8 and the policy statistics of one policy."""
    from sete_lite.arith.task import heldout_accuracy
    from sete_lite.rollout import TransformersEngine

    heldout = heldout_accuracy(TransformersEngine(model, tokenizer), seed=seed, save_texts=True, progress=False)
    stats = policy_statistics(model, tokenizer, heldout["samples"], heldout["prompts"])
    return {"avg@8": heldout["avg"], "pass@1": heldout["pass@k"]["1"], "pass@8": heldout["pass@k"]["8"], **stats}


def score_once(out: Path, seed: int, settings: list[str]) -> Path:
    """SE scores of the training prompts for one seed, shared by every run with that seed.

    They depend on the base model, the data and the seed only (no run's loss or curriculum setting
    enters ScoreConfig), so each seed is scored once, before the runs, and copied into each run
    directory, where train.run checks that their producer matches its own.
    """
    from sete_lite.data import load_records, policy_prompts
    from sete_lite.model import load_policy
    from sete_lite.rollout import make_engine
    from sete_lite.score import model_producer, score_dataset
    from sete_lite.train import parse_train_config

    scores_dir = out / "se_scores" / f"seed{seed}"
    cfg = parse_train_config(DEFAULT_CONFIG, [*settings, f"seed={seed}"])
    model, tokenizer = load_policy(cfg.model, seed=seed)
    engine = make_engine(cfg.shared.rollout_engine, model, tokenizer, cfg.model, seed=seed)
    records = policy_prompts(load_records(cfg.data), tokenizer, cfg.data)
    score_dataset(
        engine,
        records,
        cfg.score,
        model_producer(cfg.model),
        seed=seed,
        answer_timeout_s=cfg.shared.answer_timeout_s,
        scores_dir=scores_dir,
    )
    return scores_dir


def run_one(name: str, seed: int, out: Path, extra: list[str]) -> dict[str, Any]:
    """Train one method with one seed (the normal `python -m sete_lite.train` path, its output in
    train.log), evaluate the saved adapter on the held-out split, and write result.json."""
    from sete_lite.atomic import read_jsonl
    from sete_lite.rundir import RunDir
    from sete_lite.train import main as train

    torch.set_num_threads(1)
    overrides = {**METHODS, **SWEEP}[name]
    run_dir = out / "runs" / name / f"seed{seed}"
    settings = [f"{k}={v}" for k, v in overrides.items()] + [f"seed={seed}", *extra]
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run restarts from scratch
    layout = RunDir(run_dir)
    shutil.copytree(out / "se_scores" / f"seed{seed}", layout.se_scores)
    started = time.perf_counter()
    with open(run_dir / "train.log", "w") as log, redirect_stdout(log), redirect_stderr(log):
        summary = train(["--output-dir", str(run_dir), *(a for s in settings for a in ("--set", s))])
        model, tokenizer = load_trained(settings, layout.adapter)
        measured = measure(model, tokenizer, seed)
    rows = read_jsonl(layout.metrics)
    result = {
        "method": name,
        "seed": seed,
        "overrides": overrides,
        **measured,
        "steps": summary["steps"],
        "seconds": round(time.perf_counter() - started, 1),
        "curves": {key: [row.get(key) for row in rows] for key in CURVE_KEYS},
    }
    # Keep the study directory small (it is committed): the log and result.json (with the curves) only.
    for path in run_dir.iterdir():
        if path.name != "train.log":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    write_text(run_dir / "result.json", json.dumps(result, indent=1) + "\n")
    print(f"{name} seed {seed}: Avg@8 {result['avg@8']:.3f}  Pass@8 {result['pass@8']:.3f}  {result['seconds']} s")
    return result


def base_result(out: Path, seeds: list[int], settings: list[str]) -> dict[str, Any]:
    """The warm-started base model (adapters off, i.e. before any RL) on the held-out split."""
    path = out / "base" / "result.json"
    if path.exists():
        return json.loads(path.read_text())
    model, tokenizer = load_trained(settings, None)
    result = {"method": "base", "runs": [measure(model, tokenizer, seed) for seed in seeds]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(result, indent=1) + "\n")
    return result


# ----------------------------------------------------------------------------------------------
# Tables and plots from the result files


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """'mean +- std' over seeds (std 0 for a single seed)."""
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def load_results(out: Path, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every finished run's result.json, by method, in seed order."""
    return {
        name: [json.loads(p.read_text()) for p in sorted((out / "runs" / name).glob("seed*/result.json"))]
        for name in names
    }


def final_train_entropy(result: dict[str, Any], last: int = 5) -> float:
    """The mean training-batch token entropy over the last `last` logged steps."""
    values = [v for v in result["curves"]["entropy"] if v is not None][-last:]
    return statistics.fmean(values)


def table(results: dict[str, list[dict[str, Any]]], base: dict[str, Any] | None) -> str:
    """A markdown table in percent (accuracy) and nats (entropy, KL), mean ± std over seeds."""
    header = [
        "method",
        "seeds",
        "Avg@8 (%)",
        "Pass@8 (%)",
        "train entropy, last 5 steps",
        "held-out entropy",
        "held-out low-entropy-set entropy",
        "length (tokens)",
        "KL to ref",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [("base (no RL)", base["runs"])] if base else []
    rows += [(name, runs) for name, runs in results.items() if runs]
    for name, runs in rows:
        trained = "curves" in runs[0]
        cells = [
            name,
            str(len(runs)),
            mean_std([r["avg@8"] for r in runs], 100),
            mean_std([r["pass@8"] for r in runs], 100),
            mean_std([final_train_entropy(r) for r in runs], digits=3) if trained else "",
            mean_std([r["entropy"] for r in runs], digits=3),
            mean_std([r["entropy_low"] for r in runs], digits=4),
            mean_std([r["length"] for r in runs]),
            mean_std([r["kl_ref"] for r in runs], digits=4),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_curve(runs: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """A metric's curve averaged over seeds, at the steps every seed logged it."""
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for step, value in zip(run["curves"]["step"], run["curves"][key], strict=True):
            if value is not None:
                by_step.setdefault(step, []).append(value)
    steps = sorted(s for s, values in by_step.items() if len(values) == len(runs))
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (fewer at the start)."""
    return [statistics.fmean(values[max(0, i + 1 - window) : i + 1]) for i in range(len(values))]


def plot_curves(results: dict[str, list[dict[str, Any]]], path: Path, stage_switches: list[int]) -> Path:
    """Token entropy, low-entropy-set entropy and reward over training, one line per method.

    One step trains on 4 prompts, so the per-step curves are noisy: each line is the mean over seeds,
    smoothed by a SMOOTHING-step trailing average. Dotted lines mark the curriculum's stage switches.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("entropy", "mean token entropy (nats)"),
        ("sent/entropy_low_mean", "entropy of the low-entropy set T_low (nats)"),
        ("reward", "mean reward (training batches)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name, runs in results.items():
            if not runs:
                continue
            steps, values = mean_curve(runs, key)
            if steps:
                linestyle = "-" if "sent" in name else "--"
                ax.plot(steps, moving_average(values, SMOOTHING), label=name, linestyle=linestyle)
        for step in stage_switches:
            ax.axvline(step, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("optimizer step" + (" (dotted: curriculum stage switch)" if stage_switches else ""))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if axes[0].lines:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"mean over seeds, {SMOOTHING}-step moving average")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stage_switches(results: dict[str, list[dict[str, Any]]]) -> list[int]:
    """The steps after which the default config's curriculum moves to its next stage (equal stages)."""
    from sete_lite.config import read_values

    num_stages = read_values(DEFAULT_CONFIG).get("num_stages", 2)
    steps = max((r["steps"] for runs in results.values() for r in runs), default=0)
    return [steps * k // num_stages for k in range(1, num_stages)] if steps else []


def report(out: Path, seeds: list[int]) -> str:
    """Write table.md, sweep.md, summary.json and curves PNGs in `out` from the result files."""
    base_path = out / "base" / "result.json"
    base = json.loads(base_path.read_text()) if base_path.exists() else None
    methods = load_results(out, list(METHODS))
    sweep = load_results(out, list(SWEEP))
    text = table(methods, base)
    sweep_text = table(sweep, None)
    write_text(out / "table.md", text)
    write_text(out / "sweep.md", sweep_text)
    plot_curves(methods, out / "curves.png", stage_switches(methods))
    # Training batches differ in difficulty between curriculum and shuffled runs: compare within each group.
    for group, curriculum in (("curriculum", True), ("shuffled", False)):
        runs = {name: r for name, r in methods.items() if METHODS[name]["curriculum"] is curriculum}
        plot_curves(runs, out / f"curves_{group}.png", stage_switches(runs) if curriculum else [])
    plot_curves(sweep, out / "sweep_curves.png", stage_switches(sweep))
    summary = {
        name: {
            metric: statistics.fmean(r[metric] for r in runs)
            for metric in ("avg@8", "pass@1", "pass@8", "entropy", "entropy_low", "length", "kl_ref")
        }
        | {"seeds": [r["seed"] for r in runs]}
        for name, runs in {**methods, **sweep}.items()
        if runs
    }
    write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return text + "\nsweep (SENT coefficients)\n" + sweep_text


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sete_lite.arith.study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=Path("docs/results/toy_study"), help="study directory (default: %(default)s)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per method (default: 0 1 2)")
    parser.add_argument(
        "--sweep-seeds", type=int, nargs="+", default=[0, 1], help="seeds per sweep point (default: 0 1)"
    )
    parser.add_argument("--only", nargs="+", choices=[*METHODS, *SWEEP], help="run these methods / sweep points only")
    parser.add_argument("--workers", type=int, default=2, help="runs trained at the same time (one thread each)")
    parser.add_argument("--report", action="store_true", help="only rebuild the tables and plots")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every run")
    args = parser.parse_args(argv)
    if not args.report:
        torch.set_num_threads(1)
        base_result(args.out, args.seeds, args.set)
        # The sweep first: its choice becomes LossConfig's default, which the methods' SENT runs use.
        jobs = [(name, seed) for seed in args.sweep_seeds for name in SWEEP]
        jobs += [(name, seed) for seed in args.seeds for name in METHODS]
        jobs = [(name, seed) for name, seed in jobs if not args.only or name in args.only]
        jobs = [(n, s) for n, s in jobs if not (args.out / "runs" / n / f"seed{s}" / "result.json").exists()]
        for seed in sorted({seed for _, seed in jobs}):
            score_once(args.out, seed, args.set)
        print(f"{len(jobs)} runs to do, {args.workers} at a time (each run's output: its train.log)")
        # One thread per run: a model this small is fastest that way, and runs then scale with cores.
        with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            pool.starmap(run_one, [(name, seed, args.out, args.set) for name, seed in jobs], chunksize=1)
    print(report(args.out, args.seeds))


if __name__ == "__main__":
    from sete_lite.config import run_cli

    run_cli(main)
