"""Per-token log-probs and entropies from final hidden states, without the full logits.

A policy-gradient step needs, for every completion token, log pi(o_t) and the entropy of pi(.|s_t).
The naive way materialises (batch x length x vocabulary) logits: with Qwen's 151,936-token
vocabulary that is 1.2 GB in float32 for just 2 x 1024 tokens, and autograd keeps several copies.

`token_logprobs_and_entropy` walks the tokens in chunks, so at most one chunk of (tokens x V)
logits (plus its softmax) exists at a time. The backward pass needs no logits at all when the
lm_head weight is frozen (the LoRA case): the gradient of log p(y_t) with respect to hidden state
h_t is (W[y_t] - E_p[W]) / temperature, one H-vector per token, which the forward pass computes
chunk by chunk while the softmax is at hand. Likewise for the entropy when it needs a gradient.
When the weight itself requires grad, the backward pass recomputes each chunk's logits instead.
Softmax arithmetic is done in float32 whatever the input dtype (bf16 on GPU). Hidden states and the
head may differ in dtype (Unsloth loads the head in bfloat16 and can hand back float32 hidden
states): the hidden chunk is cast to the head's dtype and, on CUDA, the product is accumulated and
kept in float32 (rounding logits to bf16 biases the entropy low, as TRL's fused kernel notes).

`completion_logprobs(model, ...)` runs a (PEFT, DDP) causal LM, takes its decoder's hidden states
and applies the function above to the completion positions: the one place the trainer, the
reference policy, the study and the GPU check get per-token log-probs from a model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

# Rows per chunk are chosen so one chunk holds about this many logits (128 MB in float32).
LOGITS_PER_CHUNK = 1 << 25


def default_chunk_size(vocab_size: int) -> int:
    """Rows per chunk so that a chunk of float32 logits takes about 128 MB."""
    return max(1, LOGITS_PER_CHUNK // vocab_size)


def float32_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """hidden @ weight.T as float32, computed in the head's dtype (one (rows x V) buffer)."""
    hidden = hidden.to(weight.dtype)
    if weight.dtype in (torch.bfloat16, torch.float16) and weight.is_cuda:
        # cuBLAS accumulates in float32 anyway; out_dtype keeps the result there instead of rounding it.
        return torch.mm(hidden, weight.T, out_dtype=torch.float32)
    return (hidden @ weight.T).float()


def _chunk_softmax_stats(
    hidden_chunk: torch.Tensor, weight: torch.Tensor, ids_chunk: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For one chunk of rows: (log-probs of all tokens, probs, log p(ids), entropy), all float32.

    In-place arithmetic keeps two (rows x V) buffers alive, never more.
    """
    log_probs = float32_logits(hidden_chunk, weight)
    if temperature != 1.0:
        log_probs /= temperature
    row_max = log_probs.amax(dim=-1, keepdim=True)
    probs = torch.sub(log_probs, row_max).exp_()
    normaliser = probs.sum(dim=-1, keepdim=True)
    probs /= normaliser
    log_probs -= row_max + normaliser.log()
    token_logp = log_probs.gather(-1, ids_chunk.unsqueeze(-1)).squeeze(-1)
    entropy = -torch.einsum("nv,nv->n", probs, log_probs)  # no (rows x V) temporary, unlike vecdot
    return log_probs, probs, token_logp, entropy


def _logit_grads(
    log_probs: torch.Tensor,
    probs: torch.Tensor,
    ids_chunk: torch.Tensor,
    entropy: torch.Tensor,
    grad_logp: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
) -> torch.Tensor:
    """d(grad_logp * log p(y) + grad_entropy * H) / d(scaled logits) for one chunk, float32.

    d log p(y) / dz = onehot(y) - p;  dH / dz = -p * (log p + H).
    """
    grad_z = torch.zeros_like(probs)
    if grad_logp is not None:
        grad_z -= probs * grad_logp.unsqueeze(-1)
        grad_z.scatter_add_(-1, ids_chunk.unsqueeze(-1), grad_logp.unsqueeze(-1))
    if grad_entropy is not None:
        grad_z -= probs * (log_probs + entropy.unsqueeze(-1)) * grad_entropy.unsqueeze(-1)
    return grad_z


class _ChunkedLogprobs(torch.autograd.Function):
    """Autograd function over flattened rows: hidden (N, H), weight (V, H), ids (N,)."""

    @staticmethod
    def forward(ctx, hidden, weight, ids, temperature, chunk_size, entropy_grad):
        num_rows = hidden.shape[0]
        logp = torch.empty(num_rows, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        # Per-row gradients w.r.t. hidden, filled only when hidden needs a gradient and the weight
        # is frozen: then backward is a cheap (N, H) multiply instead of a logits recomputation.
        precompute = ctx.needs_input_grad[0] and not ctx.needs_input_grad[1]
        dlogp_dh = torch.empty(num_rows, hidden.shape[1], dtype=torch.float32, device=hidden.device)
        dent_dh = torch.empty_like(dlogp_dh) if entropy_grad else None
        if not precompute:
            dlogp_dh = dent_dh = None
        for start in range(0, num_rows, chunk_size):
            rows = slice(start, start + chunk_size)
            log_probs, probs, logp[rows], entropy[rows] = _chunk_softmax_stats(
                hidden[rows], weight, ids[rows], temperature
            )
            if precompute:
                if entropy_grad:  # dH/dz = -p (log p + H), needed before probs is overwritten
                    grad_z = (log_probs + entropy[rows].unsqueeze(-1)).mul_(probs).neg_()
                    dent_dh[rows] = (grad_z.to(weight.dtype) @ weight).float() / temperature
                    del grad_z
                # d log p(y)/dz = onehot(y) - p, built in the probs buffer.
                grad_z = probs.neg_()
                grad_z.scatter_add_(-1, ids[rows].unsqueeze(-1), torch.ones_like(logp[rows]).unsqueeze(-1))
                dlogp_dh[rows] = (grad_z.to(weight.dtype) @ weight).float() / temperature
            del log_probs, probs
        ctx.save_for_backward(hidden, weight, ids, dlogp_dh, dent_dh)
        ctx.temperature, ctx.chunk_size, ctx.entropy_grad = temperature, chunk_size, entropy_grad
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, ids, dlogp_dh, dent_dh = ctx.saved_tensors
        if not ctx.entropy_grad:
            grad_entropy = None
        grad_hidden = grad_weight = None
        if dlogp_dh is not None:
            grad = dlogp_dh * grad_logp.unsqueeze(-1)
            if grad_entropy is not None:
                grad += dent_dh * grad_entropy.unsqueeze(-1)
            grad_hidden = grad.to(hidden.dtype)
        else:
            # The weight needs a gradient too: recompute each chunk's softmax.
            need_hidden = ctx.needs_input_grad[0]
            grad_hidden = torch.zeros_like(hidden) if need_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            for start in range(0, hidden.shape[0], ctx.chunk_size):
                rows = slice(start, start + ctx.chunk_size)
                log_probs, probs, _, entropy = _chunk_softmax_stats(hidden[rows], weight, ids[rows], ctx.temperature)
                grad_z = _logit_grads(
                    log_probs,
                    probs,
                    ids[rows],
                    entropy,
                    grad_logp[rows],
                    None if grad_entropy is None else grad_entropy[rows],
                )
                grad_z = (grad_z / ctx.temperature).to(weight.dtype)
                del log_probs, probs
                grad_weight += (grad_z.T @ hidden[rows].to(weight.dtype)).float()
                if need_hidden:
                    grad_hidden[rows] = (grad_z @ weight).to(hidden.dtype)
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def token_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    entropy_requires_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(hidden @ weight.T / temperature) at token_ids, and the entropy of that softmax.

    Args:
        hidden: (B, T, H) final hidden states (after the model's last norm).
        weight: (V, H) the lm_head matrix.
        token_ids: (B, T) the token whose log-prob is wanted at each position.
        chunk_size: rows (tokens) per chunk; None picks about 128 MB of float32 logits per chunk.
        temperature: the sampling temperature the distribution is scaled by.
        entropy_requires_grad: give the entropy a gradient (the entropy-bonus baseline needs it).

    Returns:
        (logp, entropy), both (B, T) float32. logp is differentiable w.r.t. hidden (and weight when
        it requires grad); entropy is detached unless entropy_requires_grad.
    """
    if hidden.dim() != 3 or token_ids.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be (B, T, H) and token_ids (B, T); got {tuple(hidden.shape)} and {tuple(token_ids.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"weight must be (V, {hidden.shape[2]}); got {tuple(weight.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, length, hidden_size = hidden.shape
    logp, entropy = _ChunkedLogprobs.apply(
        hidden.reshape(-1, hidden_size),
        weight,
        token_ids.reshape(-1),
        float(temperature),
        int(chunk_size),
        bool(entropy_requires_grad),
    )
    return logp.view(batch, length), entropy.view(batch, length)


@contextlib.contextmanager
def padding_mask_kept(decoder: torch.nn.Module) -> Iterator[None]:
    """Make Unsloth's fast decoder honour the attention mask in training mode, for one call.

    Unsloth's Llama/Qwen2 forward drops `attention_mask` while training unless the decoder carries
    `_unsloth_keep_padding_mask` (its CausalLM forward marks `_has_no_labels` instead, which a
    direct decoder call skips): every token of a left-padded batch would attend to the pads.
    Plain transformers ignores the attribute.
    """
    missing = object()
    previous = getattr(decoder, "_unsloth_keep_padding_mask", missing)
    decoder._unsloth_keep_padding_mask = True
    try:
        yield
    finally:
        if previous is missing:
            del decoder._unsloth_keep_padding_mask
        else:
            decoder._unsloth_keep_padding_mask = previous


def completion_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion_tokens: int,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    entropy_requires_grad: bool = False,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of the last `num_completion_tokens` tokens of each row under `model`.

    `model` is a causal LM, a PeftModel around one, or either wrapped by DDP (adapters as they are:
    wrap the call in `disable_adapter()` for the reference policy). Rows may be left-padded
    (`attention_mask` 0 on the pads). The model is called as it is, so that a DDP wrapper prepares its
    gradient synchronisation, with `logits_to_keep=1` (no full logits); the decoder's final hidden
    states are taken by a forward hook, `batch_size` rows at a time inside `forward_context()` (e.g.
    autocast), and `token_logprobs_and_entropy` turns them into log-probs chunk by chunk: the logits
    are never materialised whole. Returns two (rows, num_completion_tokens) float32 tensors.
    """
    causal_lm = model.module if hasattr(model, "module") else model  # DDP keeps the model as .module
    causal_lm = causal_lm.get_base_model() if hasattr(causal_lm, "get_base_model") else causal_lm
    decoder, head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()
    limit = getattr(decoder, "max_seq_length", None)  # set by Unsloth, whose forward truncates beyond it
    if limit is not None and input_ids.size(1) > limit:
        raise ValueError(
            f"a batch of {input_ids.size(1)} tokens (prompt + completion) exceeds the model's max_seq_length="
            f"{limit}, and Unsloth would silently truncate it; raise max_seq_length or shorten prompts / "
            "max_completion_length"
        )
    batch_size = batch_size or input_ids.size(0)
    all_logps, all_entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
        hidden = decoder_output(model, decoder, ids, mask, forward_context)
        # The hidden state at position t predicts token t + 1.
        logps, entropies = token_logprobs_and_entropy(
            hidden[:, -num_completion_tokens - 1 : -1],
            head.weight,
            ids[:, -num_completion_tokens:],
            chunk_size=chunk_size,
            temperature=temperature,
            entropy_requires_grad=entropy_requires_grad,
        )
        all_logps.append(logps)
        all_entropies.append(entropies)
    return torch.cat(all_logps), torch.cat(all_entropies)


def decoder_output(
    model: Any,
    decoder: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """The decoder's final hidden states (after its last norm) from a call of the whole `model`."""
    captured: list[torch.Tensor] = []
    hook = decoder.register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        with forward_context(), padding_mask_kept(decoder):
            model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    finally:
        hook.remove()
    return captured[-1]
