"""The semantic-entropy curriculum: stages by SE, and the sampler that walks them.

This module owns the curriculum (docs/method.md#curriculum, step 5) and its config keys
(`CurriculumConfig`): `stage_indices` sorts prompts by SE (low = the model is consistent = easier)
and cuts them into equal stages; `CurriculumSampler` yields dataset indices stage by stage,
`epochs_per_stage` epochs each, shuffled within a stage. Its `state_dict` (what defines the order)
is saved with every checkpoint, and a resume that would walk another curriculum is refused.

It yields indices in the layout of TRL's `RepeatSampler` (the sampler of GRPOTrainer's
dataloader): chunks of `batch_size` prompts, each chunk `repeat_count` times, each index
`mini_repeat_count` times in a row. A trainer overrides `GRPOTrainer._get_train_sampler` to return
`CurriculumSampler(stages, ..., mini_repeat_count=num_generations, batch_size=generation_batch_size
// num_generations, repeat_count=num_iterations * steps_per_generation)`.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from sete_lite.config import setting


@dataclass
class CurriculumConfig:
    """Whether and how to train stage by stage (with it, epochs_per_stage replaces num_train_epochs)."""

    curriculum: bool = setting(True, "train stage by stage by SE (false: TRL's shuffled sampler, `num_train_epochs`)")
    num_stages: int = setting(2, "curriculum stages of equal size")
    epochs_per_stage: int = setting(5, "epochs over each stage (replaces `num_train_epochs`)")
    shuffle_within_stage: bool = setting(True, "false keeps strict ascending-SE order")

    def __post_init__(self) -> None:
        if self.num_stages < 1 or self.epochs_per_stage < 1:
            raise ValueError(
                f"num_stages and epochs_per_stage must be at least 1, got {self.num_stages}, {self.epochs_per_stage}"
            )


def stage_indices(scores: Sequence[float], num_stages: int) -> list[list[int]]:
    """Dataset indices sorted by score ascending (ties keep dataset order), cut into `num_stages`
    stages whose sizes differ by at most one (the earlier stages take the remainder)."""
    if not 1 <= num_stages <= len(scores):
        raise ValueError(f"num_stages must be between 1 and the number of prompts ({len(scores)}), got {num_stages}")
    if any(math.isnan(s) for s in scores):
        raise ValueError("scores contain NaN; every prompt needs a semantic entropy to be staged")
    order = sorted(range(len(scores)), key=lambda i: scores[i])  # sorted() is stable
    size, remainder = divmod(len(scores), num_stages)
    stages, start = [], 0
    for stage in range(num_stages):
        end = start + size + (1 if stage < remainder else 0)
        stages.append(order[start:end])
        start = end
    return stages


class CurriculumSampler(Sampler[int]):
    """Stage by stage, `epochs_per_stage` epochs per stage, in TRL RepeatSampler's layout.

    One pass over the sampler is the whole curriculum (len(self) indices). Within a stage each epoch
    is a fresh permutation, seeded by (seed, stage, epoch) so a resumed run sees the same order;
    `shuffle=False` keeps strict ascending-SE order. An epoch whose prompt count is not a multiple of
    `batch_size` is completed with prompts from the start of the same epoch's order (TRL drops the
    remainder instead, which with `shuffle=False` would skip the same hardest prompts every epoch).

    Iteration is stateless (every pass is the whole curriculum): a resumed run skips the batches it
    already trained on, as transformers' Trainer does for any sampler.
    """

    def __init__(
        self,
        stages: Sequence[Sequence[int]],
        *,
        epochs_per_stage: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        mini_repeat_count: int = 1,
        batch_size: int = 1,
        repeat_count: int = 1,
    ) -> None:
        if not stages or any(len(stage) == 0 for stage in stages):
            raise ValueError("every stage needs at least one prompt")
        for name, value in [
            ("epochs_per_stage", epochs_per_stage),
            ("mini_repeat_count", mini_repeat_count),
            ("batch_size", batch_size),
            ("repeat_count", repeat_count),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.stages = [list(stage) for stage in stages]
        self.epochs_per_stage = epochs_per_stage
        self.shuffle = shuffle
        self.seed = seed
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        # Indices yielded by one epoch of each stage, and where each stage starts.
        self.epoch_lengths = [
            math.ceil(len(stage) / batch_size) * batch_size * repeat_count * mini_repeat_count for stage in self.stages
        ]
        self.stage_starts = list(
            itertools.accumulate([n * epochs_per_stage for n in self.epoch_lengths[:-1]], initial=0)
        )

    def __len__(self) -> int:
        return sum(n * self.epochs_per_stage for n in self.epoch_lengths)

    def stage_at(self, position: int) -> int:
        """The stage that the index at `position` (0-based, in yielded indices) belongs to."""
        if not 0 <= position < len(self):
            raise IndexError(f"position {position} outside the curriculum (length {len(self)})")
        return bisect.bisect_right(self.stage_starts, position) - 1

    def epoch_order(self, stage: int, epoch: int) -> list[int]:
        """The prompt indices of one epoch of one stage, padded to a multiple of batch_size."""
        order = list(self.stages[stage])
        if self.shuffle:
            order = [order[i] for i in np.random.default_rng([self.seed, stage, epoch]).permutation(len(order))]
        padded = math.ceil(len(order) / self.batch_size) * self.batch_size
        return [order[i % len(order)] for i in range(padded)]

    def _epoch_indices(self, stage: int, epoch: int) -> list[int]:
        """The yielded indices of one epoch of one stage, repeats included (RepeatSampler layout)."""
        order = self.epoch_order(stage, epoch)
        indices = []
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    indices.extend([index] * self.mini_repeat_count)
        return indices

    def __iter__(self) -> Iterator[int]:
        for stage in range(len(self.stages)):
            for epoch in range(self.epochs_per_stage):
                yield from self._epoch_indices(stage, epoch)

    def state_dict(self) -> dict[str, Any]:
        """What defines the order: saved with each checkpoint, compared on resume."""
        return {
            "stages": self.stages,
            "epochs_per_stage": self.epochs_per_stage,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "layout": [self.mini_repeat_count, self.batch_size, self.repeat_count],
        }

    def check_resumable(self, saved: dict[str, Any]) -> None:
        """Refuse to resume from a checkpoint saved by another curriculum (`saved`: its state_dict)."""
        mine = self.state_dict()
        different = [key for key in mine if saved.get(key) != mine[key]]
        if different:
            raise ValueError(
                f"the checkpoint was saved by a different curriculum (it differs in {different}); resume with "
                "the same scores, num_stages, epochs_per_stage, shuffle_within_stage, seed and batch layout, "
                "or start a new run in another output directory"
            )
