"""The built-in forking task: add up a list of numbers, in any order, with a verifiable `\\boxed{}` total.

This module owns the second built-in task, made so that the base policy has real choices to make
(`builtin:sums-train`, `builtin:sums-test`; base model `builtin:sums-qwen2`, sete_lite.arith.sums_warmstart):

    question: "Add these numbers: 3, 8, 1, 5."
    solution: "1+5=6\\n6+3=9\\n9+8=17\\n\\boxed{17}"     (one of 4! = 24 valid orders)

Every order of the numbers is a correct solution path and the warm start teaches them all with equal
probability, so at each operand the base policy has several correct continuations (a *forking*
token: log 4, log 3, log 2 nats for the operands of a 4-number problem with distinct digits), while
the running sums, operators and the box are forced. The final value is unique, so the library's
grading (`\\boxed{}` against the gold answer with math-verify, the `accuracy` reward, semantic
entropy, sete_lite.eval) applies unchanged: the reward checks the total, never the order. RL with that
reward is free to narrow the policy onto one order, which is the collapse this task exists to show.

The difficulty is the count of numbers (4..7): more numbers, more additions to get right and more
numbers to keep track of (accuracy falls), and more forks (up to log n! nats of order entropy per
solution). The numbers are digits 1..9 (a digit may repeat; equal digits are one choice at a fork), so
an operand is one character, which a 1 M-parameter character-level model copies from the question
reliably (with two-digit numbers a warm start of this size mostly invented operands), and every
running sum has at most two digits. A problem is its multiset of digits: no held-out problem is a
reordering of a training or warm-start one.

`valid_solutions` enumerates every correct solution text of a problem; `next_characters` gives,
after a prefix of a correct solution, the set of characters that continue some correct solution: a
position is a fork when that set has two or more members, forced when it has one. `solution_path`
reads the order a completion used (or None when its lines are not a valid path), which the study
uses to count the distinct solution paths a policy samples.

    python -m sete_lite.arith.sums       # rewrites sete_lite/arith/data/sums_train.jsonl and sums_test.jsonl
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sete_lite.arith import SUMS_TEST_SPLIT
from sete_lite.arith.task import draw_distinct, draw_splits, splits_main, write_split_files

MIN_COUNT, MAX_COUNT = 4, 7
MAX_NUMBER = 9
MAX_TOTAL = MAX_COUNT * MAX_NUMBER
# The shipped splits: seeds and sizes (sete_lite/arith/data/sums_*.jsonl). Warm-start data uses its own seed.
SPLITS = {"train": (11, 256), "test": (12, 128)}
LINE = re.compile(r"^(\d+)\+(\d+)=(\d+)$")


@dataclass(frozen=True)
class Problem:
    """Numbers to add, in the order the question lists them."""

    numbers: tuple[int, ...]

    @property
    def difficulty(self) -> int:
        return len(self.numbers)

    @property
    def question(self) -> str:
        return f"Add these numbers: {', '.join(map(str, self.numbers))}."

    @property
    def answer(self) -> int:
        return sum(self.numbers)

    def solution(self, order: Sequence[int] | None = None) -> str:
        """The worked solution adding the numbers in `order` (indices into `numbers`; default: as listed)."""
        order = list(range(len(self.numbers))) if order is None else list(order)
        if sorted(order) != list(range(len(self.numbers))):
            raise ValueError(f"order {order} is not a permutation of the {len(self.numbers)} numbers")
        values = [self.numbers[i] for i in order]
        lines, total = [], values[0]
        for value in values[1:]:
            lines.append(f"{total}+{value}={total + value}")
            total += value
        return "\n".join([*lines, f"\\boxed{{{total}}}"])

    def random_solution(self, rng: random.Random) -> str:
        """A solution in an order drawn uniformly from all orders."""
        order = list(range(len(self.numbers)))
        rng.shuffle(order)
        return self.solution(order)


def random_problem(rng: random.Random, count: int) -> Problem:
    """`count` numbers drawn independently and uniformly from 1..MAX_NUMBER."""
    if not MIN_COUNT <= count <= MAX_COUNT:
        raise ValueError(f"the count of numbers must be in {MIN_COUNT}..{MAX_COUNT}, got {count}")
    return Problem(tuple(rng.randint(1, MAX_NUMBER) for _ in range(count)))


def problem_key(problem: Problem) -> tuple[int, ...]:
    """What makes two problems the same: their multiset of numbers (the order listed does not matter)."""
    return tuple(sorted(problem.numbers))


def generate(
    n: int,
    seed: int,
    *,
    counts: Iterable[int] = range(MIN_COUNT, MAX_COUNT + 1),
    exclude: Iterable[str] = (),
) -> list[Problem]:
    """`n` problems with distinct multisets of numbers (problem_key), none the multiset of a question in
    `exclude`; the counts of numbers cycle through `counts`. Once a count runs out of fresh
    multisets its draws are rejected and the other counts fill the rest."""
    seen_sets = {problem_key(problem_of(q)) for q in exclude}
    return draw_distinct(n, seed, list(counts), random_problem, problem_key, seen_sets)


# ----------------------------------------------------------------------------------------------
# Solution paths: what is a fork, and which order a completion took


@functools.lru_cache(maxsize=256)
def valid_solutions(problem: Problem) -> tuple[str, ...]:
    """Every correct solution text (one per distinct order of the numbers), as the warm start writes them, sorted."""
    return tuple(sorted({problem.solution(order) for order in itertools.permutations(range(problem.difficulty))}))


def next_characters(problem: Problem, prefix: str) -> set[str]:
    """The characters that continue `prefix` towards some correct solution ({} when none does)."""
    return {
        text[len(prefix)] for text in valid_solutions(problem) if text.startswith(prefix) and len(text) > len(prefix)
    }


def position_options(problem: Problem, solution: str) -> list[int]:
    """For each character of a correct `solution`, how many distinct characters continue its prefix
    towards some correct solution (the prefix before that character): 1 at a forced position, 2 or
    more at a fork. The EOS after the solution is forced and not listed."""
    candidates = list(valid_solutions(problem))
    if solution not in candidates:
        raise ValueError(f"not a correct solution of {problem.question!r}: {solution!r}")
    counts = []
    for t, char in enumerate(solution):
        counts.append(len({text[t] for text in candidates if len(text) > t}))
        candidates = [text for text in candidates if len(text) > t and text[t] == char]
    return counts


def kind_of(options: int) -> str:
    """The kind of a position with `options` correct continuations: "fork" (two or more) or "forced"."""
    return "fork" if options > 1 else "forced"


def position_kinds(problem: Problem, solution: str) -> list[str]:
    """For each character of a correct `solution`: "fork" or "forced" (kind_of)."""
    return [kind_of(n) for n in position_options(problem, solution)]


class EntropyByKind:
    """Running means of token entropy at the fork and at the forced positions of correct solutions."""

    def __init__(self) -> None:
        self.total = {"fork": 0.0, "forced": 0.0}
        self.count = {"fork": 0, "forced": 0}

    def add(self, problem: Problem, solution: str, entropy: Any) -> list[int]:
        """Add a correct `solution`'s per-character entropies (a tensor, at least as long as the
        solution); return its position_options."""
        options = position_options(problem, solution)
        for t, n in enumerate(options):
            kind = kind_of(n)
            self.total[kind] += entropy[t].item()
            self.count[kind] += 1
        return options

    def mean(self, kind: str) -> float:
        return self.total[kind] / max(1, self.count[kind])


def solution_path(problem: Problem, text: str) -> tuple[int, ...] | None:
    """The order of the numbers (as listed values) a completion added them in, when its lines form a
    valid path: true equations, each starting from the previous total, every number used once, and a
    box holding the final total. None otherwise (a wrong sum, a skipped or extra number, no box)."""
    *lines, last = text.strip().split("\n")
    if not lines or last != f"\\boxed{{{problem.answer}}}":
        return None
    order: list[int] = []
    total = None
    for line in lines:
        match = LINE.match(line)
        if not match:
            return None
        left, right, result = map(int, match.groups())
        if left + right != result or (total is not None and left != total):
            return None
        order += [left, right] if total is None else [right]
        total = result
    if sorted(order) != sorted(problem.numbers):
        return None
    return tuple(order)


def problem_of(question: str) -> Problem:
    """The problem a question states (the inverse of Problem.question)."""
    match = re.fullmatch(r"Add these numbers: ([\d, ]+)\.", question.strip())
    if not match:
        raise ValueError(f"not a question of this task: {question!r}")
    return Problem(tuple(int(x) for x in match.group(1).split(", ")))


# ----------------------------------------------------------------------------------------------
# Splits


def to_record(problem: Problem, split: str, index: int) -> dict[str, Any]:
    """The jsonl row sete_lite.data.load_records reads (question / answer / id), the difficulty, and the
    solution in the listed order (one of the many correct ones)."""
    return {
        "id": f"sums-{split}-{index}",
        "question": problem.question,
        "answer": str(problem.answer),
        "solution": problem.solution(),
        "difficulty": problem.difficulty,
    }


def make_splits() -> dict[str, list[Problem]]:
    """The shipped splits (SPLITS): the held-out split first, then the training split drawn around it."""
    return draw_splits(generate, SPLITS)


def write_splits(out_dir: str | Path = SUMS_TEST_SPLIT.parent) -> dict[str, Path]:
    """Write sums_train.jsonl and sums_test.jsonl to `out_dir`; return their paths."""
    return write_split_files(make_splits(), to_record, Path(out_dir) / "sums_{split}.jsonl")


def main(argv: list[str] | None = None) -> None:
    splits_main(argv, "sums", write_splits, SUMS_TEST_SPLIT.parent)


if __name__ == "__main__":
    main()
