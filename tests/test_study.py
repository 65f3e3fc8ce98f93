"""The toy study's measurements against an independent float64 computation, and its tables from result files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from sete_lite.arith.study import (
    METHODS,
    SMOLLM2_METHODS,
    SampleTokens,
    group_advantages,
    mean_curve,
    mean_std,
    moving_average,
    policy_statistics,
    report,
    study_runs,
    token_kind,
    token_set_report,
    token_sets,
)
from sete_lite.arith.tiny import randomize_lora

SAMPLES = [  # held-out samples as sete_lite.eval records them: a stopped one ends with EOS, a cut one does not
    {"id": "a", "text": "2+2=4\n\\boxed{4}", "finish_reason": "stop", "num_tokens": 16},
    {"id": "b", "text": "7*3=21", "finish_reason": "length", "num_tokens": 6},
    {"id": "a", "text": "\\boxed{5}", "finish_reason": "stop", "num_tokens": 10},
]
PROMPTS = {"a": "Start at 2. Add 2.\nAnswer:", "b": "Start at 7. Multiply by 3.\nAnswer:"}


@pytest.fixture
def policy(tiny_model_dir: Path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    randomize_lora(model, seed=0, scale=0.5, matrices="lora_B")  # a policy visibly different from the reference
    return model.eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def reference_statistics(model, tokenizer, temperature: float = 1.0) -> dict[str, float]:
    """Each sample alone (no padding) in float64, from logits / temperature: entropy, lowest-80% entropy,
    mean log pi - log ref, length."""
    entropies, ratios, lengths = [], [], []
    for sample in SAMPLES:
        prompt = tokenizer(PROMPTS[sample["id"]], add_special_tokens=False)["input_ids"]
        completion = tokenizer(sample["text"], add_special_tokens=False)["input_ids"]
        completion += [tokenizer.eos_token_id] if sample["finish_reason"] == "stop" else []
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double() / temperature
            with model.disable_adapter():
                ref_logits = model(input_ids=ids).logits[0].double() / temperature
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
        "retokenized_exact": 1.0,  # the character-level tokenizer round-trips every sample
    }


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_policy_statistics_match_a_per_sample_float64_computation(policy, temperature):
    model, tokenizer = policy
    measured = policy_statistics(model, tokenizer, SAMPLES, PROMPTS, temperature=temperature)
    expected = reference_statistics(model, tokenizer, temperature)
    assert measured.keys() == expected.keys()
    for key in expected:
        assert measured[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    assert abs(expected["kl_ref"]) > 1e-3  # the adapter moved the policy, so the KL check is not trivially 0
    if temperature != 1.0:  # the temperature reaches the measurement: temperature 1's is 10x the tolerance away
        assert measured["entropy"] != pytest.approx(reference_statistics(model, tokenizer)["entropy"], rel=1e-3)


def test_a_sample_whose_retokenization_differs_from_the_sampled_tokens_is_counted(policy):
    model, tokenizer = policy
    samples = [SAMPLES[0], {**SAMPLES[1], "num_tokens": 5}]  # BPE can merge what the sampler emitted apart
    assert policy_statistics(model, tokenizer, samples, PROMPTS)["retokenized_exact"] == 0.5


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


def test_group_advantages_by_hand():
    samples = [{"id": "a", "correct": c} for c in (1, 0, 0, 1)] + [{"id": "b", "correct": 1}] * 2
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of (1, 0, 0, 1)
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4), 0.0, 0.0]
    assert group_advantages(samples) == pytest.approx(expected)


def test_token_kinds_by_hand():
    assert [token_kind(p, a) for p, a in [(" 12", True), ("7", False), (" +", False), ("=", False)]] == [
        "answer", "number", "operator", "operator"]  # fmt: skip
    assert [token_kind(p, False) for p in [" plus", "\n", ".", " "]] == ["word", "other", "other", "other"]


def test_token_sets_follow_the_loss_rules_against_a_hand_reference(tiny_model_dir):
    """T_low = the lowest 80 % by entropy, T_hc = its top 20 % by covariance of log-prob and advantage,
    recomputed here in float64 from the definitions (distinct values, so no tie rule is involved)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [("a", "2+2=4", 1), ("a", "2+2=5", 0), ("b", "7*3=21", 1), ("b", "7*3=20", 0)]
    kinds = {"2+2=4": ["number", "operator", "number", "operator", "answer", "other"],
             "7*3=21": ["number", "operator", "number", "operator", "answer", "answer", "other"]}  # fmt: skip
    kinds["2+2=5"], kinds["7*3=20"] = kinds["2+2=4"], kinds["7*3=21"]
    samples = [{"id": key, "text": text, "correct": correct} for key, text, correct in texts]
    generator = torch.Generator().manual_seed(0)
    tokens, offset = [], 0
    for sample in samples:
        ids = tokenizer(sample["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        n = len(ids)
        tokens.append(SampleTokens(ids, torch.rand(n, generator=generator), -torch.rand(n, generator=generator)))
        offset += n
    loss = type("Loss", (), {"low_entropy_quantile": 0.8, "high_cov_ratio": 0.2})()
    measured = token_sets(tokenizer, samples, tokens, loss, examples=4)

    entropy = [e.item() for t in tokens for e in t.entropy.double()]
    logp = [v.item() for t in tokens for v in t.logp.double()]
    advantage = [a for t, a in zip(tokens, group_advantages(samples), strict=True) for _ in t.ids]
    kind = [k for s in samples for k in kinds[s["text"]]]
    low = sorted(range(len(entropy)), key=lambda i: entropy[i])[: math.floor(0.8 * len(entropy))]
    mean_logp, mean_adv = (sum(v[i] for i in low) / len(low) for v in (logp, advantage))
    cov = {i: (logp[i] - mean_logp) * (advantage[i] - mean_adv) for i in low}
    high = sorted(low, key=lambda i: -cov[i])[: max(1, math.floor(0.2 * len(low)))]
    free = [i for i in range(len(entropy)) if i not in low]
    for name, chosen in [("T_hc", high), ("T_low without T_hc", [i for i in low if i not in high]),
                         ("free (not in T_low)", free)]:  # fmt: skip
        got = measured["sets"][name]
        assert got["tokens"] == len(chosen), name
        assert got["entropy"] == pytest.approx(sum(entropy[i] for i in chosen) / len(chosen), rel=1e-6), name
        for k in ("answer", "number", "operator", "word", "other"):
            assert got["kinds"][k] == pytest.approx(sum(kind[i] == k for i in chosen) / len(chosen)), (name, k)
    # The examples mark T_hc tokens «x» and free ones ⟨x⟩, in the samples that hold a T_hc token.
    pieces = [tokenizer.decode([i]) for t in tokens for i in t.ids]
    marked = ["«" + p + "»" if i in high else "⟨" + p + "⟩" if i in free else p for i, p in enumerate(pieces)]
    starts = [0]
    for t in tokens:
        starts.append(starts[-1] + len(t.ids))
    expected = [{"correct": bool(s["correct"]), "text": "".join(marked[starts[j] : starts[j + 1]])}
                for j, s in enumerate(samples) if any(starts[j] <= i < starts[j + 1] for i in high)]  # fmt: skip
    assert measured["examples"] == expected and expected


def test_the_smollm2_study_compares_the_issue_methods():
    methods, sweep = study_runs("builtin:smollm2-cpu")
    assert methods is SMOLLM2_METHODS and list(sweep) == ["sent_k0.002_bl0.1_bh0.4"]  # the KL x10 at rho 0.8
    assert "low_entropy_quantile" not in sweep["sent_k0.002_bl0.1_bh0.4"]
    assert {name: (m["mode"], m["curriculum"]) for name, m in methods.items()} == {
        "grpo": ("grpo", False), "sent": ("sent", True), "curriculum_only": ("grpo", True),
        "clip_cov": ("clip_cov", False), "sent_k0.002_bl0.1_bh0.4_rho0.95": ("sent", True)}  # fmt: skip
    rho95 = methods["sent_k0.002_bl0.1_bh0.4_rho0.95"]
    assert (rho95["low_entropy_quantile"], rho95["beta_low"], rho95["beta_high"]) == (0.95, 0.1, 0.4)


def test_measure_samples_as_the_eval_command_does_on_the_real_model(smollm2_dir, tmp_path):
    """On SmolLM2 the study measures the policy as `python -m sete_lite.eval` evaluates it (chat template,
    temperature 0.7, math-verify answers), and its token sets cover every sampled token."""
    from sete_lite.arith.study import load_trained, measure
    from sete_lite.eval import main as eval_main

    config = "builtin:smollm2-cpu"
    settings = ["eval_num_samples=2", "eval_k=[1, 2]", "eval_max_problems=12"]
    evaluated = eval_main(
        ["--config", config, "--output-dir", str(tmp_path), *(a for s in settings for a in ("--set", s))]
    )
    model, tokenizer = load_trained(settings, None, config)
    measured = measure(model, tokenizer, 0, config, settings)
    samples = evaluated["samples"]
    assert len(samples) == 24 and 0 < measured["avg@2"] == evaluated["average"]["avg"]
    assert measured["pass@2"] == evaluated["average"]["pass@k"]["2"]
    assert measured["retokenized_exact"] > 0.9  # BPE re-tokenization of the sampled text mostly round-trips
    sets = measured["token_sets"]["sets"]
    total = sum(entry["tokens"] for entry in sets.values())
    sampled = [tokenizer(s["text"], add_special_tokens=False)["input_ids"] for s in samples]
    assert total == sum(len(ids) + (s["finish_reason"] == "stop") for ids, s in zip(sampled, samples, strict=True))
    assert sets["free (not in T_low)"]["tokens"] == total - math.floor(0.8 * total)
    assert sets["free (not in T_low)"]["entropy"] > sets["T_low without T_hc"]["entropy"]


def token_set_result(low: int, high: int, free: int) -> dict:
    """token_sets of a result with these set sizes (kinds, entropies and tokens made up)."""
    kinds = {"answer": 0.5, "number": 0.5, "operator": 0.0, "word": 0.0, "other": 0.0}
    return {"sets": {
        "T_hc": {"tokens": high, "entropy": 0.2, "kinds": kinds, "top_tokens": [["12", 2]]},
        "T_low without T_hc": {"tokens": low, "entropy": 0.01, "kinds": kinds, "top_tokens": [[" |", 3]]},
        "free (not in T_low)": {"tokens": free, "entropy": 1.0, "kinds": kinds, "top_tokens": [[" 7", 1]]}},
        "examples": [{"correct": True, "text": "7 + 5 = «12»\n"}]}  # fmt: skip


def test_token_set_report_by_hand():
    sets = token_set_result
    base = {"runs": [{"seed": 0, "token_sets": sets(7, 1, 2)}]}
    results = {"grpo": [{"seed": 0, "token_sets": sets(15, 1, 4)}, {"seed": 1, "token_sets": sets(7, 1, 2)}]}
    text = token_set_report(results, base)
    assert "| base (no RL) | T_hc | 10.0 | 0.200 | 50 | 50 | 0 | 0 | 0 |" in text
    assert "| grpo | free (not in T_low) | 20.0 | 1.000 |" in text  # (4/20 + 2/10) / 2
    assert "| grpo | T_hc | 7.5 |" in text  # (1/20 + 1/10) / 2
    assert "`' \\|'` 3" in text and "[correct] 7 + 5 = «12»⏎" in text  # a pipe cannot break the table


def test_the_smollm2_report_shows_token_sets_and_paired_differences(tmp_path):
    for method, avg in [("grpo", 0.5), ("sent", 0.6), ("sent_k0.002_bl0.1_bh0.4", 0.7)]:
        path = tmp_path / "runs" / method / "seed0" / "result.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({**fake_result(method, 0, avg), "token_sets": token_set_result(7, 1, 2)}))
    base = {"method": "base", "runs": [{**fake_result("base", 0, 0.25), "token_sets": token_set_result(7, 1, 2)}]}
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "result.json").write_text(json.dumps(base))
    report(tmp_path, [0], "builtin:smollm2-cpu")
    paired = (tmp_path / "paired.md").read_text()
    assert "| sent_k0.002_bl0.1_bh0.4 | 0 | +10.0 [+10.0] |" in (tmp_path / "sweep_paired.md").read_text()
    assert "| sent | 0 | +10.0 [+10.0] |" in paired and "| sent | 0 | +35.0 [+35.0] |" in paired  # minus grpo, base
    assert "| sent | T_hc | 10.0 |" in (tmp_path / "token_sets.md").read_text()
    assert (tmp_path / "pass_at_k.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "entropy_bands.png").exists()
    assert (tmp_path / "heldout.png").read_bytes()[:4] == b"\x89PNG"
