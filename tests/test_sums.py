"""The sums task (sete_lite.arith.sums) and its base model: generator and grader checked by hand and by
an independent evaluation, the forks counted by hand, a deterministic warm start, and the shipped
base model really spreading its probability over the correct orders at the forks."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from sete_lite.arith import SUMS_CHECKPOINT, SUMS_CONFIG, SUMS_TEST_SPLIT
from sete_lite.arith.sums import (
    MAX_COUNT,
    MAX_NUMBER,
    MAX_TOTAL,
    MIN_COUNT,
    SPLITS,
    Problem,
    generate,
    make_splits,
    next_characters,
    position_kinds,
    position_options,
    problem_key,
    problem_of,
    random_problem,
    solution_path,
    valid_solutions,
    write_splits,
)
from sete_lite.arith.sums_warmstart import SumsWarmstartConfig, build, fork_entropies, training_pairs
from sete_lite.builtins import resolve_builtin
from sete_lite.data import DataConfig, load_records
from sete_lite.rewards import accuracy_reward
from sete_lite.semantic import extract_answer, grade_answers

SMALL = {"hidden_size": 64, "num_layers": 1, "num_heads": 1, "num_kv_heads": 1, "intermediate_size": 128}


def test_a_worked_solution_by_hand():
    problem = Problem((3, 8, 1, 5))
    assert problem.question == "Add these numbers: 3, 8, 1, 5."
    assert problem.answer == 17
    assert problem.solution() == "3+8=11\n11+1=12\n12+5=17\n\\boxed{17}"
    assert problem.solution([2, 3, 0, 1]) == "1+5=6\n6+3=9\n9+8=17\n\\boxed{17}"
    with pytest.raises(ValueError, match="permutation"):
        problem.solution([0, 0, 1, 2])
    assert problem_of(problem.question) == problem


def test_every_order_is_a_correct_solution_and_the_grader_accepts_each():
    problem = Problem((3, 8, 1, 5))
    texts = valid_solutions(problem)
    assert len(texts) == math.factorial(4) == len(set(texts))
    for text in texts:
        *lines, last = text.split("\n")
        operands = []
        for i, line in enumerate(lines):
            left, right = line.split("=")
            assert eval(left) == int(right)  # a true equation ...
            first, second = map(int, left.split("+"))
            operands += [first, second] if i == 0 else [second]
            if i:
                assert first == int(lines[i - 1].split("=")[1])  # ... starting from the previous total
        assert sorted(operands) == [1, 3, 5, 8] and extract_answer(last) == "17"
        assert solution_path(problem, text) == tuple(operands)
    # The library's reward checks the total only: every order earns 1, a wrong total 0.
    wrong = "3+8=11\n11+1=12\n12+5=18\n\\boxed{18}"
    rewards = accuracy_reward([""] * 3, [texts[0], texts[-1], wrong], answer=["17"] * 3)
    assert rewards == [1.0, 1.0, 0.0]
    assert grade_answers("17", [extract_answer(t) for t in texts]) == [True] * len(texts)
    # Equal digits are one choice: 3, 3, 5 has 3!/2! = 3 distinct solutions.
    assert len(valid_solutions(Problem((3, 3, 5)))) == 3


def test_solution_path_reads_the_order_and_refuses_invalid_paths():
    problem = Problem((3, 8, 1))
    assert solution_path(problem, "1+3=4\n4+8=12\n\\boxed{12}") == (1, 3, 8)
    assert solution_path(problem, "3+8=11\n11+1=12\n\\boxed{12}") == (3, 8, 1)
    assert solution_path(problem, "3+8=11\n11+1=13\n\\boxed{13}") is None  # a wrong sum
    assert solution_path(problem, "3+8=11\n11+1=12\n\\boxed{13}") is None  # a box that is not the total
    assert solution_path(problem, "3+8=11\n10+1=11\n\\boxed{11}") is None  # not starting from the total
    assert solution_path(problem, "3+9=12\n\\boxed{12}") is None  # right total, wrong numbers
    assert solution_path(problem, "3+3=6\n6+6=12\n\\boxed{12}") is None  # a repeated number
    assert solution_path(problem, "\\boxed{12}") is None  # no work shown
    assert solution_path(Problem((3, 3, 5)), "3+5=8\n8+3=11\n\\boxed{11}") == (3, 5, 3)  # equal digits


def test_forks_counted_by_hand():
    problem = Problem((3, 8, 1))
    solution = "3+8=11\n11+1=12\n\\boxed{12}"
    options = position_options(problem, solution)
    # 3, 8 or 1 may come first (3 options); "+" is forced; then 8 or 1 (2); "=11\n11+" is forced, and
    # only 1 is left.
    assert options[:3] == [3, 1, 2]
    assert all(n == 1 for n in options[3:]) and len(options) == len(solution)
    assert position_kinds(problem, solution).count("fork") == 2
    assert next_characters(problem, "") == {"3", "8", "1"}
    assert next_characters(problem, "3+") == {"8", "1"}
    assert next_characters(problem, "3+9") == set()
    # Equal digits are one option: after "3+" in 3, 3, 5 the choices are 3 and 5.
    assert next_characters(Problem((3, 3, 5)), "3+") == {"3", "5"}
    with pytest.raises(ValueError, match="not a correct solution"):
        position_options(problem, "3+8=12\n12+1=13\n\\boxed{13}")


def test_generation_is_deterministic_in_range_and_spreads_the_counts():
    a, b = generate(400, seed=21), generate(400, seed=21)
    assert a == b and generate(400, seed=22) != a
    assert len({problem_key(p) for p in a}) == 400
    for problem in a:
        assert all(1 <= x <= MAX_NUMBER for x in problem.numbers) and problem.answer <= MAX_TOTAL
        assert problem.answer == eval("+".join(re.findall(r"\d+", problem.question)))
    counts = Counter(p.difficulty for p in a)
    assert set(counts) == set(range(MIN_COUNT, MAX_COUNT + 1)) and min(counts.values()) >= 90
    with pytest.raises(ValueError, match="count"):
        random_problem(random.Random(0), MAX_COUNT + 1)


def test_splits_share_no_set_of_numbers_and_the_shipped_files_are_the_generated_ones(tmp_path):
    splits = make_splits()
    train, test = ({problem_key(p) for p in splits[name]} for name in ("train", "test"))
    assert len(train) == 256 and len(test) == 128 and not train & test
    for split, path in write_splits(tmp_path).items():
        shipped = SUMS_TEST_SPLIT.parent / path.name
        assert shipped.read_text() == path.read_text(), f"{shipped} is stale: run python -m sete_lite.arith.sums"
        records = load_records(DataConfig(dataset_name_or_path=str(shipped)))
        for record, row in zip(records, map(json.loads, shipped.read_text().splitlines()), strict=True):
            assert record["answer"] == str(problem_of(row["question"]).answer)
            assert record["prompt"].startswith(row["question"] + "\nPlease reason step by step")
            assert record["id"].startswith(f"sums-{split}-")


def test_warm_start_data_draws_every_order_evenly_and_no_heldout_problem():
    cfg = SumsWarmstartConfig(**SMALL, num_problems=4000)
    pairs = training_pairs(cfg)
    heldout = {problem_key(p) for p in make_splits()["test"]}
    observed, expected = Counter(), Counter()
    for prompt, solution in pairs:
        problem = problem_of(prompt.split("\n")[0])
        assert problem_key(problem) not in heldout
        path = solution_path(problem, solution)
        assert path is not None
        # Under a uniform order the first operand is the first / last listed number with probability
        # (copies of that digit) / n, and the smallest digit with (copies of the smallest) / n.
        for name, value in (
            ("first", problem.numbers[0]),
            ("last", problem.numbers[-1]),
            ("min", min(problem.numbers)),
        ):
            observed[name] += path[0] == value
            expected[name] += problem.numbers.count(value) / problem.difficulty
    assert Counter(problem_of(p.split("\n")[0]).difficulty for p, _ in pairs) == {4: 1000, 5: 1000, 6: 1000, 7: 1000}
    for name in expected:
        assert abs(observed[name] - expected[name]) < 0.1 * expected[name], (name, observed, expected)
    with pytest.raises(ValueError, match="split seed"):
        training_pairs(SumsWarmstartConfig(data_seed=SPLITS["test"][0]))


def test_warm_start_is_deterministic_and_trains(tmp_path):
    small = {**SMALL, "num_problems": 200, "steps": 3, "batch_size": 8}
    a = build(tmp_path / "a", SumsWarmstartConfig(**small), progress=False)
    b = build(tmp_path / "b", SumsWarmstartConfig(**small), progress=False)
    untrained = build(tmp_path / "c", SumsWarmstartConfig(**{**small, "steps": 0}), progress=False)
    wa, wb, w0 = (load_file(d / "model.safetensors") for d in (a, b, untrained))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], w0[k]) for k in wa)


def test_shipped_base_model_has_entropy_at_the_forks_and_almost_none_where_forced():
    from sete_lite.model import ModelConfig, load_policy

    assert resolve_builtin("builtin:sums-qwen2") == str(SUMS_CHECKPOINT)
    assert resolve_builtin("builtin:sums-cpu") == str(SUMS_CONFIG)
    model, tokenizer = load_policy(
        ModelConfig(model_name_or_path="builtin:sums-qwen2", backend="transformers", load_in_4bit=False)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        measured = fork_entropies(model, tokenizer, make_splits()["test"][:16])
    finally:
        torch.set_num_threads(threads)
    # A policy that spreads evenly over the correct orders has log(#options) nats at a fork (mean
    # fork_uniform, about 1 nat here); one that always takes the same order has 0.
    assert measured["fork"] > 0.6 * measured["fork_uniform"] > 0.4, measured
    assert measured["forced"] < 0.1 * measured["fork"], measured
    recorded = json.loads((SUMS_CHECKPOINT / "warmstart.json").read_text())["heldout"]
    assert 0.2 < recorded["avg"] < 0.8  # room for RL: neither unable nor already solved


def test_itertools_orders_match_the_solution_count():
    # A 6-number problem with distinct digits has 720 orders, all distinct texts.
    problem = Problem((1, 2, 3, 4, 5, 6))
    assert len(valid_solutions(problem)) == len(list(itertools.permutations(range(6))))


# ----------------------------------------------------------------------------------------------
# The study on this task (sete_lite.arith.study --config builtin:sums-cpu)


def test_the_study_picks_the_sums_runs_and_evaluation_from_the_config():
    from sete_lite.arith import DEFAULT_CONFIG
    from sete_lite.arith.study import METHODS, SUMS_METHODS, SUMS_SWEEP, SWEEP, study_runs
    from sete_lite.builtins import resolve_builtin
    from sete_lite.train import parse_train_config

    assert study_runs("builtin:sums-cpu") == (SUMS_METHODS, SUMS_SWEEP)
    assert study_runs(SUMS_CONFIG) == (SUMS_METHODS, SUMS_SWEEP)
    assert study_runs(DEFAULT_CONFIG) == (METHODS, SWEEP)  # the arithmetic study is unchanged
    assert set(SWEEP) <= set(SUMS_SWEEP) and set(METHODS) - {"kl_cov"} <= set(SUMS_METHODS)
    assert "kl_cov" not in SUMS_METHODS  # on-policy it is grpo, run for run
    assert SUMS_METHODS["sent_code_2_steps_per_batch"]["mode"] == "sent_code"
    evaluation = parse_train_config("builtin:sums-cpu", []).eval  # what the study's measure samples with
    assert resolve_builtin(evaluation.eval_benchmarks[0]) == str(SUMS_TEST_SPLIT) and evaluation.eval_num_samples == 16
    assert evaluation.eval_k == [1, 2, 4, 8, 16]


def test_path_statistics_by_hand():
    from sete_lite.arith.study import pass_at, path_statistics

    question = "Add these numbers: 3, 8, 1."
    prompts = {"a": question + "\nPlease reason step by step, and put your final answer within \\boxed{}."}
    texts = [
        "3+8=11\n11+1=12\n\\boxed{12}",
        "1+3=4\n4+8=12\n\\boxed{12}",
        "3+8=11\n11+1=12\n\\boxed{12}",
        "\\boxed{12}",
    ]
    samples = [{"id": "a", "text": t, "correct": True} for t in texts]
    # Entropy 1.0 at every character of the first sample, 0.5 of the second, 0 elsewhere (and at EOS).
    entropies = [torch.full((len(texts[0]) + 1,), 1.0), torch.full((len(texts[1]) + 1,), 0.5)]
    entropies += [torch.zeros(len(texts[2]) + 1), torch.zeros(len(texts[3]) + 1)]
    stats = path_statistics(samples, prompts, entropies)
    assert stats["valid_path_rate"] == 0.75  # the bare box is not a path
    assert stats["distinct_paths"] == 2.0
    assert stats["listed_order_rate"] == pytest.approx(2 / 3)
    # Two forks per valid path (the first and the second operand): (1 + 1 + 0.5 + 0.5 + 0 + 0) / 6.
    assert stats["entropy_fork"] == pytest.approx(0.5)
    forced = [len(texts[i]) - 2 for i in range(3)]
    assert stats["entropy_forced"] == pytest.approx((forced[0] * 1.0 + forced[1] * 0.5) / sum(forced))
    assert path_statistics(samples, {"a": "Start at 2. Add 2."}, entropies) == {}  # another task: nothing
    graded = [{"id": "a", "correct": c} for c in (True, False, False, False)] + [{"id": "b", "correct": True}] * 4
    assert pass_at(graded, 1) == pytest.approx((0.25 + 1.0) / 2)
    assert pass_at(graded, 4) == pytest.approx(1.0)


def fake_sums_result(method: str, seed: int, avg: float) -> dict:
    steps = [0, 64, 128]
    return {
        "method": method, "seed": seed, "avg@16": avg, "pass@1": avg, "pass@2": avg, "pass@4": avg,
        "pass@8": avg + 0.05, "pass@16": avg + 0.1, "entropy": 0.1 - 0.01 * seed,
        "entropy_low": 0.001, "kl_ref": 0.05, "length": 45.0, "valid_path_rate": 0.6, "distinct_paths": 5.0,
        "listed_order_rate": 0.05, "entropy_fork": 1.0, "entropy_forced": 0.01, "steps": 128,
        "curves": {"step": list(range(1, 129)), "reward": [0.5] * 128, "entropy": [0.1] * 128, "kl": [0.0] * 128,
                   "sent/entropy_low_mean": [0.01] * 128, "completions/mean_length": [45.0] * 128},
        "heldout_curve": {"step": steps, "entropy": [0.14, 0.1, 0.08], "entropy_low": [0.001] * 3,
                          "avg": [0.6, 0.7, 0.7], "entropy_fork": [1.2, 0.9, 0.7]},
    }  # fmt: skip


def test_the_sums_report_adds_paired_differences_and_its_plots(tmp_path):
    from sete_lite.arith.study import report

    avg_by_seed = {
        "grpo": (0.6, 0.7),
        "sent": (0.65, 0.8),
        "sent_k0.2_bl0.1_bh0.4": (0.7, 0.8),
        "grpo_2_steps_per_batch": (0.5, 0.6),
        "kl_cov_2_steps_per_batch": (0.55, 0.5),
    }
    for method, avgs in avg_by_seed.items():
        for seed, avg in enumerate(avgs):
            path = tmp_path / "runs" / method / f"seed{seed}" / "result.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(fake_sums_result(method, seed, avg)))
    base = {"method": "base", "runs": [{**fake_sums_result("base", s, 0.55), "seed": s} for s in (0, 1)]}
    for key in ("curves", "heldout_curve", "steps", "method"):
        for run in base["runs"]:
            run.pop(key)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "result.json").write_text(json.dumps(base))
    text = report(tmp_path, [0, 1], "builtin:sums-cpu")
    assert "| Avg@16 (%) | Pass@16 (%) |" in text and "entropy at forks" in text
    row = next(line for line in (tmp_path / "paired.md").read_text().splitlines() if line.startswith("| sent |"))
    assert row.split(" | ")[2:4] == ["+5.0, +10.0 [+7.5]", "+5.0, +10.0 [+7.5]"]  # Avg@16, Pass@16 points
    # KL-Cov with 2 steps per batch also against GRPO with 2 steps, and every method against the base.
    tables = {t.split(",")[0]: t for t in (tmp_path / "paired.md").read_text().split("each method minus ")}
    kl_cov_row = next(line for line in tables["grpo_2_steps_per_batch"].splitlines() if "| kl_cov_2" in line)
    assert kl_cov_row.split(" | ")[2] == "+5.0, -10.0 [-2.5]"
    kl_cov_row = next(line for line in tables["base"].splitlines() if "| kl_cov_2" in line)
    assert kl_cov_row.split(" | ")[2] == "+0.0, -5.0 [-2.5]"  # 0.55, 0.5 against the base's 0.55
    # The sweep point against SENT's defaults, then against GRPO, seed by seed.
    sweep_rows = [line for line in (tmp_path / "sweep_paired.md").read_text().splitlines() if "| sent_k0.2" in line]
    assert [row.split(" | ")[2] for row in sweep_rows] == ["+5.0, +0.0 [+2.5]", "+10.0, +10.0 [+10.0]"]
    for name in ("entropy_bands.png", "pass_at_k.png", "curves.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "summary.json").read_text())["sent"]["pass@16"] == pytest.approx(0.825)
    # Pass@k by k: base 0.55 (+0.05 at k=8, +0.1 at k=16) on both seeds; sent 0.65 / 0.8 -> 72.5 ± 10.6.
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ") for line in (tmp_path / "pass_at_k.md").read_text().splitlines()
    }
    assert rows["method"][2:] == ["Pass@1 (%)", "Pass@2 (%)", "Pass@4 (%)", "Pass@8 (%)", "Pass@16 (%) |"]
    assert rows["base (no RL)"][2] == "55.0 ± 0.0" and rows["base (no RL)"][6] == "65.0 ± 0.0 |"
    assert rows["sent"][1] == "2" and rows["sent"][2] == "72.5 ± 10.6"
