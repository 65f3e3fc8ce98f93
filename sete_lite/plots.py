"""Training curves as PNG files: reward, entropy and KL against step, curriculum stages marked.

SENT's claims are about curves (entropy kept under control, a dip when a harder stage starts), so
a run writes them as pictures next to metrics.jsonl.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

CURVES = {
    "reward": ("reward", "mean reward"),
    "entropy": ("entropy", "mean token entropy (nats)"),
    "kl": ("kl", "KL to the reference (k3)"),
}


def stage_starts(rows: Sequence[dict]) -> list[int]:
    """The steps at which `curriculum/stage` changes (the first step of each later stage)."""
    starts, previous = [], None
    for row in rows:
        stage = row.get("curriculum/stage")
        if stage is None:
            continue
        if previous is not None and stage != previous:
            starts.append(row["step"])
        previous = stage
    return starts


def plot_training_curves(rows: Sequence[dict], out_dir: str | Path, title: str = "") -> list[Path]:
    """One PNG per curve (reward, entropy, kl) from metrics rows; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    boundaries = stage_starts(rows)
    written = []
    for name, (key, label) in CURVES.items():
        points = [(row["step"], row[key]) for row in rows if _is_number(row.get(key))]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=2, linewidth=1)
        for i, step in enumerate(boundaries):
            ax.axvline(step, color="gray", linestyle="--", linewidth=1, label="stage start" if i == 0 else None)
        if boundaries:
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{title} {name}".strip())
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)
