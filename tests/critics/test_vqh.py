"""The Hume value-query head: chunk TD on the VLA's prefix, frozen or joint, and its checkpoint."""

import numpy as np
import pytest
import torch
from chain import TASK_TEXT, Chain, ChainPolicy, ChainPrefixPolicy
from test_closed_form import GAMMA, P_RIGHT, fit, predicted

from critics import build_critic, load_critic
from vla.errors import ConfigError

VQH = {"type": "vqh", "hidden": [32], "d_model": 32, "n_heads": 2, "layers": 1}


def test_vqh_learns_the_exact_chunk_q_from_prefix_tokens():
    """With alpha=0 the head is trained by the plain chunk TD target (gamma**H, done mask)."""
    torch.manual_seed(0)
    H, mdp, rng = 2, Chain(gamma=GAMMA), np.random.default_rng(0)
    policy = ChainPrefixPolicy(P_RIGHT, H)
    critic = build_critic({**VQH, "chunk_len": H, "gamma": GAMMA, "alpha": 0.0, "tau": 0.2, "n_next": 8,
                           "target_agg": "mean", "hidden": [64, 64]}, mdp.features(), mdp.stats(), policy=policy)
    fit(critic, lambda: mdp.random_batch(128, H, rng), None, 400)  # bootstraps with its own VLA
    exact = mdp.exact_chunk_q(np.array(P_RIGHT), H)
    keys = list(exact)
    # values span about 4; the attention head fits a little less tightly than an MLP on one-hots
    np.testing.assert_allclose(predicted(critic, mdp, keys), [exact[k] for k in keys], atol=0.2)


def test_vqh_needs_a_vla_prefix():
    mdp = Chain()
    with pytest.raises(ConfigError, match="needs the policy"):
        build_critic({**VQH, "chunk_len": 1}, mdp.features(), mdp.stats())
    with pytest.raises(ConfigError, match="prefix tokens"):
        build_critic({**VQH, "chunk_len": 1}, mdp.features(), mdp.stats(), policy=ChainPolicy(P_RIGHT, 1))


def tiny_vla(mdp: Chain, H: int):
    from policies import build_policy

    torch.manual_seed(0)
    cfg = {"chunk_len": H, "model": {"d_model": 16, "n_heads": 2, "expert_layers": 1, "state_hidden": 16,
                                     "text": {"max_len": 16}}, "flow": {"num_steps": 2}}
    return build_policy(cfg, mdp.features(), mdp.stats())


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("train_vla", [False, True])
def test_vqh_on_a_vla_frozen_or_joint(train_vla, tmp_path):
    H, mdp, rng = 2, Chain(), np.random.default_rng(0)
    vla = tiny_vla(mdp, H)
    before = _params(vla)
    critic = build_critic({**VQH, "chunk_len": H, "train_vla": train_vla, "n_actions": 2, "n_next": 2},
                          mdp.features(), mdp.stats(), policy=vla)
    obs = {"observation.state": mdp.one_hot([0, 1, 2]), "task": [TASK_TEXT] * 3}
    assert critic.q(obs, torch.ones(3, 5, H, 1)).shape == (2, 3, 5)
    head_before = _params(critic.heads)
    critic.train()
    opt = torch.optim.Adam([p for p in critic.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        batch = mdp.random_batch(16, H, rng)
        batch["mc_return"] = torch.full((16,), -3.0)
        loss, logs = critic.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        critic.update_target()
    changed = [not torch.equal(a, b) for a, b in zip(before, _params(vla), strict=True)]
    assert any(changed) == train_vla  # the VLA moves only when trained jointly
    assert ("bc_loss" in logs) == train_vla
    assert any(not torch.equal(a, b) for a, b in zip(head_before, _params(critic.heads), strict=True))

    critic.eval()
    critic.save_pretrained(tmp_path / "vqh")
    loaded = load_critic(tmp_path / "vqh")  # finds the VLA saved with it
    chunks = torch.randn(3, 4, H, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.q(obs, chunks), critic.q(obs, chunks))
