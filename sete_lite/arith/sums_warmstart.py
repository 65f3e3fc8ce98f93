"""`python -m sete_lite.arith.sums_warmstart`: the sums task's base model, warm-started on solutions in every order.

This module owns the deterministic build of `builtin:sums-qwen2`: the same small Qwen2 as
`builtin:arith-qwen2` (sete_lite.arith.tiny, hidden 128, 4 layers, character-level tokenizer, ~1 M
parameters), trained by supervised fine-tuning on worked solutions of the sums task
(sete_lite.arith.sums) whose order of addition is drawn uniformly for every example. The model
therefore learns that every order is right, with equal probability: at each operand it has several
correct continuations (the forks), which RL can later narrow. The warm start is stopped early on
purpose, so that the base model adds correctly often but far from always and RL has accuracy to gain.

Determinism: one torch thread, fixed seeds for the weights, the data, the orders and the batch
order; the same arguments on the same torch build give the same weights.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sete_lite.arith import SUMS_CHECKPOINT, SUMS_TEST_SPLIT
from sete_lite.arith.sums import MAX_COUNT, MIN_COUNT, SPLITS, make_splits, problem_key, random_problem
from sete_lite.arith.warmstart import WarmstartConfig, fit_and_save
from sete_lite.data import DEFAULT_PROMPT_TEMPLATE


@dataclass
class SumsWarmstartConfig(WarmstartConfig):
    """The arithmetic warm start's model shape and schedule, with this task's length and data seed."""

    steps: int = 1500
    data_seed: int = 13  # not a split seed of sete_lite.arith.sums.SPLITS


def training_pairs(cfg: SumsWarmstartConfig) -> list[tuple[str, str]]:
    """(prompt, solution) pairs in the paper's prompt template: problems drawn with the counts of
    numbers cycling through MIN_COUNT..MAX_COUNT (there are fewer distinct multisets than examples, so
    a multiset may recur, listed and solved in other orders), none with a held-out multiset, each
    solution in a uniformly drawn order."""
    if cfg.data_seed in {seed for seed, _ in SPLITS.values()}:
        raise ValueError(f"data_seed {cfg.data_seed} is a split seed; warm-start data must be drawn separately")
    heldout = {problem_key(p) for p in make_splits()["test"]}
    rng = random.Random(cfg.data_seed)
    counts = range(MIN_COUNT, MAX_COUNT + 1)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < cfg.num_problems:
        problem = random_problem(rng, counts[len(pairs) % len(counts)])
        if problem_key(problem) not in heldout:
            pairs.append(
                (DEFAULT_PROMPT_TEMPLATE.replace("{question}", problem.question), problem.random_solution(rng))
            )
    return pairs


def build(out_dir: str | Path, cfg: SumsWarmstartConfig | None = None, *, progress: bool = True) -> Path:
    """Build the random model, fine-tune it on solutions in random orders, save it (and warmstart.json)."""
    cfg = cfg or SumsWarmstartConfig()
    return fit_and_save(out_dir, cfg, training_pairs(cfg), progress=progress)


@torch.no_grad()
def fork_entropies(model: Any, tokenizer: Any, problems: list, seed: int = 0) -> dict[str, float]:
    """The model's mean token entropy (nats) at the fork and at the forced positions of correct
    solutions (teacher-forced, one uniformly drawn order per problem; sete_lite.arith.sums.EntropyByKind),
    and the mean log of the number of correct continuations at the forks (what a policy that spreads
    evenly over the correct orders would show there)."""
    import math

    from sete_lite.arith.sums import EntropyByKind, kind_of

    rng = random.Random(seed)
    by_kind = EntropyByKind()
    uniform = [0.0, 0]
    model.eval()
    for problem in problems:
        solution = problem.random_solution(rng)
        prompt = DEFAULT_PROMPT_TEMPLATE.replace("{question}", problem.question)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(solution, add_special_tokens=False)["input_ids"]
        if len(answer_ids) != len(solution):
            raise ValueError("the tokenizer is not character-level")
        logits = model(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0].double()
        logp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
        entropy = -(logp.exp() * logp).sum(-1)
        for options in by_kind.add(problem, solution, entropy):
            if kind_of(options) == "fork":
                uniform[0] += math.log(options)
                uniform[1] += 1
    return {
        "fork": by_kind.mean("fork"),
        "forced": by_kind.mean("forced"),
        "fork_uniform": uniform[0] / max(1, uniform[1]),
        "fork_positions": by_kind.count["fork"],
        "forced_positions": by_kind.count["forced"],
    }


def heldout_scores(model_dir: str | Path, max_problems: int | None = None) -> dict[str, Any]:
    """Avg@8 / Pass@k of a saved model on the held-out split, and its entropy at forks and forced positions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sete_lite.arith.sums import make_splits as splits
    from sete_lite.arith.task import heldout_accuracy
    from sete_lite.rollout import TransformersEngine

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    scores = heldout_accuracy(TransformersEngine(model, tokenizer), SUMS_TEST_SPLIT, max_problems=max_problems)
    entropies = fork_entropies(model, tokenizer, splits()["test"][:64])
    return {**{key: scores[key] for key in ("avg", "pass@k", "num_problems", "num_samples")}, "entropy": entropies}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sete_lite.arith.sums_warmstart", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, default=SUMS_CHECKPOINT, help="directory to write the model to (default: the shipped one)"
    )
    parser.add_argument("--steps", type=int, default=SumsWarmstartConfig.steps, help="supervised steps")
    parser.add_argument("--eval", action="store_true", help="measure held-out accuracy; record it in warmstart.json")
    parser.add_argument("--eval-only", action="store_true", help="measure an already built model (no training)")
    args = parser.parse_args(argv)
    if not args.eval_only:
        out = build(args.out, SumsWarmstartConfig(steps=args.steps))
        print(f"model written to {out}")
    if args.eval or args.eval_only:
        torch.set_num_threads(1)
        scores = heldout_scores(args.out)
        record = json.loads((args.out / "warmstart.json").read_text())
        (args.out / "warmstart.json").write_text(json.dumps({**record, "heldout": scores}, indent=2) + "\n")
        print(f"held-out Avg@{scores['num_samples']}: {scores['avg']:.3f}  Pass@k: {scores['pass@k']}")
        print(f"entropy at forks / forced positions: {scores['entropy']}")


if __name__ == "__main__":
    main()
