"""Benchmark: answer clustering (and grading) time per prompt, at M = 8 and M = 16, on one core.

Realistic answer mixes built from the 270 gold answers of CHAMP (the champ-dataset package): per
prompt, M answers drawn from the gold in several equivalent forms (its own text, sympy's LaTeX,
a decimal for terminating fractions), wrong answers (gold + 1, 2 * gold, -gold), and no answer
(None) -- fractions, decimals, surds, symbolic expressions and words, as a model produces them.

Each M runs in a fresh process pinned to one core, so caches start cold as in a real pass.
Prints a table and writes benchmarks/results/clustering.json.

    python benchmarks/bench_clustering.py [--num-samples 8 16] [--prompts 270]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from importlib import metadata, resources
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "clustering.json"
REPO = Path(__file__).resolve().parent.parent


def champ_golds() -> list[str]:
    problems = json.loads((resources.files("champ_dataset") / "dataset_files" / "v0.json").read_text())
    return [problem["_answer"] for problem in problems["problems"].values()]


def answer_forms(gold: str) -> tuple[list[str], list[str]]:
    """Equivalent spellings of a gold answer, and wrong answers near it."""
    import sympy
    from math_verify import parse

    if re.search(r"[A-Za-z]{2,}", gold.replace("sqrt", "")):  # words: "No", "3 is the only value"
        return [gold, gold.lower(), "\\text{" + gold + "}"], ["Yes" if gold != "Yes" else "No", "0"]
    parsed = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    expr = parsed[0] if parsed and isinstance(parsed[0], sympy.Basic) else None
    if expr is None:
        return [gold], ["0", "1"]
    right = [gold, sympy.latex(expr)]
    if expr.is_Rational and not expr.is_Integer and 10**6 % expr.q == 0:
        right.append(str(float(expr)))
    try:
        wrong = [sympy.latex(expr + 1), sympy.latex(2 * expr), sympy.latex(-expr)]
    except (TypeError, ValueError):  # sets, relations, ...: no arithmetic
        wrong = ["0", "1"]
    return right, wrong


def answer_mixes(num_samples: int, num_prompts: int, seed: int = 0) -> list[list[str | None]]:
    """Per prompt, M answers: 50% a right form, 30% a wrong one, 20% none (a typical mid-training mix)."""
    rng = random.Random(seed)
    mixes = []
    for gold in champ_golds()[:num_prompts]:
        right, wrong = answer_forms(gold)
        draws = [rng.random() for _ in range(num_samples)]
        mixes.append([rng.choice(right) if u < 0.5 else rng.choice(wrong) if u < 0.8 else None for u in draws])
    return mixes


def run_one(num_samples: int, num_prompts: int) -> dict:
    """Time every prompt's clustering and grading in this (fresh, one-core) process."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sys.path.insert(0, str(REPO))
    from sete_lite.semantic import cluster_answers, grade_answers

    golds = champ_golds()[:num_prompts]
    mixes = answer_mixes(num_samples, num_prompts)
    cluster_ms, grade_ms, clusters = [], [], []
    for gold, answers in zip(golds, mixes, strict=True):
        start = time.perf_counter()
        labels = cluster_answers(answers)
        middle = time.perf_counter()
        grade_answers(gold, answers)
        end = time.perf_counter()
        cluster_ms.append(1000 * (middle - start))
        grade_ms.append(1000 * (end - middle))
        clusters.append(max(labels) + 1)
    quantiles = statistics.quantiles(cluster_ms, n=10)
    return {
        "num_samples": num_samples,
        "prompts": len(mixes),
        "cluster_ms_median": statistics.median(cluster_ms),
        "cluster_ms_p90": quantiles[-1],
        "cluster_ms_mean": statistics.fmean(cluster_ms),
        "cluster_ms_max": max(cluster_ms),
        "grade_ms_median": statistics.median(grade_ms),
        "mean_clusters": statistics.fmean(clusters),
        "distinct_answers_mean": statistics.fmean(len({a for a in m if a is not None}) for m in mixes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--prompts", type=int, default=270)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: one M, print JSON
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_one(args.child, args.prompts)))
        return

    rows = []
    for num_samples in args.num_samples:
        command = [sys.executable, __file__, "--child", str(num_samples), "--prompts", str(args.prompts)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.splitlines()[-1]))

    print("| M | prompts | cluster median ms | p90 ms | mean ms | max ms | grade median ms | mean clusters |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [
            r["num_samples"],
            r["prompts"],
            f"{r['cluster_ms_median']:.2f}",
            f"{r['cluster_ms_p90']:.2f}",
        ]
        cells += [f"{r['cluster_ms_mean']:.2f}", f"{r['cluster_ms_max']:.1f}", f"{r['grade_ms_median']:.2f}"]
        cells += [f"{r['mean_clusters']:.2f}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "cluster_answers / grade_answers per prompt, fresh process, one core",
                "goal": "median <= 25 ms per prompt at M = 8",
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores_available": len(os.sched_getaffinity(0)),
                    "python": platform.python_version(),
                    "math_verify": metadata.version("math-verify"),
                    "sympy": metadata.version("sympy"),
                },
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
