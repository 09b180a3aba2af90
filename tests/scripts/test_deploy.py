"""scripts/deploy.py and policies/deploy.py: re-ranked and dual-system deployment in simulation,
recorded with its decision log; the robot roles (server, client, local) and robot collection
through the MuJoCo stand-in arm. Tiny untrained models: the wiring is under test, not skill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vla.errors import CheckpointError, ConfigError, ShapeError

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TINY = {"d_model": 32, "n_heads": 2, "expert_layers": 1, "prefix_layers": 0, "state_hidden": 32,
        "expert_width": 32, "vision": {"channels": [4, 8], "grid": 2}, "text": {"type": "bytes", "layers": 0}}
ARM = {"type": "sim", "env": "reach", "fps": 50,
       "env_kwargs": {"control": "joint", "obs_mode": "both", "image_size": 32, "cameras": ["front"], "max_steps": 500},
       "limits": {"max_step": 0.08}}
ARM_DEPLOY = {"episodes": 1, "max_steps": 12, "execute_steps": 4, "listen_keys": False, "reset_wait_s": 0.0,
              "seed": 0}  # a fixed scene: an unseeded reset can put the target within reach and end early


def run(*overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / "deploy.py"), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)


def save_tiny(root: Path, env, chunk_len: int = 8, critic: bool = True) -> Path:
    """An untrained policy (and ALOE critic next to it) for ``env``, with stats centred in its action box."""
    from critics import build_critic
    from policies import build_policy

    features = {k: tuple(s.shape) for k, s in env.observation_space.spaces.items() if getattr(s, "shape", None)}
    features["action"] = env.action_space.shape
    low, high = env.action_space.low, env.action_space.high
    ds = features["observation.state"][0]
    stats = {"observation.state": {"mean": [0.0] * ds, "std": [1.0] * ds, "min": [-1.0] * ds, "max": [1.0] * ds},
             "action": {"mean": ((low + high) / 2).tolist(), "std": ((high - low) / 8).tolist(),
                        "min": low.tolist(), "max": high.tolist()}}
    torch.manual_seed(0)
    policy = build_policy({"head": "flow", "chunk_len": chunk_len, "execute_steps": 4, "model": TINY,
                           "flow": {"num_steps": 2}}, features, stats)
    policy.save_pretrained(root)
    if critic:
        build_critic({"type": "aloe", "ensemble": 2, "hidden": [16]}, policy.config["features"],
                     policy.stats).save_pretrained(root.parent / f"{root.name}_critic")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    import sim

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    reach = sim.make("reach")
    arm = sim.make("reach", **ARM["env_kwargs"])
    paths = {"policy": save_tiny(root / "policy", reach), "system1": save_tiny(root / "s1", reach, 4, critic=False),
             "arm": save_tiny(root / "arm", arm)}
    paths["critic"], paths["arm_critic"] = root / "policy_critic", root / "arm_critic"
    return paths


def sim_cfg(models, out: Path, **extra) -> dict:
    return {"env": {"name": "reach", "max_steps": 10}, "policy_path": str(models["policy"]),
            "critic_path": str(models["critic"]), "rerank": {"n": 4}, "episodes": 1, "seed": 0,
            "video": False, "progress": False, "out": str(out), **extra}


def test_deploy_script_reranks_and_records_decisions(models, tmp_path):
    from vla.data import ChunkDataset, read_journal

    out = tmp_path / "round1"
    done = run("env=reach", "env.max_steps=10", f"policy_path={models['policy']}", f"critic_path={models['critic']}",
               "rerank.n=4", "episodes=2", f"out={out}", "video=false", "progress=false")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == summary["recorded"] == 2 and summary["planner"] == "rerank"
    assert summary["decisions"] == 6 and summary["mean_decision_ms"] > 0  # 10 steps, re-planned every 4
    assert "mean decision" in done.stdout

    journal = read_journal(out)
    assert [e["source"] for e in journal] == ["policy:policy"] * 2 and [e["seed"] for e in journal] == [0, 1]
    for entry in journal:
        d = entry["decisions"]
        assert entry["planner"] == "rerank" and d["step"] == [0, 4, 8]
        assert all(c in range(4) for c, h in zip(d["chosen"], d["held"], strict=True) if not h)
        assert len(d["ms"]) == len(d["score_spread"]) == 3 and min(d["score_spread"]) >= 0
    data = ChunkDataset(out, chunk_len=4)
    assert len(data) == 20
    item = data[0]
    assert tuple(item["action"].shape) == (4, 4)
    assert not bool(item["intervention"].any())


def test_deploy_script_bad_critic_path_is_one_line(models, tmp_path):
    done = run("env=reach", f"policy_path={models['policy']}", f"critic_path={tmp_path / 'no_critic'}",
               f"out={tmp_path / 'out'}")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: checkpoint path {tmp_path / 'no_critic'} does not exist"]
    assert not (tmp_path / "out").exists()


def test_dual_system_with_scripted_takeover_appends_to_the_dataset(models, tmp_path):
    from policies.deploy import deploy_sim
    from vla.data import read_journal

    cfg = sim_cfg(models, tmp_path / "ds", dual={"enabled": True, "system1_path": str(models["system1"]),
                                                 "n": 3, "s2_every": 4, "s1_every": 2},
                  intervener="scripted", expert=None, scripted={"patience": 1, "delay": 0})
    first = deploy_sim(cfg)
    second = deploy_sim({**cfg, "critic_path": None, "dual": {"enabled": False}, "intervener": "none"})
    assert first["planner"] == "dual" and second["planner"] == "sample"
    journal = read_journal(tmp_path / "ds")
    assert [e["seed"] for e in journal] == [0, 1] and second["dataset_episodes"] == 2  # seeds go on
    d = journal[0]["decisions"]
    s2 = [s for s, sys_ in zip(d["step"], d["system"], strict=True) if sys_ == 2]
    s1 = [s for s, sys_ in zip(d["step"], d["system"], strict=True) if sys_ == 1]
    assert s2 == [0, 4, 8] and s1 == [0, 2, 4, 6, 8]
    assert not any(x for x in d["stale"] if x is not None)  # stepped mode: System 2 is never late
    assert journal[0]["interventions"] == round(first["intervention_rate"] * first["steps"])
    assert journal[1]["planner"] == "sample" and journal[1]["decisions"]["step"] == [0, 4, 8]


def test_feasibility_and_holding_at_an_episode_start(models):
    import sim
    from critics import load_critic
    from policies import load_policy
    from policies.deploy import feasibility, make_agent

    f = feasibility({"feasibility": {"margin": 0.5, "max_step": 0.1}}, np.zeros(2), np.ones(2))
    np.testing.assert_allclose(f.low, [-0.5, -0.5])
    np.testing.assert_allclose(f.high, [1.5, 1.5])
    assert f.max_step == pytest.approx(0.1)
    assert feasibility({}, np.full(2, -np.inf), np.full(2, np.inf)) is None
    assert feasibility({"feasibility": {"bounds": False}}, np.zeros(2), np.ones(2)) is None
    with pytest.raises(ConfigError, match="feasibility: unknown option"):
        feasibility({"feasibility": {"max_stp": 1}}, None, None)

    env = sim.make("reach", max_steps=10)
    obs, _ = env.reset(seed=0)
    policy, critic = load_policy(models["policy"]), load_critic(models["critic"])
    # no candidate can move less than this: the agent holds where the arm is instead of refusing to move
    agent = make_agent({"rerank": {"n": 4}, "feasibility": {"max_step": 1e-9}}, policy, critic,
                       feasible=feasibility({"feasibility": {"max_step": 1e-9}}, None, None),
                       hold=lambda batch: env.unwrapped.hold_action())
    agent.reset(seed=0)
    np.testing.assert_allclose(agent.act(obs), env.unwrapped.hold_action(), atol=1e-6)
    assert agent.decisions[0]["held"] and agent.decisions[0]["chosen"] == -1
    with pytest.raises(ConfigError, match="bad rerank options"):
        make_agent({"rerank": {"m": 4}}, policy, critic)
    with pytest.raises(ConfigError, match="system1_path"):
        from policies.deploy import load_models

        load_models({"policy_path": str(models["policy"]), "critic_path": str(models["critic"]),
                     "dual": {"enabled": True}})
    with pytest.raises(CheckpointError, match="no_policy"):
        load_models({"policy_path": str(models["policy"].parent / "no_policy")})


@pytest.mark.filterwarnings("ignore::UserWarning")  # GLFW probing for a display when rendering
def test_robot_server_and_client_over_the_sim_arm(models, tmp_path, monkeypatch):
    from policies.deploy import run_robot
    from real_robot import run as bridge
    from real_robot.server import PolicyServer
    from vla.data import read_journal

    hosted = []
    monkeypatch.setattr(bridge, "serve", lambda cfg, source: hosted.append((cfg, source)))
    common = {"robot": ARM, "policy_path": str(models["arm"]), "critic_path": str(models["arm_critic"]),
              "rerank": {"n": 3}, "feasibility": {"margin": 0.05}}
    assert run_robot({**common, "role": "server", "deploy": {"server": {"port": 0}}}) is None
    (cfg, source), = hosted
    assert cfg["deploy"]["server"]["port"] == 0 and source.name == "arm"
    assert source.reranker.cfg.n == 3 and source.reranker.feasibility.low is not None  # the arm's joint box

    with PolicyServer(source, port=0) as server:
        summary = run_robot({"robot": ARM, "role": "client", "out": str(tmp_path / "arm_ds"),
                             "deploy": {**ARM_DEPLOY, "server": {"url": server.url, "timeout_s": 5.0}}})
        assert server.served >= 3  # re-planned every 4 of 12 steps
    assert summary["episodes"] == summary["recorded"] == 1 and summary["source"] == "policy:arm"
    assert [(e["source"], e["length"]) for e in read_journal(tmp_path / "arm_ds")] == [("policy:arm", 12)]

    with pytest.raises(ConfigError, match="role=local"):
        run_robot({**common, "role": "server", "dual": {"enabled": True, "system1_path": str(models["system1"])}})
    with pytest.raises(ConfigError, match="role must be"):
        run_robot({**common, "role": "robot"})


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_robot_local_and_robot_collection(models, tmp_path):
    from policies.deploy import collect_robot, run_robot
    from vla.data import read_journal

    out = tmp_path / "local_ds"
    summary = run_robot({"robot": ARM, "role": "local", "policy_path": str(models["arm"]),
                         "critic_path": str(models["arm_critic"]), "rerank": {"n": 3}, "out": str(out),
                         "deploy": dict(ARM_DEPLOY)})
    assert summary["planner"] == "rerank" and summary["decisions"] == 3 and summary["recorded"] == 1
    (entry,) = read_journal(out)
    assert entry["source"] == "policy:arm" and entry["decisions"]["step"] == [0, 4, 8]

    summary = collect_robot({"robot": ARM, "source": "policy", "policy_path": str(models["arm"]), "out": str(out),
                             "deploy": dict(ARM_DEPLOY)})
    assert summary["source"] == "policy:arm" and len(read_journal(out)) == 2
    with pytest.raises(ConfigError, match="no 'teleop' section"):
        collect_robot({"robot": ARM, "source": "teleop", "out": str(out), "deploy": dict(ARM_DEPLOY)})
    with pytest.raises(ConfigError, match="source must be teleop"):
        collect_robot({"robot": ARM, "source": "expert", "out": str(out)})
    with pytest.raises(ShapeError, match="action"):  # a policy for another arm, before any motion
        run_robot({"robot": ARM, "role": "local", "policy_path": str(models["policy"]), "out": str(out),
                   "deploy": dict(ARM_DEPLOY)})
