"""Curriculum staging and the sampler: order, layout, resume."""

from __future__ import annotations

import itertools
import random

import pytest
from trl.trainer.utils import RepeatSampler

from sete_lite.curriculum import CurriculumSampler, stage_indices


def test_stage_indices_by_hand() -> None:
    #        index: 0    1    2    3    4
    assert stage_indices([0.5, 0.1, 0.1, 0.9, 0.3], 2) == [[1, 2, 4], [0, 3]]  # ties keep order
    assert stage_indices([0.5, 0.1, 0.1, 0.9, 0.3], 1) == [[1, 2, 4, 0, 3]]
    assert stage_indices([3.0, 2.0, 1.0], 3) == [[2], [1], [0]]


@pytest.mark.parametrize(("n", "num_stages"), [(10, 3), (17, 4), (8, 8), (100, 2), (7, 1)])
def test_stage_indices_properties(n: int, num_stages: int) -> None:
    rng = random.Random(n)
    scores = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(n)]  # many ties
    stages = stage_indices(scores, num_stages)
    flat = [i for stage in stages for i in stage]
    assert sorted(flat) == list(range(n))  # a partition of the dataset
    assert max(map(len, stages)) - min(map(len, stages)) <= 1
    assert [scores[i] for i in flat] == sorted(scores)  # ascending SE across and within stages
    for a, b in itertools.pairwise(flat):
        if scores[a] == scores[b]:
            assert a < b  # stable for ties


def test_stage_indices_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        stage_indices([0.1, 0.2], 0)
    with pytest.raises(ValueError):
        stage_indices([0.1, 0.2], 3)
    with pytest.raises(ValueError):
        stage_indices([0.1, float("nan")], 1)


def test_sampler_walks_stages_in_order_with_fresh_shuffles() -> None:
    stages = [[3, 1, 4, 0], [2, 5, 6]]
    sampler = CurriculumSampler(stages, epochs_per_stage=3, seed=7)
    out = list(sampler)
    assert len(out) == len(sampler) == 3 * 4 + 3 * 3
    epochs = [out[0:4], out[4:8], out[8:12], out[12:15], out[15:18], out[18:21]]
    for epoch in epochs[:3]:
        assert sorted(epoch) == [0, 1, 3, 4]  # stage 0: every prompt once per epoch
    for epoch in epochs[3:]:
        assert sorted(epoch) == [2, 5, 6]
    assert len({tuple(e) for e in epochs[:3]}) > 1  # reshuffled between epochs
    assert list(CurriculumSampler(stages, epochs_per_stage=3, seed=7)) == out  # seeded
    assert list(CurriculumSampler(stages, epochs_per_stage=3, seed=8)) != out


def test_sampler_strict_order() -> None:
    sampler = CurriculumSampler(stage_indices([0.5, 0.1, 0.1, 0.9, 0.3], 2), epochs_per_stage=2, shuffle=False)
    assert list(sampler) == [1, 2, 4, 1, 2, 4, 0, 3, 0, 3]


def test_sampler_layout_matches_trl_repeat_sampler() -> None:
    # One stage, no shuffle, prompt count a multiple of batch_size: exactly TRL's RepeatSampler.
    for mini_repeat_count, batch_size, repeat_count in [(4, 3, 2), (2, 1, 1), (1, 6, 3)]:
        trl = RepeatSampler(list(range(12)), mini_repeat_count, batch_size, repeat_count, shuffle=False)
        ours = CurriculumSampler(
            [list(range(12))],
            shuffle=False,
            mini_repeat_count=mini_repeat_count,
            batch_size=batch_size,
            repeat_count=repeat_count,
        )
        assert list(ours) == list(trl)
        assert len(ours) == len(trl)


def test_sampler_completes_a_partial_batch_from_the_same_stage() -> None:
    sampler = CurriculumSampler([[0, 1, 2], [3, 4]], shuffle=False, mini_repeat_count=2, batch_size=2)
    # stage 0 has 3 prompts: the second batch is [2, 0] (TRL would drop prompt 2)
    assert list(sampler) == [0, 0, 1, 1, 2, 2, 0, 0, 3, 3, 4, 4]


def test_stage_at_matches_the_yielded_prompt() -> None:
    stages = [[0, 1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11]]
    sampler = CurriculumSampler(stages, epochs_per_stage=2, seed=1, mini_repeat_count=3, batch_size=2)
    stage_of_prompt = {i: s for s, stage in enumerate(stages) for i in stage}
    out = list(sampler)
    assert [sampler.stage_at(p) for p in range(len(out))] == [stage_of_prompt[i] for i in out]
    with pytest.raises(IndexError):
        sampler.stage_at(len(out))


def test_every_pass_is_the_whole_curriculum() -> None:
    # Stateless: a resumed run's dataloader starts a fresh pass and skips what it trained on.
    sampler = CurriculumSampler([[4, 2, 0], [1, 3, 5, 6]], epochs_per_stage=2, seed=3, mini_repeat_count=2)
    full = list(sampler)
    assert list(sampler) == full and len(full) == len(sampler)


def test_sampler_refuses_a_checkpoint_of_another_curriculum() -> None:
    state = CurriculumSampler([[0, 1], [2, 3]], seed=0).state_dict()
    for other in [
        CurriculumSampler([[0, 1], [2, 3]], seed=1),
        CurriculumSampler([[1, 0], [2, 3]], seed=0),
        CurriculumSampler([[0, 1], [2, 3]], seed=0, epochs_per_stage=2),
        CurriculumSampler([[0, 1], [2, 3]], seed=0, mini_repeat_count=8),
    ]:
        with pytest.raises(ValueError, match="different curriculum"):
            other.check_resumable(state)
    CurriculumSampler([[0, 1], [2, 3]], seed=0).check_resumable(state)  # the same curriculum resumes


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        CurriculumSampler([[0], []])
    with pytest.raises(ValueError):
        CurriculumSampler([[0]], epochs_per_stage=0)
