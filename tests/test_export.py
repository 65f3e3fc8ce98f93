"""Export: merged logits equal base + adapter (fp32), plain-transformers reload, the merge checks,
idempotence, atomic replacement (failures and kill -9), the lora method and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sete_lite import export as export_module
from sete_lite.arith.tiny import randomize_lora
from sete_lite.export import EXPORT_INFO, export, main, publish, resolve_adapter

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out: Path, *, scale: float, seed: int = 0) -> Path:
    """A LoRA adapter on the tiny model whose B matrices are random (scale 0: the zero init)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))
    randomize_lora(model, seed, scale, matrices="lora_B")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "adapter", scale=0.2)


def probe() -> torch.Tensor:
    return torch.tensor([[5, 17, 42, 8, 64, 23, 90, 11, 3, 77, 31, 50]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=probe()).logits


def file_hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir())


def test_merged_model_equals_base_plus_adapter(tmp_path: Path, tiny_model_dir: Path, adapter_dir: Path) -> None:
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export(adapter_dir, tmp_path / "merged", "merged_16bit", base=str(tiny_model_dir), dtype="float32")

    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter_dir))
    with_adapter = logits(reference)
    with reference.disable_adapter():
        base_only = logits(reference)
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    exported = logits(merged)
    assert (with_adapter - base_only).abs().max() > 0.05  # the adapter matters, so a non-merge would show
    torch.testing.assert_close(exported, with_adapter, rtol=1e-5, atol=1e-5)

    with safe_open(out / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "lora" in k or "base_layer" in k]
    assert merged.dtype == torch.float32 and not hasattr(merged, "peft_config")
    assert AutoTokenizer.from_pretrained(out).decode([AutoTokenizer.from_pretrained(out)("x=1")["input_ids"][0]]) == "x"
    info = json.loads((out / EXPORT_INFO).read_text())
    assert info["method"] == "merged_16bit" and info["dtype"] == "float32"
    assert info["reload_max_abs_logit_error"] == 0.0 and info["merge_relative_error"] < 1e-5


def test_bfloat16_export_is_bfloat16_and_close(tmp_path: Path, tiny_model_dir: Path, adapter_dir: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out = export(adapter_dir, tmp_path / "bf16", "merged_16bit", base=str(tiny_model_dir), dtype="bfloat16")
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open is no dict) == {torch.bfloat16}
    fp32 = export(adapter_dir, tmp_path / "fp32", "merged_16bit", base=str(tiny_model_dir), dtype="float32")
    got = logits(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))
    expected = logits(AutoModelForCausalLM.from_pretrained(fp32))
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)  # bf16 rounding of the weights only


def test_an_adapter_rounded_away_is_refused_and_a_zero_adapter_is_fine(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Updates of ~1e-7 against weights of ~0.02: bfloat16 (8 bits of mantissa) cannot hold them.
    tiny = make_adapter(tiny_model_dir, tmp_path / "tiny_adapter", scale=1e-6)
    with pytest.raises(RuntimeError, match=r"bfloat16 lost (9\d|100)% of the adapter's update.*--dtype float32"):
        export(tiny, tmp_path / "out", "merged_16bit", base=str(tiny_model_dir), dtype="bfloat16")
    assert siblings(tmp_path / "out") == ["tiny_adapter"]  # nothing published, no partial left
    out = export(tiny, tmp_path / "out", "merged_16bit", base=str(tiny_model_dir), dtype="float32")
    assert json.loads((out / EXPORT_INFO).read_text())["merge_relative_error"] < 0.05  # float32 holds it

    zero = make_adapter(tiny_model_dir, tmp_path / "zero_adapter", scale=0.0)
    out = export(zero, tmp_path / "zero", "merged_16bit", base=str(tiny_model_dir), dtype="bfloat16")
    assert (out / "model.safetensors").is_file()


def test_exporting_twice_is_idempotent(tmp_path: Path, tiny_model_dir: Path, adapter_dir: Path) -> None:
    out = tmp_path / "exports" / "merged"
    for method in ("merged_16bit", "lora"):
        first = file_hashes(export(adapter_dir, out, method, base=str(tiny_model_dir), dtype="float32"))
        second = file_hashes(export(adapter_dir, out, method, base=str(tiny_model_dir), dtype="float32"))
        assert first == second
        assert siblings(out) == ["merged"]  # no .partial / .old left behind


def test_a_failed_export_never_replaces_a_good_one(
    tmp_path: Path, tiny_model_dir: Path, adapter_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = export(adapter_dir, tmp_path / "merged", "merged_16bit", base=str(tiny_model_dir), dtype="float32")
    good = file_hashes(out)

    def broken_info(directory: Path, info: dict) -> None:
        (directory / EXPORT_INFO).write_text("{")  # half written, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(export_module, "write_info", broken_info)
    with pytest.raises(OSError, match="No space left"):
        export(adapter_dir, out, "merged_16bit", base=str(tiny_model_dir), dtype="float32")
    assert file_hashes(out) == good
    assert siblings(out) == ["merged"]


KILLED_BUILD = """
import sys, time
from pathlib import Path
from sete_lite.export import publish

def build(out):
    (out / "model.safetensors").write_text("half of a new model")
    time.sleep(60)

publish(Path(sys.argv[1]), build)
"""


def test_an_export_killed_mid_way_leaves_the_good_one(tmp_path: Path) -> None:
    target = tmp_path / "merged"
    publish(target, lambda out: (out / EXPORT_INFO).write_text("{}"))
    good = file_hashes(target)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(target)], env=env)
    partial = tmp_path / ".merged.partial" / "model.safetensors"
    deadline = time.monotonic() + 60
    while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert partial.exists(), "the build should have been killed part-way"
    assert file_hashes(target) == good

    publish(target, lambda out: (out / EXPORT_INFO).write_text('{"second": 1}'))  # the next export cleans up
    assert siblings(target) == ["merged"]
    assert json.loads((target / EXPORT_INFO).read_text()) == {"second": 1}


def test_a_swap_killed_between_its_renames_is_restored(tmp_path: Path) -> None:
    target = tmp_path / "merged"
    publish(target, lambda out: (out / EXPORT_INFO).write_text('{"good": 1}'))
    target.rename(tmp_path / ".merged.old")  # the state between the two renames
    with pytest.raises(RuntimeError, match="boom"):
        publish(target, lambda out: (_ for _ in ()).throw(RuntimeError("boom")))
    assert json.loads((target / EXPORT_INFO).read_text()) == {"good": 1}


def test_lora_export_from_a_run_directory(tmp_path: Path, tiny_model_dir: Path, adapter_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    shutil.copytree(adapter_dir, run / "adapter")
    make_adapter(tiny_model_dir, run / "adapter" / "stage-0", scale=0.2, seed=1)
    out = main(["--run-dir", str(run), "--method", "lora", "--output", str(tmp_path / "lora")])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == []  # stage adapters are not exported
    written = {name: file_hashes(out)[name] for name in (EXPORT_INFO, "README.md")}  # peft's card replaced
    assert file_hashes(out) == {**file_hashes(adapter_dir), **written}
    card = (out / "README.md").read_text()
    assert "[More Information Needed]" in (adapter_dir / "README.md").read_text()
    assert "[More Information Needed]" not in card and "Written by `python -m sete_lite.export`: method `lora`" in card
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter_dir))
    torch.testing.assert_close(logits(reloaded), logits(reference), rtol=0, atol=0)

    stage = main(["--run-dir", str(run), "--stage", "0", "--method", "lora", "--output", str(tmp_path / "s0")])
    assert (
        file_hashes(stage)["adapter_model.safetensors"]
        == file_hashes(run / "adapter" / "stage-0")["adapter_model.safetensors"]
    )


def test_bad_input_gets_a_clear_early_error(tmp_path: Path, tiny_model_dir: Path, adapter_dir: Path) -> None:
    with pytest.raises(ValueError, match="not offered: merging a LoRA adapter into 4-bit weights"):
        main(["--adapter", str(adapter_dir), "--method", "merged_4bit", "--output", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="method must be one of"):
        main(["--adapter", str(adapter_dir), "--method", "merged", "--output", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="gguf conversion starts from 16-bit weights"):
        export(adapter_dir, tmp_path / "g", "gguf", base=str(tiny_model_dir), dtype="float32")
    with pytest.raises(ValueError, match="quantization must be one of"):
        export(adapter_dir, tmp_path / "g", "gguf", base=str(tiny_model_dir), quantization="q3")
    with pytest.raises(ValueError, match="dtype must be one of"):
        main(["--adapter", str(adapter_dir), "--method", "merged_16bit", "--dtype", "int8", "--output", "o"])
    with pytest.raises(FileNotFoundError, match=r"run directory .* does not exist"):
        resolve_adapter(tmp_path / "nope", None)
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no LoRA adapter at .*has the run finished"):
        resolve_adapter(tmp_path / "unfinished", None)
    with pytest.raises(FileNotFoundError, match="no LoRA adapter at"):
        resolve_adapter(None, tmp_path)
    with pytest.raises(ValueError, match="exactly one of --run-dir"):
        resolve_adapter(tmp_path, adapter_dir)

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"not an export written by sete_lite\.export"):
        export(adapter_dir, precious, "lora", base=str(tiny_model_dir))
    assert (precious / "notes.txt").read_text() == "keep me"

    quantized = tmp_path / "base-bnb-4bit"
    shutil.copytree(tiny_model_dir, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"quantized checkpoint .*bitsandbytes.*original 16-bit model"):
        export(adapter_dir, tmp_path / "q", "merged_16bit", base=str(quantized), allow_other_base=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without a GPU")
def test_gguf_without_a_gpu_says_what_is_needed(tmp_path: Path, adapter_dir: Path) -> None:
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU and the unsloth package.*convert_hf_to_gguf\.py"):
        main(["--adapter", str(adapter_dir), "--method", "gguf", "--output", str(tmp_path / "g")])
    assert not (tmp_path / "g").exists()


def test_the_base_recorded_with_a_run_adapter_wins_over_unsloths(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Unsloth records its unsloth/...-bnb-4bit repository as the adapter's base; a run records the
    model it was configured with beside the adapter, and export uses that without --base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sete_lite.rundir import save_adapter_atomically

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        str(make_adapter(tiny_model_dir, tmp_path / "made", scale=0.2)),
    )
    model.peft_config["default"].base_model_name_or_path = "unsloth/tiny-qwen2-bnb-4bit"  # as Unsloth saves it
    save_adapter_atomically(model, tmp_path / "run" / "adapter", str(tiny_model_dir))
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == tiny_model_dir.name  # the configured base's shareable name
    saved["base_model_name_or_path"] = "unsloth/tiny-qwen2-bnb-4bit"  # as an adapter saved by Unsloth itself has it
    (tmp_path / "run" / "adapter" / "adapter_config.json").write_text(json.dumps(saved))
    out = main(
        [
            "--run-dir",
            str(tmp_path / "run"),
            "--method",
            "merged_16bit",
            "--dtype",
            "float32",
            "--output",
            str(tmp_path / "merged"),
        ]
    )
    assert json.loads((out / EXPORT_INFO).read_text())["base"] == str(tiny_model_dir)
