"""The hub: a push that cannot happen fails before any work, in one line; a push uploads the export or
the run's adapter with its model card; adapters record the configured base, not a local cache path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import huggingface_hub
import pytest

from sete_lite.export import export
from sete_lite.hub import check_hub_access, is_hub_repository, model_card, shareable_base

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
SMOKE = str(REPO / "configs" / "smoke_cpu.yaml")


class FakeHub:
    """huggingface_hub.HfApi as a push uses it, recording what would have been uploaded."""

    repositories: ClassVar[dict[str, bool]] = {}  # repo -> private
    uploads: ClassVar[dict[str, dict[str, str]]] = {}  # repo -> {relative path: text or "<binary>"}

    def __init__(self, token: str | None = None) -> None:
        assert token == "hf_test"

    def whoami(self) -> dict:
        return {"name": "me"}

    def create_repo(self, repo_id: str, private: bool = False, exist_ok: bool = False) -> str:
        self.repositories[repo_id] = private
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path: str, repo_id: str, commit_message: str) -> None:
        files = {}
        for path in sorted(Path(folder_path).rglob("*")):
            if path.is_file():
                text = path.read_bytes().decode(errors="replace") if path.suffix in (".md", ".json") else "<binary>"
                files[str(path.relative_to(folder_path))] = text
        self.uploads[repo_id] = files


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHub.repositories, FakeHub.uploads = {}, {}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    return FakeHub


def unreachable_hub_env() -> dict[str, str]:
    # a token, and an endpoint where nothing listens: what a machine without network sees
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]),
        "OMP_NUM_THREADS": "1",
        "HF_TOKEN": "hf_test",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "0",
    }


def test_a_push_that_cannot_happen_is_refused_first_in_one_line(tmp_path, tiny_model_dir, monkeypatch):
    from sete_lite.rundir import save_adapter_atomically

    adapter = tmp_path / "run" / "adapter"
    save_adapter_atomically(make_peft_model(tiny_model_dir), adapter, str(tiny_model_dir))
    env = unreachable_hub_env()
    out = tmp_path / "export"
    command = [sys.executable, "-m", "sete_lite.export", "--adapter", str(adapter), "--method", "lora"]
    done = subprocess.run(
        [*command, "--output", str(out), "--push-to-hub", "me/tiny"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.splitlines()[-2].startswith("error: --push-to-hub: cannot reach the Hugging Face Hub at ")
    assert not out.exists()  # refused before the export was built

    run = tmp_path / "train"
    command = [sys.executable, "-m", "sete_lite.train", "--config", SMOKE, "--output_dir", str(run), "--push_to_hub"]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-2].startswith("error: push_to_hub: cannot reach the Hugging Face Hub")
    assert not (run / "config.json").exists()  # before the run began: a rerun is not refused

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set"):
        check_hub_access("me/tiny", "--push-to-hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(RuntimeError, match="needs a Hugging Face token with write access: set HF_TOKEN"):
        check_hub_access("me/tiny", "--push-to-hub")
    with pytest.raises(ValueError, match="needs a hub repository as user/name"):
        check_hub_access("not a repo", "--push-to-hub")
    with pytest.raises(ValueError, match="--private is for the repository --push-to-hub creates"):
        from sete_lite.export import main

        main(["--adapter", str(adapter), "--method", "lora", "--output", str(out), "--private"])


def make_peft_model(base_dir: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


def test_the_model_card_names_only_a_shareable_base(tmp_path):
    assert is_hub_repository("Qwen/Qwen2.5-Math-7B")
    assert not is_hub_repository("builtin:smollm2-135m-instruct")
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert not is_hub_repository(str(tmp_path / "org" / "model"))
    card = model_card("Qwen/Qwen2.5-Math-7B", "# run\n", "peft")
    assert card.startswith("---\nbase_model: Qwen/Qwen2.5-Math-7B\nlibrary_name: peft\n")
    assert "base_model" not in model_card("builtin:smollm2-135m-instruct", "# run\n", "peft")

    assert shareable_base("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    assert shareable_base("builtin:arith-qwen2") == "builtin:arith-qwen2"
    local = tmp_path / "downloads" / "qwen-math"
    local.mkdir(parents=True)
    (local / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-Math-7B"}))
    assert shareable_base(str(local)) == "Qwen/Qwen2.5-Math-7B"  # where the local copy came from
    (local / "config.json").write_text(json.dumps({"_name_or_path": str(local)}))
    assert shareable_base(str(local)) == "qwen-math"


def test_a_trained_run_pushes_its_adapter_and_card_and_exports_push_theirs(tmp_path, tiny_model_dir, fake_hub):
    """TRL's push_to_hub / hub_model_id / hub_private_repo push the final adapter with a card that holds the
    held-out table; the adapter records the base as configured; export --push-to-hub uploads the export."""
    from sete_lite.train import main as train_main

    run = tmp_path / "run"
    base = tmp_path / "my-base"
    shutil.copytree(tiny_model_dir, base)
    hub_flags = ["--push_to_hub", "--hub_model_id", "me/smoke-sent", "--hub_private_repo"]
    train_main(["--config", SMOKE, "--output_dir", str(run), "--model_name_or_path", str(base), *hub_flags])
    assert fake_hub.repositories == {"me/smoke-sent": True}
    uploaded = fake_hub.uploads["me/smoke-sent"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "stage-0/adapter_config.json"} <= set(
        uploaded
    )
    # a local base is named by its directory, never this machine's absolute path
    assert json.loads(uploaded["adapter_config.json"])["base_model_name_or_path"] == "my-base"
    card = uploaded["README.md"]
    assert card.startswith("---\nlibrary_name: peft\n")  # a local base: no base_model entry
    assert "## Held-out evaluation" in card and "### stage-1" in card and "python -m sete_lite.train" in card
    assert f"--set model_name_or_path={base}" in card  # the command as given, overrides included
    assert "output_dir" not in card  # given as --output_dir, it is not repeated as a --set beside --output-dir
    resume = next(line for line in (run / "README.md").read_text().splitlines() if "--resume" in line)
    assert resume.count("--output-dir") == 1 and "output_dir=" not in resume
    assert "on `my-base`" in card and f"`{base}`" not in card  # the base as adapter_config.json names it

    out = export(run / "adapter", tmp_path / "merged", "merged_16bit", dtype="float32", push_to_hub="me/smoke-merged")
    uploaded = fake_hub.uploads["me/smoke-merged"]
    assert {"model.safetensors", "config.json", "README.md", "export_info.json"} <= set(uploaded)
    assert uploaded["README.md"] == (out / "README.md").read_text()
    assert uploaded["README.md"].startswith("---\nlibrary_name: transformers\n")
    assert "### stage-1" in uploaded["README.md"] and "method `merged_16bit`, dtype `float32`" in uploaded["README.md"]
