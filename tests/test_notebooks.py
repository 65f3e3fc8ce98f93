"""The Colab and Kaggle notebooks: exactly what notebooks/build_notebooks.py writes, and every cell runs
end to end in smoke mode (SETE_LITE_SMOKE=1: CPU, configs/smoke_cpu.yaml) with the files and numbers expected."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
import torch
import yaml
from nbclient import NotebookClient
from peft import PeftModel
from transformers import AutoModelForCausalLM

from sete_lite.atomic import read_jsonl
from sete_lite.builtins import resolve_builtin
from sete_lite.rundir import training_rows

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
SMOKE_CONFIG = yaml.safe_load((REPO / "configs" / "smoke_cpu.yaml").read_text())
RUN_FILES = [
    "se_scores/scores.jsonl",
    "se_scores/se_histogram.png",
    "se_scores/stages.md",
    "metrics.jsonl",
    "train.log",
    "plots/reward.png",
    "plots/entropy.png",
    "plots/kl.png",
    "eval/before/results.json",
    f"eval/stage-{SMOKE_CONFIG['num_stages'] - 1}/results.json",
    "adapter/adapter_model.safetensors",
    "export/merged/model.safetensors",
    "export/merged/export_info.json",
]


def load_builder() -> ModuleType:
    """notebooks/build_notebooks.py as a module (notebooks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


BUILDER = load_builder()
PLATFORMS = {platform.name: platform for platform in BUILDER.PLATFORMS}


@pytest.mark.parametrize("name", sorted(PLATFORMS))
def test_committed_notebook_is_what_the_script_writes(name: str) -> None:
    platform = PLATFORMS[name]
    assert platform.path.read_text() == BUILDER.render(platform), "rerun: python notebooks/build_notebooks.py"


def probe_logits(model: torch.nn.Module) -> torch.Tensor:
    ids = (torch.arange(24) * 7 % model.config.vocab_size).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PLATFORMS))
def test_notebook_runs_end_to_end_in_smoke_mode(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SETE_LITE_SMOKE", "1")
    monkeypatch.setenv("SETE_LITE_OUTPUT_DIR", str(tmp_path))
    notebook = nbformat.read(PLATFORMS[name].path, as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises on the first cell that fails

    run = tmp_path / "smoke_cpu"
    assert [path for path in RUN_FILES if not (run / path).is_file()] == []
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert sum("image/png" in output.get("data", {}) for output in outputs) >= 4  # SE histogram + 3 curves
    printed = "".join(output.get("text", "") for output in outputs)
    assert "GGUF skipped" in printed

    # 8 prompts, 2 per step (8 completions of 4 per prompt), 2 stages of 1 epoch: 4 steps, the switch at step 3.
    rows = training_rows(read_jsonl(run / "metrics.jsonl"))
    prompts_per_step = SMOKE_CONFIG["per_device_train_batch_size"] // SMOKE_CONFIG["num_generations"]
    assert [row["step"] for row in rows] == list(range(1, SMOKE_CONFIG["max_prompts"] // prompts_per_step + 1))
    assert [row["curriculum/stage"] for row in rows] == [0, 0, 1, 1]

    for stage in ("before", f"stage-{SMOKE_CONFIG['num_stages'] - 1}"):
        results = json.loads((run / "eval" / stage / "results.json").read_text())
        (scores,) = results["benchmarks"].values()
        assert scores["num_problems"] == SMOKE_CONFIG["eval_max_problems"]
        assert scores["num_samples"] == SMOKE_CONFIG["eval_num_samples"]

    # The merged export is a plain transformers checkpoint with the logits of base + the run's adapter,
    # which training moved away from the base.
    base = AutoModelForCausalLM.from_pretrained(resolve_builtin(SMOKE_CONFIG["model_name_or_path"]))
    base_logits = probe_logits(base)
    expected = probe_logits(PeftModel.from_pretrained(base, str(run / "adapter")))
    merged = AutoModelForCausalLM.from_pretrained(run / "export" / "merged")
    assert (expected - base_logits).abs().max() > 0.01  # the adapter matters, so a non-merge would show
    torch.testing.assert_close(probe_logits(merged), expected, rtol=1e-4, atol=1e-4)  # float32 rounding of the merge


def test_the_notebooks_install_the_torch_that_readme_and_setup_pin():
    """The gpu extra's vLLM pins one torch build; README, scripts/setup.sh and both notebooks install it
    first (an earlier notebook promised to keep any runtime torch in a range the pin does not allow)."""
    import re

    pins = set(re.findall(r"pip install (torch==[\d.]+)", (REPO / "README.md").read_text()))
    pins |= set(re.findall(r"pip install -q (torch==[\d.]+)", (REPO / "scripts" / "setup.sh").read_text()))
    assert len(pins) == 1, pins
    (pin,) = pins
    for name in ("sete_lite_colab.ipynb", "sete_lite_kaggle.ipynb"):
        source = "".join(cell.source for cell in nbformat.read(NOTEBOOKS / name, as_version=4).cells)
        assert f'"install", "{pin}"' in source and f"installs {pin.replace('==', ' ')} first" in source
        assert not re.search(r"torch>=|torch<", source), name
