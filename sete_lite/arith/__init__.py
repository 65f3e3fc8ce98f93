"""The built-in arithmetic world: a task where a CPU run learns, and everything that serves it.

The library (sete_lite.*) never imports this package: it finds what this package ships by name,
`builtin:NAME`, through the entry points that pyproject.toml registers in the group
"sete_lite.builtins" (see sete_lite.builtins). This package imports the library, never the reverse.

- task: the problems (multi-step integer arithmetic with a `\\boxed{}` answer), grader, splits.
- tiny: tiny Qwen2 models with a character-level tokenizer (tests, benchmarks, the warm start).
- warmstart: the deterministic supervised build of the shipped base model.
- study: SENT against its baselines on a task (docs/results/toy_study.md, docs/results/sums_study.md).
- sums, sums_warmstart: the second task, adding a list of numbers in any order, where the base policy
  has real forking tokens (which number to add next), and its warm-started base model.

What ships, by builtin name: `arith-qwen2` (the warm-started base model), `arith-train` and
`arith-test` (the prompt splits), `arith-cpu` (the default training config); for the sums task
`sums-qwen2`, `sums-train`, `sums-test` and `sums-cpu`.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
CHECKPOINT = ROOT / "checkpoint"  # builtin:arith-qwen2, rebuilt by `python -m sete_lite.arith.warmstart`
TRAIN_SPLIT = ROOT / "data" / "arith_train.jsonl"  # builtin:arith-train
TEST_SPLIT = ROOT / "data" / "arith_test.jsonl"  # builtin:arith-test
DEFAULT_CONFIG = ROOT / "tiny_cpu.yaml"  # builtin:arith-cpu, what `python -m sete_lite.train` runs

# The sums task (sete_lite.arith.sums): the same four kinds of thing.
SUMS_CHECKPOINT = ROOT / "sums_checkpoint"  # builtin:sums-qwen2, rebuilt by `python -m sete_lite.arith.sums_warmstart`
SUMS_TRAIN_SPLIT = ROOT / "data" / "sums_train.jsonl"  # builtin:sums-train
SUMS_TEST_SPLIT = ROOT / "data" / "sums_test.jsonl"  # builtin:sums-test
SUMS_CONFIG = ROOT / "sums_cpu.yaml"  # builtin:sums-cpu
