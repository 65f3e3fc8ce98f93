"""Bad input refused early and clearly, resumes that refuse a changed run, nothing computed and lost.

Each test is a case an operator or a new user hit (the reliability issue's list): it fails on the
code before the fix. "Before any model loads" is checked by making load_policy raise.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support_configs import write_config

from sete_lite.train import main

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def run_cli(module: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    env.pop("SETE_LITE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


# ----------------------------------------------------------------------------------------------
# Values: every key type-checked, ranges checked, all before any model loads


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("curriculum=maybe", "'curriculum' expects bool, got 'maybe'"),
        ('curriculum="false"', "'curriculum' expects bool, got 'false'"),
        ("num_generations=four", "'num_generations' expects int | None, got 'four'"),
        ("max_prompts=2.5", "'max_prompts' expects int | None, got 2.5"),
        ("lora_r=8.5", "'lora_r' expects int, got 8.5"),
        ("epochs_per_stage=0", "epochs_per_stage must be at least 1"),
        ("learning_rate=-1", "learning_rate must be >= 0"),
        ("max_completion_length=0", "max_completion_length must be at least 1"),
        ("top_p=1.5", "top_p must be in"),
        ("se_top_p=1.5", "se_top_p must be in"),
        ("eval_top_p=1.5", "eval_top_p must be in"),
        ("per_device_train_batch_size=0", "per_device_train_batch_size must be at least 1"),
        ("lora_dropout=1.5", "lora_dropout must be in"),
        ("se_num_samples=1", "se_num_samples must be at least 2"),
        ("rollout_engine=vllm", "rollout_engine: vllm needs a CUDA GPU"),
        ("rollout_engine=unsloth", "rollout_engine: unsloth needs a CUDA GPU"),
        ("nonsense_key=1", "unknown config key 'nonsense_key' in --set"),
    ],
)
def test_bad_values_are_refused_before_any_model_loads(tmp_path, tiny_model_dir, no_model, setting, message):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir)
    with pytest.raises(ValueError, match=message.replace("|", r"\|").replace("(", r"\(")):
        main(["--config", str(config), "--output-dir", str(tmp_path / "run"), "--set", setting])


def test_a_scalar_reward_funcs_is_a_one_item_list():
    from sete_lite.train import parse_train_config

    configs = parse_train_config("builtin:arith-cpu", ["reward_funcs=accuracy"])
    assert configs.run.reward_funcs == ["accuracy"]  # not the letters a, c, c, ...


def test_config_files_with_malformed_yaml_or_a_key_given_twice_name_file_and_line(tmp_path, tiny_model_dir):
    from sete_lite.train import parse_train_config

    broken = tmp_path / "broken.yaml"
    broken.write_text("lora_r: 8\nlearning_rate: [1e-4\nseed: 0\n")
    with pytest.raises(ValueError, match=r"broken.yaml' line 3"):
        parse_train_config(broken, [])
    twice = tmp_path / "twice.yaml"
    twice.write_text("lora_r: 8\nseed: 0\nlora_r: 16\n")
    with pytest.raises(ValueError, match=r"twice.yaml' line 3: key 'lora_r' is given twice"):
        parse_train_config(twice, [])
    typo = write_config(tmp_path / "typo.yaml", tiny_model_dir, lora_rank=8)
    with pytest.raises(ValueError, match=r"unknown config key 'lora_rank' in config file .*typo.yaml.*lora_r"):
        parse_train_config(typo, [])


def test_cpu_training_is_float32_without_saying_so():
    # Before: TRL read an unset bf16 as true; transformers then asked for use_cpu, and with use_cpu the
    # run trained in bf16 on CPU.
    import torch

    from sete_lite.trainer import SENTConfig

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for extra in ({}, {"use_cpu": True}):
        config = SENTConfig(output_dir="x", **extra)
        assert (config.bf16, config.fp16) == (False, False)


def test_training_config_is_accepted_by_score_and_eval(tmp_path, no_model):
    from sete_lite import eval as eval_cli
    from sete_lite import score

    # The default training config holds training and evaluation keys; each command takes what it needs
    # (the model load, stopped here, comes after the config is read).
    with pytest.raises(AssertionError, match="model was loaded"):
        score.main(["--config", "builtin:arith-cpu", "--set", f"se_scores_dir={tmp_path / 'scores'}"])
    with pytest.raises(AssertionError, match="model was loaded"):
        eval_cli.main(["--config", "builtin:arith-cpu", "--output-dir", str(tmp_path / "eval")])


# ----------------------------------------------------------------------------------------------
# Data: gold answers that cannot grade anything


def test_eval_refuses_problems_without_a_gold_answer(tmp_path, no_model):
    from sete_lite import eval as eval_cli

    # Before: a null answer became the string "None"; the file scored 43.75 % instead of 62.50 %.
    rows = [json.loads(line) for line in (REPO / "data" / "champ_math.jsonl").read_text().splitlines()][:8]
    for row in rows[::2]:
        row["answer"] = None
    path = tmp_path / "nulls.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["--config", str(REPO / "configs" / "eval_tiny.yaml"), "--benchmarks", str(path)]
    with pytest.raises(ValueError, match="4 rows have no usable question or gold answer"):
        eval_cli.main([*args, "--output-dir", str(tmp_path / "out")])
    with pytest.raises(AssertionError, match="model was loaded"):  # past the data, which dropped 4 rows
        eval_cli.main([*args, "--output-dir", str(tmp_path / "out"), "--set", "eval_drop_invalid_rows=true"])


# ----------------------------------------------------------------------------------------------
# Where results go: checked before the work, not after


def test_output_directories_that_cannot_take_the_results_are_refused_first(tmp_path, tiny_model_dir, no_model):
    from sete_lite import eval as eval_cli
    from sete_lite import export

    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    config = write_config(tmp_path / "c.yaml", tiny_model_dir)
    with pytest.raises(NotADirectoryError, match=r"output_dir .* is a file"):
        main(["--config", str(config), "--output-dir", str(a_file)])
    with pytest.raises(PermissionError, match=r"output_dir .* is not writable"):
        main(["--config", str(config), "--output-dir", str(a_file / "run")])  # its parent is a file
    with pytest.raises(NotADirectoryError, match=r"--output-dir .* is a file"):
        eval_cli.main(["--config", str(REPO / "configs" / "eval_tiny.yaml"), "--output-dir", str(a_file)])
    with pytest.raises(NotADirectoryError, match=r"se_scores_dir .* is a file"):
        from sete_lite import score

        score.main(["--config", str(REPO / "configs" / "score_tiny.yaml"), "--set", f"se_scores_dir={a_file}"])
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(NotADirectoryError, match=r"--output .* is a file"):
        export.main(
            ["--adapter", str(adapter), "--base", str(tiny_model_dir), "--method", "lora", "--output", str(a_file)]
        )
    with pytest.raises(ValueError, match="--stage picks a stage's adapter of a training run"):
        export.main(["--adapter", str(adapter), "--stage", "0", "--method", "lora", "--output", str(tmp_path / "x")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_resume_into_a_read_only_run_directory_is_refused_first(tmp_path, tiny_model_dir, no_model):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir)
    run = tmp_path / "run"
    run.mkdir()
    (run / ".sete_lite.json").write_text('{"kind": "train"}')  # a run's directory that became read-only
    run.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            main(["--config", str(config), "--output-dir", str(run), "--resume"])
    finally:
        run.chmod(0o700)


def test_a_model_name_neither_local_nor_on_the_hub_fails_at_once(tmp_path, tiny_model_dir):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, model_name_or_path="nomodel_dir")
    started = time.monotonic()
    with pytest.raises(
        FileNotFoundError, match="'nomodel_dir' is not a local path, and the Hugging Face Hub was tried"
    ):
        main(["--config", str(config), "--output-dir", str(tmp_path / "run")])
    assert time.monotonic() - started < 30  # before: 79 s of hub retries


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    from sete_lite import atomic

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(OSError, match=r"no space left on the device writing .*metrics.jsonl"):
        atomic.append_jsonl(tmp_path / "metrics.jsonl", [{"step": 1}])
    with pytest.raises(OSError, match=r"no space left on the device writing .*results.json"):
        atomic.write_text(tmp_path / "results.json", "{}")
    assert not (tmp_path / "results.json.tmp").exists()  # nothing half written left behind


# ----------------------------------------------------------------------------------------------
# Run directories: a changed resume, an earlier run, a damaged checkpoint, adapters of another shape


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """A two-checkpoint run of the tiny config (steps 1 and 2 of 4), shared by the resume tests."""
    tmp = tmp_path_factory.mktemp("run")
    config = write_config(tmp / "c.yaml", tiny_model_dir, max_steps=2, reward_funcs=["accuracy"])
    main(["--config", str(config), "--output-dir", str(tmp / "run")])
    return config, tmp / "run"


def test_a_resume_with_changed_settings_is_refused_with_the_differences(finished_run, tmp_path):
    import shutil

    config, original = finished_run
    run = shutil.copytree(original, tmp_path / "run")
    resume = ["--config", str(config), "--output-dir", str(run), "--resume"]
    changed = ["--set", "mode=grpo", "--set", "learning_rate=0.1"]
    with pytest.raises(ValueError, match=r"differ from the run's \(learning_rate: 0.05 -> 0.1, mode: 'sent' -> 'grpo'"):
        main([*resume, *changed])
    recorded = json.loads((run / "config.json").read_text())
    assert (recorded["mode"], recorded["learning_rate"], recorded["lora_r"]) == ("sent", 0.05, 4)
    # Reporting and evaluation settings may change; the run then continues (and finishes).
    summary = main([*resume, "--set", "logging_steps=2", "--set", "eval_max_problems=2"])
    assert summary["steps"] == 2


def test_a_fresh_run_refuses_a_directory_holding_an_earlier_run(finished_run, tmp_path):
    import shutil

    config, original = finished_run
    run = shutil.copytree(original, tmp_path / "run")
    shutil.rmtree(run / "checkpoint-1")
    shutil.rmtree(run / "checkpoint-2")
    # Before: a fresh run here mixed in the earlier run's evaluations and logs in its summary.
    with pytest.raises(ValueError, match=r"holds an earlier run \(adapter, metrics.jsonl, rollouts.jsonl\)"):
        main(["--config", str(config), "--output-dir", str(run)])


def test_a_damaged_checkpoint_names_itself_and_the_one_before(finished_run, tmp_path):
    import shutil

    config, original = finished_run
    run = shutil.copytree(original, tmp_path / "run")
    weights = run / "checkpoint-2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(
        ValueError, match=r"checkpoint .*checkpoint-2 is damaged .*delete it to resume from .*checkpoint-1"
    ):
        main(["--config", str(config), "--output-dir", str(run), "--resume"])


def test_an_adapter_of_another_shape_is_refused(finished_run, tiny_model_dir):
    from sete_lite.model import ModelConfig, load_policy

    _, run = finished_run
    adapter = str(run / "adapter")
    base = {"model_name_or_path": str(tiny_model_dir), "load_in_4bit": False, "adapter_path": adapter, "lora_r": 4}
    load_policy(ModelConfig(**base, lora_alpha=8))  # the shape it was trained with
    # Before: another alpha was accepted and rescaled every update (logits moved by up to 1.94).
    with pytest.raises(ValueError, match=r"lora_alpha: adapter 8, config 16"):
        load_policy(ModelConfig(**base, lora_alpha=16))
    with pytest.raises(ValueError, match=r"lora_target_modules: adapter"):
        load_policy(ModelConfig(**base, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"]))


def test_an_adapter_trained_on_another_base_is_refused_by_train(finished_run, tmp_path, no_model):
    config, run = finished_run
    settings = ["--set", f"adapter_path={run / 'adapter'}", "--set", "model_name_or_path=builtin:arith-qwen2"]
    with pytest.raises(ValueError, match=r"was trained on .* but model_name_or_path is 'builtin:arith-qwen2'"):
        main(["--config", str(config), "--output-dir", str(tmp_path / "new"), *settings])


def test_the_summary_reports_rewards_per_stage(finished_run):
    from sete_lite.atomic import read_jsonl
    from sete_lite.rundir import RunDir, training_rows
    from sete_lite.train import summarize

    _, run = finished_run
    rows = training_rows(read_jsonl(run / "metrics.jsonl"))
    summary = summarize(RunDir(run), 1.0)
    stage0 = [row["reward"] for row in rows if row.get("curriculum/stage") == 0]
    assert summary["reward_mean_by_stage"] == {"0": round(sum(stage0) / len(stage0), 4)}
    assert "reward_first" not in summary  # one step's reward across stages misread as a drop


# ----------------------------------------------------------------------------------------------
# Messages: one or two lines from the command line, the traceback on request


def test_command_line_errors_are_one_line_with_the_fix():
    done = run_cli("sete_lite.train", "--set", "num_generations=four")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()[-2:]  # after what libraries print when imported
    assert lines == [
        "error: config key 'num_generations' expects int | None, got 'four' (str)",
        "(SETE_LITE_DEBUG=1 shows the traceback)",
    ], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    unknown = run_cli("sete_lite.eval", "--set", "eval_top_pp=0.5")
    assert unknown.returncode == 2 and "unknown config key 'eval_top_pp' in --set (did you mean: eval_top_p" in (
        unknown.stderr
    )


def test_help_of_score_and_study_has_description_default_and_example():
    for module, default in (("sete_lite.score", "default: builtin:arith-cpu"), ("sete_lite.arith.study", "default:")):
        done = run_cli(module, "--help")
        assert done.returncode == 0
        example = f"    python -m {module} --"  # a usage example from the module's docstring
        words = " ".join(done.stdout.split())  # argparse wraps the option help to the terminal's width
        assert example in done.stdout and default in words, done.stdout


def test_the_producer_mismatch_advice_names_what_train_honours(tmp_path):
    from sete_lite.score import ProducerMismatchError, open_cache

    open_cache(tmp_path, {"model": "a"})
    with pytest.raises(ProducerMismatchError, match=r"delete .* to rescore .* give another --output-dir"):
        open_cache(tmp_path, {"model": "b"})
