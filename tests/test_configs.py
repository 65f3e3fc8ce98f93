"""Shipped configs use only known keys, CPU configs build, and README documents every config key."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from sete_lite.arith import DEFAULT_CONFIG, SUMS_CONFIG
from sete_lite.config import check_known_keys, field_names, load_yaml, parse_config
from sete_lite.train import config_classes

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [*sorted((REPO / "configs").glob("*.yaml")), DEFAULT_CONFIG, SUMS_CONFIG]  # presets and packaged configs


def declared_here(cls: type) -> set[str]:
    """The fields a class declares itself (not those it inherits)."""
    return set(inspect.get_annotations(cls))


def own_classes() -> list[type]:
    """sete_lite's config classes; SENTConfig's own fields and its LossConfig base, not TRL's fields."""
    from sete_lite.loss import LossConfig

    *ours, sent = config_classes()
    return [*ours, LossConfig, sent]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_keys_are_all_known(path):
    check_known_keys(load_yaml(path), field_names(*config_classes()), str(path))


def test_cpu_default_builds():
    from sete_lite.train import parse_train_config

    configs = parse_train_config("builtin:arith-cpu", [])
    assert configs.train.mode == "sent" and configs.curriculum.curriculum and configs.curriculum.num_stages == 2


def test_sums_config_builds():
    from sete_lite.train import parse_train_config

    configs = parse_train_config("builtin:sums-cpu", [])
    assert configs.model.model_name_or_path == "builtin:sums-qwen2" and configs.train.learning_rate == 1e-3
    # 256 prompts x 8 epochs over 2 stages, 4 prompts x 8 completions per step: 512 steps.
    assert configs.curriculum.epochs_per_stage == 8 and configs.train.per_device_train_batch_size == 32


def test_every_key_has_one_declaration():
    """No two sete_lite config classes declare the same key. TRL's keys that sete_lite declares again:
    the loss keys whose default depends on the mode, the two defaults it changes on purpose, and two
    that the score and eval commands (which build no TRL config) need, with TRL's default."""
    from trl import GRPOConfig

    seen: dict[str, str] = {}
    for cls in own_classes():
        for name in declared_here(cls):
            assert name not in seen, f"'{name}' is declared by {seen[name]} and {cls.__name__}"
            seen[name] = cls.__name__
    trl_keys = {f.name for f in dataclasses.fields(GRPOConfig)}
    redeclared = {name for name in seen if name in trl_keys}
    assert redeclared == {
        "loss_type", "epsilon", "epsilon_high", "beta", "entropy_coef", "top_entropy_quantile",
        "vllm_importance_sampling_correction", "ddp_find_unused_parameters", "seed", "trust_remote_code",
    }  # fmt: skip
    trl_defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    from sete_lite.config import SharedConfig
    from sete_lite.model import ModelConfig

    assert (
        SharedConfig().seed == trl_defaults["seed"]
        and ModelConfig().trust_remote_code is trl_defaults["trust_remote_code"]
    )


def test_readme_reference_table_documents_every_sete_lite_key():
    from sete_lite.config import reference_markdown

    readme = (REPO / "README.md").read_text()
    # README's table is the classes' own field metadata (what --help shows), written out: no drift.
    assert reference_markdown() in readme, "README's configuration reference is stale: python -m sete_lite.config"
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", readme, flags=re.MULTILINE))
    ours = set().union(*(declared_here(cls) for cls in own_classes()))  # TRL documents its own keys
    assert ours - documented == set()


@pytest.mark.parametrize("path", [p for p in CONFIGS if "output_dir" in load_yaml(p)], ids=lambda p: p.name)
def test_training_configs_build(path):
    """Every training preset passes the config classes' checks (TRL's included); GPU presets with their
    mixed precision switched off, which needs the GPU this machine lacks."""
    *_, train = parse_config(config_classes(), path, ["bf16=false", "fp16=false"])
    assert train.output_dir == load_yaml(path)["output_dir"]


def test_exponent_notation_without_a_dot_reaches_float_fields_as_numbers(tmp_path):
    # YAML 1.1 reads 1e-4 as the string "1e-4"; the README's `--set learning_rate=2e-6` must still work.
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 3e-5\nmax_steps: 2\noutput_dir: x\nbf16: false\n")
    *_, train = parse_config(config_classes(), config, ["beta_low=2e-2", "beta=1e-3"])
    assert (train.learning_rate, train.beta_low, train.beta) == (3e-5, 2e-2, 1e-3)
    assert train.max_steps == 2 and train.output_dir == "x"  # other types untouched
    with pytest.raises(ValueError, match="'learning_rate' expects float, got 'fast'"):
        parse_config(config_classes(), config, ["learning_rate=fast"])
