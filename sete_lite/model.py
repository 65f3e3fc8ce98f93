"""Loading the policy: a (optionally 4-bit) base model with LoRA adapters, and its reference.

`load_policy(cfg)` returns `(model, tokenizer)` where `model` is a PEFT model whose adapters are
the only trainable weights. Two backends:

- "unsloth" (GPU): Unsloth's FastLanguageModel. With `fast_inference` it starts vLLM first and
  builds the training model on vLLM's own weight tensors, so rollouts need no second copy. Unsloth
  is imported lazily, only here, and before transformers/trl have been used by this path.
- "transformers" (GPU or CPU): AutoModelForCausalLM + peft LoRA, 4-bit NF4 through bitsandbytes.
- "auto": unsloth when a CUDA GPU and the unsloth package are present, else transformers.

The reference policy of the KL terms is the same model with its adapters switched off
(`model.disable_adapter()`, used by the trainer): no second copy of the weights.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sete_lite.builtins import check_hub_name, resolve_builtin
from sete_lite.config import setting

BACKENDS = ("auto", "unsloth", "transformers")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Beside a saved adapter: the model_name_or_path it was trained on, as configured.
ADAPTER_BASE_FILE = "sete_lite_base.json"
GPU_EXTRA = "pip install 'sete_lite[gpu]' (unsloth, unsloth_zoo, vllm)"


@dataclass
class ModelConfig:
    """Which model to load, how (backend, quantisation) and its LoRA adapters."""

    model_name_or_path: str = setting(
        "Qwen/Qwen2.5-1.5B-Instruct",
        "hub name, local directory, a `.gguf` file (converted once into a cached checkpoint), or `builtin:NAME` (a "
        "model an installed package ships, e.g. `builtin:smollm2-135m-instruct`)",
    )
    backend: str = setting(
        "auto",
        "`unsloth` (GPU; on CPU with `fast_inference: false`), `transformers`, or `auto` (unsloth when a GPU and the "
        "package exist)",
    )
    load_in_4bit: bool = setting(True, "NF4 base weights through bitsandbytes")
    dtype: str = setting("auto", "compute dtype: bfloat16 on a GPU that has it, else float32")
    lora_r: int = setting(16, "LoRA rank")
    lora_alpha: int = setting(32, "LoRA scaling numerator")
    lora_dropout: float = setting(0.0, "LoRA dropout")
    lora_target_modules: list[str] = setting(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "modules that get adapters",
        shown="all attention and MLP projections",
    )
    adapter_path: str | None = setting(None, "start from a saved adapter directory")
    max_seq_length: int = setting(
        2048,
        "context length (prompt + completion) on every backend (Unsloth's and vLLM's too); a longer prompt + "
        "completion (or one past the model's own context) is refused at start",
    )
    fast_inference: bool = setting(True, "Unsloth: build vLLM on the training weights (GPU only)")
    gpu_memory_utilization: float = setting(0.6, "share of GPU memory vLLM may take (exact, also with standby)")
    vllm_standby: bool = setting(False, "Unsloth standby: free vLLM's KV cache while training")
    trust_remote_code: bool = setting(False, "passed to `from_pretrained`", shown="`false` (TRL's)")

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got '{self.backend}'")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got '{self.dtype}'")
        if self.lora_r <= 0 or self.lora_alpha <= 0:
            raise ValueError(f"lora_r and lora_alpha must be positive, got {self.lora_r}, {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be at least 1, got {self.max_seq_length}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization is a fraction of GPU memory in (0, 1], got {self.gpu_memory_utilization}"
            )


def unsloth_available() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def resolve_backend(cfg: ModelConfig) -> str:
    """The backend `cfg` asks for, with "auto" resolved; a clear error when it cannot work here.

    Unsloth runs on CPU too (its CPU fallback: a plain transformers model underneath), without
    fast_inference, which needs vLLM on a GPU.
    """
    has_gpu = torch.cuda.is_available()
    if cfg.backend == "auto":
        return "unsloth" if has_gpu and unsloth_available() else "transformers"
    if cfg.backend == "unsloth":
        if not unsloth_available():
            raise RuntimeError(
                f"backend 'unsloth' needs the unsloth package: {GPU_EXTRA}, or set backend: transformers"
            )
        if cfg.fast_inference and not has_gpu:
            raise RuntimeError(
                "fast_inference (Unsloth's vLLM) needs a CUDA GPU and none is visible; set fast_inference: false "
                "to train with backend unsloth on this machine, or backend: transformers"
            )
    return cfg.backend


def import_unsloth(vllm_standby: bool) -> None:
    """Import Unsloth, which patches transformers and TRL when imported: before either is used."""
    if vllm_standby:
        # Read by unsloth at import time: vLLM's KV cache is released while the trainer runs.
        os.environ["UNSLOTH_VLLM_STANDBY"] = "1"
        # Standby otherwise raises gpu_memory_utilization to a tier of its own (~0.78 on 24 GB):
        # the config's value is what vLLM gets.
        os.environ["UNSLOTH_VLLM_STANDBY_UTIL_OVERRIDE"] = "1"
    import unsloth  # noqa: F401


def import_unsloth_first(values: dict[str, Any]) -> None:
    """For CLIs, given the raw config values: import Unsloth now if this run will use it, before
    anything imports transformers or TRL (parsing a training config imports TRL's GRPOConfig)."""
    cfg = ModelConfig(
        backend=values.get("backend", "auto"),
        fast_inference=values.get("fast_inference", True),
        vllm_standby=values.get("vllm_standby", False),
    )
    if resolve_backend(cfg) == "unsloth":
        import_unsloth(cfg.vllm_standby)


def resolve_dtype(cfg: ModelConfig) -> torch.dtype:
    if cfg.dtype != "auto":
        return DTYPES[cfg.dtype]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_model_path(name_or_path: str) -> str:
    """What from_pretrained loads for `model_name_or_path`: builtin:NAME resolved to its path, and a
    .gguf file to its converted checkpoint directory (sete_lite.gguf_cache, converted on first use)."""
    from sete_lite.gguf_cache import gguf_checkpoint, is_gguf

    path = resolve_builtin(name_or_path)
    return str(gguf_checkpoint(path)) if is_gguf(path) else path


def check_model_source(name_or_path: str) -> None:
    """Fail early on a local path that does not exist or holds a LoRA adapter instead of a model, and on
    a hub name the hub does not have."""
    path = Path(name_or_path)
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        base = adapter_base_model(path)
        raise ValueError(
            f"model_name_or_path '{name_or_path}' is a LoRA adapter, not a model: set adapter_path to it and "
            f"model_name_or_path to its base ({base or 'the model it was trained on'})"
        )
    if path.exists():
        return
    if name_or_path.lower().endswith(".gguf"):
        raise FileNotFoundError(f"model file '{name_or_path}' does not exist; give the path of a .gguf model file")
    looks_local = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise FileNotFoundError(
            f"model path '{name_or_path}' does not exist; give an existing directory written by "
            "save_pretrained, or a hub name such as 'Qwen/Qwen2.5-1.5B-Instruct'"
        )
    check_hub_name(name_or_path, "model", "model_name_or_path")


def adapter_base_model(adapter_dir: str | Path) -> str | None:
    """The base model an adapter was trained on: the configured name sete_lite recorded beside it
    (ADAPTER_BASE_FILE), else adapter_config.json's base_model_name_or_path (an adapter from elsewhere)."""
    recorded = Path(adapter_dir) / ADAPTER_BASE_FILE
    if recorded.is_file():
        return json.loads(recorded.read_text())["base_model"]
    config_file = Path(adapter_dir) / "adapter_config.json"
    return json.loads(config_file.read_text()).get("base_model_name_or_path") if config_file.is_file() else None


def check_adapter_base(adapter_dir: str | Path, base: str, flag: str, allow: bool = False) -> None:
    """Refuse `base` (given by `flag`) when the adapter records another base model it was trained on: its
    updates are deltas to that model's weights. `allow` (--allow-other-base) lets it through."""
    recorded = adapter_base_model(adapter_dir)
    if allow or recorded is None or recorded == base:
        return
    if Path(resolve_builtin(recorded)).resolve() == Path(resolve_builtin(base)).resolve():
        return  # the same model named two ways (builtin:NAME and its path)
    raise ValueError(
        f"{flag} '{base}' is not the model the adapter at '{adapter_dir}' was trained on ('{recorded}'): leave "
        f"{flag} out to use that one, or pass --allow-other-base to use another anyway"
    )


def read_adapter_config(adapter_dir: str, setting: str, fix: str) -> dict:
    """The adapter_config.json of a saved PEFT adapter; a missing one names `setting` and the `fix`."""
    config_file = Path(adapter_dir) / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{setting} '{adapter_dir}' has no adapter_config.json; {fix}")
    return json.loads(config_file.read_text())


def check_adapter_dir(adapter_path: str, cfg: ModelConfig) -> None:
    """An adapter to start from must have this LoRA shape: its rank, alpha and target modules scale
    and place every update (another alpha silently rescales them). The training command also checks
    the base model (train.check_settings); evaluating an adapter on another base is allowed."""
    saved = read_adapter_config(
        adapter_path,
        "adapter_path",
        "point it at a directory written by model.save_pretrained (a LoRA checkpoint), or unset it to start "
        "fresh adapters",
    )
    targets = saved.get("target_modules")
    differences = {
        "lora_r": (saved.get("r"), cfg.lora_r),
        "lora_alpha": (saved.get("lora_alpha"), cfg.lora_alpha),
        "lora_target_modules": (
            sorted(targets) if isinstance(targets, list) else targets,
            sorted(cfg.lora_target_modules) if isinstance(cfg.lora_target_modules, list) else cfg.lora_target_modules,
        ),
    }
    wrong = [f"{key}: adapter {saved_value!r}, config {now!r}" for key, (saved_value, now) in differences.items()
             if saved_value != now]  # fmt: skip
    if wrong:
        raise ValueError(
            f"adapter at '{adapter_path}' was not trained with this config ({'; '.join(wrong)}); set those keys to "
            "the adapter's values to start from it"
        )


def check_4bit_possible() -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("load_in_4bit needs bitsandbytes: pip install bitsandbytes, or set load_in_4bit: false")


def load_policy(cfg: ModelConfig, *, seed: int = 0, gradient_checkpointing: bool = False) -> tuple[Any, Any]:
    """Load the base model with LoRA adapters (fresh, or resumed from `cfg.adapter_path`).

    `seed` initialises the fresh adapters; `gradient_checkpointing` (the training config's key) turns
    activation recomputation on for training. Returns `(model, tokenizer)`; only the adapter weights
    require grad. The tokenizer pads on the left (generation) and always has a pad token.
    """
    backend = resolve_backend(cfg)  # first: unsloth must be imported before transformers is used
    check_model_source(resolve_builtin(cfg.model_name_or_path))
    cfg = dataclasses.replace(cfg, model_name_or_path=resolve_model_path(cfg.model_name_or_path))
    if cfg.adapter_path is not None:
        check_adapter_dir(cfg.adapter_path, cfg)
    if cfg.load_in_4bit:
        check_4bit_possible()
    if backend == "unsloth":
        model, tokenizer = _load_unsloth(cfg, seed, gradient_checkpointing)
    else:
        model, tokenizer = _load_transformers(cfg, seed, gradient_checkpointing)
    if cfg.adapter_path is not None:
        load_adapter_weights(model, cfg.adapter_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _load_transformers(cfg: ModelConfig, seed: int, gradient_checkpointing: bool) -> tuple[Any, Any]:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dtype = resolve_dtype(cfg)
    # The current GPU: each process of a launch has been given its own (accelerate's set_device).
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(cfg.model_name_or_path, **kwargs)
    if not cfg.load_in_4bit:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)

    if cfg.load_in_4bit:
        disable_cpu_4bit_repacking(model)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # reproducible lora_A init without touching the caller's RNG
        model = get_peft_model(model, lora)
    return model, tokenizer


def disable_cpu_4bit_repacking(model: torch.nn.Module) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for AVX512-BF16 CPUs; returns modules touched.

    On such CPUs the first forward pass under no_grad (e.g. a rollout) repacks every Linear4bit into
    an inference-only layout, after which training fails ("a view of a leaf Variable that requires
    grad ...") or LoRA gradients are silently None. It must be set before the first forward.
    """
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def _load_unsloth(cfg: ModelConfig, seed: int, gradient_checkpointing: bool) -> tuple[Any, Any]:
    import_unsloth(cfg.vllm_standby)
    from unsloth import FastLanguageModel

    dtype = resolve_dtype(cfg)  # "auto": bfloat16/float16 on a GPU as Unsloth picks, float32 on CPU
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=cfg.model_name_or_path,
        max_seq_length=cfg.max_seq_length,
        load_in_4bit=cfg.load_in_4bit,
        dtype=dtype,
        fast_inference=cfg.fast_inference,
        max_lora_rank=cfg.lora_r,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        trust_remote_code=cfg.trust_remote_code,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
        random_state=seed,
    )
    if dtype == torch.float32:
        # Unsloth's trainer keeps float32 training only for a model marked as asked for in float32,
        # else it switches to fp16/bf16 autocast; its CPU fallback loader forgets the mark.
        model._unsloth_user_float32 = True
    return model, tokenizer


def load_adapter_weights(model: Any, adapter_path: str) -> None:
    """Copy saved LoRA weights into the model's (already created) adapters, keeping them trainable.

    Going through the state dict rather than PeftModel.from_pretrained keeps one code path for both
    backends (Unsloth has already wrapped the model with its own LoRA layers).
    """
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    device = next(model.parameters()).device
    result = set_peft_model_state_dict(model, load_peft_weights(adapter_path, device=str(device)))
    missing_lora = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing_lora:
        raise ValueError(
            f"adapter at '{adapter_path}' does not match the model's LoRA layers "
            f"(unexpected: {result.unexpected_keys[:3]}, missing: {missing_lora[:3]}); "
            "check lora_target_modules against the saved adapter_config.json"
        )
