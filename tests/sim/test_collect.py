"""Collection: the script (in-process and as a command), expert demos, policy rollouts with takeovers."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import FakePolicy

import sim
from sim.collect import collect
from vla.data import open_lerobot, read_journal
from vla.errors import ShapeError

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "collect.py"


def run_script(monkeypatch, *overrides) -> int:
    """Run scripts/collect.py's Hydra main in this process (the command line minus a new interpreter)."""
    spec = importlib.util.spec_from_file_location("collect_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["collect.py", "progress=false", *overrides])
    try:
        module.main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


class BiasedExpert:
    """A deliberately poor policy: the expert shifted 6 cm sideways."""

    def __init__(self, env):
        self.expert = sim.make_expert(env)

    def reset(self, seed=None):
        self.expert.reset(seed)

    def act(self, obs):
        a = self.expert.act(obs).copy()
        a[1] += 0.06
        return a


class WanderPolicy(FakePolicy):
    """A deliberately poor ChunkPolicy: plans chunks that drift randomly around the current TCP."""

    chunk_len, action_dim = 5, 4

    def encode(self, obs):
        return obs["observation.state"][:, 5:8]  # (B, 3) TCP position

    def sample(self, ctx, n=1, noise=None):
        B = ctx.shape[0]
        if noise is None:
            noise = torch.randn(B, n, self.chunk_len, self.action_dim)
        xyz = ctx[:, None, None, :] + 0.03 * noise[..., :3].cumsum(dim=2)  # (B, N, H, 3)
        return torch.cat([xyz, torch.zeros(B, n, self.chunk_len, 1)], dim=-1)

    def loss(self, batch, reduction="mean", noise=None, t=None):
        err = (batch["action"][..., :3] - self.encode(batch)[:, None, :]).pow(2).mean(dim=(1, 2))
        return err.mean() if reduction == "mean" else err


@pytest.mark.parametrize("name", sim.task_names())
def test_script_collects_expert_demos_for_every_task(monkeypatch, tmp_path, capsys, name):
    out = tmp_path / name
    assert run_script(monkeypatch, f"env={name}", "source=expert", "episodes=5", f"out={out}") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 5 and summary["success_rate"] >= 0.8 and summary["intervention_rate"] == 0
    journal = read_journal(out)
    assert [e["source"] for e in journal] == ["demo"] * 5 and [e["seed"] for e in journal] == list(range(5))
    ds = open_lerobot(out)
    assert len(ds) == summary["steps"]
    assert ds[0]["observation.state"].shape == (17,) and ds[0]["task"] in sim.TASKS[name].instructions
    assert not any(bool(ds[i]["intervention"]) for i in range(len(ds)))


def test_policy_source_with_scripted_intervener_records_both_values(tmp_path):
    cfg = {"env": {"name": "pick_place"}, "source": "policy", "episodes": 3, "out": str(tmp_path / "pp"),
           "seed": 10, "policy_name": "biased", "intervener": "scripted", "progress": False,
           "scripted": {"delay": 1, "patience": 2}}
    summary = collect(cfg, agent_factory=BiasedExpert)
    assert summary["episodes"] == 3 and summary["source"] == "policy:biased"
    assert 0 < summary["intervention_rate"] < 1 and summary["episodes_with_intervention"] == 3
    journal = read_journal(tmp_path / "pp")
    assert {e["source"] for e in journal} == {"policy:biased"} and [e["seed"] for e in journal] == [10, 11, 12]
    ds = open_lerobot(tmp_path / "pp")
    flags = np.array([bool(ds[i]["intervention"]) for i in range(len(ds))])
    assert flags.any() and not flags.all()
    gap = np.array([float(np.abs(ds[i]["action"] - ds[i]["policy_action"]).max()) for i in range(len(ds))])
    assert np.all(gap[~flags] == 0.0)  # autonomous steps: executed what the policy proposed
    assert np.median(gap[flags]) > 0.03  # takeover steps: the expert's action, the policy's is kept aside


def test_policy_interface_object_runs_with_a_receding_horizon(tmp_path):
    cfg = {"env": {"name": "push"}, "source": "policy", "episodes": 2, "out": str(tmp_path / "w"),
           "execute_steps": 3, "intervener": "scripted", "progress": False, "policy_path": "/ckpt/wander"}
    summary = collect(cfg, agent_factory=lambda env: WanderPolicy())
    assert summary["source"] == "policy:wander" and summary["takeovers"] > 0
    ds = open_lerobot(tmp_path / "w")
    flags = np.array([bool(ds[i]["intervention"]) for i in range(len(ds))])
    assert flags.any() and not flags.all()
    with pytest.raises(ShapeError, match=r"policy makes \(4,\), the env takes \(5,\)"):
        collect({**cfg, "env": {"name": "push", "control": "joint"}, "out": str(tmp_path / "j")},
                agent_factory=lambda env: WanderPolicy())


class HintedWander(WanderPolicy):
    """Carries its own receding horizon (``execute_steps``, as every ChunkPolicy does) and counts plans."""

    execute_steps = 2

    def __init__(self):
        self.plans = 0

    def encode(self, obs):
        self.plans += 1
        return super().encode(obs)


def test_rollouts_use_the_policys_own_receding_horizon(tmp_path):
    # rollouts must behave as the policy is evaluated and deployed (re-plan every 2 steps here),
    # not run whole chunks open loop; an explicit execute_steps still wins
    cfg = {"env": {"name": "push"}, "source": "policy", "episodes": 1, "out": str(tmp_path / "h"),
           "intervener": "none", "progress": False, "policy_path": "/ckpt/wander"}
    for override, per_plan in ((None, 2), (5, 5)):
        policy = HintedWander()
        collect({**cfg, "execute_steps": override, "out": str(tmp_path / f"h{override}")},
                agent_factory=lambda env, p=policy: p)
        steps = len(open_lerobot(tmp_path / f"h{override}"))
        assert policy.plans == -(-steps // per_plan), (override, steps, policy.plans)


LINE_BENCH = """
import gymnasium as gym
import numpy as np

class Line(gym.Env):
    task = "go right"

    def __init__(self):
        self.observation_space = gym.spaces.Box(-10, 10, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1, 0))
        return np.array([self.x, 0.0], np.float32), {}

    def step(self, action):
        self.x += 0.25 * float(action[0])
        done = self.x > 1.0
        return np.array([self.x, 0.0], np.float32), float(done), done, False, {"is_success": done}

def controller(obs):
    return np.array([1.0], np.float32)

gym.register("Line-v0", entry_point=Line, max_episode_steps=30)
"""


class Backwards:
    def reset(self, seed=None):
        pass

    def act(self, obs):
        return np.array([-1.0], np.float32)


def test_external_gym_env_with_the_users_controller(monkeypatch, tmp_path, capsys):
    (tmp_path / "line_bench.py").write_text(LINE_BENCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        out = tmp_path / "line"
        assert run_script(monkeypatch, "env=gym", "env.id=line_bench:Line-v0", "source=expert",
                          "expert=line_bench:controller", "episodes=2", f"out={out}") == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["success_rate"] == 1.0 and read_journal(out)[0]["task"] == "go right"
        # the user's controller is also the scripted intervener's reference
        cfg = {"env": {"name": "gym", "id": "line_bench:Line-v0"}, "source": "policy", "episodes": 2,
               "out": str(tmp_path / "line_policy"), "expert": "line_bench:controller", "intervener": "scripted",
               "progress": False, "scripted": {"action_threshold": 0.5, "delay": 0, "min_control": 3}}
        summary = collect(cfg, agent_factory=lambda env: Backwards())
        assert summary["takeovers"] > 0 and summary["success_rate"] == 1.0
    finally:
        sys.modules.pop("line_bench", None)
        import gymnasium

        gymnasium.registry.pop("Line-v0", None)


def test_appending_continues_the_seeds(tmp_path):
    cfg = {"env": {"name": "reach"}, "source": "expert", "episodes": 2, "out": str(tmp_path / "r"), "progress": False}
    collect(cfg)
    summary = collect({**cfg, "expert": {"noise": 0.005}})
    assert summary["dataset_episodes"] == 4
    assert [e["seed"] for e in read_journal(tmp_path / "r")] == [0, 1, 2, 3]


def test_camera_observations_are_recorded(tmp_path):
    cfg = {"env": {"name": "reach", "obs_mode": "both", "image_size": 32}, "source": "expert", "episodes": 1,
           "out": str(tmp_path / "cams"), "progress": False}
    summary = collect(cfg)
    ds = open_lerobot(tmp_path / "cams")
    assert len(ds) == summary["steps"]
    assert tuple(ds[0]["observation.images.front"].shape) == (3, 32, 32)
    assert tuple(ds[0]["observation.images.wrist"].shape) == (3, 32, 32)


def test_script_errors_are_one_line(monkeypatch, tmp_path, capsys):
    assert run_script(monkeypatch, "env=reach", "source=policy", f"out={tmp_path / 'x'}") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: source=policy needs policy_path=<checkpoint or training out dir>"]
    assert run_script(monkeypatch, "env=reach", "env.task=reach the purple ball", f"out={tmp_path / 'y'}") == 1
    assert "unknown instruction 'reach the purple ball'" in capsys.readouterr().err
    assert run_script(monkeypatch, "env=reach", "expert=nowhere_module:act", f"out={tmp_path / 'z'}") == 1
    assert "cannot import module 'nowhere_module'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", sim.task_names())
def test_command_line_for_every_task(tmp_path, name):
    out = tmp_path / name
    proc = subprocess.run([sys.executable, str(SCRIPT), f"env={name}", "source=expert", "episodes=5", f"out={out}",
                           "progress=false"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["episodes"] == 5
    assert len(read_journal(out)) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing else written into the cwd


@pytest.mark.slow
def test_command_line_policy_source_with_scripted_intervener(tmp_path):
    """A barely trained checkpoint (4 steps) is a poor policy: the stand-in must take over."""
    demos = tmp_path / "demos"
    run = [sys.executable, str(SCRIPT), "env=reach", "source=expert", "episodes=3", f"out={demos}", "progress=false"]
    assert subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=600).returncode == 0
    ckpt = tmp_path / "run"
    train = [sys.executable, str(ROOT / "scripts" / "train.py"), "policy=tiny", "env=reach", f"data=[{demos}]",
             f"out={ckpt}", "steps=4", "batch_size=8", "train.progress=false"]
    done = subprocess.run(train, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "rollouts"
    collect_cmd = [sys.executable, str(SCRIPT), "env=reach", "source=policy", f"policy_path={ckpt}",
                   "intervener=scripted", "episodes=3", f"out={out}", "progress=false"]
    proc = subprocess.run(collect_cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["source"] == "policy:run" and summary["takeovers"] > 0
    ds = open_lerobot(out)
    flags = {bool(ds[i]["intervention"]) for i in range(len(ds))}
    assert flags == {True, False}
