"""A small training config on the tiny test model, written as a YAML file (shared by the CLI tests)."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_config(path: Path, model_dir: Path, **overrides: object) -> Path:
    values = {
        "model_name_or_path": str(model_dir),
        "backend": "transformers",
        "load_in_4bit": False,
        "lora_r": 4,
        "lora_alpha": 8,
        "gradient_checkpointing": False,
        "dataset_name_or_path": str(REPO / "data" / "champ_math.jsonl"),
        "max_prompts": 8,
        "se_num_samples": 4,
        "se_max_tokens": 16,
        "reward_funcs": ["support_rewards:length_reward", "accuracy"],
        "rollout_engine": "transformers",
        "num_threads": 1,
        "num_stages": 2,
        "epochs_per_stage": 1,
        "num_generations": 4,
        "per_device_train_batch_size": 8,
        "max_completion_length": 12,
        "learning_rate": 0.05,
        "high_cov_ratio": 0.2,
        "beta_low": 0.1,
        "beta_high": 0.4,
        "logging_steps": 1,
        "save_steps": 1,
        "report_to": "none",
        "bf16": False,
        "seed": 1,
        **overrides,
    }
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items()))
    return path
