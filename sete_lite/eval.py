"""`python -m sete_lite.eval`: Pass@k and Avg@k of a model (optionally with a LoRA adapter) on math benchmarks.

This module owns evaluation as the paper reports it (docs/method.md, section 5): n samples per problem
with the paper's prompt at temperature 1.0, top_p 0.9; each sample's final answer is graded against
the gold answer with math-verify (`sete_lite.semantic.grade_answers`), and per benchmark

- Avg@n: the mean accuracy over all n x problems samples. It is also the unbiased estimate of
  Avg@k (the mean accuracy over k samples) for every k <= n, so one column serves every k;
- Pass@k: the unbiased estimator of Chen et al. (2021), 1 - C(n - c, k) / C(n, k) per problem
  with c correct samples out of n, averaged over problems;

and the same averaged over benchmarks (each benchmark weighs the same, as in the paper's tables).

    python -m sete_lite.eval --model Qwen/Qwen2.5-Math-1.5B --benchmarks AIME24 MATH500 --n 16 --k 1 8 16
    python -m sete_lite.eval --adapter runs/tiny/adapter --benchmarks data/champ_math.jsonl --output-dir D
    python -m sete_lite.eval --config configs/eval_tiny.yaml --set eval_max_tokens=64

writes D/results.json, D/results.md (a markdown table) and D/samples.jsonl (every sample's text,
extracted answer and verdict). Benchmarks are the names in `BENCHMARKS` (the paper's six and
GSM8K, loaded from their usual hub datasets) or local jsonl/json/parquet files with a question
and an answer column. `evaluate(engine, benchmarks, cfg)` is the library entry point: the trainer
can call it with its own rollout engine on a held-out set (`evaluate_and_write` also writes the files).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sete_lite.atomic import check_writable_dir, write_jsonl, write_text
from sete_lite.builtins import resolve_builtin
from sete_lite.config import setting, stop_if_interrupted
from sete_lite.data import DEFAULT_PROMPT_TEMPLATE, LOCAL_FORMATS, DataConfig, apply_chat_template, load_records
from sete_lite.outdir import claim
from sete_lite.rollout import RolloutEngine, SamplingConfig, check_context, context_limit
from sete_lite.semantic import DEFAULT_TIMEOUT_S, extract_answers, grade_answers


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives on the hub and which columns hold its question and gold answer."""

    dataset: str
    split: str
    question_column: str
    answer_column: str
    configs: tuple[str | None, ...] = (None,)  # several configs are concatenated (AIME 2025 I + II)
    id_column: str | None = None  # None: the row number (prefixed by the config when there are several)
    answer_is_list: bool = False  # the gold is a list of strings (OlympiadBench's final_answer)


# The paper's six benchmarks and GSM8K, from the hub datasets most RLVR evaluations use (column
# names checked against each dataset card).
BENCHMARKS: dict[str, Benchmark] = {
    "AIME24": Benchmark("HuggingFaceH4/aime_2024", "train", "problem", "answer", id_column="id"),
    "AIME25": Benchmark("opencompass/AIME2025", "test", "question", "answer", configs=("AIME2025-I", "AIME2025-II")),
    "AMC23": Benchmark("math-ai/amc23", "test", "question", "answer"),
    "MATH500": Benchmark("HuggingFaceH4/MATH-500", "test", "problem", "answer", id_column="unique_id"),
    "OlympiadBench": Benchmark(
        "Hothan/OlympiadBench",
        "train",
        "question",
        "final_answer",
        configs=("OE_TO_maths_en_COMP",),  # open-ended, text-only, English competition maths (675)
        id_column="id",
        answer_is_list=True,
    ),
    "Minerva": Benchmark("math-ai/minervamath", "test", "question", "answer"),
    "GSM8K": Benchmark("openai/gsm8k", "test", "question", "answer", configs=("main",)),  # gold: "... #### 72"
}
PAPER_BENCHMARKS = ["AIME24", "AIME25", "AMC23", "MATH500", "OlympiadBench", "Minerva"]


@dataclass
class EvalConfig:
    """The evaluation. Keys carry an `eval_` prefix so that a training config can hold them too
    (seed, rollout_engine and answer_timeout_s: SharedConfig)."""

    eval_benchmarks: list[str] = setting(
        PAPER_BENCHMARKS,
        "names (`AIME24`, `AIME25`, `AMC23`, `MATH500`, `OlympiadBench`, `Minerva`, `GSM8K`), local files or "
        "`builtin:NAME`",
        shown="the paper's six",
    )
    eval_num_samples: int = setting(16, "n samples per problem")
    eval_k: list[int] = setting([1, 8, 16], "the k of Pass@k (k <= n)", shown="`[1, 8, 16]`")
    eval_temperature: float = setting(1.0, "evaluation sampling temperature (the paper's)")
    eval_top_p: float = setting(0.9, "evaluation top-p (the paper's)")
    eval_max_tokens: int = setting(4096, "evaluation response length cap")
    eval_batch_size: int = setting(8, "problems per generation call")
    eval_max_problems: int | None = setting(None, "the first N problems of each benchmark")
    eval_question_column: str = setting("question", "question column of a local eval file")
    eval_answer_column: str = setting("answer", "answer column of a local eval file")
    eval_prompt_template: str = setting(DEFAULT_PROMPT_TEMPLATE, "evaluation prompt", shown="the paper's")
    eval_use_chat_template: bool = setting(False, "wrap evaluation prompts in the chat template")
    eval_system_prompt: str | None = setting(None, "system message with `eval_use_chat_template`")
    eval_output_dir: str = setting("runs/eval", "output of `python -m sete_lite.eval`")
    eval_save_texts: bool = setting(True, "keep each sample's text in `samples.jsonl`")
    eval_drop_invalid_rows: bool = setting(False, "like `drop_invalid_rows`, for the evaluation's problems")

    def __post_init__(self) -> None:
        if isinstance(self.eval_benchmarks, str):
            self.eval_benchmarks = [self.eval_benchmarks]
        if isinstance(self.eval_k, int):
            self.eval_k = [self.eval_k]
        if not self.eval_benchmarks:
            raise ValueError(f"eval_benchmarks is empty; name some of {sorted(BENCHMARKS)} or local data files")
        if min(self.eval_num_samples, self.eval_batch_size, self.eval_max_tokens) < 1:
            raise ValueError("eval_num_samples, eval_batch_size and eval_max_tokens must be at least 1")
        if not self.eval_k:
            raise ValueError("eval_k is empty; give the k of Pass@k, e.g. [1, 8, 16]")
        if min(self.eval_k) < 1:
            raise ValueError(f"every k in eval_k must be at least 1, got {self.eval_k}")
        if max(self.eval_k) > self.eval_num_samples:
            raise ValueError(
                f"Pass@k needs k <= n: eval_k={self.eval_k} with eval_num_samples={self.eval_num_samples}; "
                f"raise eval_num_samples to at least {max(self.eval_k)} or drop the larger k"
            )
        if not 0 < self.eval_top_p <= 1:
            raise ValueError(f"eval_top_p must be in (0, 1], got {self.eval_top_p}")
        if self.eval_temperature < 0:
            raise ValueError(f"eval_temperature must be >= 0 (0 = greedy), got {self.eval_temperature}")
        if self.eval_max_problems is not None and self.eval_max_problems < 1:
            raise ValueError(f"eval_max_problems must be positive, got {self.eval_max_problems}")
        for name in self.eval_benchmarks:
            benchmark_source(name)  # unknown names fail here, before any model is loaded

    def sampling(self, seed: int) -> SamplingConfig:
        return SamplingConfig(
            temperature=self.eval_temperature, top_p=self.eval_top_p, max_tokens=self.eval_max_tokens, seed=seed
        )


# ----------------------------------------------------------------------------------------------
# Metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k of one problem with c correct among n samples: 1 - C(n - c, k) / C(n, k).

    Computed as a product (Chen et al., 2021) so that large n cannot overflow a float.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def benchmark_scores(correct: list[list[bool]], k_values: list[int]) -> dict[str, Any]:
    """Avg@n and Pass@k of one benchmark from each problem's per-sample verdicts."""
    n = len(correct[0])
    counts = [sum(row) for row in correct]
    return {
        "num_problems": len(correct),
        "num_samples": n,
        "avg": statistics.fmean(c / n for c in counts),
        "pass@k": {str(k): statistics.fmean(pass_at_k(n, c, k) for c in counts) for k in k_values},
    }


def average_scores(per_benchmark: dict[str, dict[str, Any]], k_values: list[int]) -> dict[str, Any]:
    """The unweighted mean over benchmarks (a 30-problem AIME weighs as much as MATH500)."""
    scores = list(per_benchmark.values())
    return {
        "num_benchmarks": len(scores),
        "avg": statistics.fmean(s["avg"] for s in scores),
        "pass@k": {str(k): statistics.fmean(s["pass@k"][str(k)] for s in scores) for k in k_values},
    }


# ----------------------------------------------------------------------------------------------
# Benchmarks


def is_local_file(name: str) -> bool:
    return Path(resolve_builtin(name)).suffix in LOCAL_FORMATS


def benchmark_source(name: str) -> Benchmark | Path:
    """The registry entry of a benchmark name, or the path of a local file; a clear error otherwise."""
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    if is_local_file(name):
        path = Path(resolve_builtin(name))
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file '{name}' does not exist")
        return path
    known = {key.lower(): key for key in BENCHMARKS}
    hint = f" (did you mean {known[name.lower()]}?)" if name.lower() in known else ""
    raise ValueError(
        f"unknown benchmark '{name}'{hint}; use one of {list(BENCHMARKS)} or a local "
        f"{'/'.join(sorted(LOCAL_FORMATS))} file with question and answer columns"
    )


def benchmark_label(name: str) -> str:
    """How a benchmark is named in the results: its registry name, or the file's stem."""
    return Path(resolve_builtin(name)).stem if is_local_file(name) else name


def gold_from_list(text: str) -> str:
    """A list-valued gold answer (stringified by the loader) as one answer: "['$3$', '$5$']" -> "3, 5"."""
    values = ast.literal_eval(text)
    return ", ".join(str(v).strip().strip("$").strip() for v in values)


def load_benchmark(name: str, cfg: EvalConfig) -> list[dict]:
    """Records {id, question, answer, prompt} of one benchmark (hub name or local file)."""
    source = benchmark_source(name)
    common = {
        "prompt_template": cfg.eval_prompt_template,
        "max_prompts": cfg.eval_max_problems,
        "drop_invalid_rows": cfg.eval_drop_invalid_rows,
    }
    if isinstance(source, Path):
        data_cfg = DataConfig(
            dataset_name_or_path=str(source),
            question_column=cfg.eval_question_column,
            answer_column=cfg.eval_answer_column,
            id_column=None,
            **common,
        )
        return load_records(data_cfg)
    records = []
    for config in source.configs:
        data_cfg = DataConfig(
            dataset_name_or_path=source.dataset,
            dataset_config=config,
            dataset_split=source.split,
            question_column=source.question_column,
            answer_column=source.answer_column,
            id_column=source.id_column,
            **common,
        )
        for record in load_records(data_cfg):
            if len(source.configs) > 1:  # row numbers repeat across configs
                record["id"] = f"{config}/{record['id']}"
            if source.answer_is_list:
                record["answer"] = gold_from_list(record["answer"])
            records.append(record)
    return records[: cfg.eval_max_problems]


def load_benchmarks(cfg: EvalConfig) -> dict[str, list[dict]]:
    """Every configured benchmark's records, by label."""
    benchmarks = {}
    for name in cfg.eval_benchmarks:
        label = benchmark_label(name)
        if label in benchmarks:
            raise ValueError(f"benchmark '{label}' is listed twice in eval_benchmarks")
        benchmarks[label] = load_benchmark(name, cfg)
    return benchmarks


def benchmark_prompts(benchmarks: dict[str, list[dict]], tokenizer: Any, cfg: EvalConfig) -> dict[str, list[dict]]:
    """The benchmarks' records as the policy sees them (chat template when `eval_use_chat_template`)."""
    if not cfg.eval_use_chat_template:
        return benchmarks
    return {label: apply_chat_template(rs, tokenizer, cfg.eval_system_prompt) for label, rs in benchmarks.items()}


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    engine: RolloutEngine,
    benchmarks: dict[str, list[dict]],
    cfg: EvalConfig,
    *,
    seed: int,
    answer_timeout_s: float = DEFAULT_TIMEOUT_S,
    answer_extraction: str = "boxed",
    use_adapter: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample n completions per problem, grade them, and score every benchmark.

    `benchmarks` maps a label to records with at least `id`, `prompt` and `answer` (as
    `load_benchmarks` or `sete_lite.data.load_records` return them). `use_adapter=False` evaluates
    the base policy of a LoRA model. Returns {"benchmarks": {label: scores}, "average": scores,
    "seconds": wall time, "samples": [one row per sample]}; scores hold num_problems, num_samples,
    avg and pass@k.
    """
    n = cfg.eval_num_samples
    started = time.perf_counter()
    samples: list[dict[str, Any]] = []
    per_benchmark: dict[str, dict[str, Any]] = {}
    total = sum(len(records) for records in benchmarks.values())
    with tqdm(total=total, unit="problem", desc="eval", disable=not progress) as bar:
        offset = 0  # problems sampled so far: seeds differ across batches and benchmarks
        for label, records in benchmarks.items():
            if not records:
                raise ValueError(f"benchmark '{label}' has no problems")
            correct: list[list[bool]] = []
            for start in range(0, len(records), cfg.eval_batch_size):
                batch = records[start : start + cfg.eval_batch_size]
                sampling = cfg.sampling(seed + offset)
                outputs = engine.generate([r["prompt"] for r in batch], n, sampling, use_adapter=use_adapter)
                for record, completions in zip(batch, outputs, strict=True):
                    if len(completions) != n:
                        raise RuntimeError(f"the engine returned {len(completions)} completions, expected {n}")
                    texts = [c.text for c in completions]
                    answers = extract_answers(texts, answer_extraction, timeout_s=answer_timeout_s)
                    verdicts = grade_answers(record["answer"], answers, timeout_s=answer_timeout_s)
                    correct.append(verdicts)
                    samples.extend(
                        {
                            "benchmark": label,
                            "id": record["id"],
                            "sample": i,
                            "gold": record["answer"],
                            "answer": answer,
                            "correct": verdict,
                            "finish_reason": c.finish_reason,
                            "num_tokens": len(c.token_ids),
                            **({"text": c.text} if cfg.eval_save_texts else {}),
                        }
                        for i, (c, answer, verdict) in enumerate(zip(completions, answers, verdicts, strict=True))
                    )
                offset += len(batch)
                bar.update(len(batch))
                stop_if_interrupted()
            per_benchmark[label] = benchmark_scores(correct, cfg.eval_k)
            bar.set_postfix({f"{label} avg": round(per_benchmark[label]["avg"], 3)})
    return {
        "benchmarks": per_benchmark,
        "average": average_scores(per_benchmark, cfg.eval_k),
        "seconds": round(time.perf_counter() - started, 2),  # sampling and grading
        "samples": samples,
    }


def format_table(results: dict[str, Any], k_values: list[int], n: int) -> str:
    """Results as a markdown table in percent: one row per benchmark, then their average."""
    header = ["benchmark", "problems", f"Avg@{n}", *(f"Pass@{k}" for k in k_values)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [(label, s["num_problems"], s) for label, s in results["benchmarks"].items()]
    rows.append(("average", "", results["average"]))
    for label, problems, scores in rows:
        cells = [label, str(problems), f"{100 * scores['avg']:.2f}"]
        cells += [f"{100 * scores['pass@k'][str(k)]:.2f}" for k in k_values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], cfg: EvalConfig, output_dir: Path, meta: dict[str, Any]) -> str:
    """results.json (scores, config, `meta`), results.md and samples.jsonl, each written atomically."""
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "benchmarks": results["benchmarks"],
        "average": results["average"],
        "seconds": results["seconds"],
        "config": asdict(cfg),
        **meta,
    }
    table = format_table(results, cfg.eval_k, cfg.eval_num_samples)
    write_jsonl(output_dir / "samples.jsonl", results["samples"])
    write_text(output_dir / "results.md", table)
    write_text(output_dir / "results.json", json.dumps(summary, indent=2) + "\n")
    return table


def evaluate_and_write(
    engine: RolloutEngine,
    benchmarks: dict[str, list[dict]],
    cfg: EvalConfig,
    output_dir: str | Path,
    *,
    seed: int,
    answer_timeout_s: float = DEFAULT_TIMEOUT_S,
    answer_extraction: str = "boxed",
    use_adapter: bool = True,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """`evaluate`, then the three result files in `output_dir` (e.g. a run's eval/stage-K)."""
    results = evaluate(
        engine,
        benchmarks,
        cfg,
        seed=seed,
        answer_timeout_s=answer_timeout_s,
        answer_extraction=answer_extraction,
        use_adapter=use_adapter,
        progress=progress,
    )
    meta = {"use_adapter": use_adapter, "answer_extraction": answer_extraction, **(meta or {})}
    write_results(results, cfg, Path(output_dir), meta)
    return results


# ----------------------------------------------------------------------------------------------
# Command line


def adapter_model_config(model_cfg: Any, adapter: str | None, model: str | None) -> Any:
    """The ModelConfig that loads `model` (default: the adapter's base) with the saved adapter's
    LoRA shape (rank, alpha, target modules), so any adapter loads without matching config keys."""
    from sete_lite.model import adapter_base_model, read_adapter_config

    changes: dict[str, Any] = {}
    if model:
        changes["model_name_or_path"] = model
    if adapter:
        saved = read_adapter_config(
            adapter,
            "--adapter",
            "give a directory written by save_pretrained (a run's adapter/ or adapter/stage-K), or leave "
            "--adapter out to evaluate the base model",
        )
        targets = saved["target_modules"]  # a list of module names, or one regex string
        changes.update(
            adapter_path=adapter,
            lora_r=saved["r"],
            lora_alpha=saved["lora_alpha"],
            lora_target_modules=sorted(targets) if isinstance(targets, list) else targets,
        )
        if not model:
            changes["model_name_or_path"] = adapter_base_model(adapter)
    return dataclasses.replace(model_cfg, **changes)


def config_classes() -> list[type]:
    """What the eval command reads: shared, model and evaluation keys."""
    from sete_lite.config import section_class

    return [section_class(section) for section in ("shared", "model", "eval")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from sete_lite.config import KeysHelp, key_flags, training_keys

    parser = argparse.ArgumentParser(
        prog="python -m sete_lite.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("-h", "--help", action=KeysHelp, sections=("shared", "model", "eval"))
    parser.add_argument("--config", type=Path, help="flat YAML config (model keys and eval_ keys)")
    parser.add_argument("--model", help="base model: hub name, local directory or builtin:arith-qwen2")
    parser.add_argument("--adapter", help="LoRA adapter directory (default: none, the base model)")
    parser.add_argument(
        "--allow-other-base", action="store_true", help="with --adapter: --model may differ from the adapter's base"
    )
    parser.add_argument(
        "--benchmarks",
        nargs="+",
        action="extend",
        help=f"names ({', '.join(BENCHMARKS)}) or jsonl/parquet files (repeatable)",
    )
    parser.add_argument("--n", type=int, help="samples per problem (default 16)")
    parser.add_argument("--k", type=int, nargs="+", action="extend", help="Pass@k for these k (default 1 8 16)")
    parser.add_argument("--max-problems", type=int, help="the first N problems of each benchmark")
    parser.add_argument(
        "--output-dir",
        "--output_dir",
        dest="output_dir",
        metavar="DIR",
        help="where results.json, results.md and samples.jsonl go",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args, rest = parser.parse_known_args(argv)
    args.set += key_flags(rest, training_keys())
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from sete_lite.config import parse_config, read_values, refuse_repeated_keys, training_keys
    from sete_lite.distributed import refuse_several_processes
    from sete_lite.model import check_adapter_base, import_unsloth_first, load_policy
    from sete_lite.rollout import check_engine_possible, make_engine

    refuse_several_processes("python -m sete_lite.eval")
    args = parse_args(argv)
    if args.model and args.adapter:
        check_adapter_base(args.adapter, args.model, "--model", args.allow_other_base)
    flags = {
        "eval_benchmarks": args.benchmarks,
        "eval_num_samples": args.n,
        "eval_k": args.k,
        "eval_max_problems": args.max_problems,
        "eval_output_dir": args.output_dir,
    }
    overrides = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None] + args.set
    refuse_repeated_keys(overrides)
    import_unsloth_first(read_values(args.config, overrides))  # Unsloth patches transformers: before it loads
    shared, model_cfg, cfg = parse_config(config_classes(), args.config, overrides, also_valid=training_keys())
    if not (args.model or args.adapter or args.config or read_values(None, args.set).get("model_name_or_path")):
        raise ValueError(
            "nothing to evaluate: pass --model NAME_OR_PATH (a base model), --adapter DIR (a trained adapter; its "
            "base is recorded beside it), or --config FILE"
        )
    model_cfg = adapter_model_config(model_cfg, args.adapter, args.model)

    check_engine_possible(shared.rollout_engine, model_cfg)
    output_dir = Path(cfg.eval_output_dir)
    check_writable_dir(output_dir, "--output-dir (eval_output_dir)")
    benchmarks = load_benchmarks(cfg)  # before the model: bad data fails in seconds
    shared.apply_num_threads()
    with claim(output_dir, "eval", "--output-dir (eval_output_dir)"):
        model, tokenizer = load_policy(model_cfg, seed=shared.seed)
        benchmarks = benchmark_prompts(benchmarks, tokenizer, cfg)
        engine = make_engine(shared.rollout_engine, model, tokenizer, model_cfg, seed=shared.seed)
        prompts = [r["prompt"] for rs in benchmarks.values() for r in rs]
        limit = context_limit(model, engine, model_cfg.max_seq_length)
        check_context(tokenizer, prompts, cfg.eval_max_tokens, limit, "eval_max_tokens")
        # Without an adapter, load_policy's fresh LoRA is switched off: exactly the base model.
        use_adapter = model_cfg.adapter_path is not None
        meta = {
            "model": model_cfg.model_name_or_path,
            "adapter": model_cfg.adapter_path,
            "engine": type(engine).__name__,
        }
        results = evaluate_and_write(
            engine,
            benchmarks,
            cfg,
            output_dir,
            seed=shared.seed,
            answer_timeout_s=shared.answer_timeout_s,
            answer_extraction=shared.answer_extraction,
            use_adapter=use_adapter,
            meta=meta,
        )
    print(format_table(results, cfg.eval_k, cfg.eval_num_samples))
    print(f"wrote {output_dir / 'results.json'}, results.md and samples.jsonl ({len(results['samples'])} samples)")
    return results


if __name__ == "__main__":
    from sete_lite.config import run_cli

    run_cli(main, interrupted="nothing was written; run the command again")
