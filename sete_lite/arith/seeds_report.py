"""`python -m sete_lite.arith.seeds_report`: one training config run with several seeds, reported paired.

This module owns the report of docs/results/smollm2_cpu.md: from finished run directories of the
same config (`python -m sete_lite.train --config builtin:smollm2-cpu --set seed=S --output-dir D`),
it keeps what the report needs in OUT/runs/seedS/result.json (held-out results before training and
after each stage, the logged metrics, wall time), so the report rebuilds without the run
directories, and writes:

- OUT/table.md: held-out Avg@n and Pass@n before and after training, per seed and paired (after minus
  before, seed by seed: each seed samples its base evaluation with its own stream), mean response
  length, the share of samples with no answer found, training and wall time, and Avg by kind of
  problem where the held-out split records kinds (the words task's);
- OUT/curves.png: reward, token entropy, KL to the reference and completion length per step, each
  seed a line, the curriculum's stage switch marked.

    python -m sete_lite.arith.seeds_report --runs runs/smollm2-s0 runs/smollm2-s1 runs/smollm2-s2 \\
        --out docs/results/smollm2_cpu
    python -m sete_lite.arith.seeds_report --out docs/results/smollm2_cpu      # rebuild from result.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from sete_lite.atomic import read_jsonl, write_text
from sete_lite.builtins import resolve_builtin
from sete_lite.rundir import RunDir

CURVES = {
    "reward": "reward (accuracy)",
    "entropy": "token entropy (nats)",
    "kl": "KL to the reference",
    "completions/mean_length": "completion length (tokens)",
}


def problem_kinds(config: dict[str, Any]) -> dict[str, str]:
    """Each held-out problem's kind (sete_lite.arith.words: add, sub, word_add, word_sub) by the id the
    evaluation gives a local file's problem, its row number; empty when the split has no kinds."""
    rows = read_jsonl(Path(resolve_builtin(config["eval_benchmarks"][0])))
    return {str(number): row["kind"] for number, row in enumerate(rows) if "kind" in row}


def collect(run: Path) -> dict[str, Any]:
    """What the report needs from one finished run directory."""
    layout = RunDir(run)
    config = json.loads(layout.config.read_text())
    kinds = problem_kinds(config)
    evaluations = {}
    for name, path in layout.evaluations():
        results = json.loads(path.read_text())
        samples = read_jsonl(path.parent / "samples.jsonl")
        by_kind: dict[str, list[bool]] = {}
        for row in samples:
            if row["id"] in kinds:
                by_kind.setdefault(kinds[row["id"]], []).append(row["correct"])
        evaluations[name] = {
            **results["average"],
            "mean_tokens": statistics.fmean(row["num_tokens"] for row in samples),
            "no_answer": statistics.fmean(row["answer"] is None for row in samples),
            "avg_by_kind": {kind: statistics.fmean(verdicts) for kind, verdicts in sorted(by_kind.items())},
        }
    metrics = [
        {key: row[key] for key in ("step", "curriculum/stage", *CURVES) if key in row}
        for row in read_jsonl(layout.metrics)
        if "reward" in row
    ]
    summary_lines = (run / "README.md").read_text().splitlines()
    method = next(line for line in summary_lines if line.startswith("- method:"))
    return {
        "seed": config["seed"],
        "learning_rate": config["learning_rate"],
        "evaluations": evaluations,
        "metrics": metrics,
        # config.json is written when the run starts, README.md when it ends.
        "wall_seconds": round((run / "README.md").stat().st_mtime - layout.config.stat().st_mtime, 1),
        "train_seconds": float(method.split("steps (")[1].split(" s of training")[0]),
    }


def mean_std(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def table(results: list[dict[str, Any]]) -> str:
    """Per seed and paired: held-out accuracy before and after training, and what else changed."""
    last = max(results[0]["evaluations"], key=lambda name: -1 if name == "before" else int(name.split("-")[1]))
    n = results[0]["evaluations"]["before"]["pass@k"]
    k = max(n, key=int)
    lines = [
        f"| seed | Avg before | Avg after | after - before | Pass@{k} before | Pass@{k} after | tokens before -> "
        "after | no answer before -> after | train s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        before, after = result["evaluations"]["before"], result["evaluations"][last]
        lines.append(
            f"| {result['seed']} | {100 * before['avg']:.1f} | {100 * after['avg']:.1f} | "
            f"{100 * (after['avg'] - before['avg']):+.1f} | {100 * before['pass@k'][k]:.1f} | "
            f"{100 * after['pass@k'][k]:.1f} | {before['mean_tokens']:.1f} -> {after['mean_tokens']:.1f} | "
            f"{100 * before['no_answer']:.1f} -> {100 * after['no_answer']:.1f} % | {result['train_seconds']:.0f} | "
            f"{result['wall_seconds']:.0f} |"
        )
    befores = [r["evaluations"]["before"]["avg"] for r in results]
    afters = [r["evaluations"][last]["avg"] for r in results]
    pass_before = [r["evaluations"]["before"]["pass@k"][k] for r in results]
    pass_after = [r["evaluations"][last]["pass@k"][k] for r in results]
    lines.append(
        f"| mean ± std | {mean_std(befores)} | {mean_std(afters)} | "
        f"{mean_std([a - b for a, b in zip(afters, befores, strict=True)])} | {mean_std(pass_before)} | "
        f"{mean_std(pass_after)} | | | {mean_std([r['train_seconds'] for r in results], 1)} | "
        f"{mean_std([r['wall_seconds'] for r in results], 1)} |"
    )
    by_kind = results[0]["evaluations"]["before"].get("avg_by_kind", {})
    if by_kind:
        lines += ["", "Held-out Avg (%) by kind of problem, mean ± std over seeds:", "", "| kind | before | after |"]
        lines.append("|---|---|---|")
        for kind in by_kind:
            cells = [
                mean_std([r["evaluations"][name]["avg_by_kind"][kind] for r in results]) for name in ("before", last)
            ]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    stages = [name for name in results[0]["evaluations"] if name != "before"]
    lines += ["", "Held-out Avg (%) after each stage, per seed:", "", "| seed | before | " + " | ".join(stages) + " |"]
    lines.append("|---|---|" + "---|" * len(stages))
    for result in results:
        cells = [f"{100 * result['evaluations'][name]['avg']:.1f}" for name in ["before", *stages]]
        lines.append(f"| {result['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(results: list[dict[str, Any]], path: Path) -> Path:
    from sete_lite.plots import plt, save

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for ax, (key, label) in zip(axes, CURVES.items(), strict=True):
        for result in results:
            rows = [row for row in result["metrics"] if key in row]
            ax.plot([row["step"] for row in rows], [row[key] for row in rows], label=f"seed {result['seed']}")
        rows = results[0]["metrics"]
        switches = [
            b["step"] for a, b in itertools.pairwise(rows) if a.get("curriculum/stage") != b.get("curriculum/stage")
        ]
        for step in switches:
            ax.axvline(step - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path, dpi=110)


def report(out: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("seed*/result.json"))]
    if not results:
        raise FileNotFoundError(f"no runs/seed*/result.json under {out}: pass --runs run directories first")
    text = table(results)
    write_text(out / "table.md", text)
    plot_curves(results, out / "curves.png")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sete_lite.arith.seeds_report", description=__doc__)
    parser.add_argument("--runs", nargs="*", default=[], type=Path, help="finished run directories (one per seed)")
    parser.add_argument("--out", type=Path, required=True, help="where result.json files, table.md and curves.png go")
    args = parser.parse_args(argv)
    for run in args.runs:
        result = collect(run)
        target = args.out / "runs" / f"seed{result['seed']}" / "result.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text(target, json.dumps(result, indent=1) + "\n")
    print(report(args.out))


if __name__ == "__main__":
    main()
