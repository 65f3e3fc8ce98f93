"""The chunked log-prob / entropy function against a float64 full-softmax reference."""

from __future__ import annotations

import pytest
import torch

from sete_lite.logprobs import default_chunk_size, token_logprobs_and_entropy


def full_softmax_reference(hidden, weight, ids, temperature):
    """log p(ids) and entropy from the full float64 logits."""
    log_probs = torch.log_softmax(hidden.double() @ weight.double().T / temperature, dim=-1)
    logp = log_probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return logp, entropy


def make_inputs(seed, batch=3, length=7, hidden_size=16, vocab=50, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, hidden_size, generator=g).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=g) / hidden_size**0.5).to(dtype)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    upstream_logp = torch.randn(batch, length, generator=g, dtype=torch.float64)
    upstream_entropy = torch.randn(batch, length, generator=g, dtype=torch.float64)
    return hidden, weight, ids, upstream_logp, upstream_entropy


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 21, 1000, None])
@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("train_weight", [False, True])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_values_and_gradients_match_float64(chunk_size, temperature, train_weight, entropy_grad):
    hidden, weight, ids, up_logp, up_ent = make_inputs(seed=chunk_size or 0)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_(train_weight)
    logp, entropy = token_logprobs_and_entropy(
        h, w, ids, chunk_size=chunk_size, temperature=temperature, entropy_requires_grad=entropy_grad
    )
    assert logp.dtype == entropy.dtype == torch.float32 and logp.shape == ids.shape
    assert entropy.requires_grad == entropy_grad

    h64 = hidden.double().requires_grad_()
    w64 = weight.double().requires_grad_(train_weight)
    ref_logp, ref_entropy = full_softmax_reference(h64, w64, ids, temperature)
    torch.testing.assert_close(logp.double(), ref_logp.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy.detach(), rtol=1e-5, atol=1e-5)

    objective = (logp.double() * up_logp).sum()
    ref_objective = (ref_logp * up_logp).sum()
    if entropy_grad:
        objective = objective + (entropy.double() * up_ent).sum()
        ref_objective = ref_objective + (ref_entropy * up_ent).sum()
    wanted = [h, w] if train_weight else [h]
    grads = torch.autograd.grad(objective, wanted)
    ref_grads = torch.autograd.grad(ref_objective, [h64, w64] if train_weight else [h64])
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-5)


def test_weight_only_gradient():
    hidden, weight, ids, up_logp, _ = make_inputs(seed=3)
    w = weight.clone().requires_grad_()
    logp, _ = token_logprobs_and_entropy(hidden, w, ids, chunk_size=5)
    (grad_w,) = torch.autograd.grad((logp.double() * up_logp).sum(), [w])
    w64 = weight.double().requires_grad_()
    ref_logp, _ = full_softmax_reference(hidden, w64, ids, 1.0)
    (ref_grad,) = torch.autograd.grad((ref_logp * up_logp).sum(), [w64])
    torch.testing.assert_close(grad_w.double(), ref_grad, rtol=1e-4, atol=1e-5)


def test_bf16_inputs_upcast_per_chunk():
    hidden, weight, ids, up_logp, _ = make_inputs(seed=4, dtype=torch.bfloat16, vocab=300, hidden_size=32)
    h = hidden.clone().requires_grad_()
    logp, entropy = token_logprobs_and_entropy(h, weight, ids, chunk_size=4, temperature=0.8)
    assert logp.dtype == torch.float32 and h.dtype == torch.bfloat16
    (grad,) = torch.autograd.grad((logp.double() * up_logp).sum(), [h])
    assert grad.dtype == torch.bfloat16
    # The reference sees the same bf16-rounded values, so only the matmul rounding differs.
    h64 = hidden.double().requires_grad_()
    ref_logp, ref_entropy = full_softmax_reference(h64, weight, ids, 0.8)
    (ref_grad,) = torch.autograd.grad((ref_logp * up_logp).sum(), [h64])
    torch.testing.assert_close(logp.double(), ref_logp.detach(), rtol=0, atol=0.05)
    torch.testing.assert_close(entropy.double(), ref_entropy.detach(), rtol=0, atol=0.05)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=0.05, atol=0.02)


def test_no_grad_returns_detached_values():
    hidden, weight, ids, _, _ = make_inputs(seed=5)
    with torch.no_grad():
        logp, entropy = token_logprobs_and_entropy(hidden.requires_grad_(), weight, ids, chunk_size=2)
    ref_logp, ref_entropy = full_softmax_reference(hidden.detach(), weight, ids, 1.0)
    assert not logp.requires_grad and not entropy.requires_grad
    torch.testing.assert_close(logp.double(), ref_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=1e-5, atol=1e-5)


def test_uniform_distribution_has_log_vocab_entropy():
    # Zero hidden states give uniform logits: log p = -log V and entropy = log V exactly.
    vocab = 37
    hidden = torch.zeros(2, 3, 8)
    logp, entropy = token_logprobs_and_entropy(hidden, torch.randn(vocab, 8), torch.zeros(2, 3, dtype=torch.long))
    torch.testing.assert_close(logp, torch.full((2, 3), -torch.log(torch.tensor(vocab * 1.0)).item()))
    torch.testing.assert_close(entropy, torch.full((2, 3), torch.log(torch.tensor(vocab * 1.0)).item()))


def test_default_chunk_is_about_128mb_of_logits():
    assert default_chunk_size(151_936) == 220
    assert default_chunk_size(10) == 3_355_443
    assert default_chunk_size(1 << 30) == 1


def test_bad_shapes_are_value_errors():
    hidden, weight, ids, _, _ = make_inputs(seed=6)
    with pytest.raises(ValueError, match="token_ids"):
        token_logprobs_and_entropy(hidden, weight, ids[:, :-1])
    with pytest.raises(ValueError, match="weight must be"):
        token_logprobs_and_entropy(hidden, weight[:, :-1], ids)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_and_entropy(hidden, weight, ids, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs_and_entropy(hidden, weight, ids, chunk_size=0)


@pytest.mark.parametrize(
    "hidden_dtype, weight_dtype", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)]
)
@pytest.mark.parametrize("train_weight", [False, True])
def test_hidden_and_head_of_different_dtypes(hidden_dtype, weight_dtype, train_weight):
    # Unsloth loads the head in bfloat16 and can hand back float32 hidden states: the product runs in
    # the head's dtype (so the reference rounds the hidden states to it first), softmax in float32.
    hidden, weight, ids, up_logp, _ = make_inputs(seed=11, vocab=300, hidden_size=32)
    h = hidden.to(hidden_dtype).clone().requires_grad_()
    w = weight.to(weight_dtype).clone().requires_grad_(train_weight)
    logp, entropy = token_logprobs_and_entropy(h, w, ids, chunk_size=5)
    ref_hidden = h.detach().to(weight_dtype).double().requires_grad_()
    ref_logp, ref_entropy = full_softmax_reference(ref_hidden, w.detach().double(), ids, 1.0)
    # bf16 logits carry ~3 significant digits: log-probs of ~-6 agree to a few 1e-2.
    torch.testing.assert_close(logp.double(), ref_logp, rtol=0, atol=3e-2)
    torch.testing.assert_close(entropy.double(), ref_entropy, rtol=0, atol=3e-2)
    (logp.double() * up_logp).sum().backward()
    (ref_logp * up_logp).sum().backward()
    assert h.grad.dtype == hidden_dtype
    torch.testing.assert_close(h.grad.double(), ref_hidden.grad, rtol=0, atol=5e-2)
    if train_weight:
        assert w.grad.dtype == weight_dtype and w.grad.shape == w.shape


def decoder_like_unsloth(model):
    """Make a transformers decoder behave as Unsloth's fast Llama/Qwen2 forward does (unsloth/models/
    llama.py, LlamaModel_fast_forward): in training mode the attention mask is dropped unless the
    decoder carries `_unsloth_keep_padding_mask`."""
    decoder = model.get_base_model().get_decoder()
    forward = decoder.forward

    def unsloth_forward(*args, attention_mask=None, **kwargs):
        if decoder.training and not getattr(decoder, "_unsloth_keep_padding_mask", False):
            attention_mask = None
        return forward(*args, attention_mask=attention_mask, **kwargs)

    decoder.forward = unsloth_forward
    return decoder


def test_left_padded_rows_equal_rows_alone_on_an_unsloth_style_decoder(tiny_model_dir):
    from sete_lite.logprobs import completion_logprobs
    from sete_lite.model import ModelConfig, load_policy

    model, tokenizer = load_policy(
        ModelConfig(model_name_or_path=str(tiny_model_dir), load_in_4bit=False, lora_r=4, lora_alpha=8)
    )
    decoder = decoder_like_unsloth(model)
    model.train()  # where Unsloth drops the mask
    texts = ["Compute 1 + 1. It is 2", "Compute 13 + 13 + 100. It is 126"]  # different prompt lengths
    batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    assert batch["attention_mask"][0].min() == 0  # the first row is padded
    with torch.no_grad():
        logps, entropies = completion_logprobs(model, batch["input_ids"], batch["attention_mask"], 4)
        for row, text in enumerate(texts):
            alone = tokenizer([text], return_tensors="pt")
            row_logps, row_entropies = completion_logprobs(model, alone["input_ids"], alone["attention_mask"], 4)
            torch.testing.assert_close(logps[row], row_logps[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(entropies[row], row_entropies[0], rtol=1e-5, atol=1e-5)
        # The flag is set for the call only, and without it the padded row does see its pads.
        assert not hasattr(decoder, "_unsloth_keep_padding_mask")
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        head = model.get_base_model().get_output_embeddings().weight
        unmasked, _ = token_logprobs_and_entropy(hidden[:, -5:-1], head, batch["input_ids"][:, -4:])
    assert (unmasked[0] - logps[0]).abs().max() > 1e-3


def test_a_batch_beyond_unsloth_max_seq_length_is_refused(tiny_model_dir):
    from sete_lite.logprobs import completion_logprobs
    from sete_lite.model import ModelConfig, load_policy

    model, tokenizer = load_policy(
        ModelConfig(model_name_or_path=str(tiny_model_dir), load_in_4bit=False, lora_r=4, lora_alpha=8)
    )
    # Unsloth sets max_seq_length on the decoder and silently cuts longer inputs.
    model.get_base_model().get_decoder().max_seq_length = 10
    ids = tokenizer(["Compute 1 + 1. It is 2"], return_tensors="pt")
    with pytest.raises(ValueError, match="exceeds the model's max_seq_length=10"):
        completion_logprobs(model, ids["input_ids"], ids["attention_mask"], 4)
