"""scripts/train.py and scripts/evaluate.py end to end, as subprocesses, on a tiny config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vla import checkpoint as ckpt
from vla.errors import CheckpointError, ConfigError, ShapeError

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / script), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    """Three expert episodes of the reach task, state only."""
    import sim
    from vla.data import EpisodeWriter
    from vla.rollout import run_episode

    root = tmp_path_factory.mktemp("data") / "reach_demos"
    env = sim.make("reach")
    spec = {k: s.shape for k, s in env.observation_space.spaces.items() if getattr(s, "shape", None)}
    with EpisodeWriter(root, fps=10, obs_spec=spec, action_dim=env.action_space.shape[0], use_videos=False) as w:
        for seed in range(3):
            run_episode(env, sim.make_expert(env), writer=w, seed=seed, source="demo")
    return root


@pytest.fixture(scope="module")
def trained(demos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "reach_tiny"
    done = run("train.py", "policy=tiny", "env=reach", f"data=[{demos}]", f"out={out}", "steps=4", "batch_size=8",
               "train.save_every=2", "train.log_every=1", "train.warmup_steps=1", "train.progress=false")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained policy" in done.stdout
    return out


def test_train_script_writes_checkpoints(trained):
    assert ckpt.list_checkpoints(trained) == [2, 4]
    model_dir = ckpt.resolve_checkpoint(trained)
    assert {"config.json", "model.safetensors", "stats.json"} <= {p.name for p in model_dir.iterdir()}
    meta = json.loads((model_dir.parent / "training_state" / "trainer_state.json").read_text())
    assert meta["step"] == 4
    assert meta["run_config"]["env"]["name"] == "reach"
    assert meta["model_config"]["head"] == "flow" and meta["model_config"]["chunk_len"] == 8


def test_evaluate_script_writes_metrics_and_videos(trained, tmp_path):
    out = tmp_path / "eval"
    done = run("evaluate.py", "env=reach", f"policy_path={trained}", "episodes=3", "num_envs=2", "videos=1",
               f"out={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["episodes"] == 3
    assert 0.0 <= metrics["ci95"][0] <= metrics["success_rate"] <= metrics["ci95"][1] <= 1.0
    assert metrics["mean_steps"] > 0 and metrics["seeds"] == [10000, 10002]
    assert sum(t["episodes"] for t in metrics["per_task"].values()) == 3
    assert len(metrics["videos"]) == 1 and (out / metrics["videos"][0]).stat().st_size > 0
    assert (out / "success.png").exists()
    assert "95% CI" in done.stdout


def test_scripts_report_bad_input_in_one_line(trained, tmp_path):
    done = run("evaluate.py", "env=reach", f"policy_path={tmp_path / 'nothing'}", f"out={tmp_path}")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: checkpoint path {tmp_path / 'nothing'} does not exist"]


def test_train_policy_errors(demos, tmp_path):
    from policies import build_policy
    from vla.train import train_policy

    with pytest.raises(ConfigError, match="missing config value 'out'"):
        train_policy({"policy": {"chunk_len": 4}, "data": [str(demos)], "out": "???"}, build_policy)
    with pytest.raises(ConfigError, match="unknown training option"):
        train_policy({"policy": {"chunk_len": 4}, "data": [str(demos)], "out": str(tmp_path), "train": {"lrr": 1}},
                     build_policy)


def test_evaluate_checks_features_before_any_rollout(trained):
    import sim
    from policies import load_policy
    from vla.agent import check_env

    policy = load_policy(trained)
    check_env(policy, sim.make("reach"), "env 'reach'")
    with pytest.raises(ShapeError, match="observation.state"):
        # in pixel mode the state holds no object positions: shorter than the policy's
        check_env(policy, sim.make("reach", obs_mode="pixels", image_size=16), "env 'reach'")


def test_evaluate_with_a_bad_critic_path_is_a_clear_error(trained, tmp_path):
    from scripts.evaluate import evaluate_policy

    cfg = {"env": {"name": "reach"}, "policy_path": str(trained), "critic_path": str(tmp_path / "no_critic"),
           "rerank": {"n": 4}, "episodes": 1, "seed": 10000, "out": str(tmp_path)}
    with pytest.raises(CheckpointError, match="no_critic"):
        evaluate_policy(cfg)


def test_evaluate_reranks_with_a_critic(trained, tmp_path):
    from critics import build_critic
    from policies import load_policy
    from scripts.evaluate import evaluate_policy

    policy = load_policy(trained)  # an untrained critic is enough to exercise the path
    critic = build_critic({"type": "aloe", "ensemble": 2, "hidden": [16]}, policy.config["features"], policy.stats)
    critic.save_pretrained(tmp_path / "critic")
    cfg = {"env": {"name": "reach", "max_steps": 10}, "policy_path": str(trained),
           "critic_path": str(tmp_path / "critic"), "rerank": {"n": 3, "selector": "argmax"},
           "episodes": 2, "num_envs": 2, "seed": 10000, "videos": 0, "out": str(tmp_path / "eval")}
    metrics = evaluate_policy(cfg)
    assert metrics["episodes"] == 2 and metrics["rerank"]["n"] == 3
    assert all(e["steps"] <= 10 for e in metrics["episodes_detail"])
    with pytest.raises(ConfigError, match="bad rerank options"):
        evaluate_policy({**cfg, "rerank": {"m": 3}})
