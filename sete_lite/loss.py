"""Policy losses: SENT's token-entropy KL / covariance loss and the baselines it is compared with.

`policy_loss(logp, old_logp, ref_logp, advantages, entropy, mask, cfg)` works on per-token tensors
only (no model), so every rule here can be checked against a plain float64 re-implementation.

Modes (../shared/docs/SENT.md sections 2 and 3):
- sent: clipped surrogate + beta_t * KL_t(pi || ref), with beta_t = beta_high on the high-covariance
  tokens among the low-entropy ones, beta_low on the other low-entropy tokens, 0 on the rest.
- sent_code: the released code's variant (no clipping, |log pi - log pi_old| penalties on the top /
  bottom covariance tokens among the low-entropy ones, plus a uniform KL to the reference).
- grpo: clipped surrogate, plus an optional uniform KL (beta) to the reference.
- kl_cov: no clipping; |log pi - log pi_old| penalty on the top-covariance tokens (Cui et al. 2025).
- clip_cov: clipped surrogate; a random subset of tokens in a covariance band is detached.
- entropy_bonus: clipped surrogate minus entropy_coef * entropy.
- high_entropy_mask: clipped surrogate on the top-entropy tokens only (Wang et al. 2025, "80/20").
Every selection is made over the valid (mask = 1) tokens of the whole batch, and a fraction q of
n tokens always selects max(1, floor(q * n)) of them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from sete_lite.config import check_known_keys

MODES = ("sent", "sent_code", "grpo", "kl_cov", "clip_cov", "entropy_bonus", "high_entropy_mask")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")

# Defaults that differ by mode (SENT.md): the released SENT code vs the original KL-Cov code.
MODE_DEFAULTS: dict[str, dict[str, float]] = {
    "sent_code": {"beta": 0.001, "kl_cov_ratio": 0.0002, "ppo_kl_coef": 0.1},
    "kl_cov": {"beta": 0.0, "kl_cov_ratio": 0.002, "ppo_kl_coef": 1.0},
}
GENERIC_DEFAULTS = {"beta": 0.0, "kl_cov_ratio": 0.002, "ppo_kl_coef": 1.0}
# Log-ratios are clamped before exp() so one wild token cannot overflow the loss (as verl does).
LOG_RATIO_LIMIT = 20.0


@dataclass
class LossConfig:
    """Which policy loss to optimise, and its coefficients.

    beta, kl_cov_ratio and ppo_kl_coef default to None, which means the mode's own default
    (MODE_DEFAULTS): sent_code follows the released SENT code, kl_cov the original KL-Cov code.
    """

    mode: str = "sent"
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None = epsilon
    aggregation: str = "token_mean"
    kl_estimator: str = "k3"
    # sent: T_low = the lowest-entropy low_entropy_quantile of tokens; T_hc = the top
    # high_cov_ratio of T_low by covariance. The paper leaves kappa, beta_low, beta_high open: these are
    # SENT.md's provisional values, kept after the sweep in docs/results/toy_study.md (no other point
    # did better; 10x and 50x larger betas lowered held-out accuracy).
    low_entropy_quantile: float = 0.8
    high_cov_ratio: float = 0.002
    beta_low: float = 0.01
    beta_high: float = 0.04
    # Uniform KL-to-reference coefficient on every valid token, in any mode.
    beta: float | None = None
    # kl_cov and sent_code
    kl_cov_ratio: float | None = None
    ppo_kl_coef: float | None = None
    # clip_cov
    clip_cov_ratio: float = 0.0002
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    # entropy_bonus
    entropy_coef: float = 0.001
    # high_entropy_mask: the top fraction of tokens by entropy that receive a policy gradient.
    top_entropy_quantile: float = 0.2

    def __post_init__(self) -> None:
        for name, value in MODE_DEFAULTS.get(self.mode, GENERIC_DEFAULTS).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        self.validate()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LossConfig:
        """Build from a mapping; an unknown key is a ValueError naming the closest fields."""
        check_known_keys(values, [f.name for f in dataclasses.fields(cls)], "LossConfig")
        return cls(**values)

    def validate(self) -> None:
        """Raise a ValueError naming the first field that is out of range."""
        choices = {"mode": MODES, "aggregation": AGGREGATIONS, "kl_estimator": KL_ESTIMATORS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"LossConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        fractions = (
            "low_entropy_quantile",
            "high_cov_ratio",
            "kl_cov_ratio",
            "clip_cov_ratio",
            "top_entropy_quantile",
        )
        for name in fractions:
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"LossConfig.{name} must be in (0, 1], got {getattr(self, name)}")
        non_negative = (
            "epsilon",
            "epsilon_high",
            "beta_low",
            "beta_high",
            "beta",
            "ppo_kl_coef",
            "entropy_coef",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.clip_cov_lb >= self.clip_cov_ub:
            raise ValueError(f"clip_cov_lb ({self.clip_cov_lb}) must be < clip_cov_ub ({self.clip_cov_ub})")

    def needs_reference(self) -> bool:
        """Whether this configuration reads the reference policy's log-probs."""
        return self.mode == "sent" or self.beta > 0


# ----------------------------------------------------------------------------------------------
# Pure helpers on per-token tensors


def count_of(fraction: float, n: int) -> int:
    """The number of tokens a fraction selects: max(1, floor(fraction * n))."""
    return max(1, math.floor(fraction * n))


def select_extreme(values: torch.Tensor, among: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Bool mask of the k tokens with the largest (or smallest) value among the `among` tokens.

    Fewer than k candidates selects them all.
    """
    k = min(k, int(among.sum()))
    candidates = values.masked_fill(~among, -math.inf if largest else math.inf)
    picked = torch.topk(candidates.flatten(), k, largest=largest).indices
    selected = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    selected[picked] = True
    return selected.view_as(values)


def centered_covariance(logp: torch.Tensor, advantages: torch.Tensor, among: torch.Tensor) -> torch.Tensor:
    """c_t = (l_t - mean l) * (A_t - mean A) with means over the `among` tokens (l detached)."""
    logp = logp.detach()
    mean_logp = logp[among].mean()
    mean_adv = advantages[among].mean()
    return (logp - mean_logp) * (advantages - mean_adv)


def kl_to_reference(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi; the gradient flows through logp."""
    log_ratio = (ref_logp - logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    return torch.exp(log_ratio) - log_ratio - 1.0


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce a (B, T) per-token loss over the valid tokens.

    token_mean: sum / number of valid tokens. seq_mean_token_mean: the mean over sequences (with at
    least one valid token) of each sequence's token mean. seq_mean_token_sum_norm: Dr. GRPO's
    sum / (B * T), with T the padded completion length (a constant when padded to the maximum).
    """
    weights = mask.to(per_token.dtype)
    if how == "token_mean":
        return (per_token * weights).sum() / weights.sum()
    if how == "seq_mean_token_mean":
        lengths = weights.sum(-1)
        has_tokens = lengths > 0
        seq_means = (per_token * weights).sum(-1)[has_tokens] / lengths[has_tokens]
        return seq_means.mean()
    return (per_token * weights).sum() / mask.numel()


def masked_mean(values: torch.Tensor, selected: torch.Tensor) -> float:
    """Mean of values over a bool selection; 0.0 for an empty one (a logged statistic)."""
    return values[selected].float().mean().item() if selected.any() else 0.0


def _check_inputs(logp, old_logp, ref_logp, advantages, entropy, mask, cfg) -> None:
    shape = logp.shape
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got shape {tuple(shape)}")
    named = {"old_logp": old_logp, "entropy": entropy, "mask": mask}
    if ref_logp is not None:
        named["ref_logp"] = ref_logp
    for name, tensor in named.items():
        if tensor.shape != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)} like logp")
    if advantages.shape not in ((shape[0],), shape):
        raise ValueError(f"advantages must be ({shape[0]},) or {tuple(shape)}, got {tuple(advantages.shape)}")
    if not mask.bool().any():
        raise ValueError("mask selects no token: there is nothing to train on (empty completions?)")
    if ref_logp is None and cfg.needs_reference():
        raise ValueError(
            f"mode '{cfg.mode}' with beta={cfg.beta} needs ref_logp (the adapters-off log-probs); "
            "pass them, or use a mode without a reference KL and beta=0"
        )


# ----------------------------------------------------------------------------------------------
# The loss


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy loss of `cfg.mode` on one batch of completion tokens.

    Args:
        logp: (B, T) log pi_theta of the sampled tokens, with grad.
        old_logp: (B, T) log-probs under the rollout policy (pi_old).
        ref_logp: (B, T) log-probs under the reference (adapters off), or None.
        advantages: (B,) per sequence or (B, T) per token.
        entropy: (B, T) token entropies (with grad only for entropy_bonus).
        mask: (B, T) 1/True on valid completion tokens.
        cfg: the LossConfig.
        generator: random source for clip_cov's random selection.

    Returns:
        (loss, stats): a scalar to minimise, and a dict of floats to log.
    """
    _check_inputs(logp, old_logp, ref_logp, advantages, entropy, mask, cfg)
    valid = mask.bool()
    n = int(valid.sum())
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logp)
    advantages = advantages.to(logp.dtype)
    old_logp = old_logp.detach()
    entropy_detached = entropy.detach()

    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - cfg.epsilon, 1 + cfg.epsilon_high) * advantages
    surrogate = -torch.minimum(unclipped, clipped)
    is_clipped_low = (ratio < 1 - cfg.epsilon) & (advantages < 0) & valid
    is_clipped_high = (ratio > 1 + cfg.epsilon_high) & (advantages > 0) & valid
    kl = kl_to_reference(logp, ref_logp, cfg.kl_estimator) if ref_logp is not None else None

    # T_low, the lowest-entropy low_entropy_quantile of the tokens: where SENT puts its KL. Its entropy
    # is logged in every mode, so methods can be compared on the tokens SENT protects.
    low = select_extreme(entropy_detached, valid, count_of(cfg.low_entropy_quantile, n), largest=False)
    k_low = int(low.sum())
    stats: dict[str, float] = {
        "entropy_mean": masked_mean(entropy_detached, valid),
        "low_entropy_frac": k_low / n,
        "entropy_low_mean": masked_mean(entropy_detached, low),
        "entropy_rest_mean": masked_mean(entropy_detached, valid & ~low),
        "clip_ratio_low": is_clipped_low.sum().item() / n,
        "clip_ratio_high": is_clipped_high.sum().item() / n,
        "clip_ratio": (is_clipped_low | is_clipped_high).sum().item() / n,
    }
    if kl is not None:
        stats["kl"] = masked_mean(kl.detach(), valid)

    if cfg.mode == "sent":
        cov = centered_covariance(logp, advantages, low)
        high_cov = select_extreme(cov, low, count_of(cfg.high_cov_ratio, k_low), largest=True)
        low_only = low & ~high_cov
        beta_t = cfg.beta_high * high_cov.to(logp.dtype) + cfg.beta_low * low_only.to(logp.dtype)
        per_token = surrogate + beta_t * kl
        stats.update(
            high_cov_frac=int(high_cov.sum()) / n,
            kl_low=masked_mean(kl.detach(), low_only),
            kl_high=masked_mean(kl.detach(), high_cov),
        )
    elif cfg.mode == "sent_code":
        cov = centered_covariance(logp, advantages, low)
        k = count_of(cfg.kl_cov_ratio, k_low)
        high_cov = select_extreme(cov, low, k, largest=True)
        low_cov = select_extreme(cov, low & ~high_cov, k, largest=False)
        abs_kl_old = log_ratio.abs()
        penalty = (2.0 * high_cov.to(logp.dtype) + 0.5 * low_cov.to(logp.dtype)) * cfg.ppo_kl_coef
        per_token = -unclipped + penalty * abs_kl_old
        stats.update(high_cov_frac=int(high_cov.sum()) / n, low_cov_frac=int(low_cov.sum()) / n)
    elif cfg.mode == "grpo":
        per_token = surrogate
    elif cfg.mode == "kl_cov":
        cov = centered_covariance(logp, advantages, valid)
        high_cov = select_extreme(cov, valid, count_of(cfg.kl_cov_ratio, n), largest=True)
        per_token = -unclipped + cfg.ppo_kl_coef * high_cov.to(logp.dtype) * log_ratio.abs()
        stats["high_cov_frac"] = int(high_cov.sum()) / n
    elif cfg.mode == "clip_cov":
        cov = centered_covariance(logp, advantages, valid)
        already_clipped = is_clipped_low | is_clipped_high
        in_band = (cov > cfg.clip_cov_lb) & (cov < cfg.clip_cov_ub) & valid & ~already_clipped
        candidates = in_band.flatten().nonzero().squeeze(-1)
        order = torch.randperm(len(candidates), generator=generator, device="cpu").to(candidates.device)
        detached = torch.zeros(logp.numel(), dtype=torch.bool, device=logp.device)
        detached[candidates[order[: count_of(cfg.clip_cov_ratio, n)]]] = True
        per_token = surrogate.masked_fill(detached.view_as(logp), 0.0)
        stats["clip_cov_frac"] = int(detached.sum()) / n
    elif cfg.mode == "entropy_bonus":
        per_token = surrogate - cfg.entropy_coef * entropy
    else:  # high_entropy_mask
        k = count_of(cfg.top_entropy_quantile, n)
        high_entropy = select_extreme(entropy_detached, valid, k, largest=True)
        per_token = surrogate * high_entropy.to(logp.dtype)
        stats["high_entropy_frac"] = int(high_entropy.sum()) / n

    if cfg.beta > 0:
        per_token = per_token + cfg.beta * kl
    loss = aggregate(per_token, valid, cfg.aggregation)
    stats["loss"] = loss.item()
    return loss, stats
