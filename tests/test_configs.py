"""Shipped configs use only known keys, CPU configs build, and README documents every config key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sete_lite.config import check_known_keys, field_names, load_yaml, parse_config
from sete_lite.train import config_classes

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
OWN_FIELDS = ["mode", "aggregation", "kl_estimator", "low_entropy_quantile", "high_cov_ratio", "beta_low", "beta_high",
              "kl_cov_ratio", "ppo_kl_coef", "clip_cov_ratio", "clip_cov_lb", "clip_cov_ub", "logprob_chunk_size",
              "curriculum", "num_stages", "epochs_per_stage", "shuffle_within_stage"]  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_keys_are_all_known(path):
    check_known_keys(load_yaml(path), field_names(*config_classes()), str(path))


def test_cpu_default_builds():
    *_, train = parse_config(config_classes(), REPO / "configs" / "tiny_cpu.yaml")
    assert train.mode == "sent" and train.curriculum and train.num_train_epochs == 1


def test_readme_reference_table_documents_every_sete_lite_key():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", readme, flags=re.MULTILINE))
    *ours_classes, _ = config_classes()  # all but SENTConfig, whose TRL fields TRL documents
    ours = set(field_names(*ours_classes)) | set(OWN_FIELDS)
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
    with pytest.raises(ValueError, match="'learning_rate' expects a number, got 'fast'"):
        parse_config(config_classes(), config, ["learning_rate=fast"])
