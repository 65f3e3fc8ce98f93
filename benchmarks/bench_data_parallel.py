"""Benchmark: one training as 1 process and as 2 data-parallel processes (torchrun, gloo, CPU).

The smoke config (configs/smoke_cpu.yaml) with 12 optimizer steps of 8 completions each, eval off:
per launch, the mean optimizer step time (TRL's step_time, rollouts included), the wall time of the
whole command, and the largest difference of the trained LoRA weights from the 1-process run's, for
mode grpo with seed_rollouts_per_prompt (the same completions in every launch) and for mode sent
(also seeded per prompt; its token selections are made per process's micro-batch). Prints a table and
writes benchmarks/results/data_parallel_cpu.json and .md.

    python benchmarks/bench_data_parallel.py [--modes grpo sent]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "data_parallel_cpu"
GLOBAL_BATCH = 8  # completions per optimizer step: 2 prompts x 4
LAUNCHES = [  # (processes, torch threads per process)
    (1, 1),
    (1, 2),
    (2, 1),
]


def train(processes: int, threads: int, mode: str, output_dir: Path) -> float:
    args = [
        "--config", str(REPO / "configs" / "smoke_cpu.yaml"), "--output-dir", str(output_dir),
        "--set", f"mode={mode}", "--set", "seed_rollouts_per_prompt=true", "--set", "epochs_per_stage=3",
        "--set", "eval_before_training=false", "--set", "eval_at_stage_end=false", "--set", "se_batch_size=2",
        "--set", f"num_threads={threads}", "--set", f"per_device_train_batch_size={GLOBAL_BATCH // processes}",
    ]  # fmt: skip
    if processes == 1:
        command = [sys.executable, "-m", "sete_lite.train", *args]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        command = [torchrun, "--standalone", "--nproc_per_node", str(processes), "-m", "sete_lite.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def measure(mode: str, root: Path) -> list[dict]:
    import torch
    from safetensors.torch import load_file

    from sete_lite.atomic import read_jsonl

    rows, reference, first_prompts = [], None, None
    for processes, threads in LAUNCHES:
        run = root / f"{mode}-{processes}x{threads}"
        wall = train(processes, threads, mode, run)
        metrics = read_jsonl(run / "metrics.jsonl")
        adapter = load_file(run / "adapter" / "adapter_model.safetensors")
        reference = reference or adapter
        first_prompts = first_prompts or read_jsonl(run / "rollouts.jsonl")
        moved = max(reference[k].abs().max().item() for k in reference if "lora_B" in k)
        rows.append(
            {
                "mode": mode,
                "processes": processes,
                "threads_per_process": threads,
                "steps": len(metrics),
                "mean_step_time_s": round(sum(r["step_time"] for r in metrics) / len(metrics), 3),
                "command_wall_s": round(wall, 1),
                "max_abs_adapter_diff": max((adapter[k] - reference[k]).abs().max().item() for k in reference),
                "max_abs_lora_B": moved,
                "same_prompts_as_first": read_jsonl(run / "rollouts.jsonl")
                == read_jsonl(root / f"{mode}-1x1" / "rollouts.jsonl"),
                "torch": torch.__version__,
            }
        )
        print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| mode | processes x threads | steps | mean step time (s) | command wall (s) | max abs adapter diff vs 1x1 "
        "| max abs LoRA B | same prompts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['processes']} x {r['threads_per_process']} | {r['steps']} | {r['mean_step_time_s']} "
            f"| {r['command_wall_s']} | {r['max_abs_adapter_diff']:.2e} | {r['max_abs_lora_B']:.3f} "
            f"| {r['same_prompts_as_first']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["grpo", "sent"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sete-dp-bench-") as root:
        rows = [row for mode in args.modes for row in measure(mode, Path(root))]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    text = table(rows)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    RESULTS.with_suffix(".md").write_text(f"# 1 vs 2 data-parallel processes on CPU ({machine})\n\n{text}")


if __name__ == "__main__":
    main()
