"""APO: labels from interventions, KTO arithmetic, adaptive weights, stratified batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from policies.apo import (
    CORRECT,
    HUMAN,
    UNDESIRABLE,
    UNLABELLED,
    APOConfig,
    APOLoss,
    StratifiedSampler,
    adaptive_weights,
    batch_groups,
    dataset_groups,
    greedy_action_error,
    kto_losses,
    reference_point,
    split_counts,
)
from vla.data import pre_takeover_mask
from vla.errors import ConfigError, DataError

H, DA, DS = 4, 2, 3


class TinyFlow(nn.Module):
    """A deterministic flow-matching policy over (H, Da) chunks; records the draws it is given."""

    chunk_len, action_dim = H, DA

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(DS + H * DA + 1, 64), nn.Tanh(), nn.Linear(64, H * DA))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def velocity(self, state, x, t):
        return self.net(torch.cat([state, x.flatten(1), t[:, None]], dim=1)).view(-1, H, DA)

    generative = True

    def sample_time(self, n, device):
        return torch.rand(n, device=device)  # uniform, as the objectives' draws assume

    def loss(self, batch, reduction="mean", noise=None, t=None):
        a = batch["action"]
        noise = torch.randn_like(a) if noise is None else noise
        t = torch.rand(a.shape[0]) if t is None else t
        self.calls.append((noise, t))
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * a
        err = (self.velocity(batch["observation.state"], x_t, t) - (noise - a)).pow(2).mean(-1)
        valid = ~batch["action_is_pad"]
        per = (err * valid).sum(1) / valid.sum(1).clamp(min=1)
        return per if reduction == "none" else per.mean()

    def encode(self, batch):
        return batch["observation.state"]

    def sample(self, ctx, n=1, noise=None):
        B = ctx.shape[0]
        x = (torch.randn(B, n, H, DA) if noise is None else noise.clone()).reshape(B * n, H, DA)
        state = ctx.repeat_interleave(n, 0)
        for k in range(10, 0, -1):
            x = x - self.velocity(state, x, torch.full((B * n,), k / 10)) / 10
        return x.view(B, n, H, DA)


def make_batch(actions, human, pre, success, source) -> dict:
    B = actions.shape[0]
    return {
        "observation.state": torch.ones(B, DS),
        "action": actions,
        "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
        "label.human": torch.as_tensor(human, dtype=torch.bool),
        "label.pre_takeover": torch.as_tensor(pre, dtype=torch.bool),
        "episode_success": torch.as_tensor(success, dtype=torch.bool),
        "source": list(source),
        "task": ["pick"] * B,
    }


# -- labels ------------------------------------------------------------------------------
def _episode_frames(success: bool, source: str, intervention: np.ndarray, window: int = 3) -> dict:
    ep = np.zeros(len(intervention), dtype=np.int64)
    return {
        "label.human": intervention,
        "label.pre_takeover": pre_takeover_mask(intervention, ep, window),
        "episode_success": np.full(len(intervention), success),
        "source": np.array([source] * len(intervention), dtype=object),
    }


def test_labels_from_a_hand_made_intervention_pattern():
    iv = np.zeros(16, dtype=bool)
    iv[8:11] = True  # the intervener takes over at 8 and hands back at 11
    U, C, Hm, X = UNLABELLED, CORRECT, HUMAN, UNDESIRABLE
    failed = dataset_groups(_episode_frames(False, "policy:base", iv))
    assert failed.tolist() == [U] * 5 + [X] * 3 + [Hm] * 3 + [U] * 5
    won = dataset_groups(_episode_frames(True, "policy:base", iv))
    assert won.tolist() == [C] * 5 + [X] * 3 + [Hm] * 3 + [C] * 5
    demo = dataset_groups(_episode_frames(False, "demo", np.zeros(6, dtype=bool)))
    assert demo.tolist() == [C] * 6
    relabelled = dataset_groups(_episode_frames(False, "policy:base", iv), autonomous="all")
    assert relabelled.tolist() == [C] * 5 + [X] * 3 + [Hm] * 3 + [C] * 5
    demos_only = dataset_groups(_episode_frames(True, "policy:base", iv), autonomous="none")
    assert demos_only.tolist() == [U] * 5 + [X] * 3 + [Hm] * 3 + [U] * 5
    assert dataset_groups(_episode_frames(True, "demo", np.zeros(4, dtype=bool)), autonomous="none").tolist() == [C] * 4

    # the torch path on a batch gives the same codes
    frames = _episode_frames(False, "policy:base", iv)
    batch = make_batch(torch.zeros(16, H, DA), frames["label.human"], frames["label.pre_takeover"],
                       frames["episode_success"], frames["source"])
    assert batch_groups(batch).tolist() == failed.tolist()


def test_batch_without_labels_columns_is_a_clear_error():
    batch = make_batch(torch.zeros(2, H, DA), [0, 0], [0, 0], [1, 1], ["demo"] * 2)
    del batch["label.pre_takeover"]
    with pytest.raises(DataError, match="label.pre_takeover"):
        batch_groups(batch)


# -- KTO ---------------------------------------------------------------------------------
def test_reference_point_is_clamped_mean_without_gradient():
    r = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    z0 = reference_point(r)
    assert z0.item() == pytest.approx(2.0) and not z0.requires_grad
    assert reference_point(torch.tensor([10.0, 20.0])).item() == 5.0
    assert reference_point(torch.tensor([-30.0])).item() == -5.0


def test_kto_losses_by_hand():
    r = torch.tensor([2.0, -1.0, 2.0])
    desirable = torch.tensor([True, False, False])
    z0 = torch.tensor(0.5)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [1 - sig(0.1 * 1.5), 1 - sig(0.1 * 1.5), 1 - sig(0.1 * -1.5)]
    torch.testing.assert_close(kto_losses(r, desirable, z0, beta=0.1), torch.tensor(expected))
    # raising the implicit reward helps desirable samples and hurts undesirable ones
    lo, hi = kto_losses(torch.tensor([0.0, 0.0]), torch.tensor([True, False]), z0), \
        kto_losses(torch.tensor([1.0, 1.0]), torch.tensor([True, False]), z0)
    assert hi[0] < lo[0] and hi[1] > lo[1]


def test_adaptive_weights_direction_and_normalisation():
    groups = torch.tensor([CORRECT, CORRECT, HUMAN, HUMAN, UNDESIRABLE, UNDESIRABLE, UNLABELLED])
    err = torch.tensor([1.0, 3.0, 0.2, 0.6, 1.0, 3.0, 5.0])
    w = adaptive_weights(err, groups)
    assert w[1] > w[0] and w[3] > w[2]  # desirable: more weight where the policy is still wrong
    assert w[5] < w[4]  # undesirable: more weight where the policy is still close to the bad action
    assert w[6] == 0  # unlabelled: no weight
    torch.testing.assert_close(w[:2], w[2:4], atol=1e-3, rtol=0)  # within-group: scale-free
    share = (torch.tensor([1.0, 3.0]) + 1e-4) / (4.0 + 1e-4) * 2  # mean-normalised
    torch.testing.assert_close(w[:2], 1 - torch.exp(-share))
    torch.testing.assert_close(w[4:6], torch.exp(-share))
    # another group's errors do not matter
    err2 = err.clone()
    err2[4:6] *= 100
    torch.testing.assert_close(adaptive_weights(err2, groups)[:4], w[:4])
    # the released code's normalisation: by the group's sum
    w_sum = adaptive_weights(err, groups, norm="sum")
    torch.testing.assert_close(w_sum[:2], 1 - torch.exp(-share / 2))


def test_greedy_action_error_ignores_padded_steps():
    class Zero:
        def encode(self, batch):
            return batch["observation.state"]

        def sample(self, ctx, n=1, noise=None):
            assert noise is not None and torch.equal(noise, torch.zeros_like(noise))
            return torch.zeros(ctx.shape[0], n, H, DA)

    actions = torch.ones(2, H, DA)
    actions[1, -1] = 100.0
    batch = make_batch(actions, [0, 0], [0, 0], [1, 1], ["demo"] * 2)
    batch["action_is_pad"][1, -1] = True
    torch.testing.assert_close(greedy_action_error(Zero(), batch), torch.tensor([1.0, 1.0]))


def test_config_checks():
    with pytest.raises(ConfigError, match="ratios"):
        APOConfig.from_dict({"ratios": [0.5, 0.5]})
    with pytest.raises(ConfigError, match="unknown option"):
        APOConfig.from_dict({"window": 10})
    with pytest.raises(ConfigError, match="autonomous"):
        APOConfig.from_dict({"autonomous": "failed"})
    assert APOConfig.from_dict({"ratios": [2, 1, 1]}).ratios == (2.0, 1.0, 1.0)


# -- the loss ----------------------------------------------------------------------------
def _mixed_batch(n: int = 4) -> dict:
    good, bad = torch.full((H, DA), 1.0), torch.full((H, DA), -1.0)
    actions = torch.stack([good, bad] * n)
    human = [1, 0] * n
    pre = [0, 1] * n
    return make_batch(actions, human, pre, [0, 0] * n, ["policy:base"] * (2 * n))


def test_same_noise_and_time_for_policy_and_reference_and_zero_reward_at_start():
    policy = TinyFlow()
    apo = APOLoss(policy, {"adaptive": False, "n_draws": 2, "bc_weight": 0.0})  # the KTO part alone
    apo.reference.calls = []
    policy.calls = []
    loss, logs = apo(policy, _mixed_batch())
    # matched and mismatched pairs, two draws each, for both models
    assert len(policy.calls) == len(apo.reference.calls) == 4
    for (n_pi, t_pi), (n_ref, t_ref) in zip(policy.calls, apo.reference.calls, strict=True):
        assert torch.equal(n_pi, n_ref) and torch.equal(t_pi, t_ref)
    # the reference is a copy: r = 0 and z0 = 0, so every KTO loss is 1 - sigmoid(0)
    assert logs["apo/z0"] == 0.0 and logs["apo/reward_human"] == 0.0
    assert loss.item() == pytest.approx(0.5)


def test_unlabelled_only_batch_is_an_error():
    policy = TinyFlow()
    batch = make_batch(torch.zeros(2, H, DA), [0, 0], [0, 0], [0, 0], ["policy:base"] * 2)
    with pytest.raises(DataError, match="labelled"):
        APOLoss(policy)(policy, batch)


def test_apo_moves_the_policy_from_undesirable_to_desirable_actions():
    """A BC reference sits between the two chunks; APO moves it towards the human's chunk."""
    batch = _mixed_batch()
    state = {"observation.state": torch.ones(1, DS)}
    policy = TinyFlow()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(100):  # the base: BC on both chunks
        loss = policy.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        base = policy.sample(policy.encode(state), n=64).mean()
    apo = APOLoss(policy)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(60):
        loss, logs = apo(policy, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = policy.sample(policy.encode(state), n=64).mean()
    assert logs["apo/reward_undesirable"] < 0  # the bad chunk lost likelihood against the reference
    assert after > base + 0.2


# -- stratified batches ------------------------------------------------------------------
def test_split_counts():
    assert split_counts(8, (0.5, 0.25, 0.25)) == [4, 2, 2]
    assert split_counts(7, (0.5, 0.25, 0.25)) == [3, 2, 2]  # largest remainders
    assert sum(split_counts(13, (1, 1, 1))) == 13
    assert split_counts(8, (0.5, 0.0, 0.25)) == [5, 0, 3]


def test_stratified_sampler_batches_hold_the_mix():
    groups = np.array([CORRECT] * 100 + [HUMAN] * 10 + [UNDESIRABLE] * 20 + [UNLABELLED] * 30)
    sampler = StratifiedSampler(groups, (0.5, 0.25, 0.25), batch_size=8, num_batches=20, seed=3)
    idx = np.array(list(sampler))
    assert len(idx) == len(sampler) == 160
    for batch in idx.reshape(20, 8):
        g = groups[batch]
        assert [(g == c).sum() for c in (CORRECT, HUMAN, UNDESIRABLE)] == [4, 2, 2]
    assert set(idx[groups[idx] == HUMAN]) == set(range(100, 110))  # a small group cycles through all
    assert not np.array_equal(idx, np.array(list(sampler)))  # a new order every epoch
    again = StratifiedSampler(groups, (0.5, 0.25, 0.25), batch_size=8, num_batches=20, seed=3)
    assert np.array_equal(idx, np.array(list(again)))  # reproducible from the seed
    again.set_epoch(0)
    assert np.array_equal(idx, np.array(list(again)))  # and from (seed, epoch): what resuming needs


def test_stratified_sampler_gives_an_empty_groups_share_away(caplog):
    groups = np.array([CORRECT] * 10 + [UNDESIRABLE] * 10)
    sampler = StratifiedSampler(groups, (0.5, 0.25, 0.25), batch_size=8, seed=0)
    assert "no 'human' frames" in caplog.text
    assert sampler.counts == [5, 0, 3]
    assert len(sampler) == 3 * 8  # the labelled frames once: ceil(20 / 8) batches
    with pytest.raises(DataError, match="empty"):
        StratifiedSampler(np.array([UNLABELLED] * 5), (0.5, 0.25, 0.25), batch_size=4)
