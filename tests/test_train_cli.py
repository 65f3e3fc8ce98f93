"""`python -m sete_lite.train` end to end on a tiny model: run directory, reload, resume after kill -9, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support_configs import write_config

from sete_lite.atomic import read_jsonl
from sete_lite.model import ModelConfig, load_policy
from sete_lite.rundir import RunDir, training_rows
from sete_lite.train import main

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

REQUIRED_METRICS = [
    "step",
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "entropy",
    "kl",
    "clip_ratio",
    "completions/mean_length",
    "sent/low_entropy_frac",
    "sent/high_cov_frac",
    "sent/kl_low",
    "sent/kl_high",
    "curriculum/stage",
    "curriculum/mean_se",
    "step_time",
]


def token_logprobs(model, tokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits.double()
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)


def test_end_to_end_two_stages(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    heldout = str(REPO / "data" / "champ_math.jsonl")
    evaluation = dict(
        eval_before_training=True,
        eval_at_stage_end=True,
        eval_benchmarks=[heldout],
        eval_num_samples=2,
        eval_k=[1, 2],
        eval_max_problems=3,
        eval_max_tokens=8,
    )
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, **evaluation)
    summary = main(["--config", str(config), "--output-dir", str(out)])

    logged = read_jsonl(out / "metrics.jsonl")
    rows = training_rows(logged)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    # The held-out evaluations are logged too (and reach any report_to tracker): before, each stage end.
    assert [row["step"] for row in logged if "eval_average/avg" in row] == [0, 2, 4]
    for key in REQUIRED_METRICS:
        assert all(key in row for row in rows), key
    assert [row["curriculum/stage"] for row in rows] == [0, 0, 1, 1]
    # Stage 0 holds the four lowest-SE prompts: its mean SE is at most stage 1's.
    assert rows[0]["curriculum/mean_se"] <= rows[2]["curriculum/mean_se"]
    rollouts = read_jsonl(out / "rollouts.jsonl")
    scores = {row["id"]: row["se_likelihood"] for row in read_jsonl(out / "se_scores" / "scores.jsonl")}
    stage0 = [i for r in rollouts[:2] for i in r["ids"]]
    stage1 = [i for r in rollouts[2:] for i in r["ids"]]
    assert sorted(stage0 + stage1) == sorted(scores) and max(scores[i] for i in stage0) <= min(
        scores[i] for i in stage1
    )
    for name in ("reward", "entropy", "kl"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "se_scores" / "se_histogram.png").exists() and (out / "se_scores" / "stages.md").exists()
    assert (out / "adapter" / "stage-0" / "adapter_model.safetensors").exists()
    assert (out / "adapter" / "stage-1" / "adapter_model.safetensors").exists()
    assert summary["steps"] == 4
    assert sorted(summary["eval"]) == ["before", "stage-0", "stage-1"]  # held-out scores before and per stage
    readme = (out / "README.md").read_text()  # the run's own README, not TRL's model-card boilerplate
    assert "mode `sent`" in readme and "### stage-1" in readme and "--resume" in readme
    assert "Model Card" not in readme
    for name in summary["eval"]:
        samples = read_jsonl(out / "eval" / name / "samples.jsonl")
        assert len(samples) == 3 * 2 and len({s["id"] for s in samples}) == 3  # 3 problems x 2 samples

    # The saved adapter reproduces the trained policy: its weights equal the last checkpoint's, and
    # reloaded through load_policy it gives the same log-probs as base + adapter through plain peft.
    final = load_file(out / "adapter" / "adapter_model.safetensors")
    last = load_file(out / "checkpoint-4" / "adapter_model.safetensors")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    stage1_adapter = load_file(out / "adapter" / "stage-1" / "adapter_model.safetensors")
    assert all(torch.equal(final[k], stage1_adapter[k]) for k in final)  # the last stage ends the run

    reloaded, tokenizer = load_policy(
        ModelConfig(
            model_name_or_path=str(tiny_model_dir),
            backend="transformers",
            load_in_4bit=False,
            lora_r=4,
            lora_alpha=8,
            adapter_path=str(out / "adapter"),
        )
    )
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "adapter")
    texts = ["Compute 2 + 2. \\boxed{4}", "The answer is 7"]
    trained = token_logprobs(reloaded, tokenizer, texts)
    torch.testing.assert_close(trained, token_logprobs(plain, tokenizer, texts))
    with reloaded.disable_adapter():
        base = token_logprobs(reloaded, tokenizer, texts)
    assert (trained - base).abs().max() > 1e-3  # training moved the policy


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, tiny_model_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, epochs_per_stage=2)  # 8 steps
    command = [sys.executable, "-m", "sete_lite.train", "--config", str(config)]

    straight = tmp_path / "straight"
    subprocess.run([*command, "--output-dir", str(straight)], env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, "--output-dir", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint-3" / "sete_checkpoint_complete").exists() and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # mid stage 0 or early stage 1, between or inside steps
    process.wait()
    steps_before = len(training_rows(read_jsonl(killed / "metrics.jsonl")))
    assert 3 <= steps_before < 8

    subprocess.run([*command, "--output-dir", str(killed), "--resume"], env=env, check=True, capture_output=True)
    assert read_jsonl(killed / "rollouts.jsonl") == read_jsonl(straight / "rollouts.jsonl")
    assert [r["step"] for r in training_rows(read_jsonl(killed / "metrics.jsonl"))] == list(range(1, 9))
    resumed = load_file(killed / "adapter" / "adapter_model.safetensors")
    reference = load_file(straight / "adapter" / "adapter_model.safetensors")
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-4, atol=1e-5)


def test_a_resume_refuses_a_checkpoint_of_another_curriculum(tmp_path, tiny_model_dir):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, max_steps=2)  # stops inside stage 0
    out = tmp_path / "run"
    main(["--config", str(config), "--output-dir", str(out)])
    saved = json.loads((out / "checkpoint-2" / "curriculum.json").read_text())
    assert saved["epochs_per_stage"] == 1 and len(saved["stages"]) == 2
    for change in ("shuffle_within_stage=false", "epochs_per_stage=3", "num_stages=4"):
        resume = ["--config", str(config), "--output-dir", str(out), "--resume", "--set", change]
        with pytest.raises(ValueError, match="settings that differ from the run's"):
            main(resume)
        # Even when told to accept changed settings, a checkpoint never continues another curriculum.
        with pytest.raises(ValueError, match="different curriculum"):
            main([*resume, "--allow-config-change"])


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"num_generations": 1}, ValueError, "at least 2"),
        ({"answer_column": "solution"}, KeyError, "no column"),
        ({"model_name_or_path": "./no/such/model"}, FileNotFoundError, "does not exist"),
        ({"backend": "unsloth"}, RuntimeError, "needs a CUDA GPU"),
        ({"rollout_engine": "vllm"}, ValueError, "CUDA GPU"),
        ({"bf16": True}, ValueError, "CUDA GPU"),
        ({"mode": "ppo"}, ValueError, "mode"),
        ({"num_stage": 2}, ValueError, "did you mean: num_stages"),
        ({"reward_funcs": ["acuracy"]}, ValueError, "unknown reward function"),
        ({"max_prompts": 1}, ValueError, "cannot fill 2 curriculum stages"),
    ],
)
def test_bad_input_fails_before_any_model_is_loaded(tmp_path, tiny_model_dir, overrides, error, message, monkeypatch):
    import sete_lite.model

    def must_not_load(cfg):
        raise AssertionError("the model was loaded before the config was checked")

    if "model_name_or_path" not in overrides:
        monkeypatch.setattr(sete_lite.model, "load_policy", must_not_load)
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, **overrides)
    with pytest.raises(error, match=message):
        main(["--config", str(config), "--output-dir", str(tmp_path / "run")])


def test_fresh_run_refuses_a_directory_with_checkpoints(tmp_path, tiny_model_dir):
    (tmp_path / "run" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "run" / ".sete_lite.json").write_text('{"kind": "train"}')  # an earlier sete_lite run
    config = write_config(tmp_path / "c.yaml", tiny_model_dir)
    with pytest.raises(ValueError, match="--resume"):
        main(["--config", str(config), "--output-dir", str(tmp_path / "run")])


def test_cli_modules_do_not_import_transformers_or_trl_before_the_model_is_loaded():
    """Unsloth must be imported before transformers and TRL, which the CLIs do once they know the backend."""
    probe = "import sys, sete_lite.train, sete_lite.score; print(sorted({'transformers', 'trl'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_metrics_keep_the_off_policy_steps_and_drop_the_training_summary(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from sete_lite.atomic import read_jsonl
    from sete_lite.rundir import RunDir, RunRecorder

    recorder = RunRecorder(RunDir(tmp_path), "builtin:arith-qwen2")
    logs = [
        (1, {"reward": 0.5, "entropy": 0.2, "loss": 0.1}),  # a step that generated rollouts
        (2, {"entropy": 0.3, "loss": 0.2, "clip_ratio": 0.05}),  # the second step on the same rollouts
        (2, {"train_runtime": 9.0, "train_loss": 0.15}),  # transformers' end-of-training summary
    ]
    for step, entry in logs:
        recorder.on_log(None, SimpleNamespace(global_step=step), None, logs=entry)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2] and rows[1]["clip_ratio"] == 0.05


def test_summary_lists_held_out_scores_in_stage_order_and_prints_the_change(tmp_path: Path, capsys) -> None:
    from sete_lite.rundir import RunDir
    from sete_lite.train import summarize

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.5, "entropy": 0.1}) + "\n")
    for name, avg in [("stage-10", 0.6), ("before", 0.4), ("stage-2", 0.5), ("stage-0", 0.45)]:
        (tmp_path / "eval" / name).mkdir(parents=True)
        results = {"benchmarks": {"arith_test": {"avg": avg}}, "average": {"avg": avg}}  # as evaluate writes it
        (tmp_path / "eval" / name / "results.json").write_text(json.dumps(results))
    summary = summarize(RunDir(tmp_path), 1.0)
    assert (tmp_path / "plots" / "heldout.png").is_file()
    assert list(summary["eval"]) == ["before", "stage-0", "stage-2", "stage-10"]
    expected = "held-out accuracy (mean over samples): before 40.0% -> stage-0 45.0% -> stage-2 50.0% -> stage-10 60.0%"
    assert expected in capsys.readouterr().out


def test_saved_adapter_records_the_configured_base_and_pads_left(tmp_path: Path) -> None:
    """The adapter names the model as configured (not a machine's path, not Unsloth's bnb repo), and
    its tokenizer pads on the left for generation even if the live one was switched to the right
    (Unsloth's trainer does that)."""
    from sete_lite.model import ADAPTER_BASE_FILE, ModelConfig, adapter_base_model, load_policy
    from sete_lite.rundir import save_adapter_atomically

    model, tokenizer = load_policy(ModelConfig(model_name_or_path="builtin:arith-qwen2", load_in_4bit=False))
    tokenizer.padding_side = "right"
    save_adapter_atomically(model, tmp_path / "adapter", "builtin:arith-qwen2", tokenizer)
    assert adapter_base_model(tmp_path / "adapter") == "builtin:arith-qwen2"
    assert json.loads((tmp_path / "adapter" / ADAPTER_BASE_FILE).read_text()) == {"base_model": "builtin:arith-qwen2"}
    # peft's own record says the same (it would hold the builtin's resolved path on this machine)
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "builtin:arith-qwen2"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "adapter").padding_side == "left"
    assert tokenizer.padding_side == "right"  # the live tokenizer is left alone


def test_two_writers_of_the_same_plots_at_once_both_succeed(tmp_path: Path) -> None:
    """A training run rewrites its plots while a notebook draws the same files from metrics.jsonl: each
    write has its own temporary file (a shared one was renamed away under the other writer: the
    notebook's run died with 'No such file or directory: .../entropy.tmp.png')."""
    rows = [
        {"step": step, "reward": step / 10, "entropy": 1 / step, "curriculum/stage": step // 5} for step in range(1, 11)
    ]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    script = (
        "import json, sys; from sete_lite.plots import plot_training_curves\n"
        "rows = json.load(open(sys.argv[1]))\n"
        "for _ in range(15): plot_training_curves(rows, sys.argv[2])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", script, str(tmp_path / "rows.json"), str(tmp_path / "plots")]
    writers = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [writer.communicate(timeout=300)[1] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], errors
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["entropy.png", "reward.png"]  # no temp left


def test_a_run_without_curriculum_is_evaluated_after_training(tmp_path, tiny_model_dir):
    """curriculum: false is one stage: eval_at_stage_end evaluates once, when the run ends (it used to
    evaluate never, leaving a GRPO baseline run with no held-out result after training)."""
    heldout = str(REPO / "data" / "champ_math.jsonl")
    evaluation = dict(eval_at_stage_end=True, eval_benchmarks=[heldout], eval_num_samples=2, eval_k=[1, 2])
    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, curriculum=False, num_train_epochs=1, eval_max_problems=3,
        eval_max_tokens=8, **evaluation,
    )  # fmt: skip
    main(["--config", str(config), "--output-dir", str(tmp_path / "run")])
    logged = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    last = max(row["step"] for row in training_rows(logged))
    assert [row["step"] for row in logged if "eval_average/avg" in row] == [last]
    assert [name for name, _ in RunDir(tmp_path / "run").evaluations()] == ["stage-0"]
