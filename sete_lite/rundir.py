"""The run directory: what a training run writes, and the callbacks that write it as training goes.

- `metrics.jsonl` and `rollouts.jsonl`: one synced line per logged step / per generation batch;
  a resumed run first drops the lines its killed predecessor wrote after the checkpoint.
- `checkpoint-N/`: TRL/transformers checkpoints, each marked complete once fully written, so a
  half-written checkpoint is never resumed from.
- `adapter/` (and `adapter/stage-K/` at each curriculum stage end): saved to a temporary sibling,
  then swapped in.
Plus the one progress bar of a run, with reward, entropy, KL and the curriculum stage.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback

from sete_lite.atomic import append_jsonl, read_jsonl, replace_dir, write_text
from sete_lite.model import ADAPTER_BASE_FILE

CHECKPOINT_DONE = "sete_checkpoint_complete"


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint-N directory whose save finished (half-written ones are ignored)."""
    done = [p for p in output_dir.glob("checkpoint-*") if (p / CHECKPOINT_DONE).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def trainer_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def truncate_log(path: Path, last_step: int) -> None:
    """Keep only the rows up to `last_step` of a per-step jsonl log (atomically)."""
    kept = [row for row in read_jsonl(path) if row["step"] <= last_step]
    write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


def save_adapter_atomically(model, directory: Path, base_model: str, tokenizer=None) -> None:
    """Save the LoRA adapter to a hidden sibling, then swap it in: never a half-written adapter.

    `base_model` is the configured model name (hub name, path or builtin:NAME), recorded beside the
    adapter (ADAPTER_BASE_FILE) because adapter_config.json may name another: Unsloth records its
    `unsloth/...-bnb-4bit` repository. The tokenizer is saved padding on the left, for generation
    (Unsloth's trainer switches the live one to the right).
    """

    def build(partial: Path) -> None:
        model.save_pretrained(partial)
        write_text(partial / ADAPTER_BASE_FILE, json.dumps({"base_model": base_model}) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
            # transformers saves the padding side it was created with, not the live one.
            config = json.loads((partial / "tokenizer_config.json").read_text())
            write_text(partial / "tokenizer_config.json", json.dumps({**config, "padding_side": "left"}, indent=2))
        # Stage adapters saved earlier live inside the final adapter directory: carry them over.
        for child in directory.glob("stage-*"):
            shutil.copytree(child, partial / child.name)

    replace_dir(directory, build)


class RunRecorder(TrainerCallback):
    """Writes the run directory as training goes: metrics.jsonl (one synced line per log),
    rollouts.jsonl (the prompt ids each step sampled), a completion marker in each checkpoint, and
    the adapter at the end of every curriculum stage."""

    def __init__(self, output_dir: Path, base_model: str, on_stage_end: Callable[[int], None] | None = None) -> None:
        self.output_dir = output_dir
        self.base_model = base_model  # recorded with each stage's adapter
        self.on_stage_end = on_stage_end  # e.g. a held-out evaluation
        self.trainer = None  # set once the trainer exists: stage boundaries come from its sampler

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Every step's log, also those without rewards (the later optimizer steps on one rollout batch
        # when steps_per_generation > 1); not the end-of-training summary.
        if logs and "train_runtime" not in logs:
            append_jsonl(self.output_dir / "metrics.jsonl", [{"step": state.global_step, **logs}])

    def on_save(self, args, state, control, **kwargs):
        checkpoint = self.output_dir / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            (checkpoint / CHECKPOINT_DONE).write_text(json.dumps({"step": state.global_step}))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.trainer is None:
            return
        append_jsonl(self.output_dir / "rollouts.jsonl", self.trainer.rollout_log)
        self.trainer.rollout_log.clear()
        if self.trainer.curriculum_stages is None:
            return
        step = state.global_step
        stage = self.trainer.stage_of_step(step - 1)
        if step == state.max_steps or self.trainer.stage_of_step(step) != stage:
            save_adapter_atomically(model, self.output_dir / "adapter" / f"stage-{stage}", self.base_model)
            if self.on_stage_end is not None:
                self.on_stage_end(stage)


class RewardEntropyBar(TrainerCallback):
    """One tqdm bar over the whole run with reward, entropy, KL and stage, instead of HF's log dumps."""

    def __init__(self) -> None:
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="SENT", unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            postfix = {k: round(logs[k], 4) for k in ("reward", "entropy", "kl") if logs.get(k) is not None}
            if "curriculum/stage" in logs:
                postfix["stage"] = int(logs["curriculum/stage"])
            self.bar.set_postfix(postfix)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()
