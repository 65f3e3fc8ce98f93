"""`python -m sete_lite.export`: a trained LoRA adapter as files other tools load.

This module owns exporting (the formats of Unsloth's save methods), with the checks that Unsloth
users miss when a "merged" export silently does not merge or comes out as garbage
(https://github.com/unslothai/unsloth/issues/611, https://github.com/unslothai/unsloth/issues/2339):

- `lora`: the adapter alone (adapter_config.json + adapter_model.safetensors + tokenizer).
- `merged_16bit`: the base loaded in 16-bit (never 4-bit: merging into quantized weights rounds
  the adapter away), the adapter attached with peft and merged with `merge_and_unload`; safetensors
  + tokenizer + config that transformers and vLLM load as is. Checked before it is published: each
  weight changed by the adapter's update B @ A * scaling (not rounded away in 16-bit), no LoRA
  module is left, and the saved files reload with plain transformers to the same logits.
- `gguf`: the verified merged_16bit export converted by Unsloth's `save_pretrained_gguf` (GPU,
  llama.cpp underneath), to one or several quantizations in one call; elsewhere a clear error with the
  manual llama.cpp route.

Every export carries a model card (README.md): the training run's, with the export's method added
(sete_lite.hub). `--push-to-hub user/name [--private]` uploads the finished export, with the token from
the environment; whether it can (offline, no token, hub unreachable) is checked before any work.

    python -m sete_lite.export --run-dir runs/tiny --method merged_16bit --output exports/tiny --dtype float32
    python -m sete_lite.export --adapter runs/r1/adapter/stage-0 --base Qwen/Qwen2.5-Math-7B --method lora --output O
    python -m sete_lite.export --run-dir runs/r1 --method gguf --quantization q4_k_m q8_0 --output O --push-to-hub me/r1

Every export is built in a hidden sibling of the output directory and swapped in only when
complete, so an interrupted export never replaces a good one, and an output directory that is not
an earlier export is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sete_lite.atomic import replace_dir, write_text
from sete_lite.distributed import refuse_several_processes
from sete_lite.outdir import lock
from sete_lite.rundir import RunDir

METHODS = ("lora", "merged_16bit", "gguf")
EXPORT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
GGUF_QUANTIZATIONS = ("f16", "bf16", "q8_0", "q4_k_m", "q5_k_m")
EXPORT_INFO = "export_info.json"  # marks a directory as a finished export (and says what it holds)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# The largest share of the adapter's update (relative norm) that rounding in the export dtype may lose.
MAX_MERGE_ERROR = 0.5


# ----------------------------------------------------------------------------------------------
# Inputs


def resolve_adapter(run_dir: str | Path | None, adapter: str | Path | None, stage: int | None = None) -> Path:
    """The adapter directory: `adapter`, or the run's final adapter (or its stage-K adapter)."""
    if (run_dir is None) == (adapter is None):
        raise ValueError("give exactly one of --run-dir (a training run directory) or --adapter (an adapter directory)")
    if adapter is not None and stage is not None:
        raise ValueError("--stage picks a stage's adapter of a training run: use it with --run-dir, not --adapter")
    if run_dir is not None:
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(f"run directory '{run_dir}' does not exist")
        layout = RunDir(Path(run_dir))
        path = layout.adapter if stage is None else layout.stage_adapter(stage)
        hint = "has the run finished? (python -m sete_lite.train writes adapter/ at the end and adapter/stage-K)"
        saved = sorted(int(p.name.split("-")[1]) for p in layout.adapter.glob("stage-*") if p.name[6:].isdigit())
        if stage is not None and saved and stage not in saved:
            hint = f"the run saved the adapters of stages {', '.join(map(str, saved))}"
    else:
        path = Path(adapter)
        hint = "point --adapter at a directory written by save_pretrained (e.g. a run's adapter/)"
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no LoRA adapter at '{path}' (adapter_config.json missing); {hint}")
    return path


def resolve_base(adapter_dir: Path, base: str | None, allow_other_base: bool = False) -> str:
    """The base model: `base`, else the one the adapter records (see model.adapter_base_model); built-in
    names resolved. Another base than the recorded one is refused unless `allow_other_base`."""
    from sete_lite.builtins import resolve_builtin
    from sete_lite.model import adapter_base_model, check_adapter_base, check_model_source, resolve_model_path

    if base:
        check_adapter_base(adapter_dir, base, "--base", allow_other_base)
    name = base or adapter_base_model(adapter_dir)
    if not name:
        raise ValueError(f"the adapter at '{adapter_dir}' does not record its base model; pass --base")
    check_model_source(resolve_builtin(name))
    return resolve_model_path(name)


def check_method(method: str, dtype: str) -> None:
    if method in ("merged_4bit", "merged_4bit_forced"):
        raise ValueError(
            f"method '{method}' is not offered: merging a LoRA adapter into 4-bit weights re-quantizes the "
            "sum and rounds most of the adapter away (github.com/unslothai/unsloth/issues/611, /2339). Use "
            "--method merged_16bit (the base is loaded in 16-bit), then quantize the merged model if you need "
            "4-bit weights"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got '{method}'")
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got '{dtype}'")


def check_not_quantized(base: str) -> None:
    """Refuse a base checkpoint that is stored quantized: the merge would land in 4-bit weights."""
    from transformers import AutoConfig

    quantization = getattr(AutoConfig.from_pretrained(base), "quantization_config", None)
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else "?"
        raise ValueError(
            f"base model '{base}' is a quantized checkpoint ({method}); merging into it would merge into "
            "4-bit weights. Pass --base the original 16-bit model (e.g. Qwen/Qwen2.5-1.5B-Instruct rather "
            "than a -bnb-4bit repackaging)"
        )


# ----------------------------------------------------------------------------------------------
# Publishing a directory atomically


def publish(target: Path, build: Callable[[Path], None]) -> Path:
    """Build an export in a hidden sibling of `target` and swap it in (sete_lite.atomic.replace_dir).

    Only an empty directory or an earlier export (with export_info.json) is ever replaced.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"--output '{target}' is a file; give a directory (it is created)")
    if target.exists() and any(target.iterdir()) and not (target / EXPORT_INFO).is_file():
        raise FileExistsError(
            f"'{target}' exists and is not an export written by sete_lite.export; choose another --output "
            "(it is never overwritten)"
        )
    return replace_dir(target, build)


def write_info(directory: Path, info: dict[str, Any]) -> None:
    # Written last: its presence says the directory is a complete export. No timestamps, so that
    # exporting the same adapter twice gives the same files.
    (directory / EXPORT_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------
# Methods


def build_lora(adapter_dir: Path, out: Path) -> None:
    """Copy the adapter's files (not a run's stage-K subdirectories)."""
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"adapter at '{adapter_dir}' lacks {missing}; it was not saved completely")
    for path in sorted(adapter_dir.iterdir()):
        if path.is_file():
            shutil.copy2(path, out / path.name)


def merge_adapter(base: str, adapter_dir: Path, dtype: torch.dtype) -> tuple[Any, float]:
    """The base loaded unquantized in `dtype` with the adapter merged in, and the merge's relative error.

    Layer by layer (one weight copy at a time): the change the merge made to the weight is compared
    with the adapter's delta B @ A * scaling, so an adapter that is rounded away in 16-bit, or a merge
    that does not happen, is caught rather than published.
    """
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModelForCausalLM

    check_not_quantized(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)  # no quantization_config: plain weights
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    lost = delta = 0.0  # squared norms, summed over layers
    for layer in layers:
        weight = layer.get_base_layer().weight
        before = weight.detach().float().clone()
        expected = layer.get_delta_weight(model.active_adapter).float()
        layer.merge()
        lost += float((weight.detach().float() - before - expected).pow(2).sum())
        delta += float(expected.pow(2).sum())
    # Every layer is merged now: unload() swaps each LoRA layer for its (merged) base layer, which is
    # what merge_and_unload does after merging.
    merged = model.unload()
    left = [name for name, module in merged.named_modules() if "lora_" in name or isinstance(module, BaseTunerLayer)]
    if left:
        raise RuntimeError(f"LoRA modules are left in the merged model: {left[:3]}")
    relative_error = (lost / delta) ** 0.5 if delta > 0 else 0.0
    if relative_error > MAX_MERGE_ERROR:
        raise RuntimeError(
            f"merging in {str(dtype).removeprefix('torch.')} lost {relative_error:.0%} of the adapter's update "
            "(its changes are below the resolution of the weights in that dtype); export with --dtype float32"
        )
    return merged, relative_error


def probe_logits(model: Any, vocab_size: int) -> torch.Tensor:
    """Logits of a fixed token sequence, to compare two copies of a model."""
    ids = (torch.arange(32) * 7919 % vocab_size).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


def build_merged(base: str, adapter_dir: Path, dtype_name: str, out: Path, *, verify: bool = True) -> dict[str, Any]:
    """Merge, save safetensors + tokenizer + config to `out`, and reload them to check the logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = EXPORT_DTYPES[dtype_name]
    merged, merge_error = merge_adapter(base, adapter_dir, dtype)
    merged.save_pretrained(out, safe_serialization=True)
    # The adapter directory's tokenizer is the one the run trained with (chat template included).
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    AutoTokenizer.from_pretrained(str(adapter_dir) if has_tokenizer else base).save_pretrained(out)
    info: dict[str, Any] = {"merge_relative_error": merge_error}
    if verify:
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=dtype)
        vocab = merged.config.vocab_size
        expected, got = probe_logits(merged, vocab), probe_logits(reloaded, vocab)
        error = float((expected - got).abs().max())
        if error > 1e-3 * max(1.0, float(expected.abs().max())):
            raise RuntimeError(f"the saved merged model reloads to different logits (max abs error {error:.3g})")
        info["reload_max_abs_logit_error"] = error
    return info


def check_gguf_possible(quantizations: list[str], dtype: str) -> None:
    """gguf needs Unsloth on a CUDA GPU and 16-bit weights; say what to do instead, before any loading."""
    from sete_lite.model import GPU_EXTRA, unsloth_available

    for quantization in quantizations:
        if quantization not in GGUF_QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {GGUF_QUANTIZATIONS}, got '{quantization}'")
    if dtype == "float32":
        raise ValueError("gguf conversion starts from 16-bit weights: pass --dtype bfloat16 or float16")
    if not (torch.cuda.is_available() and unsloth_available()):
        raise RuntimeError(
            "gguf export converts with Unsloth's save_pretrained_gguf, which needs a CUDA GPU and the unsloth "
            f"package: {GPU_EXTRA}. Without them: export --method merged_16bit, then convert that directory "
            "with llama.cpp: python llama.cpp/convert_hf_to_gguf.py OUTPUT --outtype f16 (then llama-quantize "
            "for q4_k_m)"
        )


def build_gguf(base: str, adapter_dir: Path, dtype_name: str, quantizations: list[str], out: Path) -> None:
    """The verified merged_16bit export, converted by Unsloth's save_pretrained_gguf (GPU only) to each
    of `quantizations` (Unsloth takes the list and converts the 16-bit weights once).

    Unsloth converts a local non-PEFT checkpoint in place and, depending on its version, writes the
    .gguf files next to it or to a `<dir>_gguf` sibling; they are all gathered into `out`.
    """
    merged_dir = out / "merged_16bit"
    merged_dir.mkdir()
    build_merged(base, adapter_dir, dtype_name, merged_dir)
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(merged_dir), load_in_4bit=False, dtype=EXPORT_DTYPES[dtype_name]
    )
    result = model.save_pretrained_gguf(str(merged_dir), tokenizer, quantization_method=quantizations)
    side_dir = Path(f"{merged_dir}_gguf")
    files = [Path(f) for f in result.get("gguf_files") or []] if isinstance(result, dict) else []
    files = files or [*merged_dir.glob("*.gguf"), *side_dir.glob("*.gguf")]
    if not files:
        raise RuntimeError(f"Unsloth's save_pretrained_gguf finished but wrote no .gguf file (returned {result!r})")
    for path in [*files, side_dir / "Modelfile"]:
        if path.is_file():
            shutil.move(str(path), out / path.name)
    shutil.rmtree(merged_dir)
    shutil.rmtree(side_dir, ignore_errors=True)


def export(
    adapter_dir: Path,
    output: str | Path,
    method: str,
    *,
    base: str | None = None,
    dtype: str = "bfloat16",
    quantization: str | list[str] = "q8_0",
    verify: bool = True,
    allow_other_base: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
) -> Path:
    """Export the adapter at `adapter_dir` to `output` with `method` (and push it to the hub repository
    `push_to_hub`); returns the output directory."""
    from sete_lite.hub import check_hub_access, push_folder
    from sete_lite.model import adapter_base_model

    check_method(method, dtype)
    quantizations = [quantization] if isinstance(quantization, str) else list(quantization)
    if method == "gguf":
        check_gguf_possible(quantizations, dtype)
    hub = check_hub_access(push_to_hub, "--push-to-hub") if push_to_hub else None
    if method == "gguf":
        from sete_lite.model import import_unsloth

        import_unsloth(vllm_standby=False)  # Unsloth patches transformers and peft: before they are imported
    base_name = resolve_base(adapter_dir, base, allow_other_base)
    info: dict[str, Any] = {"method": method, "adapter": str(adapter_dir), "base": base_name}

    def build(out: Path) -> None:
        if method == "lora":
            build_lora(adapter_dir, out)
        elif method == "merged_16bit":
            info.update(dtype=dtype, **build_merged(base_name, adapter_dir, dtype, out, verify=verify))
        else:
            build_gguf(base_name, adapter_dir, dtype, quantizations, out)
            info.update(dtype=dtype, quantization=quantizations)
        write_text(out / "README.md", export_card(adapter_dir, base or adapter_base_model(adapter_dir), info))
        write_info(out, info)

    output = Path(output)
    with lock(output.parent / f".{output.name}.lock", f"--output '{output}'", remove=True):  # one export at a time
        published = publish(output, build)
    if hub:
        url = push_folder(published, *hub, private=private, message=f"sete_lite.export: {method}")
        print(f"pushed {published} to {url}")
    return published


def export_card(adapter_dir: Path, base: str, info: dict[str, Any]) -> str:
    """The export's model card: the body of the card a training run wrote beside its adapter (else a short
    one; peft's own is a template of "[More Information Needed]"), and what this export holds."""
    from sete_lite.hub import card_body, model_card, shareable_base
    from sete_lite.model import ADAPTER_BASE_FILE

    shared_name = shareable_base(base)
    card = adapter_dir / "README.md"
    if card.is_file() and (adapter_dir / ADAPTER_BASE_FILE).is_file():
        body = card_body(card.read_text())
    else:
        body = f"# A LoRA adapter on `{shared_name}`\n"
    held = ", ".join(f"{key} `{info[key]}`" for key in ("method", "dtype", "quantization") if key in info)
    body += f"\n## This export\n\nWritten by `python -m sete_lite.export`: {held}.\n"
    return model_card(shared_name, body, "peft" if info["method"] == "lora" else "transformers")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sete_lite.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", help="a training run directory (its adapter/ is exported)")
    source.add_argument("--adapter", help="an adapter directory written by save_pretrained")
    parser.add_argument("--stage", type=int, help="with --run-dir: the adapter saved at the end of stage K")
    parser.add_argument("--base", help="base model (default: the one recorded in the adapter's config)")
    parser.add_argument("--allow-other-base", action="store_true", help="--base may differ from the adapter's base")
    parser.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    parser.add_argument(
        "--output",
        "--output-dir",
        "--output_dir",
        dest="output",
        metavar="DIR",
        required=True,
        help="output directory (replaced atomically)",
    )
    parser.add_argument("--dtype", default="bfloat16", help=f"merged weights: {', '.join(EXPORT_DTYPES)}")
    parser.add_argument(
        "--quantization", nargs="+", default=["q8_0"], help=f"gguf, one or several: {', '.join(GGUF_QUANTIZATIONS)}"
    )
    parser.add_argument("--no-verify", action="store_true", help="merged_16bit: skip the reload-and-compare check")
    parser.add_argument("--push-to-hub", metavar="USER/NAME", help="upload the export to this hub repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    refuse_several_processes("python -m sete_lite.export")
    args = parse_args(argv)
    if args.private and not args.push_to_hub:
        raise ValueError("--private is for the repository --push-to-hub creates: add --push-to-hub USER/NAME")
    check_method(args.method, args.dtype)  # before anything is loaded
    adapter_dir = resolve_adapter(args.run_dir, args.adapter, args.stage)
    out = export(
        adapter_dir,
        args.output,
        args.method,
        base=args.base,
        dtype=args.dtype,
        quantization=args.quantization,
        verify=not args.no_verify,
        allow_other_base=args.allow_other_base,
        push_to_hub=args.push_to_hub,
        private=args.private,
    )
    print(f"exported {adapter_dir} ({args.method}) to {out}")
    print(json.dumps(json.loads((out / EXPORT_INFO).read_text()), indent=2))
    return out


if __name__ == "__main__":
    from sete_lite.config import run_cli

    run_cli(main, interrupted="the output directory is as it was (an export is swapped in only when complete)")
