"""load_policy on CPU: LoRA wiring, the adapter-off reference, resuming, 4-bit NF4, bad input."""

from __future__ import annotations

import os

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoModelForCausalLM

from sete_lite.arith.tiny import build_tiny_model
from sete_lite.model import ModelConfig, load_policy, resolve_backend
from sete_lite.rollout import SamplingConfig, TransformersEngine


def config(model_dir, **overrides) -> ModelConfig:
    values = {"model_name_or_path": str(model_dir), "load_in_4bit": False, "lora_r": 8, "lora_alpha": 16}
    return ModelConfig(**(values | overrides))


def batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def policy_logprobs(model, enc) -> torch.Tensor:
    with torch.no_grad():
        logits = model(**enc).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, enc["input_ids"][:, 1:, None])[..., 0]


def train_steps(model, enc, steps: int = 3) -> None:
    """A few SGD steps of next-token loss on the adapters (enough to move the policy)."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        loss = model(**enc, labels=enc["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


TEXTS = ["The answer is \\boxed{4}.", "1+1=2"]


def test_only_lora_weights_train_and_tokenizer_pads_left(tiny_model_dir):
    model, tokenizer = load_policy(config(tiny_model_dir, lora_target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    lora = model.peft_config["default"]
    assert (lora.r, lora.lora_alpha) == (8, 16)


def reference_logprobs(model, enc, temperature: float = 1.0) -> torch.Tensor:
    """What the trainer uses as the reference: the same model with its adapters switched off."""
    from sete_lite.logprobs import completion_logprobs

    with torch.no_grad(), model.disable_adapter():
        length = enc["input_ids"].size(1) - 1
        return completion_logprobs(model, enc["input_ids"], enc["attention_mask"], length, temperature=temperature)[0]


def test_reference_is_the_base_model_and_does_not_move_with_training(tiny_model_dir):
    model, tokenizer = load_policy(config(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    enc = batch(tokenizer, TEXTS)
    expected = policy_logprobs(base, enc)  # a separately loaded copy of the base weights
    mask = enc["attention_mask"][:, 1:].bool()

    ref_before = reference_logprobs(model, enc)
    torch.testing.assert_close(ref_before[mask], expected[mask], rtol=0, atol=1e-5)
    policy_before = policy_logprobs(model, enc)

    train_steps(model, enc)
    policy_after = policy_logprobs(model, enc)
    ref_after = reference_logprobs(model, enc)
    assert (policy_after - policy_before)[mask].abs().max() > 1e-3
    assert torch.equal(ref_after, ref_before)
    # The adapters are back on after the reference pass.
    assert torch.equal(policy_logprobs(model, enc), policy_after)


def test_reference_logprobs_temperature(tiny_model_dir):
    model, tokenizer = load_policy(config(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    enc = batch(tokenizer, TEXTS[:1])
    with torch.no_grad():
        logits = base(**enc).logits[:, :-1].double()
    expected = torch.log_softmax(logits / 0.5, -1).gather(-1, enc["input_ids"][:, 1:, None])[..., 0]
    got = reference_logprobs(model, enc, temperature=0.5)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_resume_from_saved_adapter(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir)
    model, tokenizer = load_policy(cfg)
    enc = batch(tokenizer, TEXTS)
    train_steps(model, enc)
    trained = policy_logprobs(model, enc)
    model.save_pretrained(tmp_path / "adapter")

    resumed, _ = load_policy(config(tiny_model_dir, adapter_path=str(tmp_path / "adapter")), seed=123)
    torch.testing.assert_close(policy_logprobs(resumed, enc), trained, atol=1e-6, rtol=0)
    assert all(p.requires_grad for n, p in resumed.named_parameters() if "lora_" in n)

    with pytest.raises(ValueError, match="lora_r"):
        load_policy(config(tiny_model_dir, adapter_path=str(tmp_path / "adapter"), lora_r=4))
    with pytest.raises(ValueError, match="lora_target_modules"):
        load_policy(config(tiny_model_dir, adapter_path=str(tmp_path / "adapter"), lora_target_modules=["q_proj"]))


def test_4bit_cpu_generate_then_train(tmp_path):
    """NF4 on CPU: a rollout (no_grad forward) first, then training must still produce LoRA grads.

    Without disabling bitsandbytes' AVX512-BF16 repacking, this fails on such CPUs (see
    test_4bit_repacking_trap_is_real).
    """
    model_dir = build_tiny_model(tmp_path / "tiny", seed=1)
    model, tokenizer = load_policy(config(model_dir, load_in_4bit=True))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # every attention and MLP projection of both layers is 4-bit
    assert not any(m.support_avx512bf16_for_cpu for m in layers)

    engine = TransformersEngine(model, tokenizer)
    sampling = SamplingConfig(max_tokens=8, seed=0)
    before = engine.generate(TEXTS, 2, sampling)

    enc = batch(tokenizer, TEXTS)
    model.train()
    model(**enc, labels=enc["input_ids"]).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    # lora_B starts at zero, so only the B matrices get a gradient on the first step.
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    model.zero_grad()
    train_steps(model, enc)
    after = engine.generate(TEXTS, 2, sampling)
    assert [g[0].logprobs for g in before] != [g[0].logprobs for g in after]


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(), reason="the trap needs an AVX512-BF16 CPU")
def test_4bit_repacking_trap_is_real(tmp_path):
    """The failure disable_cpu_4bit_repacking prevents: re-enable repacking and training breaks."""
    model_dir = build_tiny_model(tmp_path / "tiny", seed=1)
    model, tokenizer = load_policy(config(model_dir, load_in_4bit=True))
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = True
    enc = batch(tokenizer, TEXTS)
    TransformersEngine(model, tokenizer).generate(TEXTS, 1, SamplingConfig(max_tokens=2, seed=0))
    model.train()
    with pytest.raises(RuntimeError, match="leaf Variable"):
        model(**enc, labels=enc["input_ids"]).loss.backward()


def test_auto_backend_is_transformers_without_gpu(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("auto picks unsloth when a GPU and unsloth are present")
    assert resolve_backend(config(tiny_model_dir, backend="auto")) == "transformers"


def test_unsloth_without_gpu_names_the_fix(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="backend: transformers"):
        load_policy(config(tiny_model_dir, backend="unsloth"))


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"model_name_or_path": "/nonexistent/model"}, FileNotFoundError, "does not exist"),
        ({"model_name_or_path": "./missing-dir"}, FileNotFoundError, "does not exist"),
        ({"adapter_path": "/nonexistent/adapter"}, FileNotFoundError, "adapter_config.json"),
        ({"backend": "vllm"}, ValueError, "backend must be one of"),
        ({"dtype": "fp8"}, ValueError, "dtype must be"),
        ({"lora_r": 0}, ValueError, "lora_r"),
        ({"gpu_memory_utilization": 60}, ValueError, "fraction"),
    ],
)
def test_bad_input_fails_early_with_the_fix(tiny_model_dir, overrides, error, match):
    with pytest.raises(error, match=match):
        load_policy(config(tiny_model_dir, **overrides))


def test_standby_keeps_the_configured_gpu_memory_utilization(monkeypatch):
    """Unsloth's standby raises gpu_memory_utilization to a tier of its own (~0.78 on 24 GB) unless
    UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE is set: the config's value must be what vLLM gets."""
    import sys
    import types

    from sete_lite.model import import_unsloth

    for name in ("UNSLOTH_VLLM_STANDBY", "UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "unsloth", types.ModuleType("unsloth"))  # read at import: env first
    import_unsloth(vllm_standby=True)
    assert os.environ["UNSLOTH_VLLM_STANDBY"] == "1"
    assert os.environ["UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE"] == "1"


def test_fast_inference_needs_a_gpu_but_unsloth_itself_does_not(tiny_model_dir, monkeypatch):
    import sete_lite.model

    monkeypatch.setattr(sete_lite.model.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sete_lite.model, "unsloth_available", lambda: True)
    with pytest.raises(RuntimeError, match="set fast_inference: false"):
        resolve_backend(config(tiny_model_dir, backend="unsloth"))
    assert resolve_backend(config(tiny_model_dir, backend="unsloth", fast_inference=False)) == "unsloth"
    assert resolve_backend(config(tiny_model_dir, backend="auto")) == "transformers"  # auto never picks it on CPU
