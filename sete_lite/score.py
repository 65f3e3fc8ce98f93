"""The semantic-entropy scoring pass: M samples per prompt from the base policy, SE per prompt.

This module owns the curriculum's scoring (docs/method.md#curriculum, steps 1-5) as a resumable
job: `score_dataset` samples `num_samples` responses per prompt with the LoRA adapters off,
extracts and clusters their final answers and records per prompt its SE (discrete and
likelihood), number of clusters, pass rate and answers. Rows are appended to `scores.jsonl` as
each batch finishes; `producer.json` records what produced them (model, sampling, dataset
fingerprint), and a cache from another producer is refused.

    python -m sete_lite.score --config configs/score_tiny.yaml [--set key=value ...]
    python -m sete_lite.score --config configs/r1_distill_qwen_1.5b_dapo.yaml --set se_scores_dir=runs/r1_scores

writes scores.jsonl, a histogram of SE (se_histogram.png) and the curriculum's per-stage table
(stages.md) to `scores_dir`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sete_lite.atomic import append_jsonl, cut_torn_tail, read_jsonl, write_jsonl, write_text
from sete_lite.config import setting, stop_if_interrupted
from sete_lite.curriculum import stage_indices
from sete_lite.distributed import ONE_PROCESS, Processes, launched_processes
from sete_lite.outdir import claim, mark
from sete_lite.rollout import Completion, RolloutEngine, SamplingConfig
from sete_lite.semantic import (
    DEFAULT_TIMEOUT_S,
    cluster_answers,
    cluster_entropy,
    extract_answers,
    grade_answers,
    likelihood_weights,
)

ESTIMATORS = ("likelihood", "discrete")
SCORES_FILE = "scores.jsonl"


@dataclass
class ScoreConfig:
    """The SE scoring pass. Its sampling keys carry an `se_` prefix so that a combined training config
    can sample SE and rollouts differently (seed, rollout_engine and answer_timeout_s: SharedConfig)."""

    se_num_samples: int = setting(8, "M, responses per prompt for semantic entropy")
    se_temperature: float = setting(1.0, "SE sampling temperature")
    se_top_p: float = setting(1.0, "SE sampling top-p")
    se_max_tokens: int = setting(1024, "SE response length cap")
    se_batch_size: int = setting(8, "prompts per generation call / cache append")
    se_scores_dir: str = setting(
        "runs/se_scores", "cache directory of `python -m sete_lite.score` (training uses `D/se_scores`)"
    )
    se_estimator: str = setting("likelihood", "which SE orders the curriculum: `likelihood` (paper) or `discrete`")

    def __post_init__(self) -> None:
        if self.se_num_samples < 2:
            raise ValueError(
                f"se_num_samples must be at least 2 (one sample has no entropy), got {self.se_num_samples}"
            )
        if min(self.se_batch_size, self.se_max_tokens) < 1:
            raise ValueError("se_batch_size and se_max_tokens must be at least 1")
        if not 0 < self.se_top_p <= 1:
            raise ValueError(f"se_top_p must be in (0, 1], got {self.se_top_p}")
        if self.se_temperature <= 0:
            raise ValueError(f"se_temperature must be > 0, got {self.se_temperature}")
        if self.se_estimator not in ESTIMATORS:
            raise ValueError(f"se_estimator must be one of {ESTIMATORS}, got '{self.se_estimator}'")


class ProducerMismatchError(ValueError):
    """The cache in scores_dir was produced by another model, sampling setup or dataset."""


def dataset_fingerprint(records: list[dict]) -> str:
    """sha256 of every record's id, prompt and gold answer, in order."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps([record["id"], record["prompt"], record["answer"]]).encode())
    return digest.hexdigest()


def producer_record(
    producer: dict[str, Any], records: list[dict], cfg: ScoreConfig, seed: int, answer_extraction: str = "boxed"
) -> dict[str, Any]:
    """What determines the scores: the caller's model description plus sampling, answer extraction and data."""
    return {
        **producer,
        "answer_extraction": answer_extraction,
        "num_samples": cfg.se_num_samples,
        "temperature": cfg.se_temperature,
        "top_p": cfg.se_top_p,
        "max_tokens": cfg.se_max_tokens,
        "seed": seed,
        "num_prompts": len(records),
        "dataset_fingerprint": dataset_fingerprint(records),
    }


def open_cache(scores_dir: Path, producer: dict[str, Any], processes: Processes = ONE_PROCESS) -> dict[str, dict]:
    """The rows already scored by this producer, by id; a new cache when there is none.

    Rows are appended a whole line at a time, so a killed pass leaves at most one torn last line:
    the main process cuts it off (and merges the part files a killed several-process pass left,
    see `merge_parts`) before anything is appended. Every process checks the producer.
    """
    scores_dir.mkdir(parents=True, exist_ok=True)
    if processes.is_main:
        mark(scores_dir, "score")  # a training run's cache too: the score command may add to it
    producer_path, scores_path = scores_dir / "producer.json", scores_dir / SCORES_FILE
    if producer_path.is_file():
        saved = json.loads(producer_path.read_text())
        if saved != producer:
            keys = sorted(k for k in saved.keys() | producer.keys() if saved.get(k) != producer.get(k))
            cached, now = {k: saved.get(k) for k in keys}, {k: producer.get(k) for k in keys}
            raise ProducerMismatchError(
                f"{scores_dir} holds scores from another producer (cached {cached}, now {now}); delete {scores_dir} "
                "to rescore with the current settings, or score elsewhere (the score command: se_scores_dir; a "
                "training run keeps its scores in OUTPUT_DIR/se_scores: give another --output-dir)"
            )
    elif scores_path.exists():
        raise ProducerMismatchError(f"{scores_path} exists without producer.json: unknown producer, refusing")
    if processes.is_main:
        if not producer_path.is_file():
            write_text(producer_path, json.dumps(producer, indent=2) + "\n")
        merge_parts(scores_dir)
    processes.wait_for_everyone()
    rows: dict[str, dict] = {}
    for row in read_jsonl(scores_path):
        if row["id"] in rows:
            raise ValueError(f"{scores_path} has two rows for id '{row['id']}'; delete it to rescore")
        rows[row["id"]] = row
    return rows


def part_file(scores_dir: Path, processes: Processes) -> Path:
    """Where this process appends its rows: scores.jsonl itself when it is alone, else its own part."""
    return scores_dir / (SCORES_FILE if processes.count == 1 else f"scores.part-{processes.index}.jsonl")


def merge_parts(scores_dir: Path) -> None:
    """Fold the part files of several processes into scores.jsonl (atomically, then delete the parts),
    and cut a torn last line off scores.jsonl. A row whose id is already there is skipped: a merge
    killed between its write and the deletes is simply redone."""
    scores_path = scores_dir / SCORES_FILE
    cut_torn_tail(scores_path)
    parts = sorted(scores_dir.glob("scores.part-*.jsonl"))
    if not parts:
        return
    rows = read_jsonl(scores_path)
    seen = {row["id"] for row in rows}
    for part in parts:
        for row in read_jsonl(part):
            if row["id"] not in seen:
                rows.append(row)
                seen.add(row["id"])
    write_jsonl(scores_path, rows)
    for part in parts:
        part.unlink()


def mean_logprob(completion: Completion) -> float:
    # A completion of zero tokens has probability 1 (an empty product): log-prob 0.
    return sum(completion.logprobs) / len(completion.logprobs) if completion.logprobs else 0.0


def score_prompt(
    record: dict, completions: list[Completion], timeout_s: float = DEFAULT_TIMEOUT_S, answer_extraction: str = "boxed"
) -> dict[str, Any]:
    """The cache row of one prompt from its M sampled completions."""
    answers = extract_answers([c.text for c in completions], answer_extraction, timeout_s=timeout_s)
    labels = cluster_answers(answers, timeout_s=timeout_s)
    mean_logprobs = [mean_logprob(c) for c in completions]
    correct = grade_answers(record["answer"], answers, timeout_s=timeout_s)
    return {
        "id": record["id"],
        "se_discrete": cluster_entropy(labels),
        "se_likelihood": cluster_entropy(labels, likelihood_weights(mean_logprobs)),
        "num_clusters": max(labels) + 1,
        "pass_rate": sum(correct) / len(correct),
        "answers": answers,
        "clusters": labels,
        "mean_logprobs": mean_logprobs,
        "truncated": sum(c.finish_reason == "length" for c in completions),
    }


def score_dataset(
    engine: RolloutEngine,
    records: list[dict],
    cfg: ScoreConfig,
    producer: dict[str, Any],
    *,
    seed: int,
    answer_timeout_s: float = DEFAULT_TIMEOUT_S,
    answer_extraction: str = "boxed",
    scores_dir: str | Path | None = None,
    progress: bool = True,
    processes: Processes = ONE_PROCESS,
) -> list[dict]:
    """Score every record, resuming from the cache; rows in the order of `records`.

    `producer` describes the model (e.g. {"model": path, "load_in_4bit": True}); sampling settings
    and a dataset fingerprint are added to it, and a cache from a different producer is refused.
    The cache lives in `scores_dir` (default `cfg.se_scores_dir`; a trainer puts it in its run
    directory). Sampling uses the base policy: `use_adapter=False`. With several `processes`
    (sete_lite.distributed), each scores its share of the batches and every one returns all rows.
    """
    scores_dir = Path(scores_dir if scores_dir is not None else cfg.se_scores_dir)
    produced_by = producer_record(producer, records, cfg, seed, answer_extraction)  # hashes the dataset: once per pass
    done = open_cache(scores_dir, produced_by, processes)
    # Batches are fixed slices of the dataset, each seeded by its position, whatever is cached: a
    # pass resumed after a kill samples exactly what the uninterrupted pass would have, and appends
    # only the rows that are missing (a kill can leave a batch's rows half written). Several
    # processes share the batches out round-robin, each appending to its own part file.
    size = cfg.se_batch_size
    batches = [records[start : start + size] for start in range(0, len(records), size)]
    mine = [
        (number, batch)
        for number, batch in enumerate(batches)
        if processes.owns(number) and any(r["id"] not in done for r in batch)
    ]
    label = "SE scoring" + (f" (main process's share of {processes.count})" if processes.count > 1 else "")
    todo = sum(r["id"] not in done for _, batch in mine for r in batch)
    with tqdm(total=todo, unit="prompt", desc=label, disable=not progress or not processes.is_main) as bar:
        for number, batch in mine:
            sampling = SamplingConfig(
                temperature=cfg.se_temperature,
                top_p=cfg.se_top_p,
                max_tokens=cfg.se_max_tokens,
                seed=seed + number * size,
            )
            completions = engine.generate([r["prompt"] for r in batch], cfg.se_num_samples, sampling, use_adapter=False)
            rows = [
                score_prompt(r, c, answer_timeout_s, answer_extraction)
                for r, c in zip(batch, completions, strict=True)
                if r["id"] not in done
            ]
            append_jsonl(part_file(scores_dir, processes), rows)
            done.update((row["id"], row) for row in rows)
            bar.update(len(rows))
            stop_if_interrupted()
    if processes.count > 1:  # every process's rows, merged by the main process
        processes.wait_for_everyone()
        done = open_cache(scores_dir, produced_by, processes)
    return [done[record["id"]] for record in records]


def stage_table(rows: list[dict], num_stages: int, estimator: str = "likelihood") -> list[dict[str, Any]]:
    """Per curriculum stage: prompt count, mean and range of SE, mean pass rate."""
    scores = [row[f"se_{estimator}"] for row in rows]
    table = []
    for stage, indices in enumerate(stage_indices(scores, num_stages)):
        stage_scores = [scores[i] for i in indices]
        table.append(
            {
                "stage": stage,
                "count": len(indices),
                "mean_se": statistics.fmean(stage_scores),
                "min_se": min(stage_scores),
                "max_se": max(stage_scores),
                "mean_pass_rate": statistics.fmean(rows[i]["pass_rate"] for i in indices),
            }
        )
    return table


def format_stage_table(table: list[dict[str, Any]], estimator: str) -> str:
    lines = [
        f"| stage | count | mean SE ({estimator}) | SE range | mean pass rate |",
        "|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['stage']} | {row['count']} | {row['mean_se']:.3f} | "
            f"{row['min_se']:.3f}-{row['max_se']:.3f} | {row['mean_pass_rate']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot_histogram(rows: list[dict], path: Path, num_samples: int, estimator: str, num_stages: int) -> None:
    """Both estimators' SE as side-by-side bars, and where the curriculum cuts the `estimator` one."""
    from sete_lite.plots import plt, save

    fig, ax = plt.subplots(figsize=(6, 4))
    # SE lies in [0, log M] (log M: all answers distinct), up to float rounding at the top.
    values = [[row[f"se_{name}"] for row in rows] for name in ESTIMATORS]
    top = max(math.log(num_samples), *values[0], *values[1])
    bins = [top * i / 20 for i in range(21)]
    ax.hist(values, bins=bins, label=list(ESTIMATORS))
    scores = [row[f"se_{estimator}"] for row in rows]
    stages = stage_indices(scores, num_stages) if len(rows) >= num_stages > 1 else []
    for stage, (lower, upper) in enumerate(itertools.pairwise(stages)):
        cut = (max(scores[i] for i in lower) + min(scores[i] for i in upper)) / 2
        ax.axvline(cut, color="black", linestyle="--", linewidth=1)
        ax.annotate(f"stage {stage} | {stage + 1}", (cut, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize=8)  # fmt: skip
    ax.set_xlabel("semantic entropy (nats)")
    ax.set_ylabel("prompts")
    ax.set_title(f"SE of {len(rows)} prompts, M = {num_samples}; stages cut by {estimator} SE")
    ax.legend(loc="center right")
    fig.tight_layout()
    save(fig, path)


def model_producer(model_cfg: Any) -> dict[str, Any]:
    """What identifies the base policy in the cache's producer record (scores are valid for it only)."""
    return {"model": model_cfg.model_name_or_path, "load_in_4bit": model_cfg.load_in_4bit, "dtype": model_cfg.dtype}


def zero_pass_warning(rows: list[dict], answer_extraction: str) -> str | None:
    """One line when no sample of any prompt was graded correct: the curriculum then orders prompts by
    noise, and training earns no reward. None when some sample passed."""
    from sete_lite.rewards import zero_reward_cause

    if any(row["pass_rate"] > 0 for row in rows):
        return None
    answers = [answer for row in rows for answer in row["answers"]]
    missing = sum(answer is None for answer in answers) / max(len(answers), 1)
    return (
        f"warning: no SE sample of the {len(rows)} prompts is correct (pass rate 0 everywhere; no answer found in "
        f"{missing:.0%} of {len(answers)} samples, see scores.jsonl): {zero_reward_cause(answer_extraction)}"
    )


def write_score_report(rows: list[dict], scores_dir: Path, cfg: ScoreConfig, num_stages: int) -> str:
    """The SE histogram (PNG) and the per-stage table (markdown) next to the scores; returns the table."""
    plot_histogram(rows, scores_dir / "se_histogram.png", cfg.se_num_samples, cfg.se_estimator, num_stages)
    table = format_stage_table(stage_table(rows, num_stages, cfg.se_estimator), cfg.se_estimator)
    write_text(scores_dir / "stages.md", table)
    return table


def config_classes() -> list[type]:
    """What the score command reads: shared, model, data, scoring and curriculum keys (for the stage table)."""
    from sete_lite.config import section_class

    return [section_class(section) for section in ("shared", "model", "data", "score", "curriculum")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The score command's arguments; `set` holds every override, the config-key flags and --output-dir's."""
    from sete_lite.config import KeysHelp, key_flags, training_keys

    parser = argparse.ArgumentParser(
        prog="python -m sete_lite.score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("-h", "--help", action=KeysHelp, sections=("shared", "model", "data", "score", "curriculum"))
    parser.add_argument(
        "--config",
        default="builtin:arith-cpu",
        help="YAML config (model, data and se_* keys; a training config works too) or builtin:NAME "
        "(default: builtin:arith-cpu, the built-in task)",
    )
    parser.add_argument(
        "--output-dir", "--output_dir", dest="output_dir", metavar="DIR", help="where the scores go (se_scores_dir)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    args, rest = parser.parse_known_args(argv)
    args.set += key_flags(rest, training_keys()) + ([f"se_scores_dir={args.output_dir}"] if args.output_dir else [])
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    from sete_lite.atomic import check_writable_dir
    from sete_lite.config import parse_config, read_values, refuse_repeated_keys, training_keys
    from sete_lite.data import load_records
    from sete_lite.model import import_unsloth_first
    from sete_lite.rollout import check_engine_possible

    args = parse_args(argv)
    refuse_repeated_keys(args.set)
    import_unsloth_first(read_values(args.config, args.set))
    shared, model_cfg, data_cfg, cfg, curriculum = parse_config(
        config_classes(), args.config, args.set, also_valid=training_keys()
    )

    check_engine_possible(shared.rollout_engine, model_cfg)
    check_writable_dir(Path(cfg.se_scores_dir), "se_scores_dir")
    shared.apply_num_threads()
    records = load_records(data_cfg)
    processes = launched_processes()  # before the model loads: each process of a launch on its own GPU
    scores_dir = Path(cfg.se_scores_dir)
    with claim(scores_dir, "score", "se_scores_dir") if processes.is_main else contextlib.nullcontext():
        return score_and_report(shared, model_cfg, data_cfg, cfg, curriculum, records, processes)


def score_and_report(shared, model_cfg, data_cfg, cfg, curriculum, records, processes) -> list[dict]:
    """The score command's work once its directory is claimed: the SE pass, then the report."""
    from sete_lite.data import policy_prompts
    from sete_lite.model import load_policy
    from sete_lite.rollout import check_context, context_limit, make_engine

    model, tokenizer = load_policy(model_cfg, seed=shared.seed)
    records = policy_prompts(records, tokenizer, data_cfg)  # the prompts training sees: its run reuses these scores
    engine = make_engine(shared.rollout_engine, model, tokenizer, model_cfg, seed=shared.seed)
    prompts = [r["prompt"] for r in records]
    limit = context_limit(model, engine, model_cfg.max_seq_length)
    check_context(tokenizer, prompts, cfg.se_max_tokens, limit, "se_max_tokens")
    rows = score_dataset(
        engine,
        records,
        cfg,
        model_producer(model_cfg),
        seed=shared.seed,
        answer_timeout_s=shared.answer_timeout_s,
        answer_extraction=shared.answer_extraction,
        processes=processes,
    )
    if not processes.is_main:
        return rows
    scores_dir = Path(cfg.se_scores_dir)
    table = write_score_report(rows, scores_dir, cfg, curriculum.num_stages)
    if warning := zero_pass_warning(rows, shared.answer_extraction):
        print(warning)
    configs = {"shared": shared, "model": model_cfg, "data": data_cfg, "score": cfg, "curriculum": curriculum}
    write_text(scores_dir / "config.json", json.dumps({k: asdict(v) for k, v in configs.items()}, indent=2) + "\n")
    print(table)
    print(f"wrote {scores_dir / 'scores.jsonl'} ({len(rows)} prompts), se_histogram.png, stages.md")
    return rows


if __name__ == "__main__":
    from sete_lite.config import run_cli

    run_cli(main, interrupted="the same command resumes scoring where it stopped (scores are kept per batch)")
