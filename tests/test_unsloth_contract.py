"""SENTTrainer on Unsloth's own generated GRPOTrainer computes what it computes on plain TRL.

On a GPU, `import unsloth` regex-rewrites TRL's GRPOTrainer into a generated `UnslothGRPOTrainer`
and rebinds `trl.GRPOTrainer` to it, so SENTTrainer inherits whatever that rewrite changed. On CPU
the same class comes from `PatchFastRL("GRPO", FastLanguageModel)`. This test runs the smoke config
(configs/smoke_cpu.yaml: 4 steps, two curriculum stages, the SENT loss with its reference pass) once
on plain TRL with backend transformers and once on Unsloth's class with backend unsloth
(fast_inference off), each in a process of its own (tests/support_unsloth_run.py), and compares step
by step. It fails if Unsloth's rewrite changes the rollouts, rewards, advantages, log-probs,
reference log-probs, entropies, loss or the trained adapter.

Tolerance: both runs are float32 on the same CPU with one thread and the same seeds, and on CPU
Unsloth's model is the transformers Qwen2 itself, so the same kernels run on the same inputs: the
results agree to float32 rounding. Log-probs (magnitudes up to ~10) are compared at 1e-5 absolute,
a few float32 ulps; rewards and advantages exactly. The Unsloth rewrite has been seen to change
them by 1e-2 (it switched float32 training to float16 autocast), far outside that.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
LOGP_ATOL = 1e-5


def run_smoke(backend: str, tmp_path: Path, *options: str) -> dict:
    out = tmp_path / f"{backend}.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "support_unsloth_run.py"),
            "--backend",
            backend,
            "--run-dir",
            str(tmp_path / backend),
            "--out",
            str(out),
            *options,
        ],
        cwd=REPO,  # the smoke config names the shipped data relative to the repository
        env={**os.environ, "UNSLOTH_COMPILE_LOCATION": str(tmp_path / "unsloth_compiled_cache")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def require_unsloth() -> None:
    if importlib.util.find_spec("unsloth") is None:
        if os.environ.get("SETE_REQUIRE_UNSLOTH"):
            pytest.fail("unsloth is not installed but SETE_REQUIRE_UNSLOTH is set (CI installs it: scripts/setup.sh)")
        pytest.skip("unsloth is not installed (scripts/setup.sh installs its CPU build)")


@pytest.mark.slow
def test_sent_trainer_on_unsloths_generated_trainer_matches_plain_trl(tmp_path: Path) -> None:
    require_unsloth()
    plain = run_smoke("transformers", tmp_path)
    unsloth = run_smoke("unsloth", tmp_path)
    assert_same_training(plain, unsloth, tmp_path, steps=4)


# The real model's run, cut down: 2 steps of 2 prompts x 4 completions of at most 24 tokens.
SMOLLM2_RUN = [
    "--config", "builtin:smollm2-cpu",
    *("--set", "max_prompts=4", "--set", "se_num_samples=2", "--set", "se_max_tokens=8"),
    *("--set", "num_generations=4", "--set", "per_device_train_batch_size=8", "--set", "max_completion_length=24"),
    *("--set", "lora_r=4", "--set", "lora_alpha=8", "--set", "save_steps=100"),
]  # fmt: skip


@pytest.mark.slow
def test_sent_trainer_on_unsloths_generated_trainer_matches_plain_trl_on_the_real_model(
    tmp_path: Path, smollm2_dir: Path
) -> None:
    """The same contract on SmolLM2-135M-Instruct: Llama layers (which Unsloth patches with its own
    fast paths), a 49k vocabulary, the chat template."""
    require_unsloth()
    plain = run_smoke("transformers", tmp_path, *SMOLLM2_RUN)
    unsloth = run_smoke("unsloth", tmp_path, *SMOLLM2_RUN)
    # A padded row and the same row alone are different float32 computations (other shapes, other
    # reductions): through 30 layers they differ by ~1e-5 (measured 1.1e-5), not 1e-5 at most.
    assert_same_training(plain, unsloth, tmp_path, steps=2, padding_atol=1e-4)


def assert_same_training(
    plain: dict, unsloth: dict, tmp_path: Path, steps: int, padding_atol: float = LOGP_ATOL
) -> None:
    # The class under test really is Unsloth's generated trainer, bound where TRL's was.
    assert plain["trainer_base"] == "trl.trainer.grpo_trainer.GRPOTrainer"
    assert unsloth["trainer_base"] == "UnslothGRPOTrainer.UnslothGRPOTrainer"
    assert plain["trl_grpo_trainer_is_base"] and unsloth["trl_grpo_trainer_is_base"]

    assert len(plain["steps"]) == len(unsloth["steps"]) == steps
    assert unsloth["rewards"] == plain["rewards"]
    for step, (a, b) in enumerate(zip(plain["steps"], unsloth["steps"], strict=True)):
        assert b["advantages"] == a["advantages"], step
        for key in ("logp", "ref_logp", "entropy"):
            assert len(a[key]) == len(b[key]), (step, key)  # the same completions were sampled
            torch.testing.assert_close(torch.tensor(b[key]), torch.tensor(a[key]), rtol=0, atol=LOGP_ATOL)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-9)
        # Left-padded rows reproduce each row computed alone, on both trainers.
        for run in (a, b):
            torch.testing.assert_close(
                torch.tensor(run["logp"]), torch.tensor(run["logp_rows_alone"]), rtol=0, atol=padding_atol
            )

    # The same updates: the trained adapters agree.
    for name in ("adapter/stage-0", "adapter"):
        a = load_file(tmp_path / "transformers" / name / "adapter_model.safetensors")
        b = load_file(tmp_path / "unsloth" / name / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
