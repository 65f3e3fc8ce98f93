"""Policy losses: SENT's token-entropy KL / covariance loss and the baselines it is compared with.

`policy_loss(logp, old_logp, ref_logp, advantages, entropy, mask, cfg)` works on per-token tensors
only (no model), so every rule here can be checked against a plain float64 re-implementation. The
rules, and where the paper and its released code differ: docs/method.md (sections 3 and 4).

Modes:
- sent: clipped surrogate + beta_t * KL_t(pi || ref), with beta_t = beta_high on the high-covariance
  tokens among the low-entropy ones, beta_low on the other low-entropy tokens, 0 on the rest.
- sent_code: the released code's variant (no clipping, |log pi - log pi_old| penalties on the top /
  bottom covariance tokens among the low-entropy ones, plus a uniform KL to the reference).
- grpo: clipped surrogate, plus an optional uniform KL (beta) to the reference.
- kl_cov: no clipping; |log pi - log pi_old| penalty on the top-covariance tokens (Cui et al. 2025).
- clip_cov: clipped surrogate; a random subset of tokens in a covariance band is detached.
- entropy_bonus: grpo with TRL's entropy bonus on (entropy_coef 0.001).
- high_entropy_mask: grpo with TRL's top_entropy_quantile at 0.2 (Wang et al. 2025, "80/20").
TRL's keys keep TRL's meaning in every mode: `loss_type` (how per-token losses are reduced),
`epsilon`/`epsilon_high`, `beta` (a uniform k3 KL to the reference), `entropy_coef` (minus coef x
the mean entropy) and `top_entropy_quantile` (the policy term on the top-q entropy tokens only).
Every selection is made over the valid (mask = 1) tokens of the batch given, and a fraction q of
n tokens always selects max(1, floor(q * n)) of them. With several processes the batch is every
process's micro-batch together (as TRL's top_entropy_quantile takes it): `gather` concatenates a
tensor across processes, so selections, their counts and the covariance means are those one
process would make over all the tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sete_lite.config import setting

# Concatenates a 1-D tensor across processes in process order; returns (the whole tensor, where this
# process's part starts). One process: the tensor itself at offset 0.
Gather = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def one_process(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    return values, 0


MODES = ("sent", "sent_code", "grpo", "kl_cov", "clip_cov", "entropy_bonus", "high_entropy_mask")
# TRL's loss types that change only how per-token losses are reduced (the others change the surrogate).
LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
KL_ESTIMATORS = ("k1", "k2", "k3")

# The defaults of the keys whose default depends on the mode (None in LossConfig): the released SENT
# code's for sent_code, the original KL-Cov code's for kl_cov, TRL's own elsewhere.
DEFAULTS = {"beta": 0.0, "kl_cov_ratio": 0.002, "ppo_kl_coef": 1.0, "entropy_coef": 0.0, "top_entropy_quantile": 1.0}
MODE_DEFAULTS: dict[str, dict[str, float]] = {
    "sent_code": {"beta": 0.001, "kl_cov_ratio": 0.0002, "ppo_kl_coef": 0.1},
    "entropy_bonus": {"entropy_coef": 0.001},
    "high_entropy_mask": {"top_entropy_quantile": 0.2},
}
# Log-ratios are clamped before exp() so one wild token cannot overflow the loss (as verl does).
LOG_RATIO_LIMIT = 20.0


@dataclass
class LossConfig:
    """Which policy loss to optimise, and its coefficients: the one declaration of these config keys
    (sete_lite.trainer.SENTConfig inherits them).

    beta, kl_cov_ratio, ppo_kl_coef, entropy_coef and top_entropy_quantile default to None: the mode's
    own default (MODE_DEFAULTS, else DEFAULTS).
    """

    mode: str = setting("sent", "the loss, see the table above")
    # TRL's GRPOConfig keys, with TRL's meaning (beta, entropy_coef, top_entropy_quantile: see above).
    loss_type: str = setting(
        "dapo",
        "TRL's reduction of per-token losses: `grpo` (per-sequence mean, then mean), `bnpo` (mean over the "
        "micro-batch's tokens), `dapo` (over the accumulated batch's tokens), `dr_grpo` (sum / (sequences x "
        "`max_completion_length`)); TRL's other types are refused",
        shown="`dapo` (TRL's)",
    )
    epsilon: float = setting(0.2, "PPO clip range, low side", shown="`0.2` (TRL's)")
    epsilon_high: float | None = setting(None, "PPO clip range, high side (null: `epsilon`)", shown="`null` (TRL's)")
    beta: float | None = setting(
        None, "TRL's uniform KL to the reference on every token: 0.001 for `sent_code`, else 0 (TRL's)", shown="mode's"
    )
    entropy_coef: float | None = setting(
        None,
        "TRL's entropy bonus, minus coef x mean entropy: 0.001 for `entropy_bonus`, else 0 (TRL's)",
        shown="mode's",
    )
    top_entropy_quantile: float | None = setting(
        None,
        "TRL's: the policy term on the top-q tokens by entropy only: 0.2 for `high_entropy_mask`, else 1.0 (TRL's)",
        shown="mode's",
    )
    kl_estimator: str = setting("k3", "`k1`, `k2` or `k3` for KL to the reference")
    kl_clamp: float | None = setting(
        None, "clamp each token's KL estimate to [-c, c] (verl clamps k3 at 10; off: the penalty keeps its gradient)"
    )
    # sent: T_low = the lowest-entropy low_entropy_quantile of tokens; T_hc = the top
    # high_cov_ratio of T_low by covariance. The paper leaves kappa, beta_low, beta_high open: these are
    # provisional values, kept after the sweeps on the built-in tasks (docs/method.md#defaults). rho = 0.8
    # assumes about a fifth of the tokens are forks; where fewer are, the KL never reaches them (raise it).
    low_entropy_quantile: float = setting(
        0.8,
        "rho: T_low = the lowest-entropy rho of tokens; keep 1 - rho below the share of forking tokens, or the KL "
        "never reaches them (sums task: 0.95)",
    )
    high_cov_ratio: float = setting(0.002, "kappa: T_hc = the top kappa of T_low by covariance (provisional)")
    beta_low: float = setting(0.01, "KL weight on T_low \\ T_hc (provisional)")
    beta_high: float = setting(0.04, "KL weight on T_hc (provisional)")
    # kl_cov and sent_code
    kl_cov_ratio: float | None = setting(None, "kl_cov: 0.002, sent_code: 0.0002", shown="mode's")
    ppo_kl_coef: float | None = setting(None, "kl_cov: 1.0, sent_code: 0.1", shown="mode's")
    # clip_cov
    clip_cov_ratio: float = setting(0.0002, "clip_cov: share of tokens detached")
    clip_cov_lb: float = setting(1.0, "clip_cov: covariance band lower bound")
    clip_cov_ub: float = setting(5.0, "clip_cov: covariance band upper bound")

    def __post_init__(self) -> None:
        self.resolve_loss_defaults()

    def resolve_loss_defaults(self) -> None:
        """Fill the mode-dependent defaults, then check every field (a ValueError names the key)."""
        for name, value in {**DEFAULTS, **MODE_DEFAULTS.get(self.mode, {})}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        choices = {"mode": MODES, "kl_estimator": KL_ESTIMATORS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {allowed}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"loss_type={self.loss_type!r} is not supported: sete_lite's losses take TRL's reductions "
                f"{LOSS_TYPES} (TRL's other loss types replace the surrogate itself)"
            )
        for name in (
            "low_entropy_quantile",
            "high_cov_ratio",
            "kl_cov_ratio",
            "clip_cov_ratio",
            "top_entropy_quantile",
        ):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("epsilon", "epsilon_high", "beta_low", "beta_high", "beta", "ppo_kl_coef", "entropy_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.kl_clamp is not None and self.kl_clamp <= 0:
            raise ValueError(f"kl_clamp must be > 0 (verl's is 10), or null for none; got {self.kl_clamp}")
        if self.clip_cov_lb >= self.clip_cov_ub:
            raise ValueError(f"clip_cov_lb ({self.clip_cov_lb}) must be < clip_cov_ub ({self.clip_cov_ub})")

    def needs_reference(self) -> bool:
        """Whether this configuration reads the reference policy's log-probs."""
        return self.mode == "sent" or self.beta > 0

    def needs_entropy_grad(self) -> bool:
        """Whether the entropy enters the loss (TRL's entropy bonus), so it needs a gradient."""
        return self.entropy_coef > 0


# ----------------------------------------------------------------------------------------------
# Pure helpers on per-token tensors


def count_of(fraction: float, n: int) -> int:
    """The number of tokens a fraction selects: max(1, floor(fraction * n))."""
    return max(1, math.floor(fraction * n))


def select_extreme(
    values: torch.Tensor,
    among: torch.Tensor,
    k: int,
    largest: bool,
    gather: Gather = one_process,
    tiebreak: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bool mask of the k tokens with the largest (or smallest) value among the `among` tokens of all
    processes (`gather`); this process's part of that selection. Fewer than k candidates selects them all.

    Equal values are ordered by `tiebreak` (ascending), a property of the tokens themselves, so the
    same tokens are chosen however the batch is ordered or split across processes (ties are common:
    with every advantage 0, every covariance is 0). Tokens equal in both are ordered by position; they
    are the same token of identical completions, whose gradients are the same."""
    local = values[among].detach()
    second = tiebreak[among].detach() if tiebreak is not None else torch.zeros_like(local)
    everything, offset = gather(local)
    seconds, _ = gather(second)
    # Lexicographic order by (value, tiebreak) from two stable sorts: the secondary key first.
    order = torch.sort(seconds, stable=True).indices
    order = order[torch.sort(everything[order], descending=largest, stable=True).indices]
    order = order[: min(k, everything.numel())]
    mine = order[(order >= offset) & (order < offset + local.numel())] - offset
    chosen = torch.zeros(local.numel(), dtype=torch.bool, device=values.device)
    chosen[mine] = True
    selected = torch.zeros_like(among, dtype=torch.bool)
    selected[among] = chosen
    return selected


def total(values: torch.Tensor, gather: Gather = one_process) -> float:
    """The sum of `values` over every process."""
    return float(gather(values.detach().reshape(-1).sum().reshape(1))[0].sum())


def centered_covariance(
    logp: torch.Tensor, advantages: torch.Tensor, among: torch.Tensor, gather: Gather = one_process
) -> torch.Tensor:
    """c_t = (l_t - mean l) * (A_t - mean A) with means over the `among` tokens of all processes (l detached)."""
    logp = logp.detach()
    count = max(total(among.float(), gather), 1.0)
    mean_logp = total(logp[among], gather) / count
    mean_adv = total(advantages[among], gather) / count
    return (logp - mean_logp) * (advantages - mean_adv)


def kl_to_reference(
    logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str, clamp: float | None = None
) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi; the gradient flows through logp. `clamp`:
    each estimate is clamped to [-clamp, clamp] (verl's k3 at 10), where its gradient stops."""
    log_ratio = (ref_logp - logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    if estimator == "k1":
        kl = -log_ratio
    elif estimator == "k2":
        kl = 0.5 * log_ratio**2
    else:
        kl = torch.exp(log_ratio) - log_ratio - 1.0
    return kl if clamp is None else kl.clamp(-clamp, clamp)


def reduce_tokens(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    *,
    max_completion_length: int | None = None,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss over the valid tokens as TRL's `loss_type` does.

    grpo: each sequence's mean over its valid tokens, then the mean over sequences (a sequence without
    valid tokens counts as 0, as in TRL). bnpo: sum / the number of valid tokens. dapo: sum /
    `num_tokens`, the valid tokens of the whole accumulated batch per micro-batch (default: this
    batch's, which makes it bnpo). dr_grpo: sum / (B * max_completion_length) (default: T).
    """
    weights = mask.to(per_token.dtype)
    total = (per_token * weights).sum()
    if loss_type == "grpo":
        return ((per_token * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return total / weights.sum().clamp(min=1.0)
    if loss_type == "dapo":
        return total / (weights.sum().clamp(min=1.0) if num_tokens is None else max(float(num_tokens), 1.0))
    return total / (per_token.shape[0] * (max_completion_length or per_token.shape[1]))


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
    max_completion_length: int | None = None,
    num_tokens: float | None = None,
    gather: Gather = one_process,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy loss of `cfg.mode` on one batch of completion tokens.

    Args:
        logp: (B, T) log pi_theta of the sampled tokens, with grad.
        old_logp: (B, T) log-probs under the rollout policy (pi_old).
        ref_logp: (B, T) log-probs under the reference (adapters off), or None.
        advantages: (B,) per sequence or (B, T) per token.
        entropy: (B, T) token entropies (with grad when cfg.entropy_coef > 0).
        mask: (B, T) 1/True on valid completion tokens.
        cfg: the LossConfig (or a SENTConfig, which is one).
        generator: random source for clip_cov's random selection.
        max_completion_length, num_tokens: the normalisers of loss_type dr_grpo and dapo (see
            reduce_tokens).
        gather: with several processes, concatenates a tensor across them (see Gather): the selections
            are made over every process's tokens.

    Returns:
        (loss, stats): a scalar to minimise, and a dict of floats to log.
    """
    _check_inputs(logp, old_logp, ref_logp, advantages, entropy, mask, cfg)
    valid = mask.bool()
    n = int(valid.sum())
    n_all = round(total(valid.float(), gather))  # the valid tokens of every process: what fractions count
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
    kl = kl_to_reference(logp, ref_logp, cfg.kl_estimator, cfg.kl_clamp) if ref_logp is not None else None
    # TRL's top_entropy_quantile: the policy term acts on the top-q tokens by entropy only (1.0: all).
    policy_tokens = valid
    if cfg.top_entropy_quantile < 1.0:
        k_top = count_of(cfg.top_entropy_quantile, n_all)
        policy_tokens = select_extreme(entropy_detached, valid, k_top, True, gather, tiebreak=logp)

    # T_low, the lowest-entropy low_entropy_quantile of the tokens: where SENT puts its KL. Its entropy
    # is logged in every mode, so methods can be compared on the tokens SENT protects.
    low = select_extreme(
        entropy_detached, valid, count_of(cfg.low_entropy_quantile, n_all), False, gather, tiebreak=logp
    )
    k_low = int(low.sum())
    k_low_all = round(total(low.float(), gather))
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
    if cfg.top_entropy_quantile < 1.0:
        stats["high_entropy_frac"] = int(policy_tokens.sum()) / n

    # Each mode's policy term and the penalties it adds (which the entropy selection does not mask).
    penalty = torch.zeros_like(logp)
    if cfg.mode == "sent":
        policy_term = surrogate
        cov = centered_covariance(logp, advantages, low, gather)
        high_cov = select_extreme(cov, low, count_of(cfg.high_cov_ratio, k_low_all), True, gather, entropy_detached)
        low_only = low & ~high_cov
        penalty = (cfg.beta_high * high_cov.to(logp.dtype) + cfg.beta_low * low_only.to(logp.dtype)) * kl
        stats.update(
            high_cov_frac=int(high_cov.sum()) / n,
            kl_low=masked_mean(kl.detach(), low_only),
            kl_high=masked_mean(kl.detach(), high_cov),
        )
    elif cfg.mode == "sent_code":
        policy_term = -unclipped
        cov = centered_covariance(logp, advantages, low, gather)
        k = count_of(cfg.kl_cov_ratio, k_low_all)
        high_cov = select_extreme(cov, low, k, True, gather, entropy_detached)
        low_cov = select_extreme(cov, low & ~high_cov, k, False, gather, entropy_detached)
        weights = (2.0 * high_cov.to(logp.dtype) + 0.5 * low_cov.to(logp.dtype)) * cfg.ppo_kl_coef
        penalty = weights * log_ratio.abs()
        stats.update(high_cov_frac=int(high_cov.sum()) / n, low_cov_frac=int(low_cov.sum()) / n)
    elif cfg.mode == "kl_cov":
        policy_term = -unclipped
        cov = centered_covariance(logp, advantages, valid, gather)
        high_cov = select_extreme(cov, valid, count_of(cfg.kl_cov_ratio, n_all), True, gather, entropy_detached)
        penalty = cfg.ppo_kl_coef * high_cov.to(logp.dtype) * log_ratio.abs()
        stats["high_cov_frac"] = int(high_cov.sum()) / n
    elif cfg.mode == "clip_cov":
        # The band is per token; the random subset is drawn on each process from its own candidates.
        cov = centered_covariance(logp, advantages, valid, gather)
        already_clipped = is_clipped_low | is_clipped_high
        in_band = (cov > cfg.clip_cov_lb) & (cov < cfg.clip_cov_ub) & valid & ~already_clipped
        candidates = in_band.flatten().nonzero().squeeze(-1)
        order = torch.randperm(len(candidates), generator=generator, device="cpu").to(candidates.device)
        detached = torch.zeros(logp.numel(), dtype=torch.bool, device=logp.device)
        detached[candidates[order[: count_of(cfg.clip_cov_ratio, n)]]] = True
        policy_term = surrogate.masked_fill(detached.view_as(logp), 0.0)
        stats["clip_cov_frac"] = int(detached.sum()) / n
    else:  # grpo, entropy_bonus, high_entropy_mask: the clipped surrogate (their keys do the rest)
        policy_term = surrogate

    per_token = policy_term * policy_tokens.to(logp.dtype) + penalty
    if cfg.beta > 0:
        per_token = per_token + cfg.beta * kl
    loss = reduce_tokens(
        per_token, valid, cfg.loss_type, max_completion_length=max_completion_length, num_tokens=num_tokens
    )
    if cfg.entropy_coef > 0:
        # TRL's bonus: the mean entropy over the tokens the policy term acts on, whatever the loss_type.
        loss = loss - cfg.entropy_coef * entropy[policy_tokens].mean()
    stats["loss"] = loss.item()
    return loss, stats
