"""Critics against values known in closed form on a small chain MDP (tests/critics/chain.py).

The data are off-policy: uniform states and uniform random chunks. ALOE must recover the
chunk Q of the *current* (fixed, stochastic) policy, not of the data; IQL with expectile
0.5 is SARSA and must recover the chunk Q of the data's policy; Cal-QL must hold the
Q-values of the policy at or above the Monte-Carlo return of the data where plain CQL
pushes them below it.
"""

import numpy as np
import pytest
import torch
from chain import TASK_TEXT, Chain, ChainPolicy, frames_batch, rollout_frames

from critics import build_critic
from critics.base import calibration_returns

P_RIGHT = [0.6, 0.7, 0.8, 0.9]
GAMMA = 0.8  # a short horizon: the backups converge in a few hundred steps


def fit(critic, make_batch, policy, steps: int, lr: float = 3e-3):
    opt = torch.optim.Adam([p for p in critic.parameters() if p.requires_grad], lr=lr, foreach=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss, _ = critic.loss(make_batch(), policy)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        critic.update_target()
    return critic.eval()


def small(kind: str, mdp: Chain, H: int, **kw):
    cfg = {"type": kind, "chunk_len": H, "gamma": mdp.gamma, "hidden": [64, 64],
           "encoder": {"dim": 32, "use_text": False}, **kw}  # one instruction: text adds nothing
    return build_critic(cfg, mdp.features(), mdp.stats())


def predicted(critic, mdp: Chain, keys) -> np.ndarray:
    obs = {"observation.state": mdp.one_hot([s for s, _ in keys]), "task": [TASK_TEXT] * len(keys)}
    chunks = torch.tensor([c for _, c in keys])[:, None, :, None]
    with torch.no_grad():
        return critic.q(obs, chunks).mean(0)[:, 0].numpy()


@pytest.mark.parametrize("H, steps, tol", [(1, 250, 0.1), (3, 300, 0.15)])
def test_aloe_matches_the_exact_chunk_q_of_the_current_policy(H, steps, tol):
    torch.manual_seed(0)
    mdp, rng = Chain(gamma=GAMMA), np.random.default_rng(0)
    critic = small("aloe", mdp, H, tau=0.2, n_next=8)
    fit(critic, lambda: mdp.random_batch(128, H, rng), ChainPolicy(P_RIGHT, H), steps)

    exact = mdp.exact_chunk_q(np.array(P_RIGHT), H)
    keys = list(exact)
    pred = predicted(critic, mdp, keys)
    target = np.array([exact[k] for k in keys])
    assert np.abs(pred - target).max() < tol, (pred, target)
    # the data's own policy (uniform) has other values: the critic did not learn those
    behaviour = mdp.exact_chunk_q(np.full(4, 0.5), H)
    assert np.abs(pred - np.array([behaviour[k] for k in keys])).max() > 3 * tol


def test_iql_with_expectile_half_is_sarsa_on_the_data_policy():
    torch.manual_seed(0)
    mdp, rng, H = Chain(gamma=GAMMA), np.random.default_rng(0), 1
    critic = small("iql", mdp, H, tau=0.2, expectile=0.5, target_agg="mean")
    fit(critic, lambda: mdp.random_batch(128, H, rng), None, 300)
    exact = mdp.exact_chunk_q(np.full(4, 0.5), H)  # random_batch draws uniform chunks
    keys = list(exact)
    pred = predicted(critic, mdp, keys)
    np.testing.assert_allclose(pred, [exact[k] for k in keys], atol=0.15)


def _policy_value_gap(calibrate: bool, frames, mc, mdp, rng) -> np.ndarray:
    """Per state: mean Q(s, a ~ policy) minus the mean Monte-Carlo return of the data at s."""
    torch.manual_seed(0)
    policy = ChainPolicy([0.9] * 4, 1)
    critic = small("calql", mdp, 1, tau=0.1, alpha=10.0, calibrate=calibrate)
    fit(critic, lambda: frames_batch(mdp, frames, rng.integers(0, len(mc), 128), 1, mc), policy, 300)
    gaps = []
    for s in range(mdp.goal):
        obs = {"observation.state": mdp.one_hot([s] * 64), "task": [TASK_TEXT] * 64}
        with torch.no_grad():
            q_pi = critic.aggregate(critic.q(obs, policy.sample(policy.encode(obs), 16))).mean().item()
        gaps.append(q_pi - mc[frames["state"] == s].mean())
    return np.array(gaps)


def test_calql_holds_policy_values_at_or_above_the_mc_return():
    # data: a mediocre behaviour policy; the policy evaluated is a better one (0.9 right)
    mdp, rng = Chain(gamma=GAMMA), np.random.default_rng(0)
    frames = rollout_frames(mdp, 0.6, episodes=300, max_steps=40, rng=rng)
    mc = calibration_returns(frames["reward"], frames["episode"], frames["success"], mdp.gamma, True)
    calibrated = _policy_value_gap(True, frames, mc, mdp, rng)
    assert (calibrated >= -0.05).all(), calibrated
    # plain CQL with the same weight pushes them below the return the data already achieved
    conservative = _policy_value_gap(False, frames, mc, mdp, rng)
    assert (conservative < 0).all() and conservative.mean() < -0.5, conservative
