"""Training curves as PNG files, against step, with each curriculum stage labelled.

SENT's claims are about curves (entropy kept under control, a dip when a harder stage starts), so a
run writes them as pictures next to metrics.jsonl, and rewrites them at every checkpoint and stage end
(sete_lite.rundir.RunRecorder), not only when it finishes:

- reward, token entropy, KL to the reference, the share of groups whose rewards are all equal
  (`frac_reward_zero_std`: no advantage, nothing to learn from) and completion length, each step as a
  faint line with its rolling mean over ROLLING_WINDOW steps on top;
- held-out accuracy (Avg) before training and after each stage, per benchmark, when the run evaluates.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

# file name: (metrics.jsonl key, axis label)
CURVES = {
    "reward": ("reward", "mean reward"),
    "entropy": ("entropy", "mean token entropy (nats)"),
    "kl": ("kl", "KL to the reference (k3)"),
    "frac_reward_zero_std": ("frac_reward_zero_std", "groups with equal rewards (share)"),
    "completion_length": ("completions/mean_length", "completion length (tokens)"),
}
ROLLING_WINDOW = 8


def stage_starts(rows: Sequence[dict]) -> list[tuple[int, int]]:
    """(step, stage) where `curriculum/stage` changes: the first step of each later stage."""
    starts, previous = [], None
    for row in rows:
        stage = row.get("curriculum/stage")
        if stage is None:
            continue
        if previous is not None and stage != previous:
            starts.append((row["step"], int(stage)))
        previous = stage
    return starts


def rolling_mean(values: Sequence[float], window: int = ROLLING_WINDOW) -> list[float]:
    """The mean of each value and up to window - 1 before it."""
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]


def mark_stages(ax, rows: Sequence[dict]) -> None:
    """A dashed line at each stage start, labelled with the stage it starts."""
    for step, stage in stage_starts(rows):
        ax.axvline(step - 0.5, color="gray", linestyle="--", linewidth=1)
        ax.annotate(f"stage {stage}", (step - 0.5, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="gray")  # fmt: skip


def plot_training_curves(rows: Sequence[dict], out_dir: str | Path, title: str = "") -> list[Path]:
    """One PNG per curve from metrics.jsonl's training rows; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (key, label) in CURVES.items():
        points = [(row["step"], row[key]) for row in rows if _is_number(row.get(key))]
        if not points:
            continue
        steps, values = [s for s, _ in points], [v for _, v in points]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, values, linewidth=1, alpha=0.35, color="C0", label="per step")
        ax.plot(steps, rolling_mean(values), linewidth=2, color="C0", label=f"rolling mean ({ROLLING_WINDOW} steps)")
        mark_stages(ax, rows)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{title} {name}".strip())
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        written.append(save(fig, out_dir / f"{name}.png"))
    return written


def plot_heldout(evaluations: Sequence[tuple[str, dict]], out_dir: str | Path) -> Path | None:
    """Held-out Avg per benchmark before training and after each stage (evaluations: (name, results.json))."""
    if not evaluations:
        return None
    names = [name for name, _ in evaluations]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label in evaluations[0][1]["benchmarks"]:
        ax.plot(
            names, [100 * results["benchmarks"][label]["avg"] for _, results in evaluations], marker="o", label=label
        )
    ax.set_xlabel("evaluation")
    ax.set_ylabel("held-out accuracy, Avg (%)")
    ax.set_title("held-out accuracy by stage")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return save(fig, Path(out_dir) / "heldout.png")


def save(fig, path: Path, dpi: int = 120) -> Path:
    """Write a figure whole or not at all, and close it: a temporary file of this call's own, then a
    rename. Two writers may draw the same plot at once (a training run and a notebook's live curves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(handle)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)
