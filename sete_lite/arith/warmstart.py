"""`python -m sete_lite.arith.warmstart`: the built-in base model, warm-started on the arithmetic task.

This module owns the deterministic build of `builtin:arith-qwen2`: a small random Qwen2 (the
architecture family of the real presets, `sete_lite.arith.tiny.build_tiny_model`, character-level
tokenizer) trained by supervised fine-tuning on worked solutions of the arithmetic task
(`sete_lite.arith.task`), then saved with `save_pretrained` so that `load_policy` loads it like a hub
checkpoint. The warm start is stopped early on purpose: the base model solves a fair share of the
held-out problems at temperature 1.0 but far from all, so RL has room to improve it.

Determinism: one torch thread, fixed seeds for the weights, the data and the batch order; the same
arguments on the same torch build give the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sete_lite.arith import CHECKPOINT
from sete_lite.arith.task import SPLITS, generate, make_splits
from sete_lite.data import DEFAULT_PROMPT_TEMPLATE


@dataclass
class WarmstartConfig:
    """The model's shape and the supervised training that warm-starts it."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2  # head_dim 64: what vLLM's CPU kernels accept
    num_kv_heads: int = 1
    intermediate_size: int = 512
    num_problems: int = 20000  # warm-start problems (disjoint from the held-out split)
    steps: int = 1200
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    seed: int = 0
    data_seed: int = 3  # not a split seed of sete_lite.arith.task.SPLITS


def training_pairs(cfg: WarmstartConfig) -> list[tuple[str, str]]:
    """(prompt, solution) pairs in the paper's prompt template, none of them a held-out question."""
    if cfg.data_seed in {seed for seed, _ in SPLITS.values()}:
        raise ValueError(f"data_seed {cfg.data_seed} is a split seed; warm-start data must be drawn separately")
    heldout = [p.question for p in make_splits()["test"]]
    problems = generate(cfg.num_problems, cfg.data_seed, exclude=heldout)
    return [(DEFAULT_PROMPT_TEMPLATE.replace("{question}", p.question), p.solution) for p in problems]


def collate(pairs: list[tuple[str, str]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Right-padded prompt + solution + EOS; the loss covers the solution and the EOS only."""
    rows, labels = [], []
    for prompt, solution in pairs:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    length = max(map(len, rows))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (length - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [-100] * (length - len(lab)) for lab in labels]),
    }


def learning_rate(cfg: WarmstartConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def build(out_dir: str | Path, cfg: WarmstartConfig | None = None, *, progress: bool = True) -> Path:
    """Build the random model, fine-tune it on worked solutions, save it (and warmstart.json) to `out_dir`."""
    cfg = cfg or WarmstartConfig()
    return fit_and_save(out_dir, cfg, training_pairs(cfg), progress=progress)


def fit_and_save(
    out_dir: str | Path, cfg: WarmstartConfig, pairs: list[tuple[str, str]], *, progress: bool = True
) -> Path:
    """Build the random model of `cfg`'s shape, fine-tune it on the (prompt, solution) `pairs` with
    `cfg`'s schedule, and save it with warmstart.json (the config, final loss and seconds) to `out_dir`.
    Shared by every built-in task's warm start."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sete_lite.arith.tiny import build_tiny_model

    out_dir = Path(out_dir)
    build_tiny_model(
        out_dir,
        seed=cfg.seed,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=512,
    )
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    order = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic, and the fastest setting for a model this small
    started = time.perf_counter()
    losses: list[float] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model.train()
            bar = tqdm(range(cfg.steps), desc="warm start", unit="step", disable=not progress, mininterval=10)
            for step in bar:
                batch = collate(order.sample(pairs, cfg.batch_size), tokenizer)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(cfg, step)
                loss = model(**batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                losses.append(loss.item())
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(out_dir)
    last = losses[-20:] or [float("nan")]
    record = {"config": asdict(cfg), "final_loss": sum(last) / len(last), "seconds": time.perf_counter() - started}
    (out_dir / "warmstart.json").write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def heldout_scores(model_dir: str | Path, max_problems: int | None = None) -> dict[str, Any]:
    """Avg@8 / Pass@k of a saved model on the held-out split (sete_lite.arith.task.heldout_accuracy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sete_lite.arith.task import heldout_accuracy
    from sete_lite.rollout import TransformersEngine

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    scores = heldout_accuracy(TransformersEngine(model, tokenizer), max_problems=max_problems)
    return {key: scores[key] for key in ("avg", "pass@k", "num_problems", "num_samples")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sete_lite.arith.warmstart", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=CHECKPOINT, help="directory to write the model to (default: the shipped one)"
    )
    parser.add_argument("--steps", type=int, default=WarmstartConfig.steps, help="supervised steps")
    parser.add_argument("--eval", action="store_true", help="measure held-out accuracy; record it in warmstart.json")
    args = parser.parse_args(argv)
    out = build(args.out, WarmstartConfig(steps=args.steps))
    print(f"model written to {out}")
    if args.eval:
        torch.set_num_threads(1)
        scores = heldout_scores(out)
        record = json.loads((out / "warmstart.json").read_text())
        (out / "warmstart.json").write_text(json.dumps({**record, "heldout": scores}, indent=2) + "\n")
        print(f"held-out Avg@{scores['num_samples']}: {scores['avg']:.3f}  Pass@k: {scores['pass@k']}")


if __name__ == "__main__":
    main()
