"""The improvement loop (policies/improve.py, scripts/improve.py) on a tiny config: two rounds end to end,
each round from the last one's policy and on all data so far, a rerun redoing only what was removed,
and bad configs refused with a clear message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from policies.improve import check_config, run_improve
from policies.pipeline import _collect, _train, compose_stage
from vla import checkpoint as ckpt
from vla.data import read_journal
from vla.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    """(demos, base policy): three expert reach episodes and a tiny policy trained a few steps on them."""
    root = tmp_path_factory.mktemp("improve")
    tiny = compose_stage("demo", ["experiment=tiny"])
    demos, policy = root / "demos", root / "base"
    _collect({"episodes": 3, "task": "reach", "seed": 0}, demos, "expert", ["video=false"])
    _train([f"policy={tiny['base']['policy']}", "env=reach", f"data=[{demos}]", *tiny["base"]["overrides"]], policy)
    return demos, policy


def _config(base, out: Path, *overrides: str) -> dict:
    demos, policy = base
    cfg = compose_stage("improve", ["task=reach", f"policy_path={policy}", f"data=[{demos}]", f"out={out}",
                                    "rounds=2", "rollouts.episodes=2", "rollouts.overrides=['video=false']",
                                    "eval.episodes=2", "eval.num_envs=2", "eval.videos=0", *overrides])
    tiny = compose_stage("demo", ["experiment=tiny"])  # the tiny budgets of the demo's tests
    cfg["critic"]["overrides"] = tiny["critic"]["overrides"]
    cfg["refine"]["overrides"] = tiny["refine"]["overrides"]
    return cfg


def test_two_rounds_run_chain_and_resume(base, tmp_path):
    demos, policy = base
    out = tmp_path / "run"
    summary = run_improve(_config(base, out))
    assert summary == out / "summary.md"

    stages = ["round_0/eval"] + [f"round_{r}/{s}" for r in (1, 2) for s in ("rollouts", "critic", "policy", "eval")]
    for stage in stages:
        assert (out / stage / "DONE.json").exists(), stage
    for r in (1, 2):
        assert len(read_journal(out / f"round_{r}/rollouts")) == 2
        assert ckpt.resolve_checkpoint(out / f"round_{r}/policy").is_dir()
    seeds = [e["seed"] for r in (1, 2) for e in read_journal(out / f"round_{r}/rollouts")]
    assert len(set(seeds)) == 4  # new start states every round

    # round 2 starts from round 1's policy and trains on the demos and both rounds' rollouts
    rollouts = [str(out / f"round_{r}/rollouts") for r in (1, 2)]
    done = json.loads((out / "round_2/policy/DONE.json").read_text())
    assert done["policy_path"] == str(out / "round_1/policy")
    assert done["data"] == [str(demos.resolve()), *rollouts]
    assert done["critic_path"] == str(out / "round_2/critic") and done["algo"]["name"] == "awm"
    state = ckpt.resolve_checkpoint(out / "round_2/policy").parent / "training_state/trainer_state.json"
    run_config = json.loads(state.read_text())["run_config"]
    assert run_config["policy_path"] == str(out / "round_1/policy") and run_config["data"] == done["data"]
    critic = json.loads((out / "round_2/critic/DONE.json").read_text())
    assert critic["policy_path"] == str(out / "round_1/policy") and critic["data"] == done["data"]
    round1 = json.loads((out / "round_1/policy/DONE.json").read_text())
    assert round1["policy_path"] == str(policy.resolve()) and round1["data"] == done["data"][:2]

    result = json.loads((out / "summary.json").read_text())
    assert [row["round"] for row in result["rounds"]] == [0, 1, 2]
    for row in result["rounds"]:
        ev = row["eval"]
        assert ev["episodes"] == 2 and ev["ci95"][0] <= ev["success_rate"] <= ev["ci95"][1]
    assert result["rounds"][1]["rollouts"]["episodes"] == 2
    table = summary.read_text()
    assert "| 0 (start) |" in table and "| 2 |" in table and "(n=2)" in table

    # a killed run resumes: what was removed is redone, finished stages are skipped
    before = {s: (out / s / "DONE.json").read_text() for s in stages}
    shutil.rmtree(out / "round_2/eval")
    (out / "round_1/rollouts/DONE.json").unlink()
    run_improve(_config(base, out))
    for stage in stages:
        if stage not in ("round_2/eval", "round_1/rollouts"):
            assert (out / stage / "DONE.json").read_text() == before[stage], stage
    assert (out / "round_2/eval/metrics.json").exists()
    assert len(read_journal(out / "round_1/rollouts")) == 2  # nothing collected twice

    with pytest.raises(ConfigError, match="algo: 'awm' -> 'apo'"):
        run_improve(_config(base, out, "algo=apo"))


@pytest.mark.parametrize("override,message", [
    ("rounds=0", "rounds=0: need an integer >= 1"),
    ("policy_path=/nonexistent/base", "policy_path=/nonexistent/base does not exist"),
    ("data=[/nonexistent/demos]", "data: /nonexistent/demos is not a dataset"),
    ("critic.type=nope", "critic.type='nope'"),
    ("task=fly", "task='fly'"),
    ("rounds=10", "round 10 would collect on seeds 10000..10001"),
])
def test_bad_config_is_refused_clearly(base, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        check_config(_config(base, tmp_path / "run", override))


def test_unknown_algo_or_missing_value_is_refused_clearly(base, tmp_path):
    cfg = _config(base, tmp_path / "run")
    for algo in ("ppo", {**cfg["algo"], "name": "ppo"}):
        with pytest.raises(ConfigError, match=r"algo='ppo': expected one of \('awm', 'apo'"):
            check_config({**cfg, "algo": algo})
    with pytest.raises(ConfigError, match="missing config value 'policy_path'"):
        check_config({**cfg, "policy_path": "???"})  # as composed without policy_path=


def test_script_reports_a_bad_config_and_exits_1(base, tmp_path):
    demos, policy = base
    cmd = [sys.executable, str(REPO / "scripts/improve.py"), "task=reach", f"policy_path={policy}",
           f"data=[{demos}]", f"out={tmp_path / 'run'}", "rounds=0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "error: rounds=0: need an integer >= 1"
    unknown = subprocess.run([*cmd[:-1], "algo=ppo"], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert unknown.returncode == 1 and "algo/ppo" in unknown.stderr and "hg_dagger" in unknown.stderr


def test_script_runs_a_round_and_says_where_the_summary_is(base, tmp_path):
    demos, policy = base
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "scripts/improve.py"), "task=reach", f"policy_path={policy}",
           f"data=[{demos}]", f"out={out}", "rounds=1", "algo=bc", "rollouts.episodes=1",
           "rollouts.overrides=['video=false']", "eval.episodes=1", "eval.videos=0",
           "refine.overrides=['steps=2','batch_size=8','train.save_every=2','train.warmup_steps=1','train.progress=false']"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == f"summary: {(out / 'summary.md').resolve()}"
    assert "| 1 | 1 |" in done.stdout
    assert not (out / "round_1/critic").exists()  # bc uses no critic
    assert json.loads((out / "round_1/policy/DONE.json").read_text())["algo"]["name"] == "bc"
