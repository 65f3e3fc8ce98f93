"""The built-in reasoning task: multi-step integer arithmetic with a verifiable `\\boxed{}` answer.

This module owns the procedural task that lets the CPU default run *learn* (no pretrained model can
be downloaded here): problem generation with a difficulty knob, the worked solutions the base model
is warm-started on (sete_lite.arith.warmstart), the train / held-out splits shipped in
sete_lite/arith/data (builtin:arith-train, builtin:arith-test), and `heldout_accuracy`, the
before/after accuracy of a run on the held-out split.

A problem is a chain of 1..4 operations on a running integer, e.g.

    question: "Start at 7. Add 5. Multiply by 3. Subtract 4. What number do you get?"
    solution: "7+5=12\\n12*3=36\\n36-4=32\\n\\boxed{32}"

The difficulty is the number of operations: a model that gets one step right with probability p
solves a k-step problem with probability about p^k, so a mix of difficulties spreads the semantic
entropy of the prompts (what the SENT curriculum sorts on). Operands stay small and every running
value stays in [0, MAX_VALUE], so a tiny character-level model can learn the arithmetic facts.

Splits are drawn from one generator by seed; a split can exclude the questions of another
(`exclude`), which keeps the held-out split disjoint from the training and warm-start data.

    python -m sete_lite.arith.task       # rewrites sete_lite/arith/data/arith_train.jsonl and arith_test.jsonl
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sete_lite.arith import TEST_SPLIT
from sete_lite.atomic import write_jsonl

MAX_VALUE = 99
MAX_STEPS = 4
# The shipped splits: seeds and sizes (sete_lite/arith/data/arith_*.jsonl). Warm-start data uses its own seed.
SPLITS = {"train": (1, 256), "test": (2, 128)}

# (word in the question, symbol in the solution)
OPERATIONS = {"add": ("Add", "+"), "sub": ("Subtract", "-"), "mul": ("Multiply by", "*")}


@dataclass(frozen=True)
class Problem:
    """One problem: start value, operations in order, and the worked solution derived from them."""

    start: int
    steps: tuple[tuple[str, int], ...]  # (operation name, operand)

    @property
    def difficulty(self) -> int:
        return len(self.steps)

    @property
    def question(self) -> str:
        ops = " ".join(f"{OPERATIONS[op][0]} {x}." for op, x in self.steps)
        return f"Start at {self.start}. {ops} What number do you get?"

    def values(self) -> list[int]:
        """The running value after each step (the start value first)."""
        values = [self.start]
        for op, x in self.steps:
            v = values[-1]
            values.append(v + x if op == "add" else v - x if op == "sub" else v * x)
        return values

    @property
    def answer(self) -> int:
        return self.values()[-1]

    @property
    def solution(self) -> str:
        """One line per step, then the boxed answer."""
        values = self.values()
        lines = [
            f"{v}{OPERATIONS[op][1]}{x}={w}" for (op, x), v, w in zip(self.steps, values[:-1], values[1:], strict=True)
        ]
        return "\n".join([*lines, f"\\boxed{{{self.answer}}}"])


def random_problem(rng: random.Random, difficulty: int) -> Problem:
    """A problem with `difficulty` operations whose running values all stay in [0, MAX_VALUE]."""
    if not 1 <= difficulty <= MAX_STEPS:
        raise ValueError(f"difficulty must be in 1..{MAX_STEPS}, got {difficulty}")
    value = rng.randint(1, 20)
    start, steps = value, []
    for _ in range(difficulty):
        # Only operations that keep the value in range are drawn: operands 1..9, multipliers 2..5.
        choices = []
        if value + 1 <= MAX_VALUE:
            choices.append(("add", rng.randint(1, min(9, MAX_VALUE - value))))
        if value >= 1:
            choices.append(("sub", rng.randint(1, min(9, value))))
        if 2 * value <= MAX_VALUE and value >= 1:
            choices.append(("mul", rng.randint(2, min(5, MAX_VALUE // value))))
        op, x = rng.choice(choices)
        steps.append((op, x))
        value = Problem(start, tuple(steps)).answer
    return Problem(start, tuple(steps))


def generate(
    n: int,
    seed: int,
    *,
    difficulties: Iterable[int] = range(1, MAX_STEPS + 1),
    exclude: Iterable[str] = (),
) -> list[Problem]:
    """`n` distinct problems, none whose question is in `exclude`.

    Draws cycle through `difficulties`; once the easy levels run out of distinct problems (there are
    only a few hundred one-step ones) their draws are rejected and the harder levels fill the rest.
    """
    return draw_distinct(n, seed, list(difficulties), random_problem, lambda p: p.question, set(exclude))


def draw_distinct(
    n: int,
    seed: int,
    levels: list[int],
    draw: Callable[[random.Random, int], Any],
    key: Callable[[Any], Hashable],
    seen: set,
) -> list:
    """`n` problems `draw(rng, level)` with distinct `key`s, none already in `seen`, the levels cycling
    (a level that runs out of fresh problems has its draws rejected, and the others fill the rest)."""
    rng = random.Random(seed)
    problems: list = []
    attempts = 0
    while len(problems) < n:
        if attempts > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct problems at levels {levels}")
        problem = draw(rng, levels[attempts % len(levels)])
        attempts += 1
        problem_key = key(problem)
        if problem_key not in seen:
            seen.add(problem_key)
            problems.append(problem)
    return problems


def to_record(problem: Problem, split: str, index: int) -> dict[str, Any]:
    """The jsonl row sete_lite.data.load_records reads (question / answer / id) plus the difficulty."""
    return {
        "id": f"arith-{split}-{index}",
        "question": problem.question,
        "answer": str(problem.answer),
        "solution": problem.solution,
        "difficulty": problem.difficulty,
    }


def make_splits() -> dict[str, list[Problem]]:
    """The shipped splits (SPLITS)."""
    return draw_splits(generate, SPLITS)


def draw_splits(draw: Callable[..., list], splits: dict[str, tuple[int, int]]) -> dict[str, list]:
    """A task's splits from its generator `draw(n, seed, exclude=questions)` and its {split: (seed, size)}:
    the held-out split first, then the training split drawn around it (no held-out question in it)."""
    test_seed, test_size = splits["test"]
    test = draw(test_size, test_seed)
    train_seed, train_size = splits["train"]
    train = draw(train_size, train_seed, exclude=[p.question for p in test])
    return {"train": train, "test": test}


def write_splits(out_dir: str | Path = TEST_SPLIT.parent) -> dict[str, Path]:
    """Write arith_train.jsonl and arith_test.jsonl to `out_dir`; return their paths."""
    return write_split_files(make_splits(), to_record, Path(out_dir) / "arith_{split}.jsonl")


def write_split_files(
    splits: dict[str, list], to_row: Callable[[Any, str, int], dict[str, Any]], pattern: Path
) -> dict[str, Path]:
    """Write each split's problems as jsonl rows (`to_row(problem, split, index)`) to `pattern` with
    {split} filled in; return the paths by split."""
    paths = {}
    for split, problems in splits.items():
        paths[split] = Path(str(pattern).format(split=split))
        paths[split].parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(paths[split], [to_row(p, split, i) for i, p in enumerate(problems)])
    return paths


def heldout_accuracy(
    engine: Any,
    path: str | Path = TEST_SPLIT,
    *,
    num_samples: int = 8,
    max_tokens: int = 64,
    max_problems: int | None = None,
    seed: int = 0,
    use_adapter: bool = True,
    save_texts: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Avg@n and Pass@k (k = 1 and n) of the engine's policy on a held-out file, sampled as the paper
    evaluates (temperature 1.0, top_p 0.9: sete_lite.eval's defaults).

    Goes through sete_lite.eval (its unbiased Pass@k estimator and grading); returns the scores of
    the file ({"avg", "pass@k", "num_problems", "num_samples"}) plus the sampled rows under "samples"
    (with each completion's text when `save_texts`) and each problem's prompt by sample id under "prompts".
    """
    from sete_lite.eval import EvalConfig, evaluate, load_benchmarks

    cfg = EvalConfig(
        eval_benchmarks=[str(path)],
        eval_num_samples=num_samples,
        eval_k=sorted({1, num_samples}),
        eval_max_tokens=max_tokens,
        eval_batch_size=16,
        eval_max_problems=max_problems,
        eval_save_texts=save_texts,
    )
    benchmarks = load_benchmarks(cfg)
    results = evaluate(engine, benchmarks, cfg, seed=seed, use_adapter=use_adapter, progress=progress)
    scores = next(iter(results["benchmarks"].values()))
    prompts = {r["id"]: r["prompt"] for r in next(iter(benchmarks.values()))}
    return {**scores, "seconds": results["seconds"], "samples": results["samples"], "prompts": prompts}


def splits_main(argv: list[str] | None, task: str, write: Callable[[Path], dict[str, Path]], default_dir: Path) -> None:
    """The command line that rewrites a task's shipped splits (`python -m sete_lite.arith.<task>`)."""
    parser = argparse.ArgumentParser(prog=f"python -m sete_lite.arith.{task}", description="Write the task's splits.")
    parser.add_argument("--out", type=Path, default=default_dir, help="directory for the split files")
    args = parser.parse_args(argv)
    for split, path in write(args.out).items():
        print(f"{split}: {path}")


def main(argv: list[str] | None = None) -> None:
    splits_main(argv, "task", write_splits, TEST_SPLIT.parent)


if __name__ == "__main__":
    main()
