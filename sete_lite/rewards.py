"""Reward functions with TRL's signature, and the registry the config selects them from.

A reward function is `f(prompts, completions, completion_ids, **kwargs) -> list[float | None]`,
where kwargs holds every dataset column but `prompt` (so `answer`, the gold final answer, arrives
as a list aligned with the completions). Built in:
- accuracy: 1.0 when the completion's final answer (found by the run's answer_extraction rule) is
  math-equivalent to the gold answer (math-verify, each parse or comparison bounded by the run's
  answer_timeout_s).
- format: 1.0 when the completion ends its reasoning with a complete `\\boxed{...}` answer.
Each also answers to its function's name, as TRL's scripts and the logged metric
(`rewards/accuracy_reward/mean`) call it: `accuracy_reward`, `format_reward`.
Any other function is named by import path, `package.module:function` or `package.module.function`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from sete_lite.semantic import BOX_OPEN, DEFAULT_TIMEOUT_S, extract_answer, extract_answers, grade_answers

RewardFunction = Callable[..., list]


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational [{"role", "content"}] form."""
    if isinstance(completion, str):
        return completion
    return "".join(message.get("content", "") for message in completion)


def accuracy_reward(
    prompts: list,
    completions: list,
    completion_ids: list | None = None,
    *,
    answer_timeout_s: float = DEFAULT_TIMEOUT_S,
    answer_extraction: str = "boxed",
    **kwargs: Any,
) -> list:
    """1.0 if the final answer is math-equivalent to the dataset's `answer`, else 0.0."""
    if "answer" not in kwargs:
        raise ValueError(
            "the accuracy reward needs an 'answer' column in the dataset (set answer_column in the config)"
        )
    texts = [completion_text(c) for c in completions]
    answers = extract_answers(texts, answer_extraction, timeout_s=answer_timeout_s)
    rewards: list[float] = [0.0] * len(completions)
    # Completions of one prompt share its gold answer: grade each group in one call.
    groups: dict[str, list[int]] = {}
    for i, gold in enumerate(kwargs["answer"]):
        groups.setdefault(str(gold), []).append(i)
    for gold, members in groups.items():
        verdicts = grade_answers(gold, [answers[i] for i in members], timeout_s=answer_timeout_s)
        for i, correct in zip(members, verdicts, strict=True):
            rewards[i] = float(correct)
    return rewards


def zero_reward_cause(answer_extraction: str) -> str:
    """The likely cause of a run where no completion is graded correct, and the keys that fix it."""
    if answer_extraction == "boxed":
        return (
            "answer_extraction 'boxed' counts only a \\boxed{} or #### answer: a model that answers in prose "
            "needs answer_extraction: math_verify, or a prompt_template it follows"
        )
    return "the answers math_verify finds are all wrong: check answer_column, and whether the model can do the task"


def format_reward(prompts: list, completions: list, completion_ids: list | None = None, **kwargs: Any) -> list:
    """1.0 if the completion contains a complete `\\boxed{...}` (or `\\fbox{...}`) answer."""
    texts = [completion_text(c) for c in completions]
    # With any box in the text, extract_answer reads only the last box (None when it is unclosed).
    return [float(BOX_OPEN.search(t) is not None and extract_answer(t) is not None) for t in texts]


REWARD_FUNCTIONS: dict[str, RewardFunction] = {
    "accuracy": accuracy_reward,
    "accuracy_reward": accuracy_reward,
    "format": format_reward,
    "format_reward": format_reward,
}


def import_function(path: str) -> RewardFunction:
    """A function from `package.module:function` or `package.module.function`."""
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name and path in importlib.import_module("trl.rewards").__all__:
        raise ValueError(
            f"'{path}' is TRL's reward (trl.rewards.{path}), which has no sete_lite counterpart: it reads "
            "conversational completions ([{'content': ...}]) and TRL's `solution` column, while sete_lite passes "
            f"text and `answer`. Use {sorted(REWARD_FUNCTIONS)}, or wrap it and name the wrapper by import path"
        )
    if not module_name:
        raise ValueError(
            f"unknown reward function '{path}': use one of {sorted(REWARD_FUNCTIONS)} "
            "or an import path like my_package.rewards:my_reward"
        )
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import reward function '{path}': {error}") from error
    if not callable(function):
        raise ValueError(f"reward function '{path}' is not callable")
    return function


def resolve_reward_functions(
    names: Sequence[str], *, answer_timeout_s: float = DEFAULT_TIMEOUT_S, answer_extraction: str = "boxed"
) -> list[RewardFunction]:
    """Reward functions by registry name or import path, in order; the built-in accuracy reward with
    the run's answer_timeout_s and answer_extraction (keeping its name, which TRL logs as
    rewards/<name>/mean)."""
    if not names:
        raise ValueError("reward_funcs is empty: name at least one reward, e.g. [accuracy]")
    functions = [REWARD_FUNCTIONS[name] if name in REWARD_FUNCTIONS else import_function(name) for name in names]
    timed = functools.partial(accuracy_reward, answer_timeout_s=answer_timeout_s, answer_extraction=answer_extraction)
    functools.update_wrapper(timed, accuracy_reward)  # TRL logs rewards/<__name__>/mean
    return [timed if f is accuracy_reward else f for f in functions]
