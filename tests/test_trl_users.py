"""What a TRL or Unsloth user expects: flags as TRL scripts take them, --help with every key, trackers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support_configs import write_config

from sete_lite.train import main, parse_args

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def test_every_config_key_is_a_flag_as_in_trl_scripts():
    flags = ["--output_dir", "runs/x", "--learning_rate", "1e-4", "--gradient-checkpointing", "--eval_k", "1", "4"]
    args = parse_args([*flags, "--report_to=none", "--set", "seed=3"])
    assert args.set == [
        "seed=3", "output_dir=runs/x", "learning_rate=1e-4", "gradient_checkpointing=true", "eval_k=[1, 4]",
        "report_to=none",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown config key 'learning_rat' in the command line \(did you mean: "):
        parse_args(["--learning_rat", "1e-4"])
    assert parse_args(["--output-dir", "runs/y"]).output_dir == Path("runs/y")  # the old spelling stays


def test_every_command_takes_its_output_directory_as_output_dir():
    """One flag for where a command writes, in both spellings (eval used to take --output_dir as the
    training key output_dir and ignore it)."""
    from sete_lite import eval as eval_command
    from sete_lite import export, score

    for flag in ("--output-dir", "--output_dir"):
        assert score.parse_args([flag, "s"]).set == ["se_scores_dir=s"]
        assert (eval_command.parse_args([flag, "e"]).output_dir, eval_command.parse_args([flag, "e"]).set) == ("e", [])
        assert export.parse_args(["--adapter", "a", "--method", "lora", flag, "x"]).output == "x"
    assert export.parse_args(["--adapter", "a", "--method", "lora", "--output", "x"]).output == "x"


def test_both_spellings_of_the_output_flag_at_once_are_refused(tmp_path, tiny_model_dir, no_model):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir)
    with pytest.raises(ValueError, match="output_dir given twice on the command line"):
        main(["--config", str(config), "--output-dir", str(tmp_path / "a"), "--output_dir", str(tmp_path / "b")])


def test_help_lists_every_key_with_its_default_and_meaning():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shown = subprocess.run(
        [sys.executable, "-m", "sete_lite.train", "--help"], capture_output=True, text=True, env=env, check=True
    ).stdout
    from sete_lite.config import reference_sections

    for _, items in reference_sections():
        for item in items:
            assert f"  --{item.name} (default " in shown, item.name
    assert "--low_entropy_quantile (default 0.8): rho: T_low = the lowest-entropy rho of tokens" in shown
    assert "  --learning_rate (default 1e-06): " in shown  # TRL's keys too, with TRL's meaning
    score_help = subprocess.run(
        [sys.executable, "-m", "sete_lite.score", "--help"], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert "--se_num_samples (default 8)" in score_help and "--learning_rate" not in score_help


def test_a_tracker_that_is_not_installed_is_refused_before_anything_runs(tmp_path, tiny_model_dir, no_model):
    pytest.importorskip("tensorboard")
    config = write_config(tmp_path / "c.yaml", tiny_model_dir)
    if "wandb" in sys.modules or __import__("importlib").util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    with pytest.raises(
        ValueError, match=r"report_to \['wandb'\]: not installed here; pip install 'sete_lite\[track\]'"
    ):
        main(["--config", str(config), "--output_dir", str(tmp_path / "run"), "--report_to", "wandb"])
    assert not (tmp_path / "run" / "se_scores").exists()


@pytest.mark.slow
def test_tensorboard_shows_the_training_curves_and_held_out_accuracy(tmp_path):
    """A user trains as with TRL (--learning_rate, --output_dir, --report_to tensorboard) and finds the
    rewards, the entropy and the held-out accuracy before training and after each stage in TensorBoard."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sete_lite.train", "--config", str(REPO / "configs" / "smoke_cpu.yaml")]
    command += ["--learning_rate", "1e-4", "--output_dir", str(out), "--report_to", "tensorboard"]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # progress bars for the SE pass, training, and the evaluations inside training
    assert all(f"{bar}: 100%" in done.stderr for bar in ("SE scoring", "SENT", "eval"))
    events = EventAccumulator(str(next(out.glob("runs/*")))).Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/reward", "train/entropy", "train/kl", "eval/arith_test/avg", "eval/average/pass@4"} <= set(scalars)
    held_out = [(event.step, event.value) for event in events.Scalars("eval/arith_test/avg")]
    assert [step for step, _ in held_out] == [0, 2, 4]  # before training, then the end of each stage
    import json

    for (step, value), name in zip(held_out, ["before", "stage-0", "stage-1"], strict=True):
        recorded = json.loads((out / "eval" / name / "results.json").read_text())["benchmarks"]["arith_test"]["avg"]
        assert value == pytest.approx(recorded), (step, name)


def test_disable_tqdm_turns_every_bar_of_a_run_off(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sete_lite.train", "--config", str(REPO / "configs" / "smoke_cpu.yaml")]
    command += ["--output_dir", str(out), "--disable_tqdm"]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held-out evaluation 'stage-1'" in done.stdout  # the run did evaluate
    assert not any(f"{bar}:" in done.stderr for bar in ("SE scoring", "SENT", "eval")), done.stderr[-2000:]
