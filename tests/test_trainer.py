"""SENTTrainer in process on a tiny random model: the loss it optimises, what it trains, every mode."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from datasets import Dataset
from support_rewards import length_reward

from sete_lite.curriculum import CurriculumConfig
from sete_lite.loss import MODES, LossConfig, policy_loss
from sete_lite.model import ModelConfig, load_policy
from sete_lite.rollout import TransformersEngine
from sete_lite.trainer import SENTConfig, SENTTrainer


def make_trainer(model_dir, tmp_path, *, steps=2, stages=None, epochs_per_stage=1, **overrides):
    model, tokenizer = load_policy(
        ModelConfig(
            model_name_or_path=str(model_dir),
            backend="transformers",
            load_in_4bit=False,
            lora_r=4,
            lora_alpha=8,
        )
    )
    rows = [
        {"prompt": f"Compute {i} + {i}.", "answer": str(2 * i), "stage": int(i >= 4), "se": i / 10} for i in range(8)
    ]
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=12,
        learning_rate=5e-2,
        max_steps=steps,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        bf16=False,
        seed=3,
        high_cov_ratio=0.2,
        beta_low=0.1,
        beta_high=0.4,
        kl_cov_ratio=0.2,
        clip_cov_ratio=0.2,
        clip_cov_lb=-5.0,
        clip_cov_ub=5.0,
    )
    settings.update(overrides)
    trainer = SENTTrainer(
        model=model,
        reward_funcs=[length_reward],
        args=SENTConfig(**settings),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        rollout_engine=TransformersEngine(model, tokenizer),
        curriculum_stages=stages,
        curriculum=CurriculumConfig(epochs_per_stage=epochs_per_stage),
    )
    return trainer, model, tokenizer


def plain_logprobs(model, input_ids, attention_mask, completion_length):
    """Reference: one ordinary forward pass of the full logits, float64 log-softmax."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.double()
    logits = logits[:, -completion_length - 1 : -1]
    targets = input_ids[:, -completion_length:]
    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def recomputed_loss(trainer) -> float:
    """policy_loss on the tensors the trainer's last loss saw, with the trainer's LossConfig."""
    seen = trainer.last_loss_inputs
    names = ("logp", "old_logp", "ref_logp", "advantages", "entropy", "mask")
    loss, _ = policy_loss(*(seen[name] for name in names), trainer.args)
    return loss.item()


def test_trainer_optimises_policy_loss_on_its_own_tensors(tiny_model_dir, tmp_path):
    trainer, model, _ = make_trainer(tiny_model_dir, tmp_path, steps=1)
    captured = {}
    original = trainer.compute_loss

    def capture(model_, inputs, *args, **kwargs):
        captured["inputs"] = inputs
        return original(model_, inputs, *args, **kwargs)

    trainer.compute_loss = capture
    trainer.train()
    seen = trainer.last_loss_inputs
    inputs = captured["inputs"]
    # The loss value is exactly policy_loss on those tensors with the configured LossConfig.
    assert seen["loss"].item() == pytest.approx(recomputed_loss(trainer), rel=1e-6)
    assert seen["ref_logp"] is not None  # sent needs the adapters-off reference
    # Reference log-probs: the base model (adapters off) through an ordinary forward pass.
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    with model.disable_adapter():
        reference = plain_logprobs(model, input_ids, attention, inputs["completion_ids"].size(1))
    mask = inputs["completion_mask"].bool()
    torch.testing.assert_close(seen["ref_logp"][mask].double(), reference[mask], rtol=1e-4, atol=1e-4)


def test_trainer_logprobs_match_a_plain_forward_pass(tiny_model_dir, tmp_path):
    trainer, model, tokenizer = make_trainer(tiny_model_dir, tmp_path)
    batch = tokenizer(["Compute 1 + 1. The answer", "Compute 3 + 3. It is six"], return_tensors="pt", padding=True)
    logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
        model, batch["input_ids"], batch["attention_mask"], 5, compute_entropy=True
    )
    reference = plain_logprobs(model, batch["input_ids"], batch["attention_mask"], 5)
    torch.testing.assert_close(logps.double(), reference, rtol=1e-4, atol=1e-5)
    assert entropies.shape == logps.shape and torch.all(entropies > 0)


def test_only_lora_parameters_change(tiny_model_dir, tmp_path):
    trainer, model, _ = make_trainer(tiny_model_dir, tmp_path, steps=2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed, "training changed nothing"
    assert all("lora_" in name for name in changed), sorted(changed - {n for n in changed if "lora_" in n})
    lora_b = [name for name in before if "lora_B" in name]
    assert set(lora_b) <= changed  # every adapter moved away from its zero init


@pytest.mark.parametrize("mode", MODES)
def test_every_loss_mode_runs_through_the_trainer(tiny_model_dir, tmp_path, mode):
    trainer, _, _ = make_trainer(tiny_model_dir, tmp_path, steps=1, mode=mode)
    trainer.train()
    seen = trainer.last_loss_inputs
    assert (seen["ref_logp"] is not None) == trainer.args.needs_reference()
    if mode != "clip_cov":  # clip_cov draws its detached tokens at random
        assert seen["loss"].item() == pytest.approx(recomputed_loss(trainer), rel=1e-6, abs=1e-9)
    logged = trainer.state.log_history[0]
    for key in ("reward", "reward_std", "frac_reward_zero_std", "entropy", "clip_ratio", "step_time"):
        assert key in logged


def test_curriculum_trains_stage_by_stage(tiny_model_dir, tmp_path):
    stages = [[3, 0, 2, 1], [7, 5, 4, 6]]
    trainer, _, _ = make_trainer(tiny_model_dir, tmp_path, steps=4, stages=stages, epochs_per_stage=1)
    trainer.train()
    logged = [row["curriculum/stage"] for row in trainer.state.log_history if "curriculum/stage" in row]
    assert logged == [0.0, 0.0, 1.0, 1.0]
    assert [trainer.stage_of_step(s) for s in range(4)] == [0, 0, 1, 1]
    assert trainer.args.num_train_epochs == 1  # one pass of the curriculum sampler is the whole run


def test_config_loss_defaults_are_loss_config_defaults():
    # SENTConfig inherits LossConfig's fields (TRL users set them on the config): the same values.
    for mode in MODES:
        config = SENTConfig(output_dir="x", mode=mode, use_cpu=True)
        expected = LossConfig(mode=mode)
        assert isinstance(config, LossConfig)
        assert all(getattr(config, f.name) == getattr(expected, f.name) for f in dataclasses.fields(LossConfig))


def test_config_validates_loss_fields_early():
    with pytest.raises(ValueError, match="mode"):
        SENTConfig(output_dir="x", mode="ppo", use_cpu=True)
    cfg = SENTConfig(output_dir="x", mode="sent_code", use_cpu=True)
    assert (cfg.beta, cfg.kl_cov_ratio, cfg.ppo_kl_coef) == (0.001, 0.0002, 0.1)
    loss_fields = {f.name for f in dataclasses.fields(LossConfig)}
    assert loss_fields <= {f.name for f in dataclasses.fields(SENTConfig)}


def test_rollout_accepts_unsloths_top_k_rewrite(tiny_model_dir, tmp_path):
    # Unsloth's generated GRPOTrainer sets args.top_k = -1 when the policy carries a vLLM engine.
    trainer, _, _ = make_trainer(tiny_model_dir, tmp_path)
    prompts = [p for p in ("Compute 1 + 1.", "Compute 2 + 2.") for _ in range(trainer.num_generations)]
    outputs = []
    for top_k in (None, -1):
        trainer.args.top_k = top_k
        outputs.append(trainer._rollout(prompts, trainer))
    assert outputs[0] == outputs[1]


def count_logprob_passes(trainer) -> list[bool]:
    """Wrap the trainer's log-prob function; returns a list that records grad mode per call."""
    calls = []
    original = trainer._get_per_token_logps_and_entropies

    def counted(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return original(*args, **kwargs)

    trainer._get_per_token_logps_and_entropies = counted
    return calls


@pytest.mark.parametrize("correction", [False, True])
def test_no_old_logprob_pass_when_unsloth_forces_use_vllm(tiny_model_dir, tmp_path, correction):
    """Unsloth turns TRL's use_vllm on (fast_inference); with TRL's default importance-sampling
    correction every generation batch would cost a full no-grad pass for old log-probs that equal the
    current ones. SENTConfig defaults the correction off: one reference pass + the loss pass."""
    from types import SimpleNamespace

    overrides = {} if not correction else {"vllm_importance_sampling_correction": True}
    trainer, _, _ = make_trainer(tiny_model_dir, tmp_path, steps=1, **overrides)
    trainer.use_vllm = True  # as Unsloth's generated __init__ sets it
    trainer.vllm_importance_sampling_correction = trainer.args.vllm_importance_sampling_correction
    trainer.vllm_generation = SimpleNamespace(sync_weights=lambda: None)  # shared weights: nothing to sync
    trainer._last_loaded_step = 0
    calls = count_logprob_passes(trainer)
    trainer.train()
    no_grad_passes = calls.count(False)
    assert no_grad_passes == (2 if correction else 1)  # reference (+ old log-probs with the correction)
    assert calls.count(True) == 1


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo"])
def test_loss_type_normalises_over_the_accumulated_batch_as_trl_does(tiny_model_dir, tmp_path, loss_type):
    """Two micro-batches per optimizer step: dapo divides every token's loss by the valid tokens of
    both (TRL's num_items_in_batch), bnpo by each micro-batch's own, then by the 2 accumulation steps."""
    trainer, _, _ = make_trainer(
        tiny_model_dir, tmp_path, steps=1, mode="grpo", loss_type=loss_type,
        per_device_train_batch_size=4, gradient_accumulation_steps=2,
    )  # fmt: skip
    seen = []
    original = trainer.compute_loss

    def capture(model_, inputs, *args, **kwargs):
        loss = original(model_, inputs, *args, **kwargs)
        mask = inputs["completion_mask"].double()
        # On-policy grpo: every valid token's loss is -A of its sequence.
        per_token = -inputs["advantages"].double()[:, None] * mask
        seen.append((loss.item(), per_token.sum().item(), mask.sum().item()))
        return loss

    trainer.compute_loss = capture
    trainer.train()
    assert len(seen) == 2
    returned = sum(loss for loss, _, _ in seen)
    if loss_type == "dapo":
        expected = sum(total for _, total, _ in seen) / sum(tokens for _, _, tokens in seen)
    else:
        expected = sum(total / tokens for _, total, tokens in seen) / 2
    assert returned == pytest.approx(expected, rel=1e-5, abs=1e-7)
