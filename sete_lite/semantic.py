"""Final answers, their equivalence, and the semantic entropy of a set of sampled responses.

This module owns the math side of SENT's curriculum (docs/method.md#curriculum, steps 2-4):
- `extract_answers`: the final answers of responses, by the run's `answer_extraction` rule: `boxed`
  (`extract_answer`: the last `\\boxed{}`/`\\fbox{}`, else GSM8K `####`; the paper's strict rule) or
  `math_verify` (math-verify's own extraction: a box first, then LaTeX, then the last expression,
  for models that answer in prose).
- `cluster_answers`: responses grouped by math-verify equivalence of their final answers.
- `cluster_entropy` (with `likelihood_weights`): the entropy over those clusters, discrete or likelihood.
- `grade_answers`: which answers match a gold answer (the pass rate of a prompt).

math-verify bounds its own work with signal.alarm, which only works on the main thread, only in
whole seconds, and lets a comparison that timed out fall through to the next one. We switch that
off and bound every parse and every comparison with `time_limit` (a SIGALRM interval timer). Off
the main thread, where no signal can be delivered, the work moves to a helper process and runs on
its main thread.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from sete_lite.config import check_answer_extraction

# We bound time ourselves (time_limit), so math-verify's "timeout is disabled" warning is noise.
logging.getLogger("math_verify").setLevel(logging.ERROR)

# One parse or one comparison of two parsed answers; sympy can spin on answers like 2^{10^{10}}.
DEFAULT_TIMEOUT_S = 1.0
# math-verify's own extraction targets, a box first: LaTeX ($...$, "final answer is ..."), then plain
# expressions (the last number or expression of the text).
MATH_VERIFY_TARGETS = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())

# The opening of a final-answer box; public because the format reward checks for one too.
BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K_ANSWER = re.compile(r"####\s*([^\n]*)")


def _braced_content(text: str, start: int) -> str | None:
    """The text from `start` up to the brace closing an opening brace just before it; None if unclosed."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a response, or None when it gives none.

    The content of the last `\\boxed{...}` / `\\boxed {...}` / `\\fbox{...}` (nested braces kept);
    without a box, the text after the last GSM8K-style `####` on its line. A last box that is never
    closed (a response cut off by the token limit) counts as no answer, not as the box before it:
    the response did not finish stating its final answer. An empty answer is no answer.
    """
    boxes = list(BOX_OPEN.finditer(text))
    if boxes:
        content = _braced_content(text, boxes[-1].end())
        return content.strip() or None if content is not None else None
    answers = _GSM8K_ANSWER.findall(text)
    if answers:
        # "#### 18." is common in model outputs; math-verify reads "18." as a string, not 18.
        return answers[-1].strip().rstrip(".").strip() or None
    return None


def extract_answers(
    texts: Sequence[str], method: str = "boxed", *, timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> list[str | None]:
    """The final answer of each response by the rule `method` (config.ANSWER_EXTRACTIONS); None: none found.

    `boxed` is `extract_answer`. `math_verify` is math-verify's `parse` with MATH_VERIFY_TARGETS,
    each text bounded by `timeout_s` (then: no answer): the answer is the text it extracted (a number
    written "1,234" comes back "1234") when that reads back as the same value, else the value's LaTeX
    (math-verify reads "50%" as 1/2 but extracts the text "50"). One exception to math-verify: what
    leaves arithmetic between plain numbers undone ("Sam has 15 - 8 marbles left": `15 - 8`) is no
    final answer. math-verify grades it as its value, so a policy trained on that reward learns to
    restate the question instead of answering it (seen on SmolLM2-135M: a quarter of its correct
    answers were such expressions after 8 SENT steps).
    """
    check_answer_extraction(method)
    texts = list(texts)
    if method == "boxed":
        return [extract_answer(text) for text in texts]
    if _off_main_thread(timeout_s):
        try:
            return _ask_helper(
                {"op": "extract", "texts": texts, "timeout_s": timeout_s}, timeout_s * (3 * len(texts) + 1)
            )
        except _HelperFailed:  # overran even its worst case: no answer found in time
            return [None] * len(texts)
    return [_extract_by_math(text, timeout_s) for text in texts]


def _extract_by_math(text: str, timeout_s: float | None) -> str | None:
    try:
        with time_limit(timeout_s):
            found = parse(text, extraction_config=list(MATH_VERIFY_TARGETS), parsing_timeout=None)
    except _TimeLimitExceeded:
        return None
    if not found:
        return None
    value, extracted = found[0], found[-1]
    if isinstance(value, str):  # only the text matched; it did not parse
        return value.strip() or None
    if leaves_arithmetic_undone(value):
        return None
    extracted = extracted.strip() if isinstance(extracted, str) else ""
    if extracted and _reads_back_as(extracted, value, timeout_s):
        return extracted
    from sympy import latex

    return latex(value)


def leaves_arithmetic_undone(value: object) -> bool:
    """Whether a parsed answer is arithmetic between plain numbers left to do: a sum or difference
    (15 - 8), or a product of two or more numbers (7 * 4), made of integers, decimals and fractions
    only. A value is not: 7, -3, 3/4 (a fraction), 50%, 5 - 2 sqrt(3) or 3 - 2i (no plain arithmetic)."""
    import sympy

    if not isinstance(value, sympy.Basic) or not value.is_number:
        return False
    nodes = list(sympy.preorder_traversal(value))
    plain = (sympy.Add, sympy.Mul, sympy.Integer, sympy.Rational, sympy.Float)
    if not all(isinstance(n, plain) or (isinstance(n, sympy.Pow) and n.exp == -1) for n in nodes):
        return False  # a root, a constant, a percent: not plain arithmetic

    def numbers(product: sympy.Mul) -> int:
        return sum(isinstance(a, (sympy.Integer, sympy.Float)) and abs(a) != 1 for a in product.args)

    return any(isinstance(n, sympy.Add) or (isinstance(n, sympy.Mul) and numbers(n) >= 2) for n in nodes)


def _reads_back_as(answer: str, value: object, timeout_s: float | None) -> bool:
    parsed = _parse(answer, timeout_s)
    if not parsed:
        return False
    try:
        with time_limit(timeout_s):
            return verify([value], list(parsed), timeout_seconds=None)
    except _TimeLimitExceeded:
        return False


class _TimeLimitExceeded(BaseException):
    """Raised by `time_limit` when its block runs too long.

    A BaseException, not an Exception: math-verify catches Exception (and its own timeout) around
    each comparison and would otherwise carry on with the next one, unbounded.
    """


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise `_TimeLimitExceeded` inside the block if it runs longer than `seconds` (None: no limit).

    Uses a SIGALRM interval timer, so main thread only. A signal is the one thing that also stops
    CPython's long big-integer loops (2^{10^{10}}): they check for signals, not for thread-level
    async exceptions. Callers off the main thread go through a helper process (`_ask_helper`).
    """
    if seconds is None:
        yield
        return

    def on_alarm(signum, frame):
        raise _TimeLimitExceeded

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _HelperFailed(Exception):
    """The helper process overran its time, or died."""


_helper_lock = threading.Lock()
_helper: subprocess.Popen | None = None
# A fresh helper imports math-verify and sympy (a few seconds) before it answers.
_HELPER_STARTUP_S = 30.0


def _ask_helper(request: dict, seconds: float) -> list:
    """Run `request` in a helper process (`python -m sete_lite.semantic`), on its main thread.

    A separate process rather than a thread because only the main thread can take signals, and
    because killing the process is the one way to stop work that ignores them. A JSON line each way.
    """
    global _helper
    with _helper_lock:  # one helper, one request at a time
        if _helper is None:
            # The helper imports this package from where it is, installed or a plain checkout.
            package_parent = str(Path(__file__).resolve().parent.parent)
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]),
            }
            _helper = subprocess.Popen(
                [sys.executable, "-m", "sete_lite.semantic"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
        _helper.stdin.write(json.dumps(request) + "\n")
        _helper.stdin.flush()
        ready, _, _ = select.select([_helper.stdout], [], [], seconds + _HELPER_STARTUP_S)
        reply = _helper.stdout.readline() if ready else ""
        if not reply:  # overran (or died): kill it, a later call starts a fresh one
            _helper.kill()
            _helper.wait()
            _helper = None
            raise _HelperFailed(f"semantic helper gave no answer within {seconds + _HELPER_STARTUP_S:.0f} s")
        return json.loads(reply)


def _serve_helper_requests() -> None:
    """The helper's loop: one JSON request per stdin line, one JSON reply per stdout line."""
    replies, sys.stdout = sys.stdout, sys.stderr  # a stray print must not corrupt the replies
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "cluster":
            reply = _cluster_by_math(request["answers"], request["timeout_s"])
        elif request["op"] == "extract":
            reply = [_extract_by_math(text, request["timeout_s"]) for text in request["texts"]]
        else:
            reply = _grade_by_math(request["gold"], request["answers"], request["timeout_s"])
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


@functools.lru_cache(maxsize=16384)
def _parse(answer: str, timeout_s: float | None) -> tuple:
    """math-verify's parse of one extracted answer, cached: each distinct answer is parsed once."""
    try:
        with time_limit(timeout_s):
            # Boxing the bare answer makes math-verify read it with its highest-priority LaTeX rule.
            return tuple(parse("\\boxed{" + answer + "}", parsing_timeout=None))
    except _TimeLimitExceeded:
        return ()  # unparsable in time: it can still match identical strings


def parses_as_math(answer: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> bool:
    """Whether math-verify reads `answer` as math (a gold answer it cannot read grades nothing)."""
    return bool(_parse(answer.strip(), timeout_s if not _off_main_thread(timeout_s) else None))


def _equivalent(reference: str, answer: str, timeout_s: float | None) -> bool:
    """math-verify equivalence of `answer` to `reference` (not symmetric: reference is the gold side)."""
    if reference == answer:
        return True
    gold, pred = _parse(reference, timeout_s), _parse(answer, timeout_s)
    if not gold or not pred:
        return False
    try:
        with time_limit(timeout_s):
            return verify(list(gold), list(pred), timeout_seconds=None)
    except _TimeLimitExceeded:
        return False


def _cluster(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> list[int]:
    """Labels by first appearance; an answer joins the first cluster whose first member is `same`."""
    labels: list[int] = []
    representatives: list[tuple[str, int]] = []  # (first member, label) of each cluster with an answer
    num_clusters = 0
    for answer in answers:
        label = None
        if answer is not None:
            answer = answer.strip()
            label = next((rep_label for rep, rep_label in representatives if same(rep, answer)), None)
        if label is None:
            label = num_clusters
            num_clusters += 1
            if answer is not None:
                representatives.append((answer, label))
        labels.append(label)
    return labels


def _worst_case_s(num_answers: int, timeout_s: float) -> float:
    """Time for every answer and the gold to be parsed, and every pair compared, each at the limit."""
    return timeout_s * (num_answers + 1 + num_answers**2)


def _off_main_thread(timeout_s: float | None) -> bool:
    return timeout_s is not None and threading.current_thread() is not threading.main_thread()


def _cluster_by_math(answers: list[str | None], timeout_s: float | None) -> list[int]:
    return _cluster(answers, lambda rep, answer: _equivalent(rep, answer, timeout_s))


def _grade_by_math(gold: str, answers: list[str | None], timeout_s: float | None) -> list[bool]:
    return [answer is not None and _equivalent(gold, answer.strip(), timeout_s) for answer in answers]


def cluster_answers(answers: Sequence[str | None], *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> list[int]:
    """A cluster label per answer, 0..K-1 in order of first appearance.

    Two answers share a cluster when math-verify finds them equivalent (`1/2`, `0.5`, `\\frac{1}{2}`);
    None (no answer) is always a singleton. math-verify's equivalence is not always transitive, so
    each answer is compared with the first member of each existing cluster only, in order: the
    result does not depend on which later member happened to be compared.

    Each parse and each comparison stops after `timeout_s` (then counting as "not equivalent").
    Off the main thread the work runs in a helper process; if that whole call overruns its
    worst case, answers cluster by identical strings only.
    """
    answers = list(answers)
    if _off_main_thread(timeout_s):
        try:
            request = {"op": "cluster", "answers": answers, "timeout_s": timeout_s}
            return _ask_helper(request, _worst_case_s(len(answers), timeout_s))
        except _HelperFailed:
            return _cluster(answers, str.__eq__)
    return _cluster_by_math(answers, timeout_s)


def grade_answers(
    gold: str, answers: Sequence[str | None], *, timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> list[bool]:
    """For each answer, whether math-verify finds it equivalent to the gold answer (None: False).

    Time limits as in `cluster_answers`; the fallback off the main thread is an exact string match.
    """
    gold, answers = gold.strip(), list(answers)
    if _off_main_thread(timeout_s):
        try:
            request = {"op": "grade", "gold": gold, "answers": answers, "timeout_s": timeout_s}
            return _ask_helper(request, _worst_case_s(len(answers), timeout_s))
        except _HelperFailed:
            return [answer is not None and answer.strip() == gold for answer in answers]
    return _grade_by_math(gold, answers, timeout_s)


def cluster_entropy(labels: Sequence[int], weights: Sequence[float] | None = None) -> float:
    """Natural-log entropy of the cluster distribution p_k = sum of the weights in cluster k / total.

    weights None gives the discrete estimator (p_k = |C_k| / M).
    """
    if not labels:
        raise ValueError("cluster_entropy needs at least one response")
    if weights is None:
        weights = [1.0] * len(labels)
    if len(weights) != len(labels):
        raise ValueError(f"{len(weights)} weights for {len(labels)} responses")
    mass: dict[int, float] = {}
    for label, weight in zip(labels, weights, strict=True):
        mass[label] = mass.get(label, 0.0) + weight
    total = sum(mass.values())
    return max(0.0, -sum(m / total * math.log(m / total) for m in mass.values() if m > 0))  # never -0.0


def likelihood_weights(mean_logprobs: Sequence[float]) -> list[float]:
    """exp(mean log-prob) per response, scaled by a common factor (exp(-max)) to avoid underflow."""
    top = max(mean_logprobs)
    return [math.exp(lp - top) for lp in mean_logprobs]


if __name__ == "__main__":
    _serve_helper_requests()
