"""The real-model task: one-step arithmetic asked in plain English, for SmolLM2-135M-Instruct on CPU.

This module owns the problems of `builtin:smollm2-cpu` (sete_lite/arith/smollm2_cpu.yaml): the
shipped splits sete_lite/arith/data/words_{train,test}.jsonl (builtin:words-train, builtin:words-test)
and their generator. A real instruct model answers in prose ("7 + 5 = 12", "The answer is 12."), not
in a box, so the run grades with `answer_extraction: math_verify`. Four kinds of question, from what
SmolLM2-135M-Instruct gets right most often to least (measured on 24 problems x 4 samples at
temperature 0.7: about 33 %, 24 %, 18 % and 15 % correct):

    0  "What is 7 + 5?"
    1  "Tom has 7 apples and gets 5 more. How many apples does Tom have now?"
    2  "Tom has 12 apples and gives away 5. How many apples does Tom have left?"
    3  "What is 12 - 5?"

so the base policy is right often enough to learn from and far from always, and the kinds spread
the prompts' semantic entropy for the curriculum to sort.

    python -m sete_lite.arith.words      # rewrites sete_lite/arith/data/words_train.jsonl and words_test.jsonl
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sete_lite.arith import WORDS_TEST_SPLIT
from sete_lite.arith.task import draw_distinct, draw_splits, splits_main, write_split_files

KINDS = ("add", "word_add", "word_sub", "sub")
NAMES = ("Tom", "Anna", "Sam", "Mia", "Ben", "Lily")
THINGS = ("apples", "books", "pens", "coins", "stickers", "marbles")
# The shipped splits: (seed, size); the held-out questions are excluded from the training split.
SPLITS = {"train": (11, 256), "test": (12, 96)}


@dataclass(frozen=True)
class WordProblem:
    kind: str  # one of KINDS
    a: int
    b: int
    name: str = ""
    thing: str = ""

    @property
    def question(self) -> str:
        if self.kind == "add":
            return f"What is {self.a} + {self.b}?"
        if self.kind == "sub":
            return f"What is {self.a} - {self.b}?"
        if self.kind == "word_add":
            return (
                f"{self.name} has {self.a} {self.thing} and gets {self.b} more. "
                f"How many {self.thing} does {self.name} have now?"
            )
        return (
            f"{self.name} has {self.a} {self.thing} and gives away {self.b}. "
            f"How many {self.thing} does {self.name} have left?"
        )

    @property
    def answer(self) -> int:
        return self.a + self.b if self.kind in ("add", "word_add") else self.a - self.b


def random_problem(rng: random.Random, level: int) -> WordProblem:
    """A problem of kind KINDS[level]: addends 2..9; a subtraction takes 1..9 from 10..18."""
    kind = KINDS[level]
    if kind in ("add", "word_add"):
        a, b = rng.randint(2, 9), rng.randint(2, 9)
    else:
        a, b = rng.randint(10, 18), rng.randint(1, 9)
    if kind.startswith("word"):
        return WordProblem(kind, a, b, rng.choice(NAMES), rng.choice(THINGS))
    return WordProblem(kind, a, b)


def generate(n: int, seed: int, *, exclude: list[str] = ()) -> list[WordProblem]:
    """`n` distinct problems, the kinds in turn, none whose question is in `exclude`."""
    return draw_distinct(n, seed, list(range(len(KINDS))), random_problem, lambda p: p.question, set(exclude))


def to_record(problem: WordProblem, split: str, index: int) -> dict[str, Any]:
    return {
        "id": f"words-{split}-{index}",
        "question": problem.question,
        "answer": str(problem.answer),
        "kind": problem.kind,
    }


def write_splits(out_dir: str | Path = WORDS_TEST_SPLIT.parent) -> dict[str, Path]:
    return write_split_files(draw_splits(generate, SPLITS), to_record, Path(out_dir) / "words_{split}.jsonl")


def main(argv: list[str] | None = None) -> None:
    splits_main(argv, "words", write_splits, WORDS_TEST_SPLIT.parent)


if __name__ == "__main__":
    main()
