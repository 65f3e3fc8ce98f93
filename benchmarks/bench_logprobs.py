"""Chunked per-token log-probs/entropy vs the naive full-logits computation: memory, time, agreement.

Each method runs in its own subprocess so that peak memory is measured cleanly: on CUDA the
allocator's peak, on CPU (Linux) the process's peak resident set size, reset once the inputs exist,
both minus the memory in use at that point. The workload is a policy-gradient step's head:
log p(tokens) with a gradient w.r.t. the hidden states (lm_head frozen, as with LoRA) and a
detached entropy.

    python benchmarks/bench_logprobs.py                       # B=2, T=1024, H=1024, V=151,936
    python benchmarks/bench_logprobs.py --device cuda --dtype bfloat16

Prints a table and writes benchmarks/results/logprobs_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sete_lite.logprobs import default_chunk_size, token_logprobs_and_entropy

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def naive_logprobs_and_entropy(hidden, weight, ids, temperature):
    """What a plain implementation does: full (B, T, V) logits, log_softmax, gather."""
    log_probs = torch.log_softmax((hidden @ weight.T).float() / temperature, dim=-1)
    logp = log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum(-1)
    return logp, entropy


def make_inputs(args):
    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    hidden = torch.randn(args.batch, args.length, args.hidden, generator=g).to(args.device, dtype)
    weight = (torch.randn(args.vocab, args.hidden, generator=g) / args.hidden**0.5).to(args.device, dtype)
    ids = torch.randint(0, args.vocab, (args.batch, args.length), generator=g).to(args.device)
    upstream = torch.randn(args.batch, args.length, generator=g).to(args.device)
    return hidden.requires_grad_(), weight, ids, upstream


def reset_peak(device: str) -> int:
    """Reset the peak-memory counter and return the memory in use now, in bytes."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current one.
    Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_kib("VmRSS") * 1024


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return _proc_status_kib("VmHWM") * 1024


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def run_one(args) -> dict:
    """Run one method `repeats` times in this process; return its timings, peak and outputs' digest."""
    hidden, weight, ids, upstream = make_inputs(args)
    baseline = reset_peak(args.device)
    times = []
    for _ in range(args.repeats):
        hidden.grad = None
        start = time.perf_counter()
        if args.method == "naive":
            logp, entropy = naive_logprobs_and_entropy(hidden, weight, ids, args.temperature)
        else:
            logp, entropy = token_logprobs_and_entropy(
                hidden, weight, ids, chunk_size=args.chunk_size, temperature=args.temperature
            )
        (logp * upstream).sum().backward()
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del logp, entropy
    logp, entropy = (
        naive_logprobs_and_entropy(hidden.detach(), weight, ids, args.temperature)
        if args.method == "naive"
        else token_logprobs_and_entropy(hidden.detach(), weight, ids, temperature=args.temperature)
    )
    out = Path(args.dump)
    torch.save({"logp": logp.cpu(), "entropy": entropy.cpu(), "grad": hidden.grad.float().cpu()}, out)
    return {
        "method": args.method,
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "peak_extra_mib": (peak_bytes(args.device) - baseline) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--method", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.method:  # child process: one method
        print(json.dumps(run_one(args)))
        return

    rows, dumps = {}, {}
    for method in ("naive", "chunked"):
        dump = RESULTS_DIR / f".{method}_outputs.pt"
        cmd = [sys.executable, __file__, "--method", method, "--dump", str(dump), *sys.argv[1:]]
        print(f"running {method} ...", flush=True)
        child = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[method] = json.loads(child.stdout.strip().splitlines()[-1])
        dumps[method] = torch.load(dump)
        dump.unlink()

    naive, chunked = rows["naive"], rows["chunked"]
    agreement = {
        key: (dumps["naive"][key] - dumps["chunked"][key]).abs().max().item() for key in ("logp", "entropy", "grad")
    }
    memory_ratio = chunked["peak_extra_mib"] / naive["peak_extra_mib"]
    time_ratio = chunked["seconds_median"] / naive["seconds_median"]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    chunk_size = args.chunk_size or default_chunk_size(args.vocab)
    shape = f"B={args.batch} T={args.length} H={args.hidden} V={args.vocab} {args.dtype} chunk={chunk_size}"
    print(f"\n{shape} on {args.device} ({device_name}), median of {args.repeats}")
    print("| method  | time (s) | peak extra memory (MiB) |\n|---|---|---|")
    for method, row in rows.items():
        print(f"| {method:7s} | {row['seconds_median']:8.3f} | {row['peak_extra_mib']:23.1f} |")
    print(f"chunked/naive: memory {memory_ratio:.3f} (goal <= 0.15), time {time_ratio:.3f} (goal <= 1.5)")
    print("max |naive - chunked|: " + ", ".join(f"{k} {v:.2e}" for k, v in agreement.items()))

    result = {
        "config": vars(args) | {"chunk_size": chunk_size, "method": None, "dump": None, "output": None},
        "device": args.device,
        "device_name": device_name,
        "torch": torch.__version__,
        "naive": naive,
        "chunked": chunked,
        "memory_ratio": memory_ratio,
        "time_ratio": time_ratio,
        "max_abs_diff": agreement,
        "goals_met": memory_ratio <= 0.15 and time_ratio <= 1.5,
    }
    output = args.output or RESULTS_DIR / f"logprobs_{args.device}_{args.dtype}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
