"""The arithmetic task: answers checked by an independent evaluation of the question, disjoint splits,
determinism, and the shipped jsonl files matching the generator."""

from __future__ import annotations

import json
import random
import re

import pytest

from sete_lite.arith import TEST_SPLIT
from sete_lite.arith.task import (
    MAX_STEPS,
    MAX_VALUE,
    generate,
    make_splits,
    random_problem,
    to_record,
    write_splits,
)
from sete_lite.data import DataConfig, load_records
from sete_lite.semantic import extract_answer, grade_answers

WORDS = {"Add": "+", "Subtract": "-", "Multiply by": "*"}


def evaluate_question(question: str) -> tuple[int, list[int]]:
    """The answer of a question read from its text alone (not from the Problem), and the running values."""
    start = int(re.match(r"Start at (\d+)\.", question).group(1))
    values = [start]
    for word, operand in re.findall(r"(Add|Subtract|Multiply by) (\d+)\.", question):
        # Left to right: each sentence applies to the running value.
        values.append(eval(f"{values[-1]} {WORDS[word]} {operand}"))
    return values[-1], values


def test_answers_match_an_independent_evaluation_of_the_question():
    rng = random.Random(0)
    for difficulty in range(1, MAX_STEPS + 1):
        for _ in range(200):
            problem = random_problem(rng, difficulty)
            answer, values = evaluate_question(problem.question)
            assert problem.answer == answer
            assert len(values) == difficulty + 1
            assert all(0 <= v <= MAX_VALUE for v in values)


def test_solution_lines_are_true_equations_ending_in_the_boxed_answer():
    for problem in generate(300, seed=5):
        *lines, last = problem.solution.split("\n")
        assert len(lines) == problem.difficulty
        for line in lines:
            left, right = line.split("=")
            assert eval(left) == int(right)
        assert extract_answer(last) == str(problem.answer)
        # The chain: each line starts from the previous result.
        assert [int(line.split("=")[1]) for line in lines][-1] == problem.answer
        # The gold grader accepts the solution's own answer and rejects a neighbour.
        assert grade_answers(str(problem.answer), [extract_answer(problem.solution), str(problem.answer + 1)]) == [
            True,
            False,
        ]


def test_generation_is_deterministic_distinct_and_spreads_difficulty():
    a, b = generate(400, seed=11), generate(400, seed=11)
    assert a == b
    assert generate(400, seed=12) != a
    assert len({p.question for p in a}) == 400
    counts = {d: sum(p.difficulty == d for p in a) for d in range(1, MAX_STEPS + 1)}
    assert all(counts[d] >= 80 for d in counts), counts


def test_exclude_is_honoured_and_exhaustion_is_an_error():
    taken = [p.question for p in generate(50, seed=1)]
    fresh = generate(200, seed=1, exclude=taken)
    assert not set(taken) & {p.question for p in fresh}
    with pytest.raises(ValueError, match="distinct problems"):
        generate(5000, seed=0, difficulties=[1])  # there are only a few hundred one-step problems
    with pytest.raises(ValueError, match="difficulty"):
        random_problem(random.Random(0), MAX_STEPS + 1)


def test_splits_are_disjoint():
    splits = make_splits()
    train, test = ({p.question for p in splits[name]} for name in ("train", "test"))
    assert train and test and not train & test


def test_shipped_files_are_the_generated_splits_and_load_as_records(tmp_path):
    written = write_splits(tmp_path)
    for split, path in written.items():
        shipped = TEST_SPLIT.parent / path.name
        assert shipped.read_text() == path.read_text(), f"{shipped} is stale: run python -m sete_lite.arith.task"
        records = load_records(DataConfig(dataset_name_or_path=str(shipped)))
        rows = [json.loads(line) for line in shipped.read_text().splitlines()]
        for record, row in zip(records, rows, strict=True):
            assert record["answer"] == str(evaluate_question(row["question"])[0])
            assert record["prompt"].startswith(row["question"] + "\nPlease reason step by step")
            assert record["id"].startswith(f"arith-{split}-")


def test_to_record_round_trips_through_the_gold_answer_reader():
    problem = generate(1, seed=3, difficulties=[3])[0]
    row = to_record(problem, "x", 0)
    assert row["difficulty"] == 3
    assert extract_answer(row["solution"]) == row["answer"]
