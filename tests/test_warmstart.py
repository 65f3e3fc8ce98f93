"""The warm-started base model: a deterministic build, supervised loss on the solution only, and the
shipped model loading through load_policy with the held-out accuracy its build recorded."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sete_lite.arith import CHECKPOINT
from sete_lite.arith.task import heldout_accuracy, make_splits
from sete_lite.arith.tiny import build_tokenizer
from sete_lite.arith.warmstart import WarmstartConfig, build, collate, learning_rate, training_pairs
from sete_lite.builtins import resolve_builtin
from sete_lite.model import ModelConfig, load_policy
from sete_lite.rollout import TransformersEngine

SMALL = {"hidden_size": 64, "num_layers": 1, "num_heads": 1, "num_kv_heads": 1, "intermediate_size": 128}


def small_config(**changes) -> WarmstartConfig:
    return WarmstartConfig(**{**SMALL, "num_problems": 200, "steps": 3, "batch_size": 8, **changes})


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_build_is_deterministic_and_trains(tmp_path):
    a = build(tmp_path / "a", small_config(), progress=False)
    b = build(tmp_path / "b", small_config(), progress=False)
    untrained = build(tmp_path / "c", small_config(steps=0), progress=False)
    wa, wb, w0 = weights(a), weights(b), weights(untrained)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], w0[k]) for k in wa)  # the supervised steps changed the weights
    assert json.loads((a / "warmstart.json").read_text())["config"]["steps"] == 3


def test_warm_start_data_never_holds_a_heldout_question():
    cfg = small_config(num_problems=3000)
    heldout = {p.question for p in make_splits()["test"]}
    pairs = training_pairs(cfg)
    assert len(pairs) == 3000
    assert not {prompt.split("\n")[0] for prompt, _ in pairs} & heldout
    with pytest.raises(ValueError, match="split seed"):
        training_pairs(small_config(data_seed=2))


def test_collate_puts_the_loss_on_the_solution_and_eos_only():
    tokenizer = build_tokenizer()
    batch = collate([("Q: 1+1?", "2"), ("Q: 10+10?", "1+1=20\n\\boxed{20}")], tokenizer)
    for row, (prompt, solution) in enumerate([("Q: 1+1?", "2"), ("Q: 10+10?", "1+1=20\n\\boxed{20}")]):
        labels = batch["labels"][row]
        kept = labels[labels != -100].tolist()
        assert kept == tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert (labels[: len(prompt)] == -100).all()
        assert batch["attention_mask"][row].sum() == len(prompt) + len(solution) + 1


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    cfg = WarmstartConfig(steps=100, warmup_steps=10, learning_rate=1.0)
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 10) == pytest.approx(1.0)
    assert learning_rate(cfg, 100) == pytest.approx(0.1)


def test_shipped_model_loads_as_builtin_and_reaches_its_recorded_accuracy():
    assert resolve_builtin("builtin:arith-qwen2") == str(CHECKPOINT)
    recorded = json.loads((CHECKPOINT / "warmstart.json").read_text())["heldout"]
    model, tokenizer = load_policy(
        ModelConfig(model_name_or_path="builtin:arith-qwen2", backend="transformers", load_in_4bit=False)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scores = heldout_accuracy(TransformersEngine(model, tokenizer), max_problems=48, progress=False)
    finally:
        torch.set_num_threads(threads)
    # 48 problems x 8 samples at temperature 1.0: within sampling noise of the full-split figure.
    assert abs(scores["avg"] - recorded["avg"]) < 0.12, (scores["avg"], recorded["avg"])
    assert 0.15 < recorded["avg"] < 0.65  # room for RL: neither unable nor already solved
