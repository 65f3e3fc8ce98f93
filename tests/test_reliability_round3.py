"""Reliability, round 3: the run directory is the user's data, and so are the lines inside its files.

Each test is a case the third sweep found (a way to lose data, a silently wrong result, or an error
that did not say what to do); each fails on the code before its fix.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support_configs import write_config

from sete_lite.atomic import append_jsonl, read_jsonl
from sete_lite.outdir import LOCK, DirectoryBusyError, claim, lock
from sete_lite.train import main

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def cli(module: str, *args: str, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    env.pop("SETE_LITE_DEBUG", None)
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, **popen)


# ----------------------------------------------------------------------------------------------
# The run directory is sete_lite's own


def test_a_directory_holding_files_sete_lite_did_not_write_is_refused(tmp_path, tiny_model_dir, no_model):
    model_copy = tmp_path / "mymodel"
    shutil.copytree(tiny_model_dir, model_copy)
    before = {p.name: p.read_bytes() for p in model_copy.iterdir()}
    config = write_config(tmp_path / "c.yaml", model_copy)
    with pytest.raises(ValueError, match=r"holds files sete_lite did not write \(.*config\.json.*new or empty"):
        main(["--config", str(config), "--output-dir", str(model_copy)])
    assert {p.name: p.read_bytes() for p in model_copy.iterdir()} == before  # nothing written, nothing marked

    users = tmp_path / "project"
    users.mkdir()
    (users / "README.md").write_text("my notes")
    from sete_lite import eval as eval_cli
    from sete_lite import score

    with pytest.raises(ValueError, match=r"README\.md"):
        score.main(["--config", str(REPO / "configs" / "score_tiny.yaml"), "--set", f"se_scores_dir={users}"])
    with pytest.raises(ValueError, match=r"README\.md"):
        eval_cli.main(["--config", str(REPO / "configs" / "eval_tiny.yaml"), "--output-dir", str(users)])
    assert sorted(p.name for p in users.iterdir()) == ["README.md"]


def test_one_run_at_a_time_in_a_directory_and_a_killed_holder_never_wedges_it(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, max_steps=1, max_prompts=4)
    with claim(run, "train", "output_dir"):
        busy = cli("sete_lite.train", "--config", str(config), "--output-dir", str(run))
    assert busy.returncode == 2
    assert f"output_dir '{run}' is in use by pid {os.getpid()}" in busy.stderr
    assert "Traceback" not in busy.stderr
    with pytest.raises(DirectoryBusyError, match="in use by pid"), claim(run, "train", "output_dir"):  # noqa: SIM117
        with claim(run, "train", "output_dir"):
            pass

    # A holder killed with SIGKILL: the kernel drops its flock, and the next run takes the directory.
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from sete_lite.outdir import lock; import time, pathlib\n"
         f"with lock(pathlib.Path({str(run / LOCK)!r}), 'x'):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(DirectoryBusyError), lock(run / LOCK, "run"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with lock(run / LOCK, "run"):  # free again
        pass


# ----------------------------------------------------------------------------------------------
# Lines of a jsonl file


def test_a_damaged_line_is_an_error_naming_file_and_line_and_a_torn_tail_is_cut(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3')  # a write killed mid-line
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    append_jsonl(path, [{"a": 4}])
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n{"a": 4}\n'  # the torn line is gone, rows whole
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl, line 2: not a JSON object"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl, line 2: not UTF-8"):
        read_jsonl(path)


def test_a_damaged_se_cache_is_refused_not_rescored(tmp_path):
    from sete_lite.rollout import Completion
    from sete_lite.score import ScoreConfig, score_dataset

    class Engine:
        calls = 0

        def generate(self, prompts, n, sampling, use_adapter=True):
            Engine.calls += 1
            return [[Completion(f"\\boxed{{{i}}}", [1], [-1.0], "stop") for i in range(n)] for _ in prompts]

    records = [{"id": str(i), "prompt": f"p{i}", "answer": "1"} for i in range(8)]
    cfg = ScoreConfig(se_num_samples=2, se_batch_size=2)
    score_dataset(Engine(), records, cfg, {"model": "m"}, seed=0, scores_dir=tmp_path)
    scores = tmp_path / "scores.jsonl"
    lines = scores.read_text().splitlines()
    lines[5] = lines[5][:20]  # line 6 damaged in the middle of the file
    scores.write_text("\n".join(lines) + "\n")
    calls = Engine.calls
    with pytest.raises(ValueError, match=r"scores.jsonl, line 6"):
        score_dataset(Engine(), records, cfg, {"model": "m"}, seed=0, scores_dir=tmp_path)
    assert Engine.calls == calls and len(scores.read_text().splitlines()) == 8  # nothing rescored or appended


# ----------------------------------------------------------------------------------------------
# Resume at any step, inside a generation batch too


def test_resume_at_every_step_of_a_run_with_two_steps_per_generation(tmp_path, tiny_model_dir):
    """Before: resumed inside a generation batch, TRL sampled a new batch at once (rollouts at steps 1,
    3, 4, 6 instead of 1, 3, 5), trained the checkpoint's prompts again and ended on another adapter."""
    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, steps_per_generation=2, epochs_per_stage=2, save_steps=1
    )  # 8 steps, a new generation batch every 2
    straight = tmp_path / "straight"
    assert cli("sete_lite.train", "--config", str(config), "--output-dir", str(straight)).returncode == 0
    rollout_steps = [row["step"] for row in read_jsonl(straight / "rollouts.jsonl")]
    assert rollout_steps == [1, 3, 5, 7]
    reference = load_file(straight / "adapter" / "adapter_model.safetensors")
    for killed_after in range(1, 8):
        # The directory as a kill after step k leaves it: checkpoints up to k, logs up to k (and beyond:
        # the resume drops them), no final adapter.
        run = tmp_path / f"killed-{killed_after}"
        shutil.copytree(straight, run, ignore=shutil.ignore_patterns(LOCK))
        for checkpoint in run.glob("checkpoint-*"):
            if int(checkpoint.name.split("-")[1]) > killed_after:
                shutil.rmtree(checkpoint)
        shutil.rmtree(run / "adapter")
        resumed = cli("sete_lite.train", "--config", str(config), "--output-dir", str(run), "--resume")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert read_jsonl(run / "rollouts.jsonl") == read_jsonl(straight / "rollouts.jsonl"), killed_after
        metrics, expected = read_jsonl(run / "metrics.jsonl"), read_jsonl(straight / "metrics.jsonl")
        assert [row["step"] for row in metrics] == list(range(1, 9))
        for row, want in zip(metrics, expected, strict=True):
            for key in ("reward", "loss", "entropy"):
                if key in want:
                    assert row[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (killed_after, row["step"], key)
        adapter = load_file(run / "adapter" / "adapter_model.safetensors")
        for key in reference:
            torch.testing.assert_close(adapter[key], reference[key], rtol=1e-4, atol=1e-6)


def test_resume_of_a_directory_that_holds_no_run_is_refused(tmp_path, tiny_model_dir, no_model):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir)
    with pytest.raises(ValueError, match="holds no sete_lite training run"):
        main(["--config", str(config), "--output-dir", str(tmp_path / "typo"), "--resume"])
    assert not (tmp_path / "typo").exists()  # and nothing was created


def test_a_resume_on_edited_data_is_refused(tmp_path, tiny_model_dir):
    data = tmp_path / "data.jsonl"
    shutil.copy(REPO / "data" / "champ_math.jsonl", data)
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, dataset_name_or_path=str(data), max_steps=2)
    run = tmp_path / "run"
    main(["--config", str(config), "--output-dir", str(run)])
    rows = data.read_text().splitlines()
    rows[0] = rows[0].replace('"answer": "', '"answer": "1')  # one gold answer edited
    data.write_text("\n".join(rows) + "\n")
    shutil.rmtree(run / "se_scores")  # what the SE cache's refusal suggests
    with pytest.raises(ValueError, match="dataset_fingerprint"):
        main(["--config", str(config), "--output-dir", str(run), "--resume"])


# ----------------------------------------------------------------------------------------------
# Settings a run cannot honour as written


def test_max_steps_that_end_the_curriculum_early_are_said(tmp_path, tiny_model_dir, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, max_steps=1)  # 2 stages of 2 steps each
    main(["--config", str(config), "--output-dir", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    assert "max_steps=1 ends the run before the curriculum does: stage(s) 1 of 2 are never trained" in printed
    assert "stage(s) 1 of 2 are never trained" in (tmp_path / "run" / "README.md").read_text()


def test_settings_that_train_nothing_or_on_the_wrong_model_are_refused(tmp_path, tiny_model_dir, no_model):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir)
    out = ["--output-dir", str(tmp_path / "run")]
    with pytest.raises(ValueError, match="num_train_epochs=0 with curriculum: false trains nothing"):
        main(["--config", str(config), *out, "--set", "curriculum=false", "--set", "num_train_epochs=0"])
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-0.5B"}))
    with pytest.raises(ValueError, match=r"is a LoRA adapter, not a model: set adapter_path .*Qwen/Qwen2.5-0.5B"):
        main(["--config", str(config), *out, "--set", f"model_name_or_path={adapter}"])
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*32\)"):
        main(["--config", str(config), *out, "--set", "seed=-1"])
    with pytest.raises(ValueError, match="learning_rate given twice"):
        main(["--config", str(config), *out, "--set", "learning_rate=1e-4", "--set", "learning_rate=2e-4"])


def test_a_prompt_longer_than_the_context_is_refused_on_the_transformers_backend(tmp_path, tiny_model_dir):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"id": "0", "question": "1+1 " * 200, "answer": "2"}) + "\n" * 1)
    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, dataset_name_or_path=str(data), max_seq_length=128, curriculum=False
    )
    with pytest.raises(ValueError, match=r"exceeds the context length 128 \(max_seq_length\)"):
        main(["--config", str(config), "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "se_scores" / "scores.jsonl").exists()  # refused before any sampling


# ----------------------------------------------------------------------------------------------
# Data


def test_dataset_mistakes_are_named(tmp_path, no_model):
    from sete_lite.data import DataConfig, load_records

    def records(rows_or_bytes, **keys):
        path = tmp_path / "d.jsonl"
        if isinstance(rows_or_bytes, bytes):
            path.write_bytes(rows_or_bytes)
        else:
            path.write_text("".join(json.dumps(row) + "\n" for row in rows_or_bytes))
        return load_records(DataConfig(dataset_name_or_path=str(path), **keys))

    # A JSON number keeps its digits: 0.00001 is not written '1e-05', which math-verify cannot read.
    got = records([{"id": "a", "question": "q", "answer": 0.00001}, {"id": "b", "question": "q", "answer": 1e20}])
    assert [r["answer"] for r in got] == ["0.00001", "100000000000000000000"]
    from sete_lite.semantic import grade_answers

    assert grade_answers(got[0]["answer"], ["0.00001", "1/100000"]) == [True, True]
    with pytest.raises(ValueError, match=r"row 1: its id \('id'\) is null.*id_column: null"):
        records([{"id": "a", "question": "q", "answer": "1"}, {"id": None, "question": "q", "answer": "2"}])
    with pytest.raises(KeyError, match=r"no column\(s\) \['id'\] \(id_column: null numbers the rows instead\)"):
        records([{"question": "q", "answer": "1"}])
    with pytest.raises(ValueError, match="has no rows"):
        records(b"\n\n")
    with pytest.raises(ValueError, match=r"d.jsonl', line 2: not UTF-8"):
        records(b'{"id": "a", "question": "q", "answer": "1"}\n{"id": "b", "question": "\xe9", "answer": "1"}\n')


# ----------------------------------------------------------------------------------------------
# Evaluation and export against the adapter's own base


def test_eval_and_export_refuse_another_base_than_the_adapters(tmp_path, tiny_model_dir, no_model):
    from sete_lite import eval as eval_cli
    from sete_lite import export

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    (adapter / "sete_lite_base.json").write_text(json.dumps({"base_model": str(tiny_model_dir)}))
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    eval_args = ["--config", str(REPO / "configs" / "eval_tiny.yaml"), "--adapter", str(adapter)]
    with pytest.raises(ValueError, match=r"--model '.*other-model' is not the model the adapter .* was trained on"):
        eval_cli.main([*eval_args, "--model", str(other), "--output-dir", str(tmp_path / "e")])
    with pytest.raises(AssertionError, match="model was loaded"):  # allowed on purpose
        eval_cli.main([*eval_args, "--model", str(other), "--allow-other-base", "--output-dir", str(tmp_path / "e")])
    export_args = ["--adapter", str(adapter), "--method", "lora", "--output", str(tmp_path / "x")]
    with pytest.raises(ValueError, match=r"--base '.*other-model' is not the model the adapter"):
        export.main([*export_args, "--base", str(other)])
    with pytest.raises(ValueError, match="nothing to evaluate: pass --model"):
        eval_cli.main([])


def test_repeated_benchmarks_flags_add_up(tmp_path, no_model):
    from sete_lite import eval as eval_cli

    args = eval_cli.parse_args(["--benchmarks", "AIME24", "--benchmarks", "MATH500", "GSM8K", "--k", "1", "--k", "4"])
    assert args.benchmarks == ["AIME24", "MATH500", "GSM8K"] and args.k == [1, 4]


def test_export_of_a_missing_stage_names_the_stages_there_are(tmp_path):
    from sete_lite.export import resolve_adapter

    run = tmp_path / "run"
    for stage in (0, 1):
        (run / "adapter" / f"stage-{stage}").mkdir(parents=True)
        (run / "adapter" / f"stage-{stage}" / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="the run saved the adapters of stages 0, 1"):
        resolve_adapter(run, None, stage=5)


# ----------------------------------------------------------------------------------------------
# Interrupts and full disks end in one line


def test_ctrl_c_ends_every_command_in_one_line_with_exit_130(tmp_path, tiny_model_dir):
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, epochs_per_stage=50)  # long enough to interrupt
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "sete_lite.train", "--config", str(config), "--output-dir", str(run)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell's background jobs (CI runners among them) inherit SIGINT ignored: give it back, as a
        # terminal has it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    last = stderr.strip().splitlines()[-1]
    assert last == "interrupted: the same command with --resume continues from the last complete checkpoint"
    assert "Traceback" not in stderr


def test_a_full_disk_anywhere_is_said_in_one_line(capsys, monkeypatch):
    from sete_lite.config import run_cli

    def torch_save_on_a_full_disk(argv):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(sys, "argv", ["train"])
    with pytest.raises(SystemExit) as stop:
        run_cli(torch_save_on_a_full_disk, interrupted="resume with --resume")
    assert stop.value.code == 2
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith("error: no space left on the device ([enforce fail at inline_container.cc:672]")
    assert error.endswith("free some space and rerun (resume with --resume)")
