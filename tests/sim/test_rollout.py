"""vla.rollout: the episode loop with a recorder, videos, and vectorised evaluation."""

import gymnasium as gym
import numpy as np
import pytest

import sim
from vla.data import EpisodeWriter, open_lerobot, read_journal
from vla.errors import ConfigError
from vla.rollout import evaluate, run_episode, wilson_interval


class Random:
    def __init__(self, env):
        self.space = env.action_space

    def reset(self, seed=None):
        self.space.seed(seed)

    def act(self, obs):
        return self.space.sample()


def test_run_episode_records_steps_and_metadata(tmp_path):
    env = sim.make("reach")
    writer = EpisodeWriter(tmp_path / "ds", fps=10, obs_spec={"observation.state": (17,)}, action_dim=4,
                           use_videos=False)
    ok = run_episode(env, sim.make_expert(env), writer=writer, seed=4)
    bad = run_episode(env, Random(env), writer=writer, seed=5, max_steps=6, source="policy:random")
    skipped = run_episode(env, Random(env), writer=writer, seed=6, max_steps=6, keep_failures=False)
    writer.close()
    assert ok.success and not bad.success and not skipped.success
    journal = read_journal(tmp_path / "ds")
    assert [(e["source"], e["seed"], e["length"], e["success"]) for e in journal] == [
        ("demo", 4, ok.steps, True), ("policy:random", 5, 6, False)]
    ds = open_lerobot(tmp_path / "ds")
    assert len(ds) == ok.steps + 6
    last = ds[ok.steps - 1]
    assert bool(last["next.success"]) and bool(last["next.done"]) and float(last["next.reward"]) == 1.0
    assert bool(ds[ok.steps + 5]["next.done"])  # cut by max_steps: the episode still ends there


def test_record_video_frames():
    env = sim.make("reach", render_mode="rgb_array", render_size=32)
    res = run_episode(env, sim.make_expert(env), seed=0, record_video=True)
    assert len(res.frames) == res.steps + 1 and res.frames[0].shape == (32, 32, 3)
    with pytest.raises(ConfigError, match="record_video"):
        run_episode(sim.make("reach"), Random(env), seed=0, max_steps=1, record_video=True)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_vector_evaluation_matches_single_env_runs(asynchronous):
    venv = sim.make_vector("reach", 2, asynchronous=asynchronous, max_steps=8)
    seeds = [3, 1, 4, 1, 5]
    result = evaluate(venv, lambda: Random(sim.make("reach")), seeds)
    venv.close()
    assert result.seeds == seeds and result.episodes == 5
    single = sim.make("reach", max_steps=8)
    for seed, length, task in zip(seeds, result.lengths, result.tasks, strict=True):
        obs, _ = single.reset(seed=seed)
        assert obs["task"] == task  # each episode ran with its own seed
        assert 1 <= length <= 8
    # the same seed twice gives the same episode
    assert result.lengths[1] == result.lengths[3] and result.returns[1] == result.returns[3]


def test_vector_evaluation_of_the_expert():
    venv = sim.make_vector("push", 2)
    subenvs = iter(venv.envs)
    result = evaluate(venv, lambda: sim.make_expert(next(subenvs)), seeds=range(6))
    assert result.success_rate == 1.0
    summary = result.summary()
    assert summary["episodes"] == 6 and summary["ci95"][0] > 0.5 and summary["ci95"][1] == pytest.approx(1.0)


def test_evaluate_needs_manual_resets():
    venv = gym.vector.SyncVectorEnv([lambda: sim.make("reach")])
    with pytest.raises(ConfigError, match="autoreset"):
        evaluate(venv, lambda: Random(sim.make("reach")), [0])


def test_wilson_interval():
    lo, hi = wilson_interval(8, 10)
    assert 0.44 < lo < 0.5 and 0.94 < hi < 0.97
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert np.isclose(wilson_interval(10, 10)[1], 1.0)
