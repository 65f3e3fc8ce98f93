"""`python -m sete_lite.arith.study`: SENT against its baselines on a built-in task, at an equal budget.

This module owns the toy studies of docs/results/toy_study.md (the arithmetic task, `--config
builtin:arith-cpu`, the default) and docs/results/sums_study.md (the sums task, `--config
builtin:sums-cpu`, where the base policy has real forking tokens). Every method trains the same
warm-started base model (the config's `model_name_or_path`) through the normal pipeline
(`sete_lite.train.run`: SE scoring, curriculum, SENTTrainer) with the same steps, prompts per step,
rollouts per prompt and completion length; only the loss mode and the curriculum switch differ
(METHODS; the sums study adds the released-code variant, SUMS_METHODS). After training, each run is
measured on the config's held-out split (its first `eval_benchmarks` entry, `eval_num_samples`
samples per problem, Pass@k for each of `eval_k`):

- Avg@n and Pass@k through sete_lite.eval's unbiased estimator, temperature 1.0;
- on those held-out samples: mean token entropy, mean entropy over the low-entropy set (the lowest
  80% of tokens, SENT's T_low), response length, and KL(pi || ref) to the base model (the mean
  per-token log-ratio log pi - log ref of the sampled tokens, an unbiased estimate);
- over training (metrics.jsonl): reward and mean token entropy per step;
- with `--trajectory-every N` (the sums study: 16): the held-out token entropy and accuracy on the
  first TRAJECTORY_PROBLEMS held-out problems x TRAJECTORY_SAMPLES samples at step 0 and every N steps
  (from the run's checkpoints, each kept for this);
- on the sums task, the solution paths the held-out samples take (sete_lite.arith.sums.solution_path):
  the share of samples that are valid paths, distinct valid paths per problem, and the entropy at the
  fork and the forced positions of the valid ones.

Each run writes result.json in its directory and is skipped when that file exists, so an
interrupted study resumes and the tables and plots are rebuilt from the JSON without retraining:

    python -m sete_lite.arith.study --out docs/results/toy_study            # the sweep, then methods x seeds
    python -m sete_lite.arith.study --out docs/results/toy_study --report   # tables and plots from result.json
    python -m sete_lite.arith.study --config builtin:sums-cpu --out docs/results/sums_study --trajectory-every 16
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
from typing import Any, NamedTuple

import torch

from sete_lite.arith import DEFAULT_CONFIG, SMOLLM2_CONFIG, SUMS_CONFIG
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
# The sums study (--config builtin:sums-cpu): the methods above but kl_cov with one step per rollout batch
# (on-policy its penalty has zero gradient: the arithmetic study measured it identical to grpo, run for
# run), plus the released code's variant, which also acts through |log pi - log pi_old| penalties only
# off-policy (hence 2 optimizer steps per rollout batch).
SUMS_METHODS: dict[str, dict[str, Any]] = {
    **{name: overrides for name, overrides in METHODS.items() if name != "kl_cov"},
    "sent_code_2_steps_per_batch": {"mode": "sent_code", "curriculum": True, "steps_per_generation": 2},
}
# On the sums task the KL on T_low meets real collapsed forks, so the scale is swept further up; and the
# forks are only about a tenth of the tokens, below the top 20% that rho = 0.8 leaves free, so two points
# move rho to 0.95, where the lower-entropy half of the forks can enter T_low, and one raises the KL scale
# at kappa = 0.2, where T_hc (the top-covariance tokens, which on this task are the forks) is large.
SUMS_SWEEP_POINTS = [
    *((kappa, beta_low, beta_high, 0.8) for kappa, beta_low, beta_high in SWEEP_POINTS),
    (0.2, 0.1, 0.4, 0.8),
    (0.002, 2.0, 8.0, 0.8),
    (0.002, 0.01, 0.04, 0.95),
    (0.002, 0.1, 0.4, 0.95),
]
SUMS_SWEEP: dict[str, dict[str, Any]] = {
    f"sent_k{kappa}_bl{beta_low}_bh{beta_high}" + (f"_rho{rho}" if rho != 0.8 else ""): {
        "mode": "sent",
        "curriculum": True,
        "high_cov_ratio": kappa,
        "beta_low": beta_low,
        "beta_high": beta_high,
        **({"low_entropy_quantile": rho} if rho != 0.8 else {}),
    }
    for kappa, beta_low, beta_high, rho in SUMS_SWEEP_POINTS
}
# On SmolLM2-135M-Instruct (builtin:smollm2-cpu, docs/results/smollm2_entropy.md): GRPO, SENT at its
# defaults and at the sums study's choice (rho 0.95, KL scale 10x), the curriculum alone and Clip-Cov.
SMOLLM2_METHODS: dict[str, dict[str, Any]] = {
    **{name: METHODS[name] for name in ("grpo", "sent", "curriculum_only", "clip_cov")},
    "sent_k0.002_bl0.1_bh0.4_rho0.95": SUMS_SWEEP["sent_k0.002_bl0.1_bh0.4_rho0.95"],
}
# Which of the two changes of that point does what on the real model: the KL scale x10 at the default rho.
SMOLLM2_SWEEP: dict[str, dict[str, Any]] = {"sent_k0.002_bl0.1_bh0.4": SWEEP["sent_k0.002_bl0.1_bh0.4"]}
# Every run name the studies know, with its overrides (a name means the same settings in every study).
ALL_RUNS: dict[str, dict[str, Any]] = {**METHODS, **SWEEP, **SUMS_METHODS, **SUMS_SWEEP}
TRAJECTORY_PROBLEMS = 32  # the held-out entropy trajectory: the first 32 held-out problems ...
TRAJECTORY_SAMPLES = 4  # ... x 4 samples, at step 0 and at every kept checkpoint
CURVE_KEYS = ("step", "reward", "entropy", "kl", "sent/entropy_low_mean", "completions/mean_length")
SMOOTHING = 8  # steps in the moving average of the plotted training curves
LOW_ENTROPY_QUANTILE = 0.8  # T_low = the lowest 80% of tokens by entropy, as in the SENT loss


def study_runs(config: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(methods, sweep) of the study of a config: the sums task's, SmolLM2's, or the arithmetic task's for
    any other."""
    from sete_lite.builtins import resolve_builtin

    path = Path(resolve_builtin(str(config))).resolve()
    if path == SUMS_CONFIG.resolve():
        return SUMS_METHODS, SUMS_SWEEP
    if path == SMOLLM2_CONFIG.resolve():
        return SMOLLM2_METHODS, SMOLLM2_SWEEP
    return METHODS, SWEEP


# ----------------------------------------------------------------------------------------------
# One run


class SampleTokens(NamedTuple):
    """One held-out sample's completion as the policy scored it (policy_statistics)."""

    ids: list[int]
    entropy: torch.Tensor
    logp: torch.Tensor


@torch.no_grad()
def policy_statistics(
    model: Any,
    tokenizer: Any,
    samples: list[dict],
    prompts: dict[str, str],
    per_sample: list[SampleTokens] | None = None,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Entropy, low-entropy-set entropy, KL(pi || ref) and length over sampled held-out completions,
    computed as the trainer computes them (sete_lite.logprobs.completion_logprobs at the sampling
    `temperature`; the reference = the adapters switched off).

    `prompts` are the prompts as the policy saw them (chat template applied). The completions are
    re-tokenized from their text plus the EOS that ended them: exact for the character-level tokenizer;
    for a BPE tokenizer `retokenized_exact` is the share of samples whose re-tokenization has the sampled
    token count. `per_sample`, when given, receives each sample's tokens, in the order of `samples`.
    """
    from sete_lite.logprobs import completion_logprobs
    from sete_lite.rollout import adapters, encode_prompts

    entropies, log_ratios, lengths, exact = [], [], [], 0
    prompt_ids = dict(zip(prompts, encode_prompts(tokenizer, list(prompts.values())), strict=True))  # once per problem
    model.eval()
    for start in range(0, len(samples), 32):
        rows, completions = [], []
        for s in samples[start : start + 32]:
            completion = tokenizer(s["text"], add_special_tokens=False)["input_ids"]
            if s["finish_reason"] == "stop":
                completion.append(tokenizer.eos_token_id)
            exact += len(completion) == s["num_tokens"]
            rows.append(prompt_ids[s["id"]] + completion)
            completions.append(completion)
        # Left-padded, so every completion ends the row, as in the trainer's batches.
        width, k = max(map(len, rows)), max(map(len, completions))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        logp, entropy = completion_logprobs(model, ids, mask, k, temperature=temperature)
        with adapters(model, False):
            ref, _ = completion_logprobs(model, ids, mask, k, temperature=temperature)
        for row, completion in enumerate(completions):
            n = len(completion)
            if per_sample is not None:
                per_sample.append(SampleTokens(completion, entropy[row, k - n :], logp[row, k - n :]))
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
        "retokenized_exact": exact / len(samples),
    }


TOKEN_KINDS = ("answer", "number", "operator", "word", "other")


def token_kind(piece: str, in_answer: bool) -> str:
    """What a completion token is, for the token-set tables: the final answer's digits, other numbers,
    operators, words, or the rest (spaces, punctuation, end of turn)."""
    text = piece.strip()
    if any(c.isdigit() for c in text):
        return "answer" if in_answer else "number"
    if text and all(c in "+-=*/×÷−" for c in text):
        return "operator"
    if any(c.isalpha() for c in text):
        return "word"
    return "other"


def group_advantages(samples: list[dict]) -> list[float]:
    """Each sample's GRPO advantage from its correctness: (r - group mean) / (group std + 1e-4), the group
    being the samples of its problem (TRL's scale_rewards="group")."""
    groups: dict[str, list[float]] = {}
    for sample in samples:
        groups.setdefault(sample["id"], []).append(float(sample["correct"]))
    stats = {key: (statistics.fmean(r), statistics.stdev(r) if len(r) > 1 else 0.0) for key, r in groups.items()}
    return [(float(s["correct"]) - stats[s["id"]][0]) / (stats[s["id"]][1] + 1e-4) for s in samples]


def token_sets(
    tokenizer: Any, samples: list[dict], tokens: list[SampleTokens], loss: Any, examples: int = 6
) -> dict[str, Any]:
    """SENT's token sets on held-out samples, chosen by the loss's own rules (sete_lite.loss) as if the
    samples were a training batch: T_low, the lowest-entropy `low_entropy_quantile` of the tokens; T_hc,
    its top `high_cov_ratio` by the covariance of log-prob and advantage (the advantage from each sample's
    correctness within its problem's group); the rest, the high-entropy tokens SENT leaves free.

    For each set (T_hc, T_low without T_hc, free): its size, mean entropy, the share of each token_kind
    and its most frequent tokens; then `examples` samples holding T_hc tokens, rendered with T_hc tokens
    as «token» and free ones as ⟨token⟩."""
    import re

    from sete_lite.loss import centered_covariance, count_of, select_extreme

    advantages = group_advantages(samples)
    entropy = torch.cat([t.entropy for t in tokens])
    logp = torch.cat([t.logp for t in tokens])
    advantage = torch.cat([torch.full((len(t.ids),), a) for t, a in zip(tokens, advantages, strict=True)])
    every = torch.ones_like(entropy, dtype=torch.bool)
    low = select_extreme(entropy, every, count_of(loss.low_entropy_quantile, len(entropy)), False, tiebreak=logp)
    cov = centered_covariance(logp, advantage, low)
    high_cov = select_extreme(cov, low, count_of(loss.high_cov_ratio, int(low.sum())), True, tiebreak=entropy)
    membership = torch.where(high_cov, 0, torch.where(low, 1, 2)).tolist()
    names = ("T_hc", "T_low without T_hc", "free (not in T_low)")

    pieces, kinds, special = [], [], set(tokenizer.all_special_ids)
    for sample, t in zip(samples, tokens, strict=True):
        numbers = list(re.finditer(r"\d+", sample["text"]))
        answer = numbers[-1].span() if numbers else (0, 0)
        for position, token in enumerate(t.ids):
            piece = tokenizer.decode([token])
            end = len(tokenizer.decode(t.ids[: position + 1], skip_special_tokens=True))
            pieces.append(piece)
            in_answer = end - len(piece.strip()) < answer[1] and end > answer[0]
            kinds.append("other" if token in special else token_kind(piece, in_answer))
    sets: dict[str, Any] = {}
    for index, name in enumerate(names):
        chosen = [i for i, m in enumerate(membership) if m == index]
        counts: dict[str, int] = {}
        for i in chosen:
            counts[pieces[i]] = counts.get(pieces[i], 0) + 1
        sets[name] = {
            "tokens": len(chosen),
            "entropy": statistics.fmean(entropy[i].item() for i in chosen) if chosen else None,
            "kinds": {kind: sum(kinds[i] == kind for i in chosen) / max(1, len(chosen)) for kind in TOKEN_KINDS},
            "top_tokens": sorted(counts.items(), key=lambda item: -item[1])[:12],
        }
    rendered, offset = [], 0
    for sample, t in zip(samples, tokens, strict=True):
        marks = membership[offset : offset + len(t.ids)]
        if 0 in marks and len(rendered) < examples:
            parts = [pieces[offset + i] for i in range(len(t.ids))]
            wrapped = [f"«{p}»" if m == 0 else f"⟨{p}⟩" if m == 2 else p for p, m in zip(parts, marks, strict=True)]
            rendered.append({"correct": bool(sample["correct"]), "text": "".join(wrapped)})
        offset += len(t.ids)
    return {"sets": sets, "examples": rendered}


def load_trained(settings: list[str], adapter: Path | None, config: str | Path = DEFAULT_CONFIG) -> tuple[Any, Any]:
    """The config's policy (with `settings` applied), with a run's saved adapter when given."""
    from sete_lite.model import load_policy
    from sete_lite.train import parse_train_config

    configs = parse_train_config(config, settings)
    model_cfg = configs.model
    if adapter is not None:
        model_cfg = dataclasses.replace(model_cfg, adapter_path=str(adapter))
    return load_policy(model_cfg, seed=configs.shared.seed)


def sums_problem(prompt: str) -> Any:
    """The sums problem a prompt states, or None when the prompt is not one of the sums task's."""
    from sete_lite.arith.sums import problem_of

    try:
        return problem_of(prompt.split("\n")[0])
    except ValueError:
        return None


def path_statistics(samples: list[dict], prompts: dict[str, str], entropies: list) -> dict[str, float]:
    """On the sums task: the share of samples that are valid solution paths, the mean count of distinct
    valid paths per problem, the share of valid paths that add in the listed order, and the mean token
    entropy at the fork and at the forced positions of the valid paths (sete_lite.arith.sums). Empty
    for another task."""
    from sete_lite.arith.sums import EntropyByKind, solution_path

    problems = {key: sums_problem(prompt) for key, prompt in prompts.items()}
    if not problems or any(p is None for p in problems.values()):
        return {}
    paths: dict[str, set] = {key: set() for key in problems}
    valid = listed = 0
    by_kind = EntropyByKind()
    for sample, entropy in zip(samples, entropies, strict=True):
        problem = problems[sample["id"]]
        path = solution_path(problem, sample["text"])
        if path is None:
            continue
        valid += 1
        listed += path == problem.numbers
        paths[sample["id"]].add(path)
        by_kind.add(problem, sample["text"].strip(), entropy)
    return {
        "valid_path_rate": valid / len(samples),
        "distinct_paths": statistics.fmean(len(p) for p in paths.values()),
        "listed_order_rate": listed / max(1, valid),
        "entropy_fork": by_kind.mean("fork"),
        "entropy_forced": by_kind.mean("forced"),
    }


def pass_at(samples: list[dict], k: int) -> float:
    """Pass@k over problems from graded samples (sete_lite.eval's unbiased estimator)."""
    from sete_lite.eval import pass_at_k

    verdicts: dict[str, list[bool]] = {}
    for sample in samples:
        verdicts.setdefault(sample["id"], []).append(bool(sample["correct"]))
    return statistics.fmean(pass_at_k(len(v), sum(v), k) for v in verdicts.values())


def measure(
    model: Any,
    tokenizer: Any,
    seed: int,
    config: str | Path = DEFAULT_CONFIG,
    settings: list[str] | None = None,
    *,
    num_samples: int | None = None,
    max_problems: int | None = None,
) -> dict[str, Any]:
    """Held-out Avg@n / Pass@k and the policy statistics of one policy, sampled as the config evaluates
    (its first `eval_benchmarks` entry, n, k, temperature, top_p, prompt and chat template, answer
    extraction); `num_samples` / `max_problems` shrink the measurement, for the trajectory. A full
    measurement also holds SENT's token sets on the samples (token_sets, with the `settings`' loss)."""
    from sete_lite.eval import benchmark_prompts, evaluate, load_benchmarks
    from sete_lite.rollout import TransformersEngine
    from sete_lite.train import parse_train_config

    configs = parse_train_config(config, settings or [])
    n = num_samples or configs.eval.eval_num_samples
    cfg = dataclasses.replace(
        configs.eval,
        eval_benchmarks=configs.eval.eval_benchmarks[:1],
        eval_num_samples=n,
        eval_k=sorted({1, n, *(k for k in configs.eval.eval_k if k <= n)}),
        eval_max_problems=max_problems or configs.eval.eval_max_problems,
        eval_save_texts=True,
    )
    benchmarks = benchmark_prompts(load_benchmarks(cfg), tokenizer, cfg)
    heldout = evaluate(
        TransformersEngine(model, tokenizer),
        benchmarks,
        cfg,
        seed=seed,
        answer_timeout_s=configs.shared.answer_timeout_s,
        answer_extraction=configs.shared.answer_extraction,
        progress=False,
    )
    samples, prompts = heldout["samples"], {r["id"]: r["prompt"] for r in next(iter(benchmarks.values()))}
    tokens: list[SampleTokens] = []
    stats = policy_statistics(model, tokenizer, samples, prompts, tokens, cfg.eval_temperature)
    passes = {f"pass@{k}": pass_at(samples, k) for k in cfg.eval_k}
    sets = {} if max_problems else {"token_sets": token_sets(tokenizer, samples, tokens, configs.train)}
    return {
        f"avg@{n}": heldout["average"]["avg"],
        **passes,
        **stats,
        **path_statistics(samples, prompts, [t.entropy for t in tokens]),
        **sets,
    }


def heldout_trajectory(
    run_dir: Path, model: Any, tokenizer: Any, seed: int, config: str | Path, settings: list[str]
) -> dict[str, list[float]]:
    """Held-out entropy and accuracy at step 0 and at each checkpoint the run kept, on
    TRAJECTORY_PROBLEMS problems x TRAJECTORY_SAMPLES samples. `model` must come with a fresh adapter
    (load_trained without one): at step 0 it is the base policy, then each checkpoint's weights are loaded."""
    from sete_lite.model import load_adapter_weights
    from sete_lite.rundir import RunDir, trainer_step

    points = [(0, None)] + [(trainer_step(c), c) for c in RunDir(run_dir).checkpoints()]
    curve: dict[str, list[float]] = {"step": [], "entropy": [], "entropy_low": [], "avg": [], "entropy_fork": []}
    for step, checkpoint in sorted(points, key=lambda p: p[0]):
        if checkpoint is not None:
            load_adapter_weights(model, str(checkpoint))
        measured = measure(
            model, tokenizer, seed, config, settings, num_samples=TRAJECTORY_SAMPLES, max_problems=TRAJECTORY_PROBLEMS
        )
        curve["step"].append(step)
        curve["avg"].append(measured[f"avg@{TRAJECTORY_SAMPLES}"])
        for key in ("entropy", "entropy_low", "entropy_fork"):
            curve[key].append(measured.get(key))
    return curve


def score_once(out: Path, seed: int, settings: list[str], config: str | Path = DEFAULT_CONFIG) -> Path:
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
    cfg = parse_train_config(config, [*settings, f"seed={seed}"])
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
        answer_extraction=cfg.shared.answer_extraction,
        scores_dir=scores_dir,
    )
    return scores_dir


def run_one(
    name: str,
    seed: int,
    out: Path,
    extra: list[str],
    config: str | Path = DEFAULT_CONFIG,
    trajectory_every: int | None = None,
) -> dict[str, Any]:
    """Train one method with one seed (the normal `python -m sete_lite.train` path, its output in
    train.log), evaluate the saved adapter on the held-out split, and write result.json.

    With `trajectory_every`, the run keeps a checkpoint every that many steps and the held-out
    entropy trajectory is measured from them (heldout_trajectory)."""
    from sete_lite.atomic import read_jsonl
    from sete_lite.rundir import RunDir, training_rows
    from sete_lite.train import main as train

    torch.set_num_threads(1)
    overrides = ALL_RUNS[name]
    run_dir = out / "runs" / name / f"seed{seed}"
    settings = [f"{k}={v}" for k, v in overrides.items()] + [f"seed={seed}", *extra]
    if trajectory_every:
        settings += [f"save_steps={trajectory_every}", "save_total_limit=1000"]
    layout = RunDir(run_dir)
    if not layout.se_scores.exists():
        shutil.copytree(out / "se_scores" / f"seed{seed}", layout.se_scores)
    # An interrupted run resumes from its last checkpoint (a finished one trains no further step).
    resume = ["--resume"] if layout.earlier_run() else []
    started = time.perf_counter()
    with open(run_dir / "train.log", "a") as log, redirect_stdout(log), redirect_stderr(log):
        summary = train(
            ["--config", str(config), "--output-dir", str(run_dir), *resume]
            + [a for s in settings for a in ("--set", s)]
        )
        model, tokenizer = load_trained(settings, layout.adapter, config)
        measured = measure(model, tokenizer, seed, config, settings)
        trajectory = None
        if trajectory_every:
            fresh, tokenizer = load_trained(settings, None, config)
            trajectory = heldout_trajectory(run_dir, fresh, tokenizer, seed, config, settings)
    rows = training_rows(read_jsonl(layout.metrics))
    result = {
        "method": name,
        "seed": seed,
        "overrides": overrides,
        **measured,
        "steps": summary["steps"],
        "seconds": round(time.perf_counter() - started, 1),
        "curves": {key: [row.get(key) for row in rows] for key in CURVE_KEYS},
        **({"heldout_curve": trajectory} if trajectory else {}),
    }
    # Keep the study directory small (it is committed): the log and result.json (with the curves) only.
    for path in run_dir.iterdir():
        if path.name != "train.log":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    write_text(run_dir / "result.json", json.dumps(result, indent=1) + "\n")
    n, k = sample_count(result), largest_k(result)
    print(
        f"{name} seed {seed}: Avg@{n} {result[f'avg@{n}']:.3f}  Pass@{k} {result[f'pass@{k}']:.3f}  "
        f"entropy {result['entropy']:.4f}  {result['seconds']} s"
    )
    return result


def base_result(
    out: Path, seeds: list[int], settings: list[str], config: str | Path = DEFAULT_CONFIG
) -> dict[str, Any]:
    """The warm-started base model (adapters off, i.e. before any RL) on the held-out split."""
    path = out / "base" / "result.json"
    if path.exists():
        return json.loads(path.read_text())
    model, tokenizer = load_trained(settings, None, config)
    runs = [{"seed": seed, **measure(model, tokenizer, seed, config, settings)} for seed in seeds]
    result = {"method": "base", "runs": runs}
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


def sample_count(result: dict[str, Any]) -> int:
    """n of a result's Avg@n."""
    return next(int(key[4:]) for key in result if key.startswith("avg@"))


def largest_k(result: dict[str, Any]) -> int:
    """The largest k of a result's Pass@k."""
    return max(int(key[5:]) for key in result if key.startswith("pass@"))


def policy_rows(
    results: dict[str, list[dict[str, Any]]], base: dict[str, Any] | None, base_label: str = "base (no RL)"
) -> list[tuple[str, list[dict[str, Any]]]]:
    """The policies a report shows, in order: the base (when it was measured) under `base_label`, then
    every method with at least one finished run."""
    return ([(base_label, base["runs"])] if base else []) + [(name, runs) for name, runs in results.items() if runs]


def table(results: dict[str, list[dict[str, Any]]], base: dict[str, Any] | None) -> str:
    """A markdown table in percent (accuracy) and nats (entropy, KL), mean ± std over seeds."""
    first = next((runs[0] for runs in results.values() if runs), base["runs"][0] if base else {"avg@8": 0, "pass@8": 0})
    n, k = sample_count(first), largest_k(first)
    paths = "distinct_paths" in first
    header = [
        "method",
        "seeds",
        f"Avg@{n} (%)",
        f"Pass@{k} (%)",
        "train entropy, last 5 steps",
        "held-out entropy",
        "held-out low-entropy-set entropy",
        "length (tokens)",
        "KL to ref",
    ]
    if paths:
        header += ["entropy at forks", "entropy at forced positions", "distinct correct paths / problem"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, runs in policy_rows(results, base):
        trained = "curves" in runs[0]
        cells = [
            name,
            str(len(runs)),
            mean_std([r[f"avg@{n}"] for r in runs], 100),
            mean_std([r[f"pass@{k}"] for r in runs], 100),
            mean_std([final_train_entropy(r) for r in runs], digits=3) if trained else "",
            mean_std([r["entropy"] for r in runs], digits=3),
            mean_std([r["entropy_low"] for r in runs], digits=4),
            mean_std([r["length"] for r in runs]),
            mean_std([r["kl_ref"] for r in runs], digits=4),
        ]
        if paths:
            cells += [
                mean_std([r["entropy_fork"] for r in runs], digits=3),
                mean_std([r["entropy_forced"] for r in runs], digits=4),
                mean_std([r["distinct_paths"] for r in runs], digits=2),
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
    smoothed by a trailing average over SMOOTHING steps (a quarter of the run for a run shorter than
    4 x SMOOTHING). Dotted lines mark the curriculum's stage switches.
    """
    from sete_lite.plots import plt, save

    panels = [
        ("entropy", "mean token entropy (nats)"),
        ("sent/entropy_low_mean", "entropy of the low-entropy set T_low (nats)"),
        ("reward", "mean reward (training batches)"),
        ("completions/mean_length", "response length (tokens, training batches)"),
    ]
    longest = max((len(runs[0]["curves"]["step"]) for runs in results.values() if runs), default=0)
    window = max(1, min(SMOOTHING, longest // 4))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name, runs in results.items():
            if not runs:
                continue
            steps, values = mean_curve(runs, key)
            if steps:
                linestyle = "-" if "sent" in name else "--"
                ax.plot(steps, moving_average(values, window), label=name, linestyle=linestyle)
        for step in stage_switches:
            ax.axvline(step, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("optimizer step" + (" (dotted: curriculum stage switch)" if stage_switches else ""))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if axes[0].lines:
        axes[0].legend(fontsize=8)
    fig.suptitle(f"mean over seeds, {window}-step moving average")
    fig.tight_layout()
    return save(fig, path, dpi=110)


def stage_switches(results: dict[str, list[dict[str, Any]]], config: str | Path = DEFAULT_CONFIG) -> list[int]:
    """The steps after which the config's curriculum moves to its next stage (equal stages)."""
    from sete_lite.builtins import resolve_builtin
    from sete_lite.config import read_values

    num_stages = read_values(resolve_builtin(str(config))).get("num_stages", 2)
    steps = max((r["steps"] for runs in results.values() for r in runs), default=0)
    return [steps * k // num_stages for k in range(1, num_stages)] if steps else []


def metric_keys(result: dict[str, Any]) -> list[str]:
    """The scalar held-out measurements of a result, in a fixed order: Avg@n, Pass@k by k, then the rest."""
    n = sample_count(result)
    passes = sorted((k for k in result if k.startswith("pass@")), key=lambda k: int(k[5:]))
    rest = ["entropy", "entropy_low", "length", "kl_ref"]
    rest += [
        k
        for k in ("valid_path_rate", "distinct_paths", "listed_order_rate", "entropy_fork", "entropy_forced")
        if k in result
    ]
    return [f"avg@{n}", *passes, *rest]


def paired_differences(results: dict[str, list[dict[str, Any]]], reference: str = "grpo") -> str:
    """A markdown table of each method minus `reference`, seed by seed (same seed: same SE scores, same
    evaluation sampling seed), in Avg@n and Pass@k points and held-out entropy."""
    ref = {r["seed"]: r for r in results.get(reference, [])}
    if not ref:
        return ""
    first = next(iter(ref.values()))
    n, k = sample_count(first), largest_k(first)
    columns = [(f"avg@{n}", 100, 1, f"Δ Avg@{n} (points)"), (f"pass@{k}", 100, 1, f"Δ Pass@{k} (points)"),
               ("entropy", 1, 3, "Δ held-out entropy (nats)")]  # fmt: skip
    header = ["method", "seeds"] + [label for *_, label in columns]
    lines = [f"each method minus {reference}, seed by seed (mean in brackets)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    for name, runs in results.items():
        pairs = [(r, ref[r["seed"]]) for r in runs if r["seed"] in ref and name != reference]
        if not pairs:
            continue
        cells = [name, " ".join(str(r["seed"]) for r, _ in pairs)]
        for key, scale, digits, _ in columns:
            diffs = [(r[key] - g[key]) * scale for r, g in pairs]
            cells.append(", ".join(f"{d:+.{digits}f}" for d in diffs) + f" [{statistics.fmean(diffs):+.{digits}f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def stage_dip(results: dict[str, list[dict[str, Any]]], switch: int, window: int = 8) -> str:
    """Training-batch entropy around the curriculum's stage switch, per curriculum method (mean over
    seeds): the `window` steps before the switch, the first `window` after it, and the `window` after those."""
    lines = [f"| method | steps {switch - window + 1}-{switch} | steps {switch + 1}-{switch + window} | "
             f"steps {switch + window + 1}-{switch + 2 * window} |", "|---|---|---|---|"]  # fmt: skip
    for name, runs in results.items():
        if not runs or not ALL_RUNS[name].get("curriculum"):
            continue
        steps, values = mean_curve(runs, "entropy")
        by_step = dict(zip(steps, values, strict=True))

        def mean_over(first: int, last: int, table: dict[int, float] = by_step) -> str:
            chosen = [table[s] for s in range(first, last + 1) if s in table]
            return f"{statistics.fmean(chosen):.4f}" if chosen else ""

        cells = [mean_over(switch - window + 1, switch), mean_over(switch + 1, switch + window),
                 mean_over(switch + window + 1, switch + 2 * window)]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def token_set_report(results: dict[str, list[dict[str, Any]]], base: dict[str, Any] | None, examples: int = 3) -> str:
    """SENT's token sets on the held-out samples (token_sets), as markdown: per policy and set, its share
    of the tokens, mean entropy and token kinds (mean over seeds); then, for the first seed, each set's
    most frequent tokens and `examples` samples with T_hc tokens «marked» and free ones ⟨marked⟩."""
    rows = [(name, runs) for name, runs in policy_rows(results, base) if "token_sets" in runs[0]]
    if not rows:
        return ""
    header = ["policy", "set", "share of tokens (%)", "mean entropy (nats)", *(f"{kind} (%)" for kind in TOKEN_KINDS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, runs in rows:
        for set_name in runs[0]["token_sets"]["sets"]:
            entries = [run["token_sets"]["sets"][set_name] for run in runs]
            totals = [sum(entry["tokens"] for entry in run["token_sets"]["sets"].values()) for run in runs]
            entropies = [entry["entropy"] for entry in entries if entry["entropy"] is not None]
            cells = [
                name,
                set_name,
                f"{100 * statistics.fmean(e['tokens'] / t for e, t in zip(entries, totals, strict=True)):.1f}",
                f"{statistics.fmean(entropies):.3f}" if entropies else "",
                *(f"{100 * statistics.fmean(e['kinds'][kind] for e in entries):.0f}" for kind in TOKEN_KINDS),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    for name, runs in rows:
        first = runs[0]
        lines += ["", f"### {name}, seed {first['seed']}", ""]
        for set_name, entry in first["token_sets"]["sets"].items():
            tokens = ", ".join(f"`{token!r}` {count}" for token, count in entry["top_tokens"][:8])
            lines.append(f"- {set_name}: {tokens}".replace("|", "\\|"))
        shown = first["token_sets"]["examples"][:examples]
        if shown:
            lines += ["", "```text"] + [
                f"[{'correct' if e['correct'] else 'wrong'}] " + e["text"].replace("\n", "⏎") for e in shown
            ] + ["```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def pass_at_k_table(results: dict[str, list[dict[str, Any]]], base: dict[str, Any] | None) -> str:
    """A markdown table of Pass@k (%) for every k measured, mean ± std over seeds, base first."""
    rows = policy_rows(results, base)
    if not rows:
        return ""
    ks = sorted(int(key[5:]) for key in rows[0][1][0] if key.startswith("pass@"))
    lines = ["| method | seeds | " + " | ".join(f"Pass@{k} (%)" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for name, runs in rows:
        cells = [mean_std([r[f"pass@{k}"] for r in runs], 100) for k in ks]
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_pass_at_k(results: dict[str, list[dict[str, Any]]], base: dict[str, Any] | None, path: Path) -> Path:
    """Pass@k against k (log scale) for the base, GRPO and SENT (and SENT at rho 0.95 where it is one of
    the methods): mean over seeds, bars at min and max."""
    from sete_lite.plots import plt, save

    shown = ("grpo", "sent", "sent_k0.002_bl0.1_bh0.4_rho0.95")
    groups = policy_rows({name: results.get(name, []) for name in shown}, base)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, runs in groups:
        ks = sorted(int(key[5:]) for key in runs[0] if key.startswith("pass@"))
        values = [[100 * r[f"pass@{k}"] for r in runs] for k in ks]
        means = [statistics.fmean(v) for v in values]
        errors = [[m - min(v) for m, v in zip(means, values, strict=True)],
                  [max(v) - m for m, v in zip(means, values, strict=True)]]  # fmt: skip
        ax.errorbar(ks, means, yerr=errors, marker="o", capsize=3, label=f"{label} ({len(runs)} seeds)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_ylabel("Pass@k on the held-out split (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Pass@k: mean over seeds, bars at min and max")
    fig.tight_layout()
    return save(fig, path, dpi=110)


def plot_heldout(results: dict[str, list[dict[str, Any]]], base: dict[str, Any] | None, path: Path) -> Path:
    """The held-out measurements side by side, one bar per policy (the base first): Avg@n, Pass@k at the
    largest k, token entropy and KL to the reference; bars at the mean over seeds, dots at each seed."""
    from sete_lite.plots import plt, save

    groups = policy_rows(results, base, base_label="base")
    first = groups[0][1][0]
    n, k = sample_count(first), largest_k(first)
    panels = [(f"avg@{n}", 100, f"Avg@{n} (%)"), (f"pass@{k}", 100, f"Pass@{k} (%)"),
              ("entropy", 1, "token entropy (nats)"), ("kl_ref", 1, "KL to the reference (nats / token)")]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.5))
    for ax, (key, scale, label) in zip(axes, panels, strict=True):
        for x, (_, runs) in enumerate(groups):
            values = [scale * r[key] for r in runs]
            ax.bar(x, statistics.fmean(values), color="lightgray" if x == 0 and base else f"C{x}")
            ax.plot([x] * len(values), values, "k.", markersize=5)
        ax.set_xticks(range(len(groups)), [name for name, _ in groups], rotation=30, ha="right", fontsize=8)
        ax.set_title(label)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("held-out split, after training: bars at the mean over seeds, dots at each seed")
    fig.tight_layout()
    return save(fig, path)


def plot_entropy_bands(
    results: dict[str, list[dict[str, Any]]], base: dict[str, Any] | None, path: Path, switches: list[int]
) -> Path:
    """Entropy trajectories, one panel per method, GRPO in grey on every panel: the held-out token
    entropy (from the kept checkpoints, heldout_curve) as the mean over seeds with a band from the
    lowest to the highest seed, and the training batches' entropy (SMOOTHING-step moving average, mean
    over seeds) dashed. The dotted line marks the curriculum's stage switch (curriculum methods)."""
    from sete_lite.plots import plt, save

    names = [name for name, runs in results.items() if runs and "heldout_curve" in runs[0]]
    columns = 4
    rows = max(1, math.ceil(len(names) / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 3.3 * rows), sharex=True, sharey=True, squeeze=False
    )
    base_entropy = statistics.fmean(r["entropy"] for r in base["runs"]) if base else None

    def band(runs: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float], list[float]]:
        steps = runs[0]["heldout_curve"]["step"]
        values = [[r["heldout_curve"]["entropy"][i] for r in runs] for i in range(len(steps))]
        return steps, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values]

    for ax, name in zip(axes.flat, names, strict=False):
        for label, runs, color in (("grpo", results.get("grpo"), "gray"), (name, results[name], "C0")):
            if not runs or (color == "gray" and name == "grpo"):  # GRPO's own panel: no grey copy
                continue
            steps, mean, low, high = band(runs)
            ax.plot(steps, mean, color=color, marker="o", markersize=3, label=f"{label}: held-out")
            ax.fill_between(steps, low, high, color=color, alpha=0.25)
            train_steps, train = mean_curve(runs, "entropy")
            ax.plot(train_steps, moving_average(train, SMOOTHING), color=color, linestyle="--", linewidth=1,
                    label=f"{label}: training batches")  # fmt: skip
        if base_entropy is not None:
            ax.axhline(base_entropy, color="black", linewidth=0.8, linestyle="-.", label="base, full held-out split")
        if ALL_RUNS.get(name, {}).get("curriculum"):
            for step in switches:
                ax.axvline(step, color="gray", linestyle=":", linewidth=1)
        ax.set_title(f"{name} ({len(results[name])} seeds)", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("token entropy (nats)")
    for ax in axes[-1, :]:
        ax.set_xlabel("optimizer step")
    if names:
        axes.flat[min(1, len(names) - 1)].legend(fontsize=7)
    fig.suptitle("held-out token entropy (solid: mean over seeds, band: lowest to highest seed) and training "
                 f"batches' entropy (dashed, {SMOOTHING}-step average); grey: GRPO; dotted: stage switch")  # fmt: skip
    fig.tight_layout()
    return save(fig, path, dpi=100)


def report(out: Path, seeds: list[int], config: str | Path = DEFAULT_CONFIG) -> str:
    """Write table.md, summary.json and curves PNGs in `out` from the result files, and sweep.md once a
    sweep point has run; for a study whose runs measured held-out trajectories or SENT's token sets also
    paired.md, stage_dip.md, pass_at_k.md, pass_at_k.png, heldout.png, entropy_bands.png (trajectories),
    token_sets.md (token sets) and sweep_paired.md (once a sweep point has run)."""
    study_methods, study_sweep = study_runs(config)
    base_path = out / "base" / "result.json"
    base = json.loads(base_path.read_text()) if base_path.exists() else None
    methods = load_results(out, list(study_methods))
    sweep = load_results(out, list(study_sweep))
    text = table(methods, base)
    swept = any(sweep.values())
    sweep_text = table(sweep, None) if swept else ""
    write_text(out / "table.md", text)
    if swept:
        write_text(out / "sweep.md", sweep_text)
    switches = stage_switches(methods, config)
    plot_curves(methods, out / "curves.png", switches)
    # Training batches differ in difficulty between curriculum and shuffled runs: compare within each group.
    for group, curriculum in (("curriculum", True), ("shuffled", False)):
        runs = {name: r for name, r in methods.items() if study_methods[name]["curriculum"] is curriculum}
        plot_curves(runs, out / f"curves_{group}.png", stage_switches(runs, config) if curriculum else [])
    if swept:
        plot_curves(sweep, out / "sweep_curves.png", stage_switches(sweep, config))
    extra = ""
    trajectories = any(runs and "heldout_curve" in runs[0] for runs in methods.values())
    if trajectories or any(runs and "token_sets" in runs[0] for runs in methods.values()):
        # The methods with 2 optimizer steps per rollout batch also against GRPO with the same 2 steps.
        two_steps = {name: runs for name, runs in methods.items() if ALL_RUNS[name].get("steps_per_generation") == 2}
        with_base = {"base": base["runs"], **methods} if base else {}
        paired = "\n".join(
            paired_differences(runs, reference)
            for runs, reference in (
                (methods, "grpo"), (methods, "sent"), (two_steps, "grpo_2_steps_per_batch"), (with_base, "base")
            )
        )  # fmt: skip
        dip = stage_dip({**methods, **sweep}, switches[0]) if switches else ""
        write_text(out / "paired.md", paired)
        write_text(out / "stage_dip.md", dip)
        extra = "\n" + paired + "\ntraining entropy around the stage switch\n" + dip
        if trajectories:
            plot_entropy_bands(methods, base, out / "entropy_bands.png", switches)
            plot_entropy_bands(sweep, base, out / "sweep_entropy_bands.png", switches)
        plot_pass_at_k(methods, base, out / "pass_at_k.png")
        plot_heldout(methods, base, out / "heldout.png")
        write_text(out / "pass_at_k.md", pass_at_k_table(methods, base))
        if token_text := token_set_report(methods, base):
            write_text(out / "token_sets.md", token_text)
        if swept:
            # A sweep point against the default coefficients and against GRPO, seed by seed: the evidence a
            # change of LossConfig's defaults needs.
            sweep_paired = "\n".join(
                paired_differences({ref: methods.get(ref, []), **sweep}, ref) for ref in ("sent", "grpo")
            )
            write_text(out / "sweep_paired.md", sweep_paired)
            extra += "\nsweep, paired\n" + sweep_paired
    summary = {
        name: {metric: statistics.fmean(r[metric] for r in runs) for metric in metric_keys(runs[0])}
        | {"seeds": [r["seed"] for r in runs]}
        for name, runs in {**methods, **sweep}.items()
        if runs
    }
    write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return text + ("\nsweep (SENT coefficients)\n" + sweep_text if swept else "") + extra


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sete_lite.arith.study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG),
        help="the task's training config, a YAML file or builtin:NAME (default: builtin:arith-cpu's file); "
        "builtin:sums-cpu runs the sums study",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("docs/results/toy_study"), help="study directory (default: %(default)s)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per method (default: 0 1 2)")
    parser.add_argument(
        "--sweep-seeds", type=int, nargs="+", default=[0, 1], help="seeds per sweep point (default: 0 1)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(ALL_RUNS),
        help="run these methods / sweep points only (of the config's study)",
    )
    parser.add_argument("--workers", type=int, default=2, help="runs trained at the same time (one thread each)")
    parser.add_argument(
        "--trajectory-every",
        type=int,
        default=None,
        help="keep a checkpoint every N steps and measure the held-out entropy trajectory from them",
    )
    parser.add_argument("--report", action="store_true", help="only rebuild the tables and plots")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every run")
    args = parser.parse_args(argv)
    study_methods, study_sweep = study_runs(args.config)
    if not args.report:
        torch.set_num_threads(1)
        base_result(args.out, args.seeds, args.set, args.config)
        # The sweep first: its choice becomes LossConfig's default, which the methods' SENT runs use.
        jobs = [(name, seed) for seed in args.sweep_seeds for name in study_sweep]
        jobs += [(name, seed) for seed in args.seeds for name in study_methods]
        jobs = [(name, seed) for name, seed in jobs if not args.only or name in args.only]
        jobs = [(n, s) for n, s in jobs if not (args.out / "runs" / n / f"seed{s}" / "result.json").exists()]
        for seed in sorted({seed for _, seed in jobs}):
            score_once(args.out, seed, args.set, args.config)
        print(f"{len(jobs)} runs to do, {args.workers} at a time (each run's output: its train.log)")
        # One thread per run: a model this small is fastest that way, and runs then scale with cores.
        with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            pool.starmap(
                run_one,
                [(name, seed, args.out, args.set, args.config, args.trajectory_every) for name, seed in jobs],
                chunksize=1,
            )
    print(report(args.out, args.seeds, args.config))


if __name__ == "__main__":
    from sete_lite.config import run_cli

    run_cli(main)
