"""Shared fixtures: a tiny random Qwen2 checkpoint built offline once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sete_lite.arith.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that AutoModelForCausalLM/AutoTokenizer/vLLM load like a hub checkpoint."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), seed=0)
