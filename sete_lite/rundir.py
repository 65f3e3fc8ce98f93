"""The run directory: its layout (`RunDir`, the one place that names its files), and the callbacks
that write it as training goes.

- `metrics.jsonl` and `rollouts.jsonl`: one synced line per logged step (and per held-out evaluation,
  with `eval_<benchmark>/...` keys: `training_rows` leaves them out) / per generation batch; a resumed
  run first drops the lines its killed predecessor wrote after the checkpoint.
- `se_scores/`: the semantic-entropy cache, histogram and stage table.
- `checkpoint-N/`: TRL/transformers checkpoints, each with the curriculum it walks and marked
  complete once fully written, so a half-written checkpoint is never resumed from.
- `adapter/` (and `adapter/stage-K/` at each curriculum stage end): saved to a temporary sibling,
  then swapped in; `eval/before/`, `eval/stage-K/`: held-out evaluations; `plots/`.
Plus the one progress bar of a run, with reward, entropy, KL and the curriculum stage.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

from sete_lite.atomic import append_jsonl, read_jsonl, replace_dir, write_jsonl, write_text
from sete_lite.config import stop_if_interrupted
from sete_lite.distributed import ONE_PROCESS, Processes
from sete_lite.hub import shareable_base
from sete_lite.model import ADAPTER_BASE_FILE

CHECKPOINT_DONE = "sete_checkpoint_complete"
# What a resumed run may change: where and how often it reports, and the held-out evaluation.
CHANGEABLE_ON_RESUME = {
    "output_dir", "logging_dir", "run_name", "report_to", "logging_steps", "logging_first_step", "save_steps",
    "save_total_limit", "num_threads", "disable_tqdm", "eval_before_training", "eval_at_stage_end",
}  # fmt: skip
CHECKPOINT_CURRICULUM = "curriculum.json"  # the sampler's state_dict: what order the run walks


@dataclass(frozen=True)
class RunDir:
    """Where a training run keeps what it writes: every reader and writer goes through these names."""

    root: Path

    @property
    def config(self) -> Path:
        """The run's resolved configuration (every key's value), written when it starts."""
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def rollouts(self) -> Path:
        return self.root / "rollouts.jsonl"

    @property
    def se_scores(self) -> Path:
        return self.root / "se_scores"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def adapter(self) -> Path:
        """The final adapter."""
        return self.root / "adapter"

    def stage_adapter(self, stage: int) -> Path:
        """The adapter saved at the end of curriculum stage `stage`."""
        return self.adapter / f"stage-{stage}"

    def evaluation(self, name: str) -> Path:
        """A held-out evaluation: `before` (the base policy) or `stage_evaluation(K)`."""
        return self.root / "eval" / name

    @staticmethod
    def stage_evaluation(stage: int) -> str:
        return f"stage-{stage}"

    def evaluations(self) -> list[tuple[str, Path]]:
        """(name, results.json) of the evaluations written, before first, then by stage (10 after 9)."""
        found = [(path.parent.name, path) for path in (self.root / "eval").glob("*/results.json")]
        return sorted(found, key=lambda item: (-1,) if item[0] == "before" else (int(item[0].split("-")[1]),))

    def earlier_run(self) -> list[str]:
        """What an earlier run left here (a fresh run must not mix with it); the SE cache may stay."""
        names = ["metrics.jsonl", "rollouts.jsonl", "adapter", "eval", *(p.name for p in self.checkpoints())]
        return sorted(name for name in set(names) if (self.root / name).exists())

    def checkpoints(self) -> list[Path]:
        return list(self.root.glob("checkpoint-*"))

    def last_complete_checkpoint(self) -> Path | None:
        """The newest checkpoint-N directory whose save finished (half-written ones are ignored)."""
        done = [p for p in self.checkpoints() if (p / CHECKPOINT_DONE).exists()]
        return max(done, key=trainer_step) if done else None


def check_checkpoint_readable(run_dir: RunDir, checkpoint: Path) -> None:
    """Read what a resume loads from `checkpoint` (trainer state, adapter, optimizer) before anything
    else runs; a damaged file names the checkpoint and the complete one before it."""
    import torch
    from safetensors import safe_open

    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        with safe_open(str(checkpoint / "adapter_model.safetensors"), framework="pt") as adapter:
            for key in adapter.keys():  # noqa: SIM118 (safe_open is not a mapping)
                adapter.get_tensor(key)
        if (checkpoint / "optimizer.pt").exists():
            torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as error:
        earlier = [p for p in run_dir.checkpoints() if (p / CHECKPOINT_DONE).exists() and p != checkpoint]
        earlier = [p for p in earlier if trainer_step(p) < trainer_step(checkpoint)]
        fallback = f"resume from {max(earlier, key=trainer_step)}" if earlier else "start again"
        raise ValueError(
            f"checkpoint {checkpoint} is damaged ({type(error).__name__}: {str(error).splitlines()[0][:120]}); "
            f"delete it to {fallback}"
        ) from None


def is_final_checkpoint(checkpoint: Path) -> bool:
    """Whether `checkpoint` was saved at the run's last step (its trainer state says how many there are)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return state["global_step"] >= state["max_steps"] > 0


def record_config(run_dir: RunDir, values: dict[str, Any]) -> None:
    write_text(run_dir.config, json.dumps(values, indent=1, sort_keys=True, default=str) + "\n")


def check_resume_config(run_dir: RunDir, values: dict[str, Any]) -> None:
    """Refuse a resume whose settings differ from the run's recorded ones (beyond CHANGEABLE_ON_RESUME
    and the eval_* keys): steps trained one way would silently continue another way."""
    if not run_dir.config.is_file():
        raise ValueError(
            f"{run_dir.config} is missing: the run directory records no configuration to resume with; "
            "start a new run in another output directory"
        )
    recorded = json.loads(run_dir.config.read_text())
    now = json.loads(json.dumps(values, default=str))  # the same encoding as the record
    changed = sorted(
        key
        for key in recorded.keys() | now.keys()
        if recorded.get(key) != now.get(key) and key not in CHANGEABLE_ON_RESUME and not key.startswith("eval_")
    )
    if changed:
        shown = ", ".join(f"{key}: {recorded.get(key)!r} -> {now.get(key)!r}" for key in changed[:8])
        raise ValueError(
            f"--resume with settings that differ from the run's ({shown}{', ...' if len(changed) > 8 else ''}); "
            f"resume with the recorded ones ({run_dir.config}), start a new --output-dir, or pass "
            "--allow-config-change to continue anyway"
        )


def trainer_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint-N directory was saved at."""
    return int(checkpoint.name.split("-")[1])


def truncate_log(path: Path, last_step: int) -> None:
    """Keep only the rows up to `last_step` of a per-step jsonl log (atomically)."""
    kept = [row for row in read_jsonl(path) if row["step"] <= last_step]
    write_jsonl(path, kept)


def save_adapter_atomically(model, directory: Path, base_model: str, tokenizer=None) -> None:
    """Save the LoRA adapter to a hidden sibling, then swap it in: never a half-written adapter.

    `base_model` is the configured model name (hub name, path or builtin:NAME), recorded beside the
    adapter (ADAPTER_BASE_FILE); adapter_config.json's base_model_name_or_path, where peft would record
    the directory the weights were read from (or Unsloth its `unsloth/...-bnb-4bit` repository), gets
    its shareable form (sete_lite.hub.shareable_base).
    The tokenizer is saved padding on the left, for generation
    (Unsloth's trainer switches the live one to the right).
    """

    def build(partial: Path) -> None:
        model.save_pretrained(partial)
        write_text(partial / ADAPTER_BASE_FILE, json.dumps({"base_model": base_model}) + "\n")
        # peft records the path the weights were read from (a cache directory for builtin:NAME and GGUF
        # files, Unsloth's -bnb-4bit repository): another machine needs a name it can resolve.
        adapter_config = json.loads((partial / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = shareable_base(base_model)
        write_text(partial / "adapter_config.json", json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
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
    rollouts.jsonl (the prompt ids each step sampled), the curriculum and a completion marker in each
    checkpoint, and the adapter at the end of every curriculum stage. With several processes the main
    one writes (the logged metrics are already means over processes) and the others only wait for it
    where a checkpoint must hold every process's files."""

    def __init__(
        self,
        run_dir: RunDir,
        base_model: str,
        processes: Processes = ONE_PROCESS,
        on_stage_end: Callable[[int], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.base_model = base_model  # recorded with each stage's adapter
        self.processes = processes
        self.on_stage_end = on_stage_end  # e.g. a held-out evaluation
        self.trainer = None  # set once the trainer exists: stage boundaries come from its sampler
        self.pending_logs: list[dict[str, float]] = []  # evaluations made before the trainer's trackers start

    def log_evaluation(self, results: dict[str, Any]) -> None:
        """A held-out evaluation's scores into metrics.jsonl and every report_to tracker, as
        `eval_<benchmark>/avg` and `eval_<benchmark>/pass@k` (trackers show them under eval/). Past the
        trainer's own log, so TRL's accumulated step metrics are left alone."""
        logs = evaluation_logs(results)
        if self.trainer is None or not self.trainer.is_in_train:
            self.pending_logs.append(logs)  # the base policy's: logged when training starts, at step 0
            return
        trainer, should_log = self.trainer, self.trainer.control.should_log
        trainer.callback_handler.on_log(trainer.args, trainer.state, trainer.control, logs)
        trainer.control.should_log = should_log  # on_log clears it: the step's own log must still happen

    def on_train_begin(self, args, state, control, **kwargs):
        for logs in self.pending_logs:
            self.trainer.callback_handler.on_log(args, state, control, logs)
        self.pending_logs.clear()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Every step's log, also those without rewards (the later optimizer steps on one rollout batch
        # when steps_per_generation > 1); not the end-of-training summary.
        if logs and "train_runtime" not in logs and self.processes.is_main:
            append_jsonl(self.run_dir.metrics, [{"step": state.global_step, **logs}])

    def on_save(self, args, state, control, **kwargs):
        self.processes.wait_for_everyone()  # each process saves its RNG state into the checkpoint too
        checkpoint = self.run_dir.root / f"checkpoint-{state.global_step}"  # transformers' naming
        if checkpoint.is_dir() and self.processes.is_main:
            if self.trainer is not None and self.trainer.curriculum_stages is not None:
                curriculum = self.trainer.curriculum_sampler.state_dict()
                write_text(checkpoint / CHECKPOINT_CURRICULUM, json.dumps(curriculum) + "\n")
            write_text(checkpoint / CHECKPOINT_DONE, json.dumps({"step": state.global_step}))
        if self.processes.is_main:
            write_plots(self.run_dir)  # the curves so far, for a look at a long run before it ends

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.trainer is None or not self.processes.is_main:
            return
        append_jsonl(self.run_dir.rollouts, self.trainer.rollout_log)
        self.trainer.rollout_log.clear()
        step = state.global_step
        if self.trainer.curriculum_stages is None:
            # Without a curriculum the run is one stage, which ends with it (the final adapter is saved
            # by the command): the held-out evaluation after training still happens.
            if step == state.max_steps and self.on_stage_end is not None:
                self.on_stage_end(0)
                write_plots(self.run_dir)
            return
        stage = self.trainer.stage_of_step(step - 1)
        if step == state.max_steps or self.trainer.stage_of_step(step) != stage:
            save_adapter_atomically(model, self.run_dir.stage_adapter(stage), self.base_model)
            if self.on_stage_end is not None:
                self.on_stage_end(stage)
            write_plots(self.run_dir)


def write_plots(run_dir: RunDir) -> list[Path]:
    """The run's curves (sete_lite.plots) from metrics.jsonl and its held-out evaluations so far."""
    from sete_lite.plots import plot_heldout, plot_training_curves

    written = plot_training_curves(training_rows(read_jsonl(run_dir.metrics)), run_dir.plots)
    evaluations = [(name, json.loads(path.read_text())) for name, path in run_dir.evaluations()]
    heldout = plot_heldout(evaluations, run_dir.plots)
    return [*written, *([heldout] if heldout else [])]


def training_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl that log training steps, not held-out evaluations (`eval_...` keys)."""
    return [row for row in rows if not any(key.startswith("eval_") for key in row)]


def evaluation_logs(results: dict[str, Any]) -> dict[str, float]:
    """Scalars of a held-out evaluation (sete_lite.eval.evaluate's results), by transformers' eval_ naming."""
    parts = {**results["benchmarks"], "average": results["average"]}
    logs = {}
    for label, scores in parts.items():
        logs[f"eval_{label}/avg"] = scores["avg"]
        logs.update({f"eval_{label}/pass@{k}": value for k, value in scores["pass@k"].items()})
    return logs


def check_checkpoint_curriculum(checkpoint: Path, sampler: Any) -> None:
    """Refuse to resume from `checkpoint` when it was saved walking another curriculum than `sampler`."""
    saved = checkpoint / CHECKPOINT_CURRICULUM
    if not saved.is_file():
        raise ValueError(
            f"{checkpoint} records no curriculum ({CHECKPOINT_CURRICULUM}): it was saved without one, or by an "
            "older sete_lite; resume it with curriculum: false, or start a new run in another output directory"
        )
    sampler.check_resumable(json.loads(saved.read_text()))


class RewardEntropyBar(TrainerCallback):
    """One tqdm bar over the whole run with reward, entropy, KL and stage, instead of HF's log dumps."""

    def __init__(self) -> None:
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(
            total=state.max_steps, initial=state.global_step, desc="SENT", unit="step", disable=args.disable_tqdm
        )

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)
        stop_if_interrupted()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            postfix = {k: round(logs[k], 4) for k in ("reward", "entropy", "kl") if logs.get(k) is not None}
            if "curriculum/stage" in logs:
                postfix["stage"] = int(logs["curriculum/stage"])
            self.bar.set_postfix(postfix)

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """End the bar; also when training stops on an exception, so that the bar's last redraw (tqdm
        redraws an open bar as the interpreter exits) does not come after the command's last line."""
        if self.bar is not None:
            self.bar.close()


class ZeroRewardWarning(TrainerCallback):
    """One line when every reward of the run's first `steps` logged steps is 0: with no reward there is
    no advantage and nothing to learn, which a run would otherwise go on doing silently."""

    def __init__(self, cause: str, steps: int = 4) -> None:
        self.cause = cause  # sete_lite.rewards.zero_reward_cause: what to change
        self.steps = steps
        self.rewards: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs or len(self.rewards) >= self.steps:
            return
        self.rewards.append(logs["reward"])
        if len(self.rewards) == self.steps and not any(self.rewards):
            tqdm.write(
                f"warning: every reward of the first {self.steps} steps is 0, so nothing is learned: {self.cause}"
            )


def write_run_readme(run_dir: RunDir, facts: dict[str, Any], config_source: str, summary: dict[str, Any]) -> None:
    """D/README.md, what this run was and how to continue from it (in place of TRL's model-card
    boilerplate), and D/adapter/README.md, the adapter's model card (sete_lite.hub.model_card: the same
    record, how to load it and the command that trained it). `facts` holds the run's method, model, data,
    curriculum and held-out settings by name."""
    from sete_lite.hub import model_card

    record = [
        f"# SENT run: mode `{facts['mode']}` on `{facts['model']}`",
        "",
        f"- method: mode `{facts['mode']}`, loss_type `{facts['loss_type']}`, {summary['steps']} optimizer steps "
        f"({summary['train_seconds']} s of training); the loss rules: sete_lite's docs/method.md",
        f"- model: `{facts['model']}` (backend {facts['backend']}, 4-bit {facts['load_in_4bit']}), LoRA r="
        f"{facts['lora_r']}, alpha {facts['lora_alpha']}",
        f"- data: `{facts['dataset']}`, {facts['num_prompts']} prompts",
        f"- curriculum: {facts['curriculum']}",
        "",
    ]
    stages = run_dir.se_scores / "stages.md"
    if stages.is_file():
        record += ["## Curriculum stages (semantic entropy of the base model's answers)", "", stages.read_text()]
    evaluations = run_dir.evaluations()
    if evaluations:
        record += ["## Held-out evaluation", ""]
        for name, path in evaluations:
            record += [f"### {name}", "", (path.parent / "results.md").read_text()]
    root = run_dir.root
    benchmarks = " ".join(facts["eval_benchmarks"])
    files_and_next = [
        "## Files",
        "",
        "`adapter/` (final LoRA adapter and its model card, `adapter/stage-K/` at each stage end), `metrics.jsonl`, "
        "`rollouts.jsonl`, `plots/`, `se_scores/`, `eval/`, `checkpoint-N/`.",
        "",
        "## Continue",
        "",
        "```bash",
        f"python -m sete_lite.train --config {config_source} --output-dir {root} --resume   # resume after a stop",
        f"python -m sete_lite.eval --adapter {run_dir.adapter} --benchmarks {benchmarks} --n 16   # evaluate",
        f"python -m sete_lite.export --run-dir {root} --method merged_16bit --output {root / 'merged'}   # export",
        "```",
        "",
    ]
    write_text(root / "README.md", "\n".join(record + files_and_next))
    use = [
        "## Use",
        "",
        f"A LoRA adapter (peft) on `{facts['model']}`, trained with sete_lite (SENT, arXiv 2512.04359):",
        "",
        "```bash",
        f"python -m sete_lite.eval --adapter ADAPTER_DIR --benchmarks {benchmarks}",
        "python -m sete_lite.export --adapter ADAPTER_DIR --method merged_16bit --output merged",
        "```",
        "",
        "## Training command",
        "",
        "```bash",
        f"python -m sete_lite.train --config {config_source}",
        "```",
        "",
    ]
    # The card travels: it names the base as adapter_config.json does, not by this machine's path.
    base = shareable_base(facts["model"])
    card = "\n".join(record + use).replace(f"`{facts['model']}`", f"`{base}`")
    write_text(run_dir.adapter / "README.md", model_card(base, card, "peft"))
