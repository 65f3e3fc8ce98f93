"""policy_loss against a plain float64 re-implementation written token by token, plus properties."""

from __future__ import annotations

import math

import pytest
import torch

from sete_lite.loss import MODES, LossConfig, kl_to_reference, policy_loss

# ----------------------------------------------------------------------------------------------
# An independent reference: Python lists of valid tokens, sorted() for selections, float64 math.


def valid_positions(mask):
    return [(b, t) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]


def lowest(positions, key, k):
    return set(sorted(positions, key=key)[:k])


def highest(positions, key, k):
    return set(sorted(positions, key=key, reverse=True)[:k])


def covariances(positions, logp, adv):
    mean_l = sum(logp[p].item() for p in positions) / len(positions)
    mean_a = sum(adv[p].item() for p in positions) / len(positions)
    return {p: (logp[p].item() - mean_l) * (adv[p].item() - mean_a) for p in positions}


def reference_kl(logp_t, ref_t, estimator):
    d = ref_t - logp_t
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    return torch.exp(d) - d - 1


def reference_loss(logp, old, ref, adv, ent, mask, cfg, detached=frozenset(), num_tokens=None, max_len=None):
    """Loss as a float64 scalar built token by token; `logp` is a float64 leaf for the gradient.

    TRL's keys as TRL's GRPOTrainer computes them (trl/trainer/grpo_trainer.py, compute_loss): the
    top_entropy_quantile mask multiplies the policy term, beta adds a k3 KL on every token, the
    reduction follows loss_type, the entropy bonus is minus entropy_coef x the mean entropy over the
    policy's tokens whatever the loss_type."""
    positions = valid_positions(mask)
    n = len(positions)
    adv = adv[:, None].expand_as(logp) if adv.dim() == 1 else adv
    eps_low, eps_high = cfg.epsilon, cfg.epsilon_high
    low = high_cov = low_cov = high_ent = set()
    if cfg.mode in ("sent", "sent_code"):
        k_low = max(1, math.floor(cfg.low_entropy_quantile * n))
        low = lowest(positions, lambda p: ent[p].item(), k_low)
        cov = covariances(sorted(low), logp.detach(), adv)
        ratio = cfg.high_cov_ratio if cfg.mode == "sent" else cfg.kl_cov_ratio
        k = max(1, math.floor(ratio * k_low))
        high_cov = highest(sorted(low), lambda p: cov[p], k)
        low_cov = lowest(sorted(low - high_cov), lambda p: cov[p], k)
    if cfg.mode == "kl_cov":
        cov = covariances(positions, logp.detach(), adv)
        high_cov = highest(positions, lambda p: cov[p], max(1, math.floor(cfg.kl_cov_ratio * n)))
    if cfg.top_entropy_quantile < 1.0:
        high_ent = highest(positions, lambda p: ent[p].item(), max(1, math.floor(cfg.top_entropy_quantile * n)))
    else:
        high_ent = set(positions)

    per_token = {}
    for p in positions:
        r = torch.exp(logp[p] - old[p])
        a = adv[p]
        clipped_surrogate = -torch.minimum(r * a, torch.clamp(r, 1 - eps_low, 1 + eps_high) * a)
        kl = reference_kl(logp[p], ref[p], cfg.kl_estimator) if ref is not None else None
        keep = 1.0 if p in high_ent else 0.0  # top_entropy_quantile acts on the policy term only
        if cfg.mode == "sent":
            beta_t = cfg.beta_high if p in high_cov else cfg.beta_low if p in low else 0.0
            loss_t = keep * clipped_surrogate + beta_t * kl
        elif cfg.mode == "sent_code":
            coef = 2.0 if p in high_cov else 0.5 if p in low_cov else 0.0
            loss_t = keep * -r * a + coef * cfg.ppo_kl_coef * torch.abs(logp[p] - old[p])
        elif cfg.mode == "kl_cov":
            loss_t = keep * -r * a + (cfg.ppo_kl_coef * torch.abs(logp[p] - old[p]) if p in high_cov else 0.0)
        elif cfg.mode == "clip_cov":
            loss_t = keep * clipped_surrogate * (0.0 if p in detached else 1.0)
        else:  # grpo, entropy_bonus, high_entropy_mask
            loss_t = keep * clipped_surrogate
        if cfg.beta > 0:
            loss_t = loss_t + cfg.beta * kl
        per_token[p] = loss_t

    total = sum(per_token.values())
    rows = range(mask.shape[0])
    if cfg.loss_type == "grpo":  # a row without valid tokens counts as a zero
        loss = sum(sum(v for (b, _), v in per_token.items() if b == row) / max(1, int(mask[row].sum())) for row in rows)
        loss = loss / mask.shape[0]
    elif cfg.loss_type == "dr_grpo":
        loss = total / (mask.shape[0] * (max_len or mask.shape[1]))
    elif cfg.loss_type == "dapo" and num_tokens is not None:
        loss = total / num_tokens
    else:  # bnpo, and dapo over this batch alone
        loss = total / n
    if cfg.entropy_coef > 0:
        loss = loss - cfg.entropy_coef * sum(ent[p] for p in high_ent) / len(high_ent)
    return loss


def random_batch(seed, batch=4, length=12, per_token_adv=False, empty_row=False):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(batch, length, generator=g, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(batch, length, generator=g, dtype=torch.float64)
    shape = (batch, length) if per_token_adv else (batch,)
    adv = torch.randn(*shape, generator=g, dtype=torch.float64)
    ent = torch.rand(batch, length, generator=g, dtype=torch.float64) * 4
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    if empty_row:  # a completion with no valid token (e.g. all of it masked as truncated)
        mask[1] = False
    return logp, old, ref, adv, ent, mask


def compare(cfg, seed, per_token_adv=False, empty_row=False, num_tokens=None, max_len=None):
    logp, old, ref, adv, ent, mask = random_batch(seed, per_token_adv=per_token_adv, empty_row=empty_row)
    ours_logp = logp.float().requires_grad_()
    loss, stats = policy_loss(
        ours_logp, old.float(), ref.float(), adv.float(), ent.float(), mask, cfg,
        num_tokens=num_tokens, max_completion_length=max_len,
    )  # fmt: skip
    loss.backward()
    ref_logp = logp.clone().requires_grad_()
    expected = reference_loss(ref_logp, old, ref, adv, ent, mask, cfg, num_tokens=num_tokens, max_len=max_len)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    torch.testing.assert_close(ours_logp.grad.double(), ref_logp.grad, rtol=1e-4, atol=1e-6)
    return stats


# ----------------------------------------------------------------------------------------------
# Each mode against the reference


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo", "grpo", "dr_grpo"])
@pytest.mark.parametrize(("rho", "kappa"), [(0.8, 0.002), (0.5, 0.25), (1.0, 1.0), (0.3, 0.6)])
@pytest.mark.parametrize("seed", [0, 1])
def test_sent_matches_reference(loss_type, rho, kappa, seed):
    cfg = LossConfig(
        mode="sent",
        low_entropy_quantile=rho,
        high_cov_ratio=kappa,
        loss_type=loss_type,
        beta_low=0.3,
        beta_high=1.2,
    )
    compare(cfg, seed, empty_row=seed == 1)


def test_verls_k3_clamp_caps_the_penalty_and_stops_its_gradient():
    """kl_clamp 10 (verl's): k3 = e^d - d - 1 with d = ref - logp passes 10 near d = 2.6 and d = -11; there
    the value is 10 and the gradient 0, elsewhere k3 and its gradient -(e^d - 1) as without the clamp."""
    d = torch.tensor([0.5, 2.0, 3.0, -12.0, -5.0], dtype=torch.float64)
    ref = torch.zeros_like(d)
    logp = (ref - d).requires_grad_()
    kl = kl_to_reference(logp, ref, "k3", clamp=10.0)
    k3 = [math.exp(x) - x - 1 for x in d.tolist()]
    assert kl.tolist() == pytest.approx([min(value, 10.0) for value in k3], rel=1e-12)
    kl.sum().backward()
    slope = [0.0 if value > 10 else -(math.exp(x) - 1) for x, value in zip(d.tolist(), k3, strict=True)]
    assert logp.grad.tolist() == pytest.approx(slope, rel=1e-12)
    unclamped = kl_to_reference(logp.detach(), ref, "k3")
    assert unclamped.tolist() == pytest.approx(k3, rel=1e-12)  # off by default: no cap
    # through the loss: mode grpo with a uniform KL, the clamped token contributes beta * 10
    cfg = LossConfig(mode="grpo", beta=1.0, kl_clamp=10.0, loss_type="bnpo")
    ones = torch.ones(1, 5, dtype=torch.float64)
    loss, _ = policy_loss(logp.detach()[None], logp.detach()[None], ref[None], 0 * ones, ones, ones, cfg)
    assert loss.item() == pytest.approx(sum(min(value, 10.0) for value in k3) / 5, rel=1e-12)
    with pytest.raises(ValueError, match="kl_clamp must be > 0"):
        LossConfig(kl_clamp=0.0)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_sent_kl_estimators_and_per_token_advantages(estimator):
    cfg = LossConfig(
        mode="sent",
        high_cov_ratio=0.3,
        kl_estimator=estimator,
        beta_low=0.2,
        beta_high=0.9,
        epsilon_high=0.28,
    )
    compare(cfg, seed=3, per_token_adv=True)


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(mode="grpo"),
        LossConfig(mode="grpo", beta=0.1, epsilon_high=0.3, loss_type="grpo"),
        LossConfig(mode="sent_code", kl_cov_ratio=0.2),
        LossConfig(mode="sent_code", low_entropy_quantile=0.5, kl_cov_ratio=0.7, loss_type="grpo"),
        LossConfig(mode="kl_cov"),
        LossConfig(mode="kl_cov", kl_cov_ratio=0.3, ppo_kl_coef=0.5, beta=0.05),
        LossConfig(mode="entropy_bonus", entropy_coef=0.05),
        LossConfig(mode="entropy_bonus", entropy_coef=0.05, loss_type="grpo"),
        LossConfig(mode="high_entropy_mask"),
        LossConfig(mode="high_entropy_mask", top_entropy_quantile=0.5, loss_type="dr_grpo"),
        # TRL's keys in any mode: the entropy mask and bonus on sent, the mask on kl_cov.
        LossConfig(mode="sent", top_entropy_quantile=0.4, entropy_coef=0.02, beta_low=0.3, beta_high=1.2),
        LossConfig(mode="kl_cov", kl_cov_ratio=0.3, top_entropy_quantile=0.6, loss_type="bnpo"),
    ],
    ids=lambda c: f"{c.mode}-{c.loss_type}-b{c.beta}-q{c.top_entropy_quantile}-e{c.entropy_coef}",
)
@pytest.mark.parametrize("seed", [0, 5])
def test_baselines_match_reference(cfg, seed):
    compare(cfg, seed)


def test_clip_covs_clip_ratio_acts_only_off_policy():
    """The evidence for keeping clip_cov's epsilon at TRL's 0.2 against the released recipes' 1.0: with one
    optimizer step per rollout batch (sete_lite's and TRL's default) the ratio is exactly 1, nothing is
    clipped, and the two give the same gradient to the last bit; they differ only off-policy
    (steps_per_generation or num_iterations > 1), where `epsilon: 1.0` reproduces the recipes."""
    logp, old, _, adv, ent, mask = random_batch(7, batch=6, length=20)
    adv, logp = adv * 4, logp * 2  # a good share of tokens inside the covariance band, as above

    def gradient(epsilon: float, old_logp: torch.Tensor) -> torch.Tensor:
        cfg = LossConfig(mode="clip_cov", clip_cov_ratio=0.2, clip_cov_lb=0.1, clip_cov_ub=3.0, epsilon=epsilon)
        leaf = logp.clone().requires_grad_()
        loss, _ = policy_loss(leaf, old_logp, None, adv, ent, mask, cfg, generator=torch.Generator().manual_seed(11))
        loss.backward()
        return leaf.grad

    on_policy = logp.detach()  # TRL's old log-probs when each batch is used once
    assert torch.equal(gradient(0.2, on_policy), gradient(1.0, on_policy))
    assert not torch.equal(gradient(0.2, old), gradient(1.0, old))  # off-policy: the clip ratio matters


def test_clip_cov_matches_reference_with_the_same_random_draw():
    logp, old, _, adv, ent, mask = random_batch(7, batch=6, length=20)
    # Scale so that a good share of tokens fall inside the (lb, ub) covariance band.
    adv = adv * 4
    logp = logp * 2
    cfg = LossConfig(mode="clip_cov", clip_cov_ratio=0.2, clip_cov_lb=0.1, clip_cov_ub=3.0)
    ours_logp = logp.float().requires_grad_()
    loss, stats = policy_loss(
        ours_logp,
        old.float(),
        None,
        adv.float(),
        ent.float(),
        mask,
        cfg,
        generator=torch.Generator().manual_seed(11),
    )
    loss.backward()

    positions = valid_positions(mask)
    n = len(positions)
    cov = covariances(positions, logp, adv[:, None].expand_as(logp))
    candidates = []
    for p in positions:  # row-major order, as nonzero() returns them
        r = math.exp(logp[p].item() - old[p].item())
        a = adv[p[0]].item()
        clipped = (r < 1 - cfg.epsilon and a < 0) or (r > 1 + cfg.epsilon_high and a > 0)
        if cfg.clip_cov_lb < cov[p] < cfg.clip_cov_ub and not clipped:
            candidates.append(p)
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(11))
    detached = {candidates[i] for i in order[: max(1, math.floor(cfg.clip_cov_ratio * n))].tolist()}
    assert len(detached) > 1
    assert stats["clip_cov_frac"] == pytest.approx(len(detached) / n)

    ref_logp = logp.clone().requires_grad_()
    expected = reference_loss(ref_logp, old, None, adv, ent, mask, cfg, detached=detached)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    torch.testing.assert_close(ours_logp.grad.double(), ref_logp.grad, rtol=1e-4, atol=1e-6)
    for p in detached:
        assert ours_logp.grad[p] == 0


def test_entropy_bonus_gradient_flows_into_entropy():
    logp, old, _, adv, ent, mask = random_batch(2)
    entropy = ent.float().requires_grad_()
    cfg = LossConfig(mode="entropy_bonus", entropy_coef=0.1)
    loss, _ = policy_loss(logp.float().requires_grad_(), old.float(), None, adv.float(), entropy, mask, cfg)
    loss.backward()
    expected = torch.where(mask, torch.full_like(entropy, -0.1 / int(mask.sum())), torch.zeros_like(entropy))
    torch.testing.assert_close(entropy.grad, expected)


# ----------------------------------------------------------------------------------------------
# A hand-computed case


def test_sent_hand_computed_two_by_three():
    # Valid tokens (row, col): (0,0) (0,1) (0,2) (1,0) (1,1); (1,2) is padding.
    entropy = torch.tensor([[0.1, 2.0, 0.3], [0.2, 0.4, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -3.0, -1.0]], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0])
    ref = logp.detach() - 0.1  # ref - logp = -0.1 everywhere: k3 = e^-0.1 + 0.1 - 1
    cfg = LossConfig(mode="sent", low_entropy_quantile=0.8, high_cov_ratio=0.5, beta_low=0.1, beta_high=1.0)
    loss, stats = policy_loss(logp, logp.detach(), ref, advantages, entropy, mask, cfg)
    # n = 5, k_low = floor(0.8 * 5) = 4: entropies 0.1 0.3 0.2 0.4 -> T_low = (0,0) (0,2) (1,0) (1,1);
    # (0,1) with entropy 2.0 is free. Over T_low: mean l = (-0.5 - 2 - 0.1 - 3) / 4 = -1.4,
    # mean A = 0; c = (0.9)(1), (-0.6)(1), (1.3)(-1), (-1.6)(-1) = 0.9, -0.6, -1.3, 1.6.
    # k_hc = max(1, floor(0.5 * 4)) = 2: T_hc = (1,1) and (0,0).
    k3 = math.exp(-0.1) + 0.1 - 1
    # ratio = 1 so the surrogate is -A per token: -1, -1, -1, +1, +1 -> sum -1.
    expected = (-1.0 + (1.0 + 0.1 + 0.1 + 1.0) * k3) / 5
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["low_entropy_frac"] == pytest.approx(0.8)
    assert stats["high_cov_frac"] == pytest.approx(0.4)
    assert stats["kl_low"] == pytest.approx(k3, rel=1e-4)
    assert stats["kl_high"] == pytest.approx(k3, rel=1e-4)
    assert stats["entropy_low_mean"] == pytest.approx(0.25)
    assert stats["entropy_rest_mean"] == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------
# Properties that pin the behaviour


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_logs_the_entropy_of_the_low_entropy_set(mode):
    # Same 2 x 3 batch as above: T_low = the 4 lowest of the 5 valid entropies (0.1 0.3 0.2 0.4), rest = 2.0.
    entropy = torch.tensor([[0.1, 2.0, 0.3], [0.2, 0.4, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.1, -3.0, -1.0]], requires_grad=True)
    _, stats = policy_loss(logp, logp.detach(), logp.detach(), torch.tensor([1.0, -1.0]), entropy, mask,
                           LossConfig(mode=mode, low_entropy_quantile=0.8))  # fmt: skip
    assert stats["low_entropy_frac"] == pytest.approx(0.8)
    assert stats["entropy_low_mean"] == pytest.approx(0.25)
    assert stats["entropy_rest_mean"] == pytest.approx(2.0)


def test_sent_puts_no_kl_weight_on_high_entropy_tokens():
    logp, old, ref, adv, ent, mask = random_batch(4)
    cfg = LossConfig(mode="sent", high_cov_ratio=0.5, beta_low=0.5, beta_high=2.0)
    with_kl = logp.float().requires_grad_()
    policy_loss(with_kl, old.float(), ref.float(), adv.float(), ent.float(), mask, cfg)[0].backward()
    no_kl = logp.float().requires_grad_()
    no_kl_cfg = LossConfig(mode="sent", high_cov_ratio=0.5, beta_low=0.0, beta_high=0.0)
    policy_loss(no_kl, old.float(), ref.float(), adv.float(), ent.float(), mask, no_kl_cfg)[0].backward()
    positions = valid_positions(mask)
    k_low = math.floor(0.8 * len(positions))
    free = set(positions) - lowest(positions, lambda p: ent[p].item(), k_low)
    assert free
    for p in free:  # the high-entropy tokens see only the policy gradient
        assert with_kl.grad[p].item() == pytest.approx(no_kl.grad[p].item(), abs=1e-7)
    assert not torch.allclose(with_kl.grad, no_kl.grad)


@pytest.mark.parametrize(
    "mode", ["sent", "sent_code", "grpo", "kl_cov", "clip_cov", "entropy_bonus", "high_entropy_mask"]
)
def test_masked_tokens_get_zero_gradient(mode):
    logp, old, ref, adv, ent, mask = random_batch(6)
    assert not mask.all()
    ours = logp.float().requires_grad_()
    cfg = LossConfig(mode=mode, beta=0.1)
    policy_loss(ours, old.float(), ref.float(), adv.float(), ent.float(), mask, cfg)[0].backward()
    assert torch.all(ours.grad[~mask] == 0)
    assert torch.any(ours.grad[mask] != 0)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_terms_vanish_when_reference_equals_policy(estimator):
    logp, old, _, adv, ent, mask = random_batch(8)
    cfg = LossConfig(mode="sent", high_cov_ratio=0.5, beta_low=0.7, beta_high=3.0, beta=0.2, kl_estimator=estimator)
    ours = logp.float().requires_grad_()
    loss, stats = policy_loss(ours, old.float(), logp.float(), adv.float(), ent.float(), mask, cfg)
    loss.backward()
    plain = logp.float().requires_grad_()
    grpo_loss, _ = policy_loss(plain, old.float(), None, adv.float(), ent.float(), mask, LossConfig(mode="grpo"))
    grpo_loss.backward()
    assert stats["kl"] == 0 and stats["kl_low"] == 0 and stats["kl_high"] == 0
    assert loss.item() == pytest.approx(grpo_loss.item(), abs=1e-7)
    if estimator != "k1":  # k1's gradient is 1 per token even at zero value; k2 and k3 are flat there
        torch.testing.assert_close(ours.grad, plain.grad)


def test_on_policy_grpo_gradient_is_minus_advantage_over_n():
    logp, _, _, adv, ent, mask = random_batch(9)
    ours = logp.float().requires_grad_()
    policy_loss(ours, logp.float(), None, adv.float(), ent.float(), mask, LossConfig(mode="grpo"))[0].backward()
    expected = torch.where(mask, -adv[:, None].float().expand_as(ours) / int(mask.sum()), torch.zeros_like(ours))
    torch.testing.assert_close(ours.grad, expected)


# ----------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_a_clear_value_error():
    logp, old, ref, adv, ent, mask = (t.float() if t.is_floating_point() else t for t in random_batch(0))
    cfg = LossConfig()
    with pytest.raises(ValueError, match="old_logp has shape"):
        policy_loss(logp, old[:, :-1], ref, adv, ent, mask, cfg)
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss(logp, old, ref, adv[:-1], ent, mask, cfg)
    with pytest.raises(ValueError, match="mask selects no token"):
        policy_loss(logp, old, ref, adv, ent, torch.zeros_like(mask), cfg)
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(logp, old, None, adv, ent, mask, cfg)
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(logp, old, None, adv, ent, mask, LossConfig(mode="grpo", beta=0.1))
    with pytest.raises(ValueError, match="mode='ppo'"):
        LossConfig(mode="ppo")
    with pytest.raises(ValueError, match="loss_type='cispo' is not supported"):
        LossConfig(loss_type="cispo")
    with pytest.raises(ValueError, match="low_entropy_quantile"):
        LossConfig(low_entropy_quantile=1.5)


def test_mode_defaults_follow_the_papers_code():
    assert (LossConfig(mode="sent_code").kl_cov_ratio, LossConfig(mode="sent_code").ppo_kl_coef) == (
        0.0002,
        0.1,
    )
    assert LossConfig(mode="sent_code").beta == 0.001
    assert (LossConfig(mode="kl_cov").kl_cov_ratio, LossConfig(mode="kl_cov").ppo_kl_coef) == (0.002, 1.0)
    assert LossConfig().beta == 0.0 and LossConfig().epsilon_high == 0.2
    # TRL's defaults for TRL's keys, except where a baseline mode is defined by one of them.
    assert (LossConfig().entropy_coef, LossConfig().top_entropy_quantile, LossConfig().loss_type) == (0.0, 1.0, "dapo")
    assert LossConfig(mode="entropy_bonus").entropy_coef == 0.001
    assert LossConfig(mode="high_entropy_mask").top_entropy_quantile == 0.2


# ----------------------------------------------------------------------------------------------
# TRL's loss_type reductions, each against float64 and a hand-computed case


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("mode", ["grpo", "sent"])
def test_every_loss_type_matches_reference(loss_type, mode):
    cfg = LossConfig(mode=mode, loss_type=loss_type, high_cov_ratio=0.3, beta_low=0.2, beta_high=0.8)
    compare(cfg, seed=12, empty_row=True)


def test_dapo_normalises_by_the_tokens_of_the_whole_accumulated_batch():
    cfg = LossConfig(mode="grpo", loss_type="dapo")
    compare(cfg, seed=13, num_tokens=57.0)


def test_dr_grpo_normalises_by_max_completion_length():
    compare(LossConfig(mode="grpo", loss_type="dr_grpo"), seed=14, max_len=40)


def test_loss_types_on_a_hand_computed_case():
    # On-policy grpo surrogate = -A per valid token. Row 0: A = 1 on 3 tokens; row 1: A = -2 on 1 token.
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    advantages = torch.tensor([1.0, -2.0])
    entropy = torch.ones(2, 4)
    expected = {
        "grpo": ((-1 - 1 - 1) / 3 + 2 / 1) / 2,  # per-sequence means -1 and +2, then their mean
        "bnpo": (-3 + 2) / 4,  # over the 4 valid tokens
        "dapo": (-3 + 2) / 4,
        "dr_grpo": (-3 + 2) / (2 * 10),  # 2 sequences x max_completion_length 10
    }
    for loss_type, value in expected.items():
        cfg = LossConfig(mode="grpo", loss_type=loss_type)
        loss, _ = policy_loss(logp, logp.detach(), None, advantages, entropy, mask, cfg, max_completion_length=10)
        assert loss.item() == pytest.approx(value), loss_type
    dapo = LossConfig(mode="grpo", loss_type="dapo")
    loss, _ = policy_loss(logp, logp.detach(), None, advantages, entropy, mask, dapo, num_tokens=8)
    assert loss.item() == pytest.approx((-3 + 2) / 8)  # 8 valid tokens across the accumulated batch


# ----------------------------------------------------------------------------------------------
# Several processes: the selections span every process's micro-batch


class ThreadGather:
    """An all-gather between threads that stand for processes (sete_lite.loss.Gather)."""

    def __init__(self, processes: int) -> None:
        import threading

        self.barrier = threading.Barrier(processes)
        self.slots: list = [None] * processes

    def for_process(self, index: int):
        def gather(values: torch.Tensor) -> tuple[torch.Tensor, int]:
            self.slots[index] = values
            self.barrier.wait()
            parts = list(self.slots)
            self.barrier.wait()  # every process has read the slots before the next call writes them
            return torch.cat(parts), sum(part.numel() for part in parts[:index])

        return gather


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(mode="sent", high_cov_ratio=0.1),
        LossConfig(mode="sent_code", kl_cov_ratio=0.1),
        LossConfig(mode="kl_cov", kl_cov_ratio=0.1),
        LossConfig(mode="high_entropy_mask"),
        LossConfig(mode="grpo", beta=0.04),
    ],
    ids=lambda cfg: cfg.mode,
)
@pytest.mark.parametrize("zero_advantages", [False, True], ids=["advantages", "all_advantages_zero"])
def test_two_processes_select_and_train_as_one_process_does(cfg, zero_advantages):
    """Before: each process selected T_low, T_hc (and the other modes' token sets) within its own
    micro-batch, so a 2-process SENT run trained differently from a 1-process one (adapters 4e-3 apart
    after 8 steps). Now the selections, their counts and the covariance means span both halves: the
    processes' mean loss and their gradients are the 1-process ones."""
    import threading

    logp, old, ref, adv, ent, mask = random_batch(3, batch=8)
    if zero_advantages:  # every group's rewards equal: every covariance is 0, and ties decide T_hc
        adv = torch.zeros_like(adv)
    whole = logp.clone().requires_grad_()
    n = float(mask.sum())
    loss_one, _ = policy_loss(whole, old, ref, adv, ent, mask, cfg, num_tokens=n)
    loss_one.backward()

    gather = ThreadGather(2)
    halves = [slice(4, 8), slice(0, 4)]  # another order than the one process's: ties must not depend on it
    parts = [logp[h].clone().requires_grad_() for h in halves]
    losses: list = [None, None]

    def process(index: int) -> None:
        h = halves[index]
        # TRL's dapo normaliser per process: the tokens of both processes over the number of processes.
        loss, _ = policy_loss(
            parts[index], old[h], ref[h], adv[h], ent[h], mask[h], cfg, num_tokens=n / 2,
            gather=gather.for_process(index),
        )  # fmt: skip
        loss.backward()
        losses[index] = loss.item()

    threads = [threading.Thread(target=process, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # DDP averages the processes' gradients: each process's is twice its share of the whole.
    assert sum(losses) / 2 == pytest.approx(loss_one.item(), rel=1e-12, abs=1e-15)
    combined = torch.cat([parts[1].grad, parts[0].grad]) / 2  # rows 0-3, then 4-7
    torch.testing.assert_close(combined, whole.grad, rtol=1e-12, atol=1e-15)
