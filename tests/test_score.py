"""The SE scoring pass: values, the cache (resume, torn lines, producers), a kill -9, the CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sete_lite.rollout import Completion, SamplingConfig
from sete_lite.score import ProducerMismatchError, ScoreConfig, main, score_dataset

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "data" / "champ_math.jsonl"


def completion(text: str, probs: list[float]) -> Completion:
    logprobs = [math.log(p) for p in probs]
    return Completion(text=text, token_ids=list(range(len(probs))), logprobs=logprobs, finish_reason="stop")


class ScriptedEngine:
    """Returns fixed completions per prompt and records every call."""

    def __init__(self, script: dict[str, list[Completion]], fail_on_call: int | None = None) -> None:
        self.script = script
        self.calls: list[tuple[list[str], int, SamplingConfig, bool]] = []
        self.fail_on_call = fail_on_call

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingConfig, *, use_adapter: bool = True
    ) -> list[list[Completion]]:
        self.calls.append((prompts, n, sampling, use_adapter))
        if len(self.calls) == self.fail_on_call:
            raise RuntimeError("interrupted")
        return [self.script[p][:n] for p in prompts]


def make_records(n: int) -> list[dict]:
    return [{"id": f"p{i}", "question": f"q{i}", "answer": str(i), "prompt": f"prompt {i}"} for i in range(n)]


def simple_script(records: list[dict]) -> dict[str, list[Completion]]:
    """Prompt i: answers i, i, i+1, none."""
    return {
        r["prompt"]: [
            completion(f"\\boxed{{{r['answer']}}}", [0.5]),
            completion(f"#### {r['answer']}", [0.5]),
            completion(f"\\boxed{{{int(r['answer']) + 1}}}", [0.5]),
            completion("no idea", [0.5]),
        ]
        for r in records
    }


def read_rows(scores_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (scores_dir / "scores.jsonl").read_text().splitlines()]


def test_scores_by_hand(tmp_path: Path) -> None:
    record = {"id": "a", "question": "?", "answer": "3/2", "prompt": "P"}
    # mean token probabilities (geometric) 0.5, 0.25, 0.25, 0.5
    script = {
        "P": [
            completion("so \\boxed{1.5}", [0.5, 0.5]),
            completion("\\boxed{\\frac{3}{2}}", [0.25, 0.25, 0.25]),
            completion("\\boxed{2}", [0.25]),
            completion("I give up", [0.5, 0.5]),
        ]
    }
    engine = ScriptedEngine(script)
    cfg = ScoreConfig(se_num_samples=4, se_temperature=0.8, se_top_p=0.9, se_max_tokens=77, se_scores_dir=str(tmp_path))
    [row] = score_dataset(engine, [record], cfg, {"model": "scripted"}, seed=0, progress=False)
    assert row["answers"] == ["1.5", "\\frac{3}{2}", "2", None]
    assert row["clusters"] == [0, 0, 1, 2]
    assert row["num_clusters"] == 3
    assert row["pass_rate"] == 0.5
    assert row["se_discrete"] == pytest.approx(1.0397207708399179)  # p = 1/2, 1/4, 1/4
    assert row["se_likelihood"] == pytest.approx(1.0114042647073518)  # weights .75, .25, .5 -> 1/2, 1/6, 1/3
    [(prompts, n, sampling, use_adapter)] = engine.calls
    assert prompts == ["P"] and n == 4 and use_adapter is False  # the base policy samples
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens) == (0.8, 0.9, 77)
    assert read_rows(tmp_path) == [row]


def test_resume_scores_only_what_is_missing(tmp_path: Path) -> None:
    records = make_records(7)
    cfg = ScoreConfig(se_num_samples=4, se_batch_size=2, se_scores_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="interrupted"):
        score_dataset(
            ScriptedEngine(simple_script(records), fail_on_call=3), records, cfg, {"model": "m"}, seed=0, progress=False
        )
    assert [r["id"] for r in read_rows(tmp_path)] == ["p0", "p1", "p2", "p3"]  # two whole batches

    engine = ScriptedEngine(simple_script(records))
    rows = score_dataset(engine, records, cfg, {"model": "m"}, seed=0, progress=False)
    assert [call[0] for call in engine.calls] == [["prompt 4", "prompt 5"], ["prompt 6"]]
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    assert sorted(r["id"] for r in read_rows(tmp_path)) == sorted(r["id"] for r in records)
    for row in rows:  # answers i, i, i+1, none: p = 1/2, 1/4, 1/4; one in two correct
        assert row["se_discrete"] == pytest.approx(1.0397207708399179)
        assert row["pass_rate"] == 0.5

    again = ScriptedEngine(simple_script(records))
    assert score_dataset(again, records, cfg, {"model": "m"}, seed=0, progress=False) == rows
    assert again.calls == []  # fully cached
    elsewhere = ScriptedEngine(simple_script(records))
    score_dataset(elsewhere, records, cfg, {"model": "m"}, seed=0, scores_dir=tmp_path / "run", progress=False)
    assert len(elsewhere.calls) == 4 and len(read_rows(tmp_path / "run")) == 7  # another cache


def test_a_torn_last_line_is_cut_off(tmp_path: Path) -> None:
    records = make_records(5)
    cfg = ScoreConfig(se_num_samples=4, se_batch_size=2, se_scores_dir=str(tmp_path))
    with pytest.raises(RuntimeError):
        score_dataset(
            ScriptedEngine(simple_script(records), fail_on_call=2), records, cfg, {"model": "m"}, seed=0, progress=False
        )
    with open(tmp_path / "scores.jsonl", "a") as f:
        f.write('{"id": "p2", "se_discrete": 0.1, "answ')  # a write cut short by a kill
    engine = ScriptedEngine(simple_script(records))
    score_dataset(engine, records, cfg, {"model": "m"}, seed=0, progress=False)
    assert [call[0] for call in engine.calls] == [["prompt 2", "prompt 3"], ["prompt 4"]]
    assert [r["id"] for r in read_rows(tmp_path)] == ["p0", "p1", "p2", "p3", "p4"]


def test_another_producer_is_refused(tmp_path: Path) -> None:
    records = make_records(3)
    cfg = ScoreConfig(se_num_samples=4, se_scores_dir=str(tmp_path))
    score_dataset(ScriptedEngine(simple_script(records)), records, cfg, {"model": "m"}, seed=0, progress=False)
    before = (tmp_path / "scores.jsonl").read_bytes()
    engine = ScriptedEngine(simple_script(records))
    here, m = str(tmp_path), {"model": "m"}
    changes = [
        (ScoreConfig(se_num_samples=4, se_temperature=0.7, se_scores_dir=here), records, m, "temperature"),
        (ScoreConfig(se_num_samples=2, se_scores_dir=here), records, m, "num_samples"),
        (ScoreConfig(se_num_samples=4, se_max_tokens=9, se_scores_dir=here), records, m, "max_tokens"),
        (cfg, records, {"model": "other"}, "model"),
        (cfg, records[:2], m, "dataset_fingerprint"),
        (cfg, [{**records[0], "answer": "9"}, *records[1:]], m, "dataset_fingerprint"),
    ]
    for other_cfg, other_records, producer, key in changes:
        with pytest.raises(ProducerMismatchError, match=key):
            score_dataset(engine, other_records, other_cfg, producer, seed=0, progress=False)
    assert engine.calls == []
    assert (tmp_path / "scores.jsonl").read_bytes() == before  # nothing mixed in

    (tmp_path / "producer.json").unlink()
    with pytest.raises(ProducerMismatchError, match="unknown producer"):
        score_dataset(engine, records, cfg, {"model": "m"}, seed=0, progress=False)


def write_config(path: Path, model_dir: Path, scores_dir: Path, **overrides: object) -> Path:
    values = {
        "model_name_or_path": str(model_dir),
        "backend": "transformers",
        "load_in_4bit": False,
        "dataset_name_or_path": str(SHIPPED),
        "se_num_samples": 4,
        "se_max_tokens": 48,
        "se_batch_size": 2,
        "se_scores_dir": str(scores_dir),
        "num_stages": 2,
        **overrides,
    }
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items()))
    return path


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_9_mid_pass_then_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    scores_dir = tmp_path / "scores"
    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, scores_dir, max_prompts=20, se_batch_size=1, se_max_tokens=64
    )
    command = [sys.executable, "-m", "sete_lite.score", "--config", str(config)]
    # One thread: a tiny model gains nothing from more, and threads fighting over a busy CI machine's
    # two cores make each decoding step ~50x slower.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scores = scores_dir / "scores.jsonl"
    deadline = time.monotonic() + 120
    while count_lines(scores) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    scored_before = count_lines(scores)
    assert 3 <= scored_before < 20, "the pass should have been killed part-way"

    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = [row["id"] for row in read_rows(scores_dir)]
    expected = [json.loads(line)["id"] for line in SHIPPED.read_text().splitlines()[:20]]
    assert sorted(ids) == sorted(expected)  # exactly one row per prompt: none lost, none twice
    assert ids[:scored_before] == expected[:scored_before]  # rows from before the kill are kept


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """See test_kill_9_mid_pass_then_resume: one thread is much faster for a tiny model on CI."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_end_to_end_with_a_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    scores_dir = tmp_path / "scores"
    config = write_config(tmp_path / "c.yaml", tiny_model_dir, scores_dir, max_prompts=6)
    rows = main(["--config", str(config), "--set", "num_stages=3", "--set", "num_threads=2"])
    assert torch.get_num_threads() == 2  # the shared key reaches this command too (the fixture set 1)
    assert len(rows) == 6
    for row in rows:
        assert len(row["answers"]) == 4 and len(row["mean_logprobs"]) == 4
        assert 0.0 <= row["se_discrete"] <= math.log(4) + 1e-9
        assert 0.0 <= row["se_likelihood"] <= math.log(4) + 1e-9
        assert row["num_clusters"] == max(row["clusters"]) + 1
        assert all(lp < 0 for lp in row["mean_logprobs"])  # real sampling-time log-probs
    assert (scores_dir / "se_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (scores_dir / "stages.md").read_text().splitlines()
    assert len(table) == 2 + 3 and table[2].startswith("| 0 | 2 |")
    producer = json.loads((scores_dir / "producer.json").read_text())
    assert producer["model"] == str(tiny_model_dir) and producer["num_samples"] == 4


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_scores_the_chat_templated_prompts_that_training_sees(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from sete_lite.config import parse_config
    from sete_lite.data import apply_chat_template, load_records
    from sete_lite.score import config_classes, model_producer, producer_record

    scores_dir = tmp_path / "scores"
    config = write_config(
        tmp_path / "c.yaml", tiny_model_dir, scores_dir, max_prompts=2, se_num_samples=2, se_max_tokens=8,
        use_chat_template=True, system_prompt="Reason step by step.",
    )  # fmt: skip
    main(["--config", str(config)])
    shared, model_cfg, data_cfg, cfg, _ = parse_config(config_classes(), config)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    templated = apply_chat_template(load_records(data_cfg), tokenizer, data_cfg.system_prompt)
    # train.run applies the template before scoring, then checks the cache's producer against this record.
    expected = producer_record(model_producer(model_cfg), templated, cfg, seed=shared.seed)
    assert json.loads((scores_dir / "producer.json").read_text()) == expected


@pytest.mark.slow
def test_a_pass_killed_anywhere_ends_byte_identical_to_an_uninterrupted_one(tmp_path: Path) -> None:
    """Each batch is a fixed slice of the dataset seeded by its position, so a resumed pass samples
    what the uninterrupted pass samples (before: only 8 of 32 prompts were re-sampled identically)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sete_lite.score", "--config", str(REPO / "configs" / "score_tiny.yaml"),
               "--set", "se_batch_size=4", "--set", "max_prompts=24"]  # fmt: skip

    def score(directory: Path) -> list[str]:
        return [*command, "--set", f"se_scores_dir={directory}"]

    subprocess.run(score(tmp_path / "straight"), env=env, check=True, capture_output=True, cwd=tmp_path)
    expected = (tmp_path / "straight" / "scores.jsonl").read_bytes()
    assert expected.count(b"\n") == 24
    for kill_after in (4, 12, 20):  # rows written when the pass is killed
        directory = tmp_path / f"killed{kill_after}"
        process = subprocess.Popen(score(directory), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 120
        while count_lines(directory / "scores.jsonl") < kill_after and time.monotonic() < deadline:
            assert process.poll() is None, "the pass ended before it could be killed"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert count_lines(directory / "scores.jsonl") < 24
        subprocess.run(score(directory), env=env, check=True, capture_output=True, cwd=tmp_path)
        assert (directory / "scores.jsonl").read_bytes() == expected, kill_after
