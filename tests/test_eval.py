"""Evaluation: the Pass@k estimator by hand, whole evaluations with scripted texts on real CHAMP
problems (exact scores and files), the benchmark registry's loading path, bad input, the CLI."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

from sete_lite.arith.tiny import randomize_lora
from sete_lite.config import SharedConfig
from sete_lite.eval import (
    BENCHMARKS,
    EvalConfig,
    adapter_model_config,
    evaluate,
    evaluate_and_write,
    load_benchmarks,
    pass_at_k,
)
from sete_lite.model import ModelConfig
from sete_lite.rollout import Completion, SamplingConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (4, 1, 2, 1 / 2),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 3, 2, 1.0),  # n - c < k: every pair holds a correct sample
        (5, 1, 1, 1 / 5),  # Pass@1 = c / n
        (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (16, 0, 8, 0.0),
        (16, 16, 16, 1.0),
        (1000, 1, 500, 0.5),  # 1 - (999 choose 500)/(1000 choose 500) = 500/1000, no overflow
    ],
)
def test_pass_at_k_by_hand(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12)


def test_pass_at_k_matches_binomial_ratio() -> None:
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 5), (4, 5, 1), (4, 1, 0), (4, -1, 1)])
def test_pass_at_k_rejects_impossible_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass_at_k needs"):
        pass_at_k(n, c, k)


# ----------------------------------------------------------------------------------------------
# Whole evaluations with scripted completions


class ScriptedEngine:
    """Returns fixed texts per prompt (as many as asked) and records every call."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.script = script
        self.calls: list[tuple[list[str], int, SamplingConfig, bool]] = []

    def generate(
        self, prompts: list[str], n: int, sampling: SamplingConfig, *, use_adapter: bool = True
    ) -> list[list[Completion]]:
        self.calls.append((prompts, n, sampling, use_adapter))
        return [
            [Completion(text=t, token_ids=[0] * len(t), logprobs=[0.0] * len(t), finish_reason="stop") for t in texts]
            for texts in (self.script[p][:n] for p in prompts)
        ]


def champ_problems(*ids: str) -> list[dict]:
    """Real CHAMP competition problems and their gold answers (the champ-dataset package, MIT)."""
    problems = json.loads((resources.files("champ_dataset") / "dataset_files" / "v0.json").read_text())["problems"]
    return [{"id": i, "question": problems[i]["_text"], "answer": problems[i]["_answer"]} for i in ids]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def two_benchmarks(tmp_path: Path) -> tuple[EvalConfig, ScriptedEngine, Path]:
    """CHAMP problems (gold 239, 1/2, -1/2) and GSM8K-style problems (gold '... #### 72'), scripted."""
    champ = champ_problems("P_Combinatorics_1", "P_Inequality_2", "P_Sequence_23")
    assert [p["answer"] for p in champ] == ["239", "1/2", "-1/2"]
    gsm = [
        {"question": "Natalia sold 48 clips in April and half as many in May. How many in total?", "answer": "#### 72"},
        {
            "question": "A robe takes 2 bolts of blue fiber and half that much white. How many bolts?",
            "answer": "#### 3",
        },
    ]
    cfg = EvalConfig(
        eval_benchmarks=[
            str(write_jsonl(tmp_path / "champ.jsonl", champ)),
            str(write_jsonl(tmp_path / "gsm.jsonl", gsm)),
        ],
        eval_num_samples=4,
        eval_k=[1, 2, 4],
        eval_batch_size=2,
        eval_max_tokens=64,
    )
    suffix = "\nPlease reason step by step, and put your final answer within \\boxed{}."
    script = {
        # 3 correct: equivalent forms of 239 count, a wrong last box does not
        champ[0]["question"] + suffix: [
            "x_6+y_6+z_6=70+99+70, so \\boxed{239}",
            "\\boxed{239.0}",
            "first \\boxed{29}, then corrected: \\boxed{239}",
            "So the answer is \\boxed{729}",
        ],
        # 1 correct (0.5 == 1/2); an unclosed box is no answer; -1/2 is not 1/2
        champ[1]["question"] + suffix: [
            "\\boxed{0.5}",
            "\\boxed{\\frac{1}{2",
            "\\boxed{-\\frac{1}{2}}",
            "I do not know",
        ],
        # 0 correct
        champ[2]["question"] + suffix: ["\\boxed{1/2}", "\\boxed{2}", "", "#### 0"],
        # GSM8K: 4 and 2 correct, #### and boxed answers both count
        gsm[0]["question"] + suffix: ["#### 72", "\\boxed{72}", "48 + 24 = 72\n#### 72.", "\\boxed{72.00}"],
        gsm[1]["question"] + suffix: ["\\boxed{3}", "#### 2", "\\boxed{1.5}", "3 bolts: \\boxed{3}"],
    }
    return cfg, ScriptedEngine(script), tmp_path


def test_whole_evaluation_gives_the_exact_scores(two_benchmarks) -> None:
    cfg, engine, tmp_path = two_benchmarks
    benchmarks = load_benchmarks(cfg)
    assert list(benchmarks) == ["champ", "gsm"]
    assert [r["answer"] for r in benchmarks["gsm"]] == ["72", "3"]  # gold reduced from '#### x'

    results = evaluate_and_write(
        engine, benchmarks, cfg, tmp_path / "out", seed=7, progress=False, meta={"model": "script"}
    )

    champ, gsm = results["benchmarks"]["champ"], results["benchmarks"]["gsm"]
    # champ: c = 3, 1, 0 of n = 4
    assert champ["num_problems"] == 3 and champ["num_samples"] == 4
    assert champ["avg"] == pytest.approx(4 / 12)
    assert champ["pass@k"]["1"] == pytest.approx(4 / 12)
    assert champ["pass@k"]["2"] == pytest.approx((1 + 1 / 2 + 0) / 3)  # c=3: 1; c=1: 1 - 3/6; c=0: 0
    assert champ["pass@k"]["4"] == pytest.approx(2 / 3)
    # gsm: c = 4, 2 of n = 4
    assert gsm["avg"] == pytest.approx(6 / 8)
    assert gsm["pass@k"]["2"] == pytest.approx((1 + (1 - 1 / 6)) / 2)  # c=2: 1 - C(2,2)/C(4,2)
    assert gsm["pass@k"]["4"] == pytest.approx(1.0)
    # the average weighs each benchmark the same
    average = results["average"]
    assert average["avg"] == pytest.approx((4 / 12 + 6 / 8) / 2)
    assert average["pass@k"]["2"] == pytest.approx((0.5 + 11 / 12) / 2)

    # what the engine was asked: the paper's sampling, n per prompt, batches of 2, distinct seeds
    assert [len(call[0]) for call in engine.calls] == [2, 1, 2]
    for _, n, sampling, use_adapter in engine.calls:
        assert n == 4 and use_adapter is True
        assert (sampling.temperature, sampling.top_p, sampling.max_tokens) == (1.0, 0.9, 64)
    assert [call[2].seed for call in engine.calls] == [7, 9, 10]

    # the files: JSON scores, a markdown table, one jsonl row per sample
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["benchmarks"] == json.loads(json.dumps(results["benchmarks"]))
    assert saved["model"] == "script" and saved["config"]["eval_num_samples"] == 4
    table = (tmp_path / "out" / "results.md").read_text().splitlines()
    assert table[0] == "| benchmark | problems | Avg@4 | Pass@1 | Pass@2 | Pass@4 |"
    assert table[2] == "| champ | 3 | 33.33 | 33.33 | 50.00 | 66.67 |"
    assert table[3] == "| gsm | 2 | 75.00 | 75.00 | 91.67 | 100.00 |"
    assert table[4] == "| average |  | 54.17 | 54.17 | 70.83 | 83.33 |"
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 * 4
    assert [(r["answer"], r["correct"]) for r in rows[4:8]] == [
        ("0.5", True),
        (None, False),
        ("-\\frac{1}{2}", False),
        (None, False),
    ]
    assert rows[0]["benchmark"] == "champ" and rows[0]["gold"] == "239" and rows[0]["sample"] == 0
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_the_base_policy_can_be_evaluated_without_keeping_texts(two_benchmarks) -> None:
    cfg, engine, _ = two_benchmarks
    cfg.eval_save_texts = False
    results = evaluate(engine, load_benchmarks(cfg), cfg, seed=0, use_adapter=False, progress=False)
    assert {call[3] for call in engine.calls} == {False}
    assert "text" not in results["samples"][0] and results["samples"][0]["answer"] == "239"


def test_an_engine_returning_too_few_samples_is_an_error(two_benchmarks) -> None:
    cfg, engine, _ = two_benchmarks
    for texts in engine.script.values():
        del texts[1:]
    with pytest.raises(RuntimeError, match="returned 1 completions, expected 4"):
        evaluate(engine, load_benchmarks(cfg), cfg, seed=0, progress=False)


# ----------------------------------------------------------------------------------------------
# The registry's loading path, with local stand-ins for the hub datasets (no hub here)


def test_registry_entries_load_like_their_hub_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    hub = {
        ("opencompass/AIME2025", "AIME2025-I", "test"): [{"question": "I.1?", "answer": "70"}],
        ("opencompass/AIME2025", "AIME2025-II", "test"): [
            {"question": "II.1?", "answer": "588"},
            {"question": "II.2?", "answer": "16"},
        ],
        ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"): [
            {"id": 1606, "question": "Find x.", "final_answer": ["$\\frac{1}{2}$"]},
            {"id": 1607, "question": "Find all y.", "final_answer": ["$2$", "$-3$"]},
        ],
        ("HuggingFaceH4/MATH-500", None, "test"): [
            {"problem": "Compute 1+1.", "answer": "2", "unique_id": "test/algebra/1.json"}
        ],
        ("openai/gsm8k", "main", "test"): [{"question": "How many?", "answer": "6 * 2 = 12\n#### 12"}],
    }
    asked = []

    def fake_load_dataset(name, config=None, split=None, **kwargs):
        asked.append((name, config, split))
        return datasets.Dataset.from_list(hub[(name, config, split)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("sete_lite.data.check_hub_name", lambda *args: None)  # the stand-ins are the hub here
    cfg = EvalConfig(eval_benchmarks=["AIME25", "OlympiadBench", "MATH500", "GSM8K"], eval_num_samples=16)
    loaded = load_benchmarks(cfg)
    assert asked == list(hub)
    assert [(r["id"], r["answer"]) for r in loaded["AIME25"]] == [
        ("AIME2025-I/0", "70"),
        ("AIME2025-II/0", "588"),
        ("AIME2025-II/1", "16"),
    ]
    assert [(r["id"], r["answer"]) for r in loaded["OlympiadBench"]] == [("1606", "\\frac{1}{2}"), ("1607", "2, -3")]
    assert loaded["MATH500"][0]["id"] == "test/algebra/1.json"
    assert loaded["MATH500"][0]["prompt"].startswith("Compute 1+1.\nPlease reason step by step")
    assert loaded["GSM8K"][0]["answer"] == "12"

    capped = load_benchmarks(EvalConfig(eval_benchmarks=["AIME25"], eval_max_problems=2, eval_num_samples=16))
    assert [r["id"] for r in capped["AIME25"]] == ["AIME2025-I/0", "AIME2025-II/0"]
    assert set(BENCHMARKS) >= {"AIME24", "AIME25", "AMC23", "MATH500", "OlympiadBench", "Minerva", "GSM8K"}


# ----------------------------------------------------------------------------------------------
# Bad input


def test_bad_configs_fail_early_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown benchmark 'aime24' \(did you mean AIME24\?\).*MATH500"):
        EvalConfig(eval_benchmarks=["aime24"])
    with pytest.raises(ValueError, match="unknown benchmark 'MATH'"):
        EvalConfig(eval_benchmarks=["MATH"])
    with pytest.raises(FileNotFoundError, match=r"benchmark file .*missing\.jsonl' does not exist"):
        EvalConfig(eval_benchmarks=[str(tmp_path / "missing.jsonl")])
    with pytest.raises(ValueError, match="raise eval_num_samples to at least 16"):
        EvalConfig(eval_num_samples=8, eval_k=[1, 16])
    with pytest.raises(ValueError, match="rollout_engine must be"):
        SharedConfig(rollout_engine="sglang")
    with pytest.raises(FileNotFoundError, match=r"has no adapter_config\.json"):
        adapter_model_config(ModelConfig(), str(tmp_path), None)
    rows = [{"question": "q", "answer": "1"}]
    listed_twice = [str(write_jsonl(tmp_path / "a.jsonl", rows))] * 2
    with pytest.raises(ValueError, match="listed twice"):
        load_benchmarks(EvalConfig(eval_benchmarks=listed_twice))


def test_an_adapter_sets_the_model_and_lora_shape(tmp_path: Path) -> None:
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "q_proj"], "base_model_name_or_path": "org/base"}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    cfg = adapter_model_config(ModelConfig(lora_r=16), str(tmp_path), None)
    assert (cfg.model_name_or_path, cfg.adapter_path, cfg.lora_r, cfg.lora_alpha) == ("org/base", str(tmp_path), 4, 8)
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert adapter_model_config(ModelConfig(), str(tmp_path), "other/model").model_name_or_path == "other/model"


# ----------------------------------------------------------------------------------------------
# The command line on the tiny model


def run_cli(*args: str) -> dict:
    # One thread: a tiny model gains nothing from more, and the CI machine's two cores are shared.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sete_lite.eval", "--config", str(REPO / "configs" / "eval_tiny.yaml"), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_cli_on_the_tiny_model_with_and_without_an_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # An adapter that changes the model a lot: random B instead of the zero initialisation.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    randomize_lora(model, seed=0, scale=0.5, matrices="lora_B")
    model.save_pretrained(tmp_path / "adapter")

    common = ["--model", str(tiny_model_dir), "--n", "2", "--k", "1", "2", "--max-problems", "3"]
    run_cli(*common, "--output-dir", str(tmp_path / "base"))
    done = run_cli(*common, "--adapter", str(tmp_path / "adapter"), "--output-dir", str(tmp_path / "adapted"))
    assert "| arith_test | 3 |" in done.stdout

    for name, adapter in (("base", None), ("adapted", str(tmp_path / "adapter"))):
        results = json.loads((tmp_path / name / "results.json").read_text())
        samples = [json.loads(line) for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 3 * 2
        assert results["adapter"] == adapter and results["use_adapter"] is (adapter is not None)
        assert results["engine"] == "TransformersEngine"
        scores = results["benchmarks"]["arith_test"]
        assert scores["avg"] == pytest.approx(sum(s["correct"] for s in samples) / len(samples))
        assert (tmp_path / name / "results.md").read_text().startswith("| benchmark | problems | Avg@2 |")
    # Same seeds, different texts: the adapter is really applied when sampling.
    texts = {
        name: [json.loads(line)["text"] for line in (tmp_path / name / "samples.jsonl").read_text().splitlines()]
        for name in ("base", "adapted")
    }
    assert texts["base"] != texts["adapted"]


def test_the_paper_config_asks_for_the_papers_setting() -> None:
    from sete_lite.config import parse_config
    from sete_lite.eval import PAPER_BENCHMARKS, config_classes

    _, model_cfg, cfg = parse_config(config_classes(), REPO / "configs" / "eval_paper.yaml")
    assert (
        cfg.eval_benchmarks == PAPER_BENCHMARKS == ["AIME24", "AIME25", "AMC23", "MATH500", "OlympiadBench", "Minerva"]
    )
    assert (cfg.eval_num_samples, cfg.eval_temperature, cfg.eval_top_p) == (16, 1.0, 0.9)
    assert "Please reason step by step, and put your final answer within \\boxed{}." in cfg.eval_prompt_template
    assert not model_cfg.load_in_4bit and model_cfg.max_seq_length >= cfg.eval_max_tokens + 512


def test_a_directory_without_adapter_config_is_named_with_the_fix(tmp_path: Path) -> None:
    from sete_lite.model import check_adapter_dir

    expected = f"--adapter '{tmp_path}' has no adapter_config.json; give a directory written by save_pretrained"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        adapter_model_config(ModelConfig(), str(tmp_path), None)
    expected = f"adapter_path '{tmp_path}' has no adapter_config.json; point it at a directory written by"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        check_adapter_dir(str(tmp_path), ModelConfig())


def test_the_eval_command_honours_num_threads(tmp_path: Path, tiny_model_dir: Path) -> None:
    from sete_lite.eval import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["--config", str(REPO / "configs" / "eval_tiny.yaml"), "--model", str(tiny_model_dir), "--n", "1"]
        args += ["--k", "1", "--max-problems", "1"]
        main([*args, "--output-dir", str(tmp_path / "e"), "--set", "num_threads=2"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
