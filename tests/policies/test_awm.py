"""AWM loss arithmetic on hand-made batches, with a tiny stand-in flow policy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from policies.awm import (
    AWMConfig,
    AWMLoss,
    advantage_weights,
    critic_advantage,
    intervention_advantages,
    normalize_advantages,
)
from policies.implicit import draw_noise_and_time, one_actor_chunks, shift_actions
from vla.errors import ConfigError, DataError

H, DA, DS = 4, 2, 3


class TinyFlow(nn.Module):
    """A deterministic flow-matching policy over (H, Da) chunks: the loss is a function of (batch, noise, t)."""

    chunk_len, action_dim = H, DA

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(DS + H * DA + 1, 64), nn.Tanh(), nn.Linear(64, H * DA))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def velocity(self, state, x, t):
        inp = torch.cat([state, x.flatten(1), t[:, None]], dim=1)
        return self.net(inp).view(-1, H, DA)

    generative = True

    def sample_time(self, n, device):
        return torch.rand(n, device=device)  # uniform, as the objectives' draws assume

    def loss(self, batch, reduction="mean", noise=None, t=None):
        a = batch["action"]
        noise = torch.randn_like(a) if noise is None else noise
        t = torch.rand(a.shape[0]) if t is None else t
        self.calls.append((noise, t))
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * a
        err = (self.velocity(batch["observation.state"], x_t, t) - (noise - a)).pow(2).mean(-1)  # (B, H)
        valid = ~batch["action_is_pad"]
        per = (err * valid).sum(1) / valid.sum(1).clamp(min=1)
        return per if reduction == "none" else per.mean()

    def encode(self, batch):
        return batch["observation.state"]

    def sample(self, ctx, n=1, noise=None):
        B = ctx.shape[0]
        x = torch.randn(B, n, H, DA) if noise is None else noise.clone()
        state = ctx.repeat_interleave(n, 0)
        x = x.reshape(B * n, H, DA)
        steps = 10
        for k in range(steps, 0, -1):
            t = torch.full((B * n,), k / steps)
            x = x - self.velocity(state, x, t) / steps
        return x.view(B, n, H, DA)


def make_batch(actions: torch.Tensor, returns=None, tasks=None) -> dict:
    B = actions.shape[0]
    return {
        "observation.state": torch.ones(B, DS),
        "action": actions,
        "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
        "mc_return": torch.zeros(B) if returns is None else torch.as_tensor(returns, dtype=torch.float32),
        "task": tasks or ["pick"] * B,
        "label.human": torch.zeros(B, dtype=torch.bool),  # as vla.data.ChunkDataset serves them
        "label.pre_takeover": torch.zeros(B, dtype=torch.bool),
    }


# -- normalisation, clipping, weights ----------------------------------------------------
def test_advantages_standardised_and_rescaled():
    adv = normalize_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(1.25)  # population std of 1..4
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-4) / 5.0
    torch.testing.assert_close(adv, expected)


def test_outlier_clipped_to_one():
    raw = torch.zeros(50)
    raw[0] = 100.0  # z-score sqrt(49) = 7 > 5
    adv = normalize_advantages(raw)
    assert adv[0].item() == pytest.approx(1.0)
    assert adv.max().item() <= 1.0 and adv.min().item() >= -1.0
    assert adv[1].item() == pytest.approx(-100 / 50 / (raw.std(unbiased=False).item() + 1e-4) / 5, rel=1e-5)


def test_per_task_groups_normalised_separately():
    raw = torch.tensor([0.0, 1.0, 100.0, 300.0])
    adv = normalize_advantages(raw, groups=["a", "a", "b", "b"])
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, -1.0, 1.0]) / (1 + 2e-4) / 5, atol=1e-3, rtol=0)
    single = normalize_advantages(torch.tensor([3.0, 5.0]), groups=["a", "b"])
    assert torch.equal(single, torch.zeros(2))  # a group of one has no spread


def test_signed_and_capped_exponential_weights():
    adv = torch.tensor([-1.0, -0.2, 0.0, 0.3, 1.0])
    torch.testing.assert_close(advantage_weights(adv, "signed"), adv)
    w = advantage_weights(adv, "exp", tau=0.25, w_max=10.0)
    expected = torch.tensor([math.exp(-4), math.exp(-0.8), 1.0, math.exp(1.2), 10.0])  # exp(4) = 54.6 capped
    torch.testing.assert_close(w, expected)
    assert (w > 0).all()


def test_intervention_labels_override_the_advantage():
    adv = torch.tensor([-0.5, 0.2, 0.0, -0.1])
    batch = {"label.human": torch.tensor([True, False, False, False]),
             "label.pre_takeover": torch.tensor([False, True, False, False])}
    assert intervention_advantages(adv, batch, "none") is adv
    torch.testing.assert_close(intervention_advantages(adv, batch, "positive"), torch.tensor([1.0, 0.2, 0.0, -0.1]))
    torch.testing.assert_close(intervention_advantages(adv, batch, "labels"), torch.tensor([1.0, -1.0, 0.0, -0.1]))
    with pytest.raises(DataError, match="intervention labels"):
        intervention_advantages(adv, {}, "positive")
    # in the loss: the human's sample gets the largest weight whatever its return
    policy = TinyFlow()
    batch = {**make_batch(torch.randn(4, H, DA), returns=[3.0, 2.0, 1.0, -5.0]),
             "label.human": torch.tensor([False, False, False, True])}
    del batch["label.pre_takeover"]  # "positive" needs only the human's label
    _, logs = AWMLoss(policy, {"advantage": "mc", "interventions": "positive", "tau": 0.5})(policy, batch)
    assert logs["awm/weight_max"].item() == pytest.approx(math.exp(2.0))


def test_chunks_are_cut_where_the_actor_changes():
    iv = torch.tensor([[0, 0, 1, 1],    # the policy's chunk runs into a takeover
                       [1, 1, 0, 1],    # the human's chunk runs past the hand-back (and back again)
                       [0, 0, 0, 0]], dtype=torch.bool)  # one actor throughout
    batch = {"action": torch.zeros(3, 4, 1), "intervention": iv,
             "action_is_pad": torch.tensor([[False, False, False, False], [False] * 4, [False, False, False, True]])}
    out = one_actor_chunks(batch)
    assert out["action_loss_mask"].tolist() == [[True, True, False, False], [True, True, False, False], [True] * 4]
    assert out["action_is_pad"].tolist() == [[False, False, True, True], [False, False, True, True],
                                             [False, False, False, True]]
    assert one_actor_chunks({"action": torch.zeros(1, 4, 1)}).keys() == {"action"}  # demos without the column
    # AWM hands the cut chunks to the policy's loss (the heads leave padded steps out)
    class Spy(TinyFlow):
        def loss(self, batch, *args, **kw):
            self.pads.append(batch["action_is_pad"].clone())
            return super().loss(batch, *args, **kw)

    b = {**make_batch(torch.randn(2, H, DA)), "intervention": torch.zeros(2, H, dtype=torch.bool)}
    b["intervention"][0, 2:] = True
    for one_actor, cut in ((True, [False, False] + [True] * (H - 2)), (False, [False] * H)):
        policy = Spy()
        policy.pads = []
        AWMLoss(policy, {"advantage": "mc", "one_actor": one_actor})(policy, b)
        assert policy.pads[0][0].tolist() == cut and not policy.pads[0][1].any()


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ConfigError, match="weighting"):
        AWMConfig.from_dict({"weighting": "linear"})
    with pytest.raises(ConfigError, match="unknown option"):
        AWMConfig.from_dict({"temperature": 1.0})
    with pytest.raises(ConfigError, match="interventions"):
        AWMConfig.from_dict({"interventions": "always"})
    with pytest.raises(ConfigError, match="critic_path"):
        AWMLoss(TinyFlow(), {"advantage": "critic"})


# -- the loss ----------------------------------------------------------------------------
def test_reference_term_zero_at_start_and_gradient_is_weighted_loss():
    policy = TinyFlow()
    batch = make_batch(torch.randn(6, H, DA), returns=[0, 1, 2, 3, 4, 5])
    awm = AWMLoss(policy, {"weighting": "signed", "beta_ref": 1.0})
    torch.manual_seed(1)
    loss, logs = awm(policy, batch)
    assert logs["awm/ref_term"] == 0.0
    assert logs["awm/loss_policy"] == logs["awm/loss_ref"]
    loss.backward()
    g_awm = [p.grad.clone() for p in policy.parameters()]

    # the same loss without the reference term, at the same draws
    policy.zero_grad()
    torch.manual_seed(1)
    noise, t = draw_noise_and_time(policy, 6, 1)
    w = normalize_advantages(batch["mc_return"])
    (w * policy.loss(batch, reduction="none", noise=noise[0], t=t[0])).mean().backward()
    for a, b in zip(g_awm, (p.grad for p in policy.parameters()), strict=True):
        torch.testing.assert_close(a, b)


def test_dropout_does_not_break_the_comparison_with_the_reference():
    """The implicit likelihoods are taken in eval mode: a training-mode policy with dropout still gives r = 0."""
    policy = TinyFlow()
    policy.net.insert(1, nn.Dropout(0.5))
    policy.train()
    awm = AWMLoss(policy, {"beta_ref": 1.0})
    _, logs = awm(policy, make_batch(torch.randn(6, H, DA), returns=[0, 1, 2, 3, 4, 5]))
    assert logs["awm/ref_term"] == 0.0
    assert policy.training  # the caller's mode is restored


def test_policy_and_reference_see_the_same_noise_and_time():
    policy, reference = TinyFlow(0), TinyFlow(1)
    awm = AWMLoss(policy, {"n_draws": 3}, reference=reference)
    awm(policy, make_batch(torch.randn(5, H, DA), returns=torch.arange(5.0)))
    assert len(policy.calls) == len(reference.calls) == 3
    for (n_pi, t_pi), (n_ref, t_ref) in zip(policy.calls, reference.calls, strict=True):
        assert n_pi.shape == (5, H, DA) and t_pi.shape == (5,)
        assert torch.equal(n_pi, n_ref) and torch.equal(t_pi, t_ref)
    # successive draws differ (so averaging over draws means something)
    assert not torch.equal(policy.calls[0][0], policy.calls[1][0])


def test_reference_term_grows_once_the_policy_moves():
    policy = TinyFlow()
    awm = AWMLoss(policy, {"beta_ref": 1e-3})
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05)
    _, logs = awm(policy, make_batch(torch.randn(4, H, DA), returns=[0, 1, 0, 1]))
    assert logs["awm/ref_term"] > 0


def _train_on_two_chunks(returns: list[float], steps: int = 100) -> torch.Tensor:
    """AWM on one state with two recorded chunks (+1 and -1); the policy's mean sampled chunk."""
    good, bad = torch.full((H, DA), 1.0), torch.full((H, DA), -1.0)
    batch = make_batch(torch.stack([good, bad] * 4), returns=returns * 4)
    policy = TinyFlow()
    awm = AWMLoss(policy, {"weighting": "exp", "tau": 0.2, "w_max": 20.0})
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(steps):
        loss, _ = awm(policy, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return policy.sample(policy.encode({"observation.state": torch.ones(1, DS)}), n=64).mean(1)[0]


def test_advantage_weighting_prefers_the_better_action():
    """Same state, two recorded chunks: the one with the higher return wins, against plain BC."""
    bc = _train_on_two_chunks([0.0, 0.0]).mean()  # equal returns: every weight is 1
    favour_good = _train_on_two_chunks([1.0, 0.0]).mean()
    favour_bad = _train_on_two_chunks([0.0, 1.0]).mean()
    assert favour_good > bc + 0.2
    assert favour_bad < bc - 0.2


def test_mc_advantage_needs_returns():
    policy = TinyFlow()
    batch = make_batch(torch.randn(3, H, DA))
    del batch["mc_return"]
    with pytest.raises(DataError, match="mc_return"):
        AWMLoss(policy)(policy, batch)


class ToyCritic:
    """Q = -|chunk - target|, two members that disagree by a constant."""

    def __init__(self, target: float):
        self.target = target

    def q(self, obs, chunks):  # (B, N, H, Da) -> (E, B, N)
        q = -(chunks - self.target).abs().mean((-1, -2))
        return torch.stack([q, q - 1.0])


class FixedPolicy:
    """Always proposes the zero chunk."""

    def encode(self, batch):
        return batch["observation.state"]

    def sample(self, ctx, n=1, noise=None):
        return torch.zeros(ctx.shape[0], n, H, DA)


def test_critic_advantage_is_q_minus_value_of_reference_samples():
    batch = make_batch(torch.stack([torch.full((H, DA), 0.5), torch.full((H, DA), 3.0)]))
    adv = critic_advantage(ToyCritic(target=0.5), batch, FixedPolicy(), n=4)
    # ensemble mean Q = -|a - 0.5| - 0.5; V = mean Q of the zero chunk = -1.0
    torch.testing.assert_close(adv, torch.tensor([-0.5 + 1.0, -3.0 + 1.0]))


def test_critic_own_advantage_is_preferred():
    class OwnAdvantage(ToyCritic):
        def advantage(self, batch, policy, n=8):
            self.seen = (policy, n)
            return torch.arange(batch["action"].shape[0], dtype=torch.float32)

    critic, policy = OwnAdvantage(0.0), FixedPolicy()
    adv = critic_advantage(critic, make_batch(torch.zeros(3, H, DA)), policy, n=5)
    assert adv.tolist() == [0.0, 1.0, 2.0] and critic.seen == (policy, 5)


def test_awm_with_a_critic_weights_by_its_advantage():
    policy = TinyFlow()
    batch = make_batch(torch.stack([torch.full((H, DA), 0.5), torch.full((H, DA), 3.0)]))
    awm = AWMLoss(policy, {"advantage": "critic"}, critic=ToyCritic(target=0.5))
    assert awm.use_critic
    raw = awm.advantages(batch)
    assert raw[0] > raw[1]
    loss, logs = awm(policy, batch)
    assert torch.isfinite(loss) and logs["awm/weight_max"] > logs["awm/weight_mean"]


def test_trailing_copy_follows_the_policy():
    policy = TinyFlow()
    awm = AWMLoss(policy, {"trust_beta": 0.1, "trust_decay": 0.5})
    before = [p.clone() for p in awm.trailing.parameters()]
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    awm.on_step(policy)
    for b, p_trail, p in zip(before, awm.trailing.parameters(), policy.parameters(), strict=True):
        torch.testing.assert_close(p_trail, 0.5 * b + 0.5 * p)
    _, logs = awm(policy, make_batch(torch.randn(3, H, DA), returns=[0, 1, 2]))
    assert logs["awm/trust_term"] > 0


def test_shift_actions_pairs_each_observation_with_the_next_chunk():
    batch = make_batch(torch.arange(3.0)[:, None, None].expand(3, H, DA).clone())
    mis = shift_actions(batch)
    assert mis["action"][:, 0, 0].tolist() == [1.0, 2.0, 0.0]
    assert torch.equal(mis["observation.state"], batch["observation.state"])
