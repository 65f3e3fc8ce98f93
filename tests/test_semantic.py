"""Answer extraction, math-verify clustering and semantic entropy against hand-computed values."""

from __future__ import annotations

import json
import math
import threading
import time
from importlib import resources

import pytest

from sete_lite.semantic import (
    cluster_answers,
    cluster_entropy,
    extract_answer,
    extract_answers,
    grade_answers,
    likelihood_weights,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\left\{1, 2\right\}}", r"\left\{1, 2\right\}"),  # escaped braces inside
        (r"\boxed {7}", "7"),  # a space before the brace
        (r"\fbox{x^{2}+1}", "x^{2}+1"),
        (r"first \boxed{1}, then corrected: \boxed{2}", "2"),  # the last box
        (r"\boxed{1} and then \boxed{\frac{3}{4", None),  # unterminated last box: no answer
        (r"\boxed{}", None),  # empty box
        (r"\boxed{  -5 }", "-5"),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),  # GSM8K gold
        ("#### 1,234.\n", "1,234"),  # trailing period dropped
        ("#### 3\nsome more\n#### 5", "5"),  # the last ####
        (r"#### 3 but \boxed{4}", "4"),  # a box wins over ####
        ("####", None),
        ("I think it is 12.", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7 + 5 = 12.", "12"),  # the result after the last '='
        ("The answer is 42. Let me know if you need more!", "42"),
        (r"So $x = \frac{1}{2}$.", r"x = \frac{1}{2}"),  # LaTeX, as math-verify extracts it (graded as 1/2)
        (r"First 3, then \boxed{7}, then 9", "7"),  # a box comes first
        ("The total is $1,234.", "1234"),  # thousands separator read as one number
        ("It is -3.", "-3"),
        ("1/2 of them", "1/2"),  # a fraction is a value
        (r"$5 - 2\sqrt{3}$", r"5 - 2\sqrt{3}"),  # not plain arithmetic: a value
        ("$3 - 2i$", "3 - 2i"),
        ("Sam has 15 - 8 marbles left.", None),  # arithmetic left undone is no answer
        ("The product is 7 * 4", None),
        (r"$2 \cdot 3$", None),
        (r"\boxed{15-8}", None),
        ("What is it?", None),
    ],
)
def test_extract_answers_math_verify(text: str, expected: str | None) -> None:
    assert extract_answers([text], "math_verify") == [expected]


def test_extract_answers_off_the_main_thread_goes_through_the_helper() -> None:
    texts = ["7 + 5 = 12.", "Sam has 15 - 8 marbles left.", r"\boxed{3}"]
    found: list = []
    thread = threading.Thread(target=lambda: found.append(extract_answers(texts, "math_verify")))
    thread.start()
    thread.join()
    assert found == [["12", None, "3"]]
    with pytest.raises(ValueError, match="answer_extraction must be one of"):
        extract_answers(texts, "regex")


def test_clusters_mixed_forms() -> None:
    answers = ["1/2", "0.5", r"\frac{1}{2}", r"\dfrac12", "2^{10}", "1024", "-5", "5", None, None, "-5"]
    #           0      0      0              0            1         1       2     3    4     5     2
    assert cluster_answers(answers) == [0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 2]


def test_clusters_real_champ_answers_in_equivalent_forms() -> None:
    # Gold answers of CHAMP problems (the champ-dataset package) written the ways a model might.
    problems = json.loads((resources.files("champ_dataset") / "dataset_files" / "v0.json").read_text())
    golds = {problem["_answer"] for problem in problems["problems"].values()}
    assert {"3/2", "sqrt(3)", "-1/2", "1/18", "2^997"} <= golds
    answers = [
        "3/2", "1.5", r"\frac{3}{2}",          # 0
        "sqrt(3)", r"\sqrt{3}", "3^{1/2}",     # 1
        "-1/2", "-0.5", r"-\frac{1}{2}",       # 2
        "1/18", r"\frac{1}{18}",               # 3
        "2^997", r"2^{997}",                   # 4
        "1/2",                                  # 5: not -1/2
        "2^{996}",                              # 6
        None,                                   # 7
    ]  # fmt: skip
    assert cluster_answers(answers) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 6, 7]


def test_each_answer_is_compared_with_the_first_member_of_a_cluster() -> None:
    # math-verify: "x=2" ~ "2" and "2" ~ "y=2", but "x=2" !~ "y=2" (not transitive).
    assert cluster_answers(["x=2", "2", "y=2"]) == [0, 0, 1]  # "y=2" meets "x=2" only
    assert cluster_answers(["2", "x=2", "y=2"]) == [0, 0, 0]  # both meet "2"


def test_all_unanswered_are_singletons() -> None:
    assert cluster_answers([None] * 4) == [0, 1, 2, 3]
    assert cluster_answers(["7", "7", " 7 "]) == [0, 0, 0]


def _time_cluster(answers: list[str], timeout_s: float, in_thread: bool) -> tuple[list[int], float]:
    result: dict = {}

    def run() -> None:
        start = time.perf_counter()
        result["labels"] = cluster_answers(answers, timeout_s=timeout_s)
        result["seconds"] = time.perf_counter() - start

    if in_thread:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    else:
        run()
    return result["labels"], result["seconds"]


@pytest.mark.parametrize("in_thread", [False, True])
def test_a_comparison_that_would_run_for_minutes_is_cut_off(in_thread: bool) -> None:
    # Without a limit, comparing 2^{10^{10}} with 5 runs for minutes (a 10^10-bit integer), on any
    # thread; math-verify's own signal-based limit refuses to run off the main thread.
    labels, seconds = _time_cluster([r"2^{10^{10}}", "5", "5"], timeout_s=0.3, in_thread=in_thread)
    assert labels == [0, 1, 1]
    # main thread: ~0.3 s; a thread: plus starting the helper process (imports sympy).
    assert seconds < 20


def test_clustering_off_the_main_thread_matches_the_main_thread() -> None:
    answers = ["1/2", "0.5", "3", None, r"\frac{6}{2}", "x=2", "2", "y=2"]
    labels, _ = _time_cluster(answers, timeout_s=1.0, in_thread=True)
    assert labels == cluster_answers(answers) == [0, 0, 1, 2, 1, 3, 3, 4]


def test_grade_answers() -> None:
    answers = ["1.5", r"\frac{3}{2}", "2", None, "-3/2"]
    assert grade_answers("3/2", answers) == [True, True, False, False, False]
    assert grade_answers("72", ["72", "72.0", "27"]) == [True, True, False]


def semantic_entropy(answers, mean_logprobs=None) -> float:
    """SE as score.score_prompt computes it: cluster the answers, then the (weighted) cluster entropy."""
    weights = likelihood_weights(mean_logprobs) if mean_logprobs is not None else None
    return cluster_entropy(cluster_answers(answers), weights)


def test_discrete_entropy_by_hand() -> None:
    # clusters {1/2, 0.5}, {3}, {None}: p = 1/2, 1/4, 1/4
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # 1.0397
    assert semantic_entropy(["1/2", "0.5", "3", None]) == pytest.approx(expected)
    assert semantic_entropy(["4", "4.0", r"\frac{8}{2}", "4"]) == pytest.approx(0.0)
    assert semantic_entropy([None] * 8) == pytest.approx(math.log(8))  # the maximum for M = 8


def test_likelihood_entropy_by_hand() -> None:
    # weights exp(mean log-prob) = 0.2, 0.2, 0.4, 0.2 -> P({1/2, 0.5}) = 0.4, P({3}) = 0.6
    mean_logprobs = [math.log(0.2), math.log(0.2), math.log(0.4), math.log(0.2)]
    value = semantic_entropy(["1/2", "0.5", "3", "3"], mean_logprobs)
    assert value == pytest.approx(0.6730116670092565)  # -(0.4 ln 0.4 + 0.6 ln 0.6)
    # the discrete estimator of the same answers: two clusters of 2
    assert semantic_entropy(["1/2", "0.5", "3", "3"]) == pytest.approx(math.log(2))


def test_likelihood_entropy_survives_very_low_logprobs() -> None:
    # exp(-1000) underflows to 0; the weights only matter relative to each other: 1, 1, e^-1.
    value = semantic_entropy(["1", "2", "1"], [-1000.0, -1000.0, -1001.0])
    p = [(1 + math.exp(-1)) / (2 + math.exp(-1)), 1 / (2 + math.exp(-1))]
    assert value == pytest.approx(-sum(q * math.log(q) for q in p))


def test_cluster_entropy_checks_its_input() -> None:
    with pytest.raises(ValueError):
        cluster_entropy([])
    with pytest.raises(ValueError):
        cluster_entropy([0, 1], [1.0])
