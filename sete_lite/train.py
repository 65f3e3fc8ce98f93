"""`python -m sete_lite.train`: the whole SENT method from one command.

    python -m sete_lite.train                                   # built-in tiny CPU default
    python -m sete_lite.train --config configs/r1_distill_qwen_1.5b_dapo.yaml --output-dir runs/r1
    python -m sete_lite.train --config X --output-dir D --resume
    python -m sete_lite.train --config X --set mode=grpo --set learning_rate=2e-6

Steps: check the config and the data (cheap, before any model is loaded); load the 4-bit/LoRA
policy; score every prompt's semantic entropy with the adapters off (cached in D/se_scores,
resumable); cut the prompts into stages by SE; train stage by stage with SENTTrainer; save the
adapter at each stage end (D/adapter/stage-K) and at the end (D/adapter); write D/metrics.jsonl
and the plots in D/plots; optionally evaluate on held-out problems before training and after each
stage (D/eval). The run directory's layout: sete_lite.rundir.RunDir.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from sete_lite.config import (
    SECTIONS,
    KeysHelp,
    key_flags,
    parse_config,
    read_values,
    refuse_repeated_keys,
    run_cli,
    section_class,
    setting,
    training_keys,
)
from sete_lite.model import import_unsloth_first

# The built-in arithmetic task on CPU (sete_lite/arith/tiny_cpu.yaml), found by name: see sete_lite.builtins.
DEFAULT_CONFIG = "builtin:arith-cpu"


@dataclass
class RunConfig:
    """What a training run optimises and evaluates; the rest lives in the other config classes."""

    reward_funcs: list[str] = setting(
        ["accuracy", "format"],
        "`accuracy` and `format` (TRL's names `accuracy_reward`, `format_reward` too), or import paths "
        "`pkg.module:function`",
        shown="`[accuracy, format]`",
    )
    # Held-out evaluation (the eval_* keys of sete_lite.eval.EvalConfig say on what and how).
    eval_before_training: bool = setting(
        False, "evaluate the base policy on the `eval_benchmarks` into `D/eval/before`"
    )
    eval_at_stage_end: bool = setting(
        False,
        "evaluate after each curriculum stage into `D/eval/stage-K` (`curriculum: false`: once, at the end, as "
        "stage 0)",
    )


class TrainConfigs(NamedTuple):
    """Every config class a training run reads, one instance each, from one flat YAML mapping."""

    shared: Any  # sete_lite.config.SharedConfig
    model: Any  # sete_lite.model.ModelConfig
    data: Any  # sete_lite.data.DataConfig
    score: Any  # sete_lite.score.ScoreConfig
    curriculum: Any  # sete_lite.curriculum.CurriculumConfig
    run: RunConfig
    eval: Any  # sete_lite.eval.EvalConfig
    train: Any  # sete_lite.trainer.SENTConfig (TRL's GRPOConfig + the loss keys)


def config_classes() -> list[type]:
    """The classes of TrainConfigs, in its order: every section of a config file (sete_lite.config.SECTIONS;
    imported only now: TRL is heavy, and Unsloth must come first)."""
    return [section_class(section) for section in TrainConfigs._fields]


def parse_train_config(path: str | Path | None, overrides: list[str]) -> TrainConfigs:
    """The configs of a training run from a YAML file (or builtin:NAME) and `key=value` overrides."""
    return TrainConfigs(*parse_config(config_classes(), path, overrides))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; every config key is also a flag (`--learning_rate 1e-4`, `--output_dir D`), as in
    TRL's scripts, collected into `args.set` after the explicit `--set key=value` overrides."""
    parser = argparse.ArgumentParser(
        prog="python -m sete_lite.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("-h", "--help", action=KeysHelp, sections=tuple(SECTIONS))
    parser.add_argument("--config", default=None, help=f"YAML config file or builtin:NAME (default: {DEFAULT_CONFIG})")
    parser.add_argument("--output-dir", type=Path, default=None, help="run directory (default: the config's)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the run dir")
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue even where settings differ from the run's recorded config.json",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args, rest = parser.parse_known_args(argv)
    args.set += key_flags(rest, training_keys())
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    config_path = args.config or DEFAULT_CONFIG
    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    refuse_repeated_keys(overrides)
    import_unsloth_first(read_values(config_path, overrides))  # before TRL is imported to parse the config
    configs = parse_train_config(config_path, overrides)
    # The run's README and model card repeat the command: the config and every override but the output dir.
    # (TRL's --output_dir arrives among the overrides: the README's commands give --output-dir themselves.)
    chosen = [override for override in args.set if not override.startswith("output_dir=")]
    config_source = shlex.join([str(config_path), *(arg for override in chosen for arg in ("--set", override))])
    summary, _ = run(
        configs, resume=args.resume, config_source=config_source, allow_config_change=args.allow_config_change
    )
    return summary


def flat_config(configs: TrainConfigs) -> dict[str, Any]:
    """Every key's resolved value, as the run directory records it (TRL's fields included)."""
    import dataclasses

    values: dict[str, Any] = {}
    for cfg in configs:
        values.update(cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg))
    return values


def run(
    configs: TrainConfigs,
    *,
    resume: bool = False,
    config_source: str = "CONFIG",
    allow_config_change: bool = False,
):
    """Score, stage and train in the run directory configs.train.output_dir; returns (the summary
    dict that is also printed, the trainer). Launched as several processes (sete_lite.distributed),
    every process checks, scores its share of the SE batches and trains its slice of each batch; the
    main process alone evaluates and writes, and the others return no summary (None). `config_source`:
    the --config and --set arguments that chose the settings, which the run's README repeats.

    The run directory is sete_lite's own (sete_lite.outdir): one holding anything else is refused,
    and the main process holds its lock for the whole run."""
    import contextlib

    from sete_lite.atomic import check_writable_dir
    from sete_lite.distributed import launched_processes
    from sete_lite.outdir import claim, owner

    root = Path(configs.train.output_dir)
    if resume and owner(root) != "train":
        raise ValueError(
            f"--resume: '{root}' holds no sete_lite training run (is the path right?); leave out --resume to "
            "start a new run there"
        )
    check_writable_dir(root, "output_dir")
    main_process = launched_processes().is_main
    with claim(root, "train", "output_dir") if main_process else contextlib.nullcontext():
        return _run(configs, resume=resume, config_source=config_source, allow_config_change=allow_config_change)


def _run(configs: TrainConfigs, *, resume: bool, config_source: str, allow_config_change: bool):
    import datasets
    from transformers import PrinterCallback, ProgressCallback

    from sete_lite.curriculum import stage_indices
    from sete_lite.data import load_records, policy_prompts
    from sete_lite.distributed import launched_processes, launcher_note
    from sete_lite.eval import benchmark_prompts, evaluate_and_write, format_table, load_benchmarks
    from sete_lite.hub import check_hub_access, push_folder
    from sete_lite.model import load_adapter_weights, load_policy
    from sete_lite.rewards import resolve_reward_functions, zero_reward_cause
    from sete_lite.rollout import check_context, context_limit, make_engine
    from sete_lite.rundir import (
        RewardEntropyBar,
        RunDir,
        RunRecorder,
        ZeroRewardWarning,
        check_checkpoint_curriculum,
        check_checkpoint_readable,
        check_resume_config,
        is_final_checkpoint,
        record_config,
        save_adapter_atomically,
        trainer_step,
        truncate_log,
        write_run_readme,
    )
    from sete_lite.score import (
        dataset_fingerprint,
        model_producer,
        score_dataset,
        write_score_report,
        zero_pass_warning,
    )
    from sete_lite.trainer import SENTTrainer

    shared, model_cfg, data_cfg, score_cfg, curriculum, run_cfg, eval_cfg, train_cfg = configs
    run_dir = RunDir(Path(train_cfg.output_dir))
    processes = launched_processes()
    if note := launcher_note():
        print(note)
    # What the run directory records; a resume with other values (the launch's size too) is refused.
    settings = {**flat_config(configs), "num_processes": processes.count}

    # Everything cheap first: a bad config or dataset fails before a model is loaded.
    check_settings(configs)
    push_to = None  # (repository, token)
    if train_cfg.push_to_hub and processes.is_main:
        push_to = check_hub_access(train_cfg.hub_model_id, "push_to_hub", train_cfg.hub_token, run_dir.root.name)
    # The Trainer's own push would upload the whole run directory at every save: sete_lite pushes the
    # final adapter with its model card, once, at the end.
    train_cfg.push_to_hub = False
    shared.apply_num_threads()
    reward_funcs = resolve_reward_functions(
        run_cfg.reward_funcs, answer_timeout_s=shared.answer_timeout_s, answer_extraction=shared.answer_extraction
    )
    records = load_records(data_cfg)
    settings["dataset_fingerprint"] = dataset_fingerprint(records)  # a resume on edited data is refused
    evaluating = run_cfg.eval_before_training or run_cfg.eval_at_stage_end
    heldout = load_benchmarks(eval_cfg) if evaluating else {}
    if curriculum.curriculum and len(records) < curriculum.num_stages:
        raise ValueError(f"{len(records)} prompts cannot fill {curriculum.num_stages} curriculum stages")
    checkpoint = run_dir.last_complete_checkpoint() if resume else None
    if resume and checkpoint is None:
        print(f"--resume: no complete checkpoint in {run_dir.root}; starting from the beginning")
    if not resume and run_dir.earlier_run():
        raise ValueError(
            f"{run_dir.root} holds an earlier run ({', '.join(run_dir.earlier_run())}): pass --resume to continue it, "
            "or give another --output-dir"
        )
    if checkpoint is not None:
        check_checkpoint_readable(run_dir, checkpoint)
        if not allow_config_change:
            check_resume_config(run_dir, settings)
    processes.wait_for_everyone()  # every process has checked the directory before the main one writes
    if processes.is_main:
        record_config(run_dir, settings)
        if processes.count > 1:
            print(f"one data-parallel run on {processes.count} processes; the main process writes {run_dir.root}")

    model, tokenizer = load_policy(model_cfg, seed=shared.seed, gradient_checkpointing=train_cfg.gradient_checkpointing)
    records = policy_prompts(records, tokenizer, data_cfg)
    heldout = benchmark_prompts(heldout, tokenizer, eval_cfg)
    engine = make_engine(shared.rollout_engine, model, tokenizer, model_cfg, seed=shared.seed)
    limit = context_limit(model, engine, model_cfg.max_seq_length)
    prompts = [r["prompt"] for r in records]
    check_context(tokenizer, prompts, train_cfg.max_completion_length, limit, "max_completion_length")
    check_context(tokenizer, prompts, score_cfg.se_max_tokens, limit, "se_max_tokens")
    heldout_prompts = [r["prompt"] for rows in heldout.values() for r in rows]
    check_context(tokenizer, heldout_prompts, eval_cfg.eval_max_tokens, limit, "eval_max_tokens")

    recorder = RunRecorder(run_dir, model_cfg.model_name_or_path, processes)

    def evaluate_as(name: str, use_adapter: bool = True) -> None:
        results = evaluate_and_write(
            engine,
            heldout,
            eval_cfg,
            run_dir.evaluation(name),
            seed=shared.seed,
            answer_timeout_s=shared.answer_timeout_s,
            answer_extraction=shared.answer_extraction,
            use_adapter=use_adapter,
            progress=not train_cfg.disable_tqdm,
        )
        # tqdm.write: at a stage end the training bar is open, and a print would land on its line
        tqdm.write(
            f"held-out evaluation '{name}':\n{format_table(results, eval_cfg.eval_k, eval_cfg.eval_num_samples)}"
        )
        recorder.log_evaluation(results)

    if run_cfg.eval_before_training and checkpoint is None:
        if processes.is_main:
            evaluate_as("before", use_adapter=False)  # the base policy
        processes.wait_for_everyone()

    scores = score_dataset(
        engine,
        records,
        score_cfg,
        model_producer(model_cfg),
        seed=shared.seed,
        answer_timeout_s=shared.answer_timeout_s,
        answer_extraction=shared.answer_extraction,
        scores_dir=run_dir.se_scores,
        processes=processes,
        progress=not train_cfg.disable_tqdm,
    )
    if processes.is_main:
        print(write_score_report(scores, run_dir.se_scores, score_cfg, curriculum.num_stages))
        if warning := zero_pass_warning(scores, shared.answer_extraction):
            print(warning)
    se = [row[f"se_{score_cfg.se_estimator}"] for row in scores]
    stages = stage_indices(se, curriculum.num_stages) if curriculum.curriculum else None
    stage_of = {i: k for k, stage in enumerate(stages or [range(len(records))]) for i in stage}
    train_dataset = datasets.Dataset.from_list(
        [
            {"prompt": r["prompt"], "answer": r["answer"], "id": r["id"], "se": se[i], "stage": stage_of[i]}
            for i, r in enumerate(records)
        ]
    )

    progress_bar = RewardEntropyBar()
    trainer = SENTTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=train_cfg,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        rollout_engine=engine,
        curriculum_stages=stages,
        curriculum=curriculum,
        callbacks=[
            recorder,
            *(
                [progress_bar, ZeroRewardWarning(zero_reward_cause(shared.answer_extraction))]
                if processes.is_main
                else []
            ),
        ],
    )
    if run_cfg.eval_at_stage_end:
        recorder.on_stage_end = lambda stage: evaluate_as(RunDir.stage_evaluation(stage))
    recorder.trainer = trainer
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if checkpoint is not None and stages is not None:
        check_checkpoint_curriculum(checkpoint, trainer.build_curriculum_sampler())
    cut_short = stages_cut_by_max_steps(trainer, train_cfg.max_steps)
    if cut_short and processes.is_main:
        print(f"note: {cut_short}")
    for log in (run_dir.metrics, run_dir.rollouts) if processes.is_main else ():
        # A resumed run drops what the killed run logged after its checkpoint; a fresh run starts empty.
        truncate_log(log, trainer_step(checkpoint) if checkpoint else -1)
    started = time.perf_counter()
    if checkpoint is not None and is_final_checkpoint(checkpoint):
        # transformers would train one more step past max_steps: a finished run only needs its adapter.
        print(f"--resume: {checkpoint} is the run's last step; nothing left to train")
        load_adapter_weights(trainer.model, str(checkpoint))
    else:
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        finally:
            progress_bar.close()
    if not processes.is_main:
        return None, trainer
    save_adapter_atomically(trainer.model, run_dir.adapter, model_cfg.model_name_or_path, tokenizer)
    summary = summarize(run_dir, time.perf_counter() - started)
    facts = {
        "mode": train_cfg.mode,
        "loss_type": train_cfg.loss_type,
        "model": model_cfg.model_name_or_path,
        "backend": model_cfg.backend,
        "load_in_4bit": model_cfg.load_in_4bit,
        "lora_r": model_cfg.lora_r,
        "lora_alpha": model_cfg.lora_alpha,
        "dataset": data_cfg.dataset_name_or_path,
        "num_prompts": len(records),
        "eval_benchmarks": eval_cfg.eval_benchmarks,
        "curriculum": (
            f"{curriculum.num_stages} stages by {score_cfg.se_estimator} semantic entropy, "
            f"{curriculum.epochs_per_stage} epochs each" + (f"; {cut_short}" if cut_short else "")
            if curriculum.curriculum
            else "off (shuffled prompts)"
        ),
    }
    write_run_readme(run_dir, facts, config_source, summary)
    if push_to:
        message = f"sete_lite: {train_cfg.mode} on {model_cfg.model_name_or_path}"
        private = bool(train_cfg.hub_private_repo)
        url = push_folder(run_dir.adapter, *push_to, private=private, message=message)
        print(f"pushed the adapter and its model card to {url}")
    return summary, trainer


def stages_cut_by_max_steps(trainer: Any, max_steps: int) -> str | None:
    """What a max_steps shorter than the curriculum leaves untrained, in a sentence; None if nothing."""
    if trainer.curriculum_stages is None or max_steps <= 0:
        return None
    reached = {trainer.stage_of_step(step) for step in range(max_steps)}
    missed = [stage for stage in range(len(trainer.curriculum_stages)) if stage not in reached]
    if not missed:
        return None
    return (
        f"max_steps={max_steps} ends the run before the curriculum does: stage(s) {', '.join(map(str, missed))} "
        f"of {len(trainer.curriculum_stages)} are never trained"
    )


# ----------------------------------------------------------------------------------------------
# Checks that run before any heavy work


def check_settings(configs: TrainConfigs) -> None:
    """Errors that name the fix for settings this machine or this method cannot honour."""
    from sete_lite.builtins import resolve_builtin
    from sete_lite.model import ADAPTER_BASE_FILE, adapter_base_model, check_model_source, resolve_backend

    resolve_backend(configs.model)  # unsloth without the package, fast_inference without a GPU
    check_model_source(resolve_builtin(configs.model.model_name_or_path))  # a missing path, package or hub name
    adapter = configs.model.adapter_path
    if adapter and (Path(adapter) / ADAPTER_BASE_FILE).is_file():
        trained_on = adapter_base_model(adapter)
        if trained_on != configs.model.model_name_or_path:
            raise ValueError(
                f"adapter_path '{adapter}' was trained on '{trained_on}' but model_name_or_path is "
                f"'{configs.model.model_name_or_path}'; set model_name_or_path to the adapter's base"
            )
    curriculum, train = configs.curriculum, configs.train
    if not curriculum.curriculum and train.max_steps <= 0 and train.num_train_epochs <= 0:
        raise ValueError(
            f"num_train_epochs={train.num_train_epochs} with curriculum: false trains nothing; set num_train_epochs "
            "(or max_steps) above 0"
        )
    if configs.train.num_generations < 2:
        raise ValueError(
            f"num_generations={configs.train.num_generations}: group-relative advantages need at least 2 "
            "completions per prompt"
        )
    from sete_lite.rollout import check_engine_possible

    check_engine_possible(configs.shared.rollout_engine, configs.model)
    check_trackers(configs.train.report_to)


# The package each report_to tracker needs (transformers' integrations).
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow",
    "comet_ml": "comet_ml", "clearml": "clearml", "neptune": "neptune", "dvclive": "dvclive",
    "swanlab": "swanlab", "codecarbon": "codecarbon", "dagshub": "dagshub", "azure_ml": "azureml-core",
}  # fmt: skip


def check_trackers(report_to: Any) -> None:
    """A report_to tracker that is not installed fails now, naming its package, not after the SE pass."""
    from transformers.integrations import get_available_reporting_integrations

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    available = set(get_available_reporting_integrations())
    missing = [name for name in names if name in TRACKER_PACKAGES and name not in available]
    if missing:
        packages = " ".join(TRACKER_PACKAGES[name] for name in missing)
        raise ValueError(
            f"report_to {missing}: not installed here; pip install 'sete_lite[track]' (tensorboard, wandb, trackio) "
            f"or pip install {packages}; or report_to: none"
        )


# ----------------------------------------------------------------------------------------------
# The summary


def by_stage(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """The mean of `key` over the logged steps of each curriculum stage ("all" without a curriculum)."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        if key in row:
            stage = row.get("curriculum/stage")
            groups.setdefault("all" if stage is None else str(int(stage)), []).append(row[key])
    return {stage: round(sum(values) / len(values), 4) for stage, values in groups.items()}


def summarize(run_dir: Any, seconds: float) -> dict[str, Any]:
    """Plots from metrics.jsonl and a short printed summary (run_dir: a sete_lite.rundir.RunDir).

    Rewards and entropies are means per curriculum stage: single steps across stages mislead (a
    harder stage's prompts earn less reward while the policy gets better)."""
    from sete_lite.atomic import read_jsonl
    from sete_lite.rundir import training_rows, write_plots

    rows = training_rows(read_jsonl(run_dir.metrics))
    plots = write_plots(run_dir)
    evaluations = {name: json.loads(path.read_text())["average"] for name, path in run_dir.evaluations()}
    summary = {
        "steps": rows[-1]["step"] if rows else 0,
        "train_seconds": round(seconds, 1),
        "reward_mean_by_stage": by_stage(rows, "reward"),
        "entropy_mean_by_stage": by_stage(rows, "entropy"),
        "mean_step_time": round(sum(r.get("step_time", 0.0) for r in rows) / max(len(rows), 1), 3),
        "adapter": str(run_dir.adapter),
        "eval": evaluations,
        "plots": [str(p) for p in plots],
    }
    print("\nSENT run summary")
    for key, value in summary.items():
        shown = {name: f"avg {scores['avg']:.1%}" for name, scores in value.items()} if key == "eval" else value
        print(f"  {key}: {shown}")
    if summary["eval"]:  # the answer to "did training help?", in one line
        steps = " -> ".join(f"{name} {scores['avg']:.1%}" for name, scores in summary["eval"].items())
        print(f"held-out accuracy (mean over samples): {steps}")
    return summary


if __name__ == "__main__":
    run_cli(main, interrupted="the same command with --resume continues from the last complete checkpoint")
