"""SENTTrainer: TRL's GRPOTrainer with SENT's loss, curriculum sampler and rollout engines.

A thin subclass (open-r1 style). One optimizer step, in TRL's order, with what this class changes:

1. `_prepare_inputs` (TRL): every `steps_per_generation` steps it builds a generation batch from
   the dataloader, whose sampler is ours (`_get_train_sampler`: the semantic-entropy curriculum,
   stage by stage, in TRL's batch layout), and calls `_generate_and_score_completions`:
   a. rollouts: TRL's `rollout_func` hook -> `_rollout` -> a sete_lite RolloutEngine samples
      `num_generations` completions per prompt, with their sampling-time log-probs;
   b. old log-probs (TRL), only when a batch is trained on after the policy has moved
      (`steps_per_generation` > gradient_accumulation_steps, or `num_iterations` > 1); reference
      log-probs (TRL) when `beta` > 0;
   c. rewards (TRL: the reward functions, weighted) and group-relative advantages (`scale_rewards`);
   d. ours, after TRL's: the reference log-probs with the adapters off whenever the loss needs them
      and TRL did not compute them (`_reference_logps`), the curriculum metrics, the rollout trace.
   TRL then shuffles the batch and cuts it into `steps_per_generation` slices.
2. `compute_loss` (ours) on one slice: the current log-probs and entropies from the final hidden
   states, chunked over the vocabulary (`_get_per_token_logps_and_entropies`, never the (B, T, V)
   logits), then `sete_lite.loss.policy_loss` with the configured mode and TRL's `loss_type`.
   Overriding `compute_loss` means the SENT loss is what gets optimised even where Unsloth has
   patched TRL's loss.
3. backward; transformers' Trainer steps the optimizer every gradient_accumulation_steps slices.

Launched as several processes (README: Several GPUs), each runs these steps on its slice of every
generation batch under DDP: TRL gathers the rewards for the advantages, this class gathers the rollout
trace and the curriculum metrics, and logs loss statistics as means over the processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from trl import GRPOConfig, GRPOTrainer

from sete_lite.config import setting
from sete_lite.curriculum import CurriculumConfig, CurriculumSampler
from sete_lite.logprobs import completion_logprobs
from sete_lite.loss import LossConfig, one_process, policy_loss
from sete_lite.rollout import RolloutEngine, SamplingConfig, encode_prompts

# In each checkpoint, per process: the generation batch being trained and TRL's micro-step counter.
ROLLOUT_BUFFER = "rollout_buffer_{}.pt"


@dataclass
class SENTConfig(LossConfig, GRPOConfig):
    """TRL's GRPOConfig plus SENT's loss keys, which sete_lite.loss.LossConfig declares (once).

    TRL's keys keep TRL's meaning (loss_type, epsilon, epsilon_high, beta, entropy_coef,
    top_entropy_quantile, num_generations, max_completion_length, temperature, ...). Defaults that
    differ from TRL's: beta, entropy_coef, top_entropy_quantile (None: the mode's own, see
    LossConfig) and vllm_importance_sampling_correction (below).
    """

    logprob_chunk_size: int | None = setting(None, "tokens per log-prob chunk; null = about 128 MB of float32 logits")
    # TRL's default (True) recomputes old log-probs with a full no-grad pass per generation batch
    # whenever use_vllm is on, which Unsloth forces with fast_inference: with one optimizer step per
    # batch they equal the current ones. The sampling/recompute gap is logged as sampling/logp_gap_mean.
    vllm_importance_sampling_correction: bool = setting(
        False,
        "TRL's extra old-log-prob pass whenever `use_vllm` is on: off (see the GPU section)",
        shown="`false` (TRL: true)",
    )
    # Each prompt's rollouts from their own stream seeded by (seed, step, prompt): the same rollouts
    # with any number of processes or batch size (slower with transformers generate, free with vLLM).
    seed_rollouts_per_prompt: bool = setting(
        False,
        "each prompt's rollouts from their own stream seeded by (seed, step, prompt): the same rollouts with any "
        "number of processes or batch size (slower with transformers generate; see Several GPUs)",
    )
    # LoRA trains every adapter weight in every forward: DDP need not search for unused ones.
    ddp_find_unused_parameters: bool | None = setting(
        False,
        "several processes: every LoRA weight trains in every forward, so DDP skips the search for unused ones",
        shown="`false` (transformers: true for a PEFT model)",
    )

    def __post_init__(self) -> None:
        self.resolve_loss_defaults()  # the loss keys first: TRL reads beta and friends
        if not torch.cuda.is_available():
            if self.bf16 or self.fp16:
                raise ValueError("bf16/fp16 training needs a CUDA GPU and none is available; on CPU set bf16: false")
            # TRL reads an unset bf16 as true (and transformers then asks for use_cpu): float32 here.
            self.bf16 = self.fp16 = False
            # Without it, transformers sets up no process group for a torchrun launch on CPU, and
            # every process would train alone; with it, gloo and DDP as on GPUs.
            self.use_cpu = True
        self.check_ranges()
        GRPOConfig.__post_init__(self)

    def check_ranges(self) -> None:
        """The values TRL or torch would only refuse deep inside a run (or never), named by key."""
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_generations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError(f"max_completion_length must be at least 1, got {self.max_completion_length}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0 (the log-probs are of the tempered policy), got {self.temperature}"
            )


class SENTTrainer(GRPOTrainer):
    """GRPOTrainer optimising SENT's loss, over the curriculum, with a sete_lite rollout engine."""

    def __init__(
        self,
        *args: Any,
        rollout_engine: RolloutEngine | None = None,
        curriculum_stages: Sequence[Sequence[int]] | None = None,
        curriculum: CurriculumConfig | None = None,
        **kwargs: Any,
    ) -> None:
        self.rollout_engine = rollout_engine
        self.curriculum_stages = curriculum_stages
        self.curriculum = curriculum or CurriculumConfig()
        if curriculum_stages is not None:
            # One pass of the curriculum sampler is the whole run: num_stages x epochs_per_stage.
            kwargs["args"].num_train_epochs = 1
        if rollout_engine is not None:
            kwargs["rollout_func"] = self._rollout
            # TRL warns at every start that rollout_func is experimental: this class is what relies on it.
            os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        super().__init__(*args, **kwargs)
        self.last_loss_inputs: dict[str, torch.Tensor] | None = None
        # Which prompts each generation batch sampled, for the run's rollout trace (resume checks).
        self.rollout_log: list[dict[str, Any]] = []

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: TRL would write its model-card boilerplate over the run's README.md, which
        sete_lite.rundir.write_run_readme writes at the end of a run."""

    # ------------------------------------------------------------------------------------------
    # Checkpoints inside a generation batch

    def _save_rng_state(self, output_dir: str) -> None:
        """Besides the RNG states: TRL's position in the current generation batch and the batch's
        rollouts, which it keeps in memory only. With steps_per_generation > 1 a checkpoint can fall
        inside a batch; resuming there must train the rest of that batch, not sample a new one."""
        super()._save_rng_state(output_dir)
        state = {"step": self._step, "buffered_inputs": self._buffered_inputs}
        torch.save(state, Path(output_dir) / ROLLOUT_BUFFER.format(self.args.process_index))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        path = Path(checkpoint or "") / ROLLOUT_BUFFER.format(self.args.process_index)
        if checkpoint and path.is_file():
            state = torch.load(path, map_location=self.accelerator.device, weights_only=True)
            self._step, self._buffered_inputs = state["step"], state["buffered_inputs"]

    # ------------------------------------------------------------------------------------------
    # Data order: the curriculum

    def _get_train_sampler(self, dataset=None):
        if self.curriculum_stages is None:
            return super()._get_train_sampler(dataset)
        self.curriculum_sampler = self.build_curriculum_sampler()
        return self.curriculum_sampler

    def build_curriculum_sampler(self) -> CurriculumSampler:
        """The sampler over the curriculum stages, in TRL's batch layout for this configuration."""
        return CurriculumSampler(
            self.curriculum_stages,
            epochs_per_stage=self.curriculum.epochs_per_stage,
            shuffle=self.curriculum.shuffle_within_stage,
            seed=self.args.seed,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
        )

    def stage_of_step(self, step: int) -> int:
        """The curriculum stage that optimizer step `step` (0-based) trains on."""
        # Each micro-step draws one dataloader batch per process; an optimizer step is
        # gradient_accumulation_steps of them on every process.
        samples_per_step = (
            self._train_batch_size
            * self.args.steps_per_generation
            * self.args.gradient_accumulation_steps
            * self.accelerator.num_processes
        )
        # The sampler the dataloader walks, or (before training starts) the one it will walk.
        sampler = getattr(self, "curriculum_sampler", None)
        sampler = self.build_curriculum_sampler() if sampler is None else sampler
        position = min(step * samples_per_step, len(sampler) - 1)
        return sampler.stage_at(position % len(sampler))

    # ------------------------------------------------------------------------------------------
    # Rollouts

    def _rollout(self, prompts: list[str], trainer: GRPOTrainer) -> dict[str, list]:
        """TRL's rollout_func: prompts arrive as groups of num_generations identical copies."""
        group = self.num_generations if self.model.training else self.num_generations_eval
        unique = prompts[::group]
        if [p for p in unique for _ in range(group)] != list(prompts):
            raise RuntimeError("rollout batch is not made of consecutive groups of identical prompts")
        seed = self.args.seed + self.state.global_step
        if not self.args.seed_rollouts_per_prompt:
            # One stream per process: processes drawing from the same stream sample correlated groups.
            seed = seed * self.accelerator.num_processes + self.accelerator.process_index
        sampling = SamplingConfig(
            temperature=self.temperature,
            top_p=self.args.top_p,
            top_k=self.args.top_k,  # None, 0 or -1 (Unsloth's rewrite): all mean disabled
            min_p=self.args.min_p or 0.0,
            max_tokens=self.max_completion_length,
            seed=seed,
            seed_per_prompt=self.args.seed_rollouts_per_prompt,
        )
        self.model.eval()  # no dropout while sampling
        groups = self.rollout_engine.generate(unique, group, sampling)
        if hasattr(self.rollout_engine, "sleep"):
            # Unsloth standby: free vLLM's KV cache for the training step (the engine wakes itself).
            self.rollout_engine.sleep()
        self.model.train()
        prompt_ids = encode_prompts(self.processing_class, unique)  # the tokens the engine sampled from
        return {
            "prompt_ids": [ids for ids in prompt_ids for _ in range(group)],
            "completion_ids": [c.token_ids for completions in groups for c in completions],
            "logprobs": [c.logprobs for completions in groups for c in completions],
        }

    # ------------------------------------------------------------------------------------------
    # Log-probs and entropies from hidden states, chunked over the vocabulary

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal: Any,
    ):
        if any(value is not None for value in multimodal.values()):
            raise NotImplementedError("sete_lite trains text-only models; multimodal inputs are not supported")
        entropy_grad = compute_entropy and self.args.needs_entropy_grad() and torch.is_grad_enabled()
        logps, entropies = completion_logprobs(
            model,  # as TRL passes it: wrapped by DDP with several processes
            input_ids,
            attention_mask,
            logits_to_keep,
            temperature=self.temperature,
            chunk_size=self.args.logprob_chunk_size,
            batch_size=batch_size,
            entropy_requires_grad=entropy_grad,
            forward_context=self.accelerator.autocast,
        )
        return logps, entropies if compute_entropy else None, None

    # ------------------------------------------------------------------------------------------
    # Reference log-probs and curriculum metrics

    def _generate_and_score_completions(self, inputs):
        started = time.perf_counter()
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        if self.args.needs_reference() and "ref_per_token_logps" not in output:
            output["ref_per_token_logps"] = self._reference_logps(output)
        if mode == "train" and "id" in inputs[0]:
            # The prompts of the whole generation batch, every process's slice in order; "step" is the
            # optimizer step these completions train (1-based, like the logged metrics).
            ids = gather_object([x["id"] for x in inputs][:: self.num_generations])
            if self.accelerator.is_main_process:
                self.rollout_log.append({"step": self.state.global_step + 1, "ids": ids})
        if "stage" in inputs[0]:
            stage = self.accelerator.gather(torch.tensor([max(float(x["stage"]) for x in inputs)])).max()
            self._metrics[mode]["curriculum/stage"].append(stage.item())
        if "se" in inputs[0]:
            se = self.accelerator.gather(torch.tensor([float(x["se"]) for x in inputs]))
            self._metrics[mode]["curriculum/mean_se"].append(se.mean().item())
        self._metrics[mode]["rollout_time"].append(time.perf_counter() - started)
        return output

    @torch.no_grad()
    def _reference_logps(self, batch: dict[str, Any]) -> torch.Tensor:
        """Log-probs of the completions under the base model: the same weights, adapters off."""
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        with self.accelerator.unwrap_model(self.model).disable_adapter():
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                batch["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
            )
        return logps

    # ------------------------------------------------------------------------------------------
    # The loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("SENTTrainer does not return outputs")
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True
        )
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        training = self.model.training
        loss, stats = policy_loss(
            logps,
            old_logps,
            inputs.get("ref_per_token_logps"),
            inputs["advantages"],
            entropies,
            completion_mask,
            self.args,
            max_completion_length=self.max_completion_length,
            num_tokens=self._dapo_tokens_per_micro_batch(inputs, training),
            gather=self._gather_tokens if self.accelerator.num_processes > 1 else one_process,
        )
        self.last_loss_inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "logp": logps.detach(),
            "old_logp": old_logps.detach(),
            "ref_logp": inputs.get("ref_per_token_logps"),
            "advantages": inputs["advantages"],
            "entropy": entropies.detach(),
            "mask": completion_mask,
            "loss": loss.detach(),
        }
        self._log_loss_stats(stats, inputs)
        if training:  # HF's auto-scaling is off in GRPOTrainer: scale for accumulation here
            loss = loss / self.current_gradient_accumulation_steps
        return loss

    def _gather_tokens(self, values: torch.Tensor) -> tuple[torch.Tensor, int]:
        """sete_lite.loss.Gather across the processes: every process's 1-D `values` in process order, and
        where this process's start (the loss's token selections then span all the micro-batches)."""
        sizes = self.accelerator.gather(torch.tensor([values.numel()], device=values.device)).tolist()
        padded = self.accelerator.pad_across_processes(values, dim=0)
        rows = self.accelerator.gather(padded).view(len(sizes), -1)
        everything = torch.cat([row[:size] for row, size in zip(rows, sizes, strict=True)])
        return everything, sum(sizes[: self.accelerator.process_index])

    def _dapo_tokens_per_micro_batch(self, inputs: dict[str, Any], training: bool) -> float | None:
        """loss_type dapo divides by the valid tokens of the whole accumulation window (TRL's
        `num_items_in_batch`, counted over the generation batch and all processes); per micro-batch,
        before the division by gradient_accumulation_steps, that is this many tokens."""
        if self.args.loss_type != "dapo" or "num_items_in_batch" not in inputs:
            return None
        tokens = float(inputs["num_items_in_batch"]) / self.accelerator.num_processes
        return tokens / self.args.steps_per_generation if training else tokens

    def _log_loss_stats(self, stats: dict[str, float], inputs: dict[str, Any]) -> None:
        """Loss statistics under TRL's metric names where TRL has one, `sent/...` otherwise; with
        several processes, the mean over them (every process computes its own micro-batch's)."""
        mode = "train" if self.model.training else "eval"
        names = sorted(stats)
        means = self.accelerator.gather(torch.tensor([[stats[name] for name in names]])).mean(0).tolist()
        stats = dict(zip(names, means, strict=True))
        metrics = self._metrics[mode]
        metrics["entropy"].append(stats["entropy_mean"])
        metrics["clip_ratio"].append(stats["clip_ratio"])
        metrics["clip_ratio/low_mean"].append(stats["clip_ratio_low"])
        metrics["clip_ratio/high_mean"].append(stats["clip_ratio_high"])
        metrics["clip_ratio/region_mean"].append(stats["clip_ratio"])
        if "kl" in stats:
            metrics["kl"].append(stats["kl"])
        renamed = {"entropy_mean", "clip_ratio", "clip_ratio_low", "clip_ratio_high", "kl", "loss"}
        for name, value in stats.items():
            if name not in renamed:
                metrics[f"sent/{name}"].append(value)
        sampling = inputs.get("sampling_per_token_logps")
        if sampling is not None and self.last_loss_inputs is not None:
            mask = inputs["completion_mask"].bool()
            gap = (sampling - self.last_loss_inputs["logp"]).abs()[mask]
            metrics["sampling/logp_gap_mean"].append(self.accelerator.gather(gap.mean()[None]).mean().item())
