"""The toy study's measurements against an independent float64 computation, and its tables from result files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from sete_lite.arith.study import METHODS, mean_curve, mean_std, moving_average, policy_statistics, report
from sete_lite.arith.tiny import randomize_lora

SAMPLES = [  # held-out samples as sete_lite.eval records them: a stopped one ends with EOS, a cut one does not
    {"id": "a", "text": "2+2=4\n\\boxed{4}", "finish_reason": "stop"},
    {"id": "b", "text": "7*3=21", "finish_reason": "length"},
    {"id": "a", "text": "\\boxed{5}", "finish_reason": "stop"},
]
PROMPTS = {"a": "Start at 2. Add 2.\nAnswer:", "b": "Start at 7. Multiply by 3.\nAnswer:"}


@pytest.fixture
def policy(tiny_model_dir: Path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    randomize_lora(model, seed=0, scale=0.5, matrices="lora_B")  # a policy visibly different from the reference
    return model.eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def reference_statistics(model, tokenizer) -> dict[str, float]:
    """Each sample alone (no padding) in float64: entropy, lowest-80% entropy, mean log pi - log ref, length."""
    entropies, ratios, lengths = [], [], []
    for sample in SAMPLES:
        prompt = tokenizer(PROMPTS[sample["id"]], add_special_tokens=False)["input_ids"]
        completion = tokenizer(sample["text"], add_special_tokens=False)["input_ids"]
        completion += [tokenizer.eos_token_id] if sample["finish_reason"] == "stop" else []
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
            with model.disable_adapter():
                ref_logits = model(input_ids=ids).logits[0].double()
        for t, token in enumerate(completion):
            row = len(prompt) - 1 + t
            logp, ref = torch.log_softmax(logits[row], -1), torch.log_softmax(ref_logits[row], -1)
            entropies.append(-(logp.exp() * logp).sum().item())
            ratios.append((logp[token] - ref[token]).item())
        lengths.append(len(completion))
    low = sorted(entropies)[: math.floor(0.8 * len(entropies))]
    return {
        "entropy": sum(entropies) / len(entropies),
        "entropy_low": sum(low) / len(low),
        "kl_ref": sum(ratios) / len(ratios),
        "length": sum(lengths) / len(lengths),
    }


def test_policy_statistics_match_a_per_sample_float64_computation(policy):
    model, tokenizer = policy
    measured = policy_statistics(model, tokenizer, SAMPLES, PROMPTS)
    expected = reference_statistics(model, tokenizer)
    assert measured.keys() == expected.keys()
    for key in expected:
        assert measured[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    assert abs(expected["kl_ref"]) > 1e-3  # the adapter moved the policy, so the KL check is not trivially 0


def test_policy_statistics_of_the_reference_itself_have_zero_kl(policy):
    model, tokenizer = policy
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.zeros_(param)
    assert policy_statistics(model, tokenizer, SAMPLES, PROMPTS)["kl_ref"] == 0.0


def test_mean_std_and_mean_curve_by_hand():
    assert mean_std([0.5, 0.7], scale=100) == "60.0 ± 14.1"  # stdev of (50, 70) = 14.14
    assert mean_std([0.25], digits=2) == "0.25 ± 0.00"
    runs = [
        {"curves": {"step": [1, 2, 3], "entropy": [1.0, 2.0, None]}},
        {"curves": {"step": [1, 2], "entropy": [3.0, 4.0]}},
    ]
    assert mean_curve(runs, "entropy") == ([1, 2], [2.0, 3.0])  # step 3: not every seed logged it
    assert moving_average([1.0, 2.0, 3.0, 5.0], 2) == [1.0, 1.5, 2.5, 4.0]


def fake_result(method: str, seed: int, avg: float) -> dict:
    return {
        "method": method, "seed": seed, "avg@8": avg, "pass@1": avg, "pass@8": min(1.0, 2 * avg),
        "entropy": 0.1, "entropy_low": 0.01, "kl_ref": 0.05, "length": 20.0, "steps": 128,
        "curves": {"step": [1, 2], "reward": [0.4, 0.5], "entropy": [0.1, 0.2], "kl": [0.0, 0.1],
                   "sent/entropy_low_mean": [0.01, 0.02], "completions/mean_length": [20.0, 21.0]},
    }  # fmt: skip


def test_report_tables_from_result_files(tmp_path):
    for seed, avg in [(0, 0.5), (1, 0.7)]:
        path = tmp_path / "runs" / "sent" / f"seed{seed}" / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(fake_result("sent", seed, avg)))
    text = report(tmp_path, [0, 1])
    row = next(line for line in text.splitlines() if line.startswith("| sent |"))
    assert row.split(" | ")[1:4] == ["2", "60.0 ± 14.1", "100.0 ± 0.0"]
    assert "grpo" not in text  # methods without results are left out, not shown as zeros
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sent"]["avg@8"] == pytest.approx(0.6) and summary["sent"]["seeds"] == [0, 1]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert set(METHODS) >= {"grpo", "sent", "sent_no_curriculum", "curriculum_only", "kl_cov", "clip_cov",
                            "entropy_bonus", "high_entropy_mask"}  # fmt: skip
