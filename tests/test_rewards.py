"""Reward functions (TRL's signature) and the registry that resolves them by name or import path."""

from __future__ import annotations

import pytest

from sete_lite.rewards import accuracy_reward, format_reward, resolve_reward_functions


def test_accuracy_by_math_equivalence_per_completion_gold():
    completions = [
        "so the answer is \\boxed{\\frac{1}{2}}",  # equals 0.5
        "I think \\boxed{0.5}",
        "\\boxed{2}",  # wrong for 0.5
        "no box at all",
        "Natalia sold 72 clips.\n#### 72",  # GSM8K-style answer
        "\\boxed{-72}",
    ]
    gold = ["0.5", "0.5", "0.5", "0.5", "72", "72"]
    assert accuracy_reward([""] * 6, completions, answer=gold) == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def test_accuracy_reads_conversational_completions():
    completions = [[{"role": "assistant", "content": "\\boxed{1024}"}], [{"role": "assistant", "content": "1000"}]]
    assert accuracy_reward(["", ""], completions, answer=["2^{10}", "2^{10}"]) == [1.0, 0.0]


def test_accuracy_needs_an_answer_column():
    with pytest.raises(ValueError, match="answer_column"):
        accuracy_reward([""], ["\\boxed{1}"], solution=["1"])


def test_format_reward_wants_a_complete_box():
    completions = ["\\boxed{3}", "\\fbox{x+1}", "\\boxed{unclosed", "#### 3", "\\boxed{}", "\\boxed{1} then \\boxed{2"]
    assert format_reward([""] * 6, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_registry_names_and_import_paths():
    accuracy, format_ = resolve_reward_functions(
        ["accuracy", "format"], answer_timeout_s=0.5, answer_extraction="math_verify"
    )
    # accuracy with the run's answer_timeout_s and answer_extraction, under its own name (TRL logs
    # rewards/<name>/mean)
    keywords = {"answer_timeout_s": 0.5, "answer_extraction": "math_verify"}
    assert (accuracy.func, accuracy.keywords, accuracy.__name__) == (accuracy_reward, keywords, "accuracy_reward")
    assert accuracy([""], ["7 + 5 = 12."], answer=["12"]) == [1.0]  # read from the prose
    assert format_ is format_reward
    assert resolve_reward_functions(["sete_lite.rewards:format_reward"]) == [format_reward]
    # TRL's names for the same rewards, as its scripts and the logged metric rewards/accuracy_reward/mean say them
    accuracy_again, format_again = resolve_reward_functions(["accuracy_reward", "format_reward"], answer_timeout_s=0.5)
    assert (accuracy_again.func, accuracy_again.keywords["answer_timeout_s"]) == (accuracy_reward, 0.5)
    assert format_again is format_reward
    assert resolve_reward_functions(["sete_lite.rewards.accuracy_reward"])[0].func is accuracy_reward
    with pytest.raises(ValueError, match=r"'think_format_reward' is TRL's reward .* no sete_lite counterpart"):
        resolve_reward_functions(["think_format_reward"])
    with pytest.raises(ValueError, match="unknown reward function 'acuracy'"):
        resolve_reward_functions(["acuracy"])
    with pytest.raises(ValueError, match="cannot import"):
        resolve_reward_functions(["sete_lite.rewards:nothing_here"])
    with pytest.raises(ValueError, match="empty"):
        resolve_reward_functions([])
