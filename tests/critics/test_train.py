"""scripts/train_critic.py end to end on tiny LeRobot datasets: checkpoints, diagnostics, loading."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from chain import TASK_TEXT, Chain, write_chain_dataset

from critics import load_critic
from critics.train import split_episodes, train_critic
from vla.checkpoint import list_checkpoints
from vla.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_critic.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Demos of a good policy, and rollouts of a poor one with a scripted intervener; plus a tiny VLA."""
    from policies import build_policy

    tmp = tmp_path_factory.mktemp("chain")
    mdp, rng = Chain(gamma=0.9), np.random.default_rng(0)
    demo = write_chain_dataset(tmp / "demo", mdp, 4, 0.9, "demo", 10, rng)
    rollouts = write_chain_dataset(tmp / "rollouts", mdp, 4, 0.2, "policy:tiny", 6, rng, intervene=True)
    torch.manual_seed(0)
    features = {"observation.state": (mdp.L,), "observation.images.top": (3, 8, 8), "action": (1,)}
    stats = {"observation.state": {"mean": [0.2] * mdp.L, "std": [0.4] * mdp.L},
             "action": {"mean": [0.0], "std": [1.0]}}
    policy = build_policy({"chunk_len": 2, "model": {"d_model": 16, "n_heads": 2, "expert_layers": 1,
                                                      "state_hidden": 16, "vision": {"channels": [4], "grid": 2},
                                                      "text": {"max_len": 16}}, "flow": {"num_steps": 2}},
                          features, stats)
    policy.save_pretrained(tmp / "policy")
    return {"data": [str(demo), str(rollouts)], "policy": str(tmp / "policy"), "tmp": tmp}


SMALL = {"chunk_len": 2, "ensemble": 2, "hidden": [16], "n_next": 2, "encoder": {"dim": 16}}
TRAIN = {"progress": False, "warmup_steps": 0, "save_every": 3, "log_every": 2, "ema": False,
         "mixed_precision": "no"}


@pytest.mark.parametrize("critic", [
    {"type": "aloe"},
    {"type": "calql", "alpha": 1.0, "encoder": {"type": "vla"}},  # a copy of the policy's encoder
    {"type": "iql"},  # needs no policy
    {"type": "vqh", "d_model": 16, "n_heads": 2, "layers": 1, "n_actions": 2},
], ids=lambda c: c["type"])
def test_train_critic_writes_checkpoint_and_diagnostics(data, critic, tmp_path):
    cfg = {"critic": {**SMALL, **critic, "encoder": {**SMALL["encoder"], **critic.get("encoder", {})}},
           "data": data["data"], "policy_path": None if critic["type"] == "iql" else data["policy"],
           "out": str(tmp_path / "run"), "steps": 4, "batch_size": 16, "holdout": 0.4, "train": TRAIN}
    out = train_critic(cfg)
    assert list_checkpoints(out) == [3, 4]

    diag = json.loads((out / "diagnostics.json").read_text())
    # seed 0 holds out two successful demos and one failed rollout: both classes for the AUROC
    assert diag["critic"] == critic["type"] and diag["held_out_episodes"] == 3
    assert -1.0 <= diag["spearman_q"] <= 1.0 and 0.0 <= diag["auroc_q"] <= 1.0
    assert diag["episodes"] == 3  # held-out episodes, told apart by their id across the data folders
    lo, hi = diag["ci95"]["auroc_q"]
    assert 0.0 <= lo <= hi <= 1.0
    assert set(diag["by_source"]) <= {"demo", "policy", "intervention"} and diag["by_source"]
    assert sum(g["chunks"] for g in diag["by_source"].values()) == diag["chunks"]
    assert "spearman_v" in diag  # every critic here has a V(s): sampled from the policy, or IQL's own
    assert (out / "q_vs_return.png").stat().st_size > 1000

    critic_ = load_critic(out)  # a training run's out folder means its last checkpoint
    obs = {"observation.state": torch.eye(5)[:3], "observation.images.top": torch.zeros(3, 3, 8, 8),
           "task": [TASK_TEXT] * 3}
    assert critic_.q(obs, torch.zeros(3, 4, 2, 1)).shape == (2, 3, 4)
    if critic["type"] == "calql":  # the encoder copy carries the policy's architecture
        assert critic_.cfg.encoder.model["d_model"] == 16


def test_split_keeps_both_sides_nonempty():
    train, held = split_episodes(np.arange(10), 0.2, seed=0)
    assert len(held) == 2 and sorted(train + held) == list(range(10))
    train, held = split_episodes(np.arange(2), 0.01, seed=0)
    assert len(train) == len(held) == 1
    assert split_episodes(np.arange(4), 0.0, seed=0)[1] == []


def _script(monkeypatch, tmp_path, *overrides):
    """scripts/train_critic.py in this process (the imports are paid already), as the shell would run it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train_critic.py", *overrides])
    runpy.run_path(str(SCRIPT), run_name="__main__")


def test_command_line(data, tmp_path, monkeypatch, capsys):
    common = [f"data=[{','.join(data['data'])}]", "steps=2", "batch_size=8", "critic.hidden=[16]",
              "critic.encoder.dim=16", "train.progress=false", "train.warmup_steps=0"]
    _script(monkeypatch, tmp_path, "critic=calql", f"policy_path={data['policy']}", f"out={tmp_path / 'run'}",
            *common)
    assert "trained critic" in capsys.readouterr().out
    assert (tmp_path / "run" / "diagnostics.json").is_file()
    assert load_critic(tmp_path / "run").type_name == "calql"
    # ALOE bootstraps with the current policy: without one, one clear line and exit status 1
    with pytest.raises(SystemExit) as exit_:
        _script(monkeypatch, tmp_path, "critic=aloe", f"out={tmp_path / 'bad'}", *common)
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: critic=aloe bootstraps with the current policy: give policy_path=<ckpt>")


def test_policy_is_required_where_the_backup_needs_it(data, tmp_path):
    cfg = {"critic": {"type": "aloe"}, "data": data["data"], "out": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="critic=aloe bootstraps with the current policy: give policy_path"):
        train_critic(cfg)
    cfg = {"critic": {"type": "aloe", "chunk_len": 4}, "data": data["data"], "policy_path": data["policy"],
           "out": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="exceeds the policy's chunk"):
        train_critic(cfg)


def test_eval_data_gives_diagnostics_on_episodes_never_trained_on(data, tmp_path):
    mdp, rng = Chain(gamma=0.9), np.random.default_rng(1)
    fresh = write_chain_dataset(data["tmp"] / "fresh", mdp, 5, 0.2, "policy:tiny", 6, rng, intervene=True)
    more = write_chain_dataset(data["tmp"] / "more", mdp, 3, 0.2, "policy:tiny", 6, rng, intervene=True)
    cfg = {"critic": {**SMALL, "type": "aloe"}, "data": data["data"], "policy_path": data["policy"],
           "out": str(tmp_path / "run"), "steps": 3, "batch_size": 16, "holdout": 0.4, "train": TRAIN}
    with pytest.raises(ConfigError, match="never trains on"):
        train_critic({**cfg, "eval_data": [data["data"][1]]})
    out = train_critic(cfg)
    assert not (out / "eval_data").exists()
    # added to the finished run: no more training, the same weights judged on fresh episodes
    out = train_critic({**cfg, "resume": True, "eval_data": [str(fresh), str(more)]})
    assert list_checkpoints(out) == [3]
    diag = json.loads((out / "eval_data" / "diagnostics.json").read_text())
    assert diag["eval_episodes"] == 8 and diag["eval_data"] == [str(fresh), str(more)]
    assert diag["episodes"] == 8  # both folders number their episodes from 0: counted apart
    assert 1 <= diag["by_source"]["policy"]["episodes"] <= 8
    assert 0.0 <= diag["auroc_q"] <= 1.0
    assert (out / "eval_data" / "q_vs_return.png").exists()
    assert json.loads((out / "diagnostics.json").read_text())["held_out_episodes"] == 3


def test_takeover_penalty_enters_rewards_and_returns(data):
    from critics.base import CriticConfig
    from critics.train import critic_dataset

    plain = critic_dataset(data["data"], CriticConfig(chunk_len=2, gamma=0.9), {})
    rlif = critic_dataset(data["data"], CriticConfig(chunk_len=2, gamma=0.9, takeover_penalty=3.0), {})
    f, g = plain.frames, rlif.frames
    iv, ep = f["intervention"].astype(bool), f["global_episode"]
    before = np.flatnonzero(~iv[:-1] & iv[1:] & (ep[:-1] == ep[1:]))
    assert len(before) > 0  # the intervened rollouts hold takeovers
    np.testing.assert_allclose(g["reward_used"] - f["reward_used"],
                               np.where(np.isin(np.arange(len(iv)), before), -3.0, 0.0))
    # the cost is discounted into the returns before it, and nowhere else
    diff = g["mc_return"] - f["mc_return"]
    assert (diff <= 1e-6).all() and np.isclose(diff[before], -3.0 + diff[before + 1] * 0.9, atol=1e-4).all()
    assert np.allclose(diff[f["source"] == "demo"], 0.0)  # demos hold no takeovers
