"""benchmarks/gpu_check.py --dry-run: every section the CPU can run runs and passes its own checks.

The GPU check itself runs on a lent GPU machine (benchmarks/GPU_CHECK.md); this test keeps its code
paths working in CI: the smoke CLI runs on both backends (4-bit through bitsandbytes' CPU backend),
the padding comparison on Unsloth's (CPU) model with the real Qwen tokenizer, one SENT step on a
4-bit LoRA model, and the log-prob function against the naive path and a float32 reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ["d_logprobs", "c_memory_7b", "a_transformers_4bit", "b_padding", "a_unsloth"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check")
    env_out = tmp_path_factory.mktemp("device_out")
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "OUT": str(env_out)},  # as the device tool sets it
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert (out / "gpu_check.json").is_file(), completed.stdout[-4000:] + completed.stderr[-4000:]
    data = json.loads((out / "gpu_check.json").read_text())
    data["_returncode"] = completed.returncode
    data["_md"] = (out / "gpu_check.md").read_text()
    data["_copied"] = sorted(p.name for p in env_out.iterdir())
    return data


@pytest.mark.slow
def test_dry_run_passes_every_section(report):
    assert report["dry_run"] is True
    assert list(report["sections"]) == SECTIONS
    failed = {
        name: (res["status"], res.get("error", "")[-2000:], res.get("checks"))
        for name, res in report["sections"].items()
        if res["status"] != "passed"
    }
    assert not failed, failed
    assert report["status"] == "passed"
    assert report["_returncode"] == 0
    assert report["versions"]["torch"] and report["versions"]["unsloth"]
    # The outputs go to --out and, when the device tool's $OUT is set, there too.
    assert report["_copied"] == ["gpu_check.json", "gpu_check.md"]
    assert "| b_padding | passed |" in report["_md"]


@pytest.mark.slow
def test_smoke_runs_train_four_steps_on_both_backends(report):
    for name in ("a_transformers_4bit", "a_unsloth"):
        res = report["sections"][name]
        assert len(res["steps"]) == 4
        assert all(step["loss"] is not None for step in res["steps"])
        assert "load_in_4bit=true" in res["argv"] and "bf16=false" in res["argv"]
    assert "backend=unsloth" in report["sections"]["a_unsloth"]["argv"]
    assert report["sections"]["a_unsloth"]["unsloth_imported"] is True
    # Unsloth must be imported before transformers/TRL/peft: nothing before train.main imports them.
    assert report["sections"]["a_unsloth"]["imported_before_train_main"] == []
    assert report["sections"]["a_transformers_4bit"]["unsloth_imported"] is False


@pytest.mark.slow
def test_padding_check_with_the_fix(report):
    res = report["sections"]["b_padding"]
    # Masked pads get zero weight: changing their token ids moves nothing.
    assert res["with_fix_pad_ids_changed"]["logp"]["max"] <= 1e-3
    assert res["with_fix_padded_vs_alone"]["logp"]["max"] <= res["tolerance_nats"]
    assert res["shape"]["vocab_size"] == 151936  # the real Qwen vocabulary and tokenizer
    assert res["model_training"] is True


@pytest.mark.slow
def test_logprob_function_agrees_with_the_naive_path(report):
    res = report["sections"]["d_logprobs"]
    methods = res["methods"]
    # TRL's Triton kernel runs on CPU only through Triton's interpreter (the call and its agreement),
    # which some Triton versions cannot do (triton 3.6 with numpy 2.5): then it needs CUDA.
    trl_ran = methods["trl_fused"]["status"] == "ran"
    assert trl_ran or methods["trl_fused"]["status"].startswith("skipped: needs CUDA")
    tol = res["tolerance"]
    for name in ("sete_lite", "naive", *(["trl_fused"] if trl_ran else [])):
        assert methods[name]["status"] == "ran"
        assert methods[name]["max_abs_diff_logp"] <= tol["logp_entropy_nats"]
        assert methods[name]["max_abs_diff_entropy"] <= tol["logp_entropy_nats"]
        assert methods[name]["max_abs_diff_grad_rel"] <= tol["grad_relative_to_max"]


@pytest.mark.slow
def test_sent_step_on_a_4bit_lora_model(report):
    res = report["sections"]["c_memory_7b"]
    assert len(res["steps"]) == 2 and res["linears_quantized"] == 14
    assert res["fits_24gib"].startswith("skipped: needs CUDA")
    assert res["trainable_lora_params"] > 0
