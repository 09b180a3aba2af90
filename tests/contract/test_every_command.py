"""Every policy kind through every command, as a user calls it (the ChunkPolicy contract, vla/types.py).

Kinds: our flow and diffusion VLA; LeRobot diffusion, pi0, pi0.5 and SmolVLA through the adapter.
Commands: evaluate (plain and re-ranked), collect with the scripted intervener, finetune with every
algorithm, train_critic with the policy, deploy in simulation (re-ranked and dual system), the robot
server and client over the loopback, one round of the improvement loop, and the demo pipeline with
``policy=lerobot``. Each runs the job function its script runs, on the config the script composes
(pi0 and pi0.5 only exist in-process, see conftest.py); a script file itself runs in the
bad-input test, which checks the one-line error, the exit status and that nothing was written
(every script reports a VLAError the same way). ``make test`` runs a subset (LeRobot kinds first);
``pytest -m slow tests/contract`` the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from contract.kinds import ARM, ENV, KINDS, LEROBOT, TASK, checkpoint, compose, data_arg
from safetensors.torch import load_file

from vla.errors import ConfigError, ShapeError

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "HF_HUB_OFFLINE": "1",
                  "OMP_NUM_THREADS": "1"}
ALGOS = ("awm", "apo", "bc", "filtered_bc", "hg_dagger")
SLOW = pytest.mark.slow


def kinds(default: tuple[str, ...]) -> list:
    """Every kind; those outside ``default`` are marked slow (``make test`` keeps within minutes; the
    rest runs with ``pytest -m slow``: our own kinds have their own tests of each command too)."""
    return [pytest.param(k, marks=() if k in default else SLOW) for k in KINDS]


TRAIN = ["train.warmup_steps=0", "train.progress=false", "train.log_every=1"]


def script(name: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / f"{name}.py"), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=SUBPROCESS_ENV, cwd=REPO, timeout=600)


def one_line_error(done: subprocess.CompletedProcess, *words: str) -> str:
    assert done.returncode != 0, done.stdout[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _evaluate(world, kind: str, out: Path, *extra: str, episodes: int = 2) -> dict:
    from scripts.evaluate import evaluate_policy

    cfg = compose("evaluate", f"env={TASK}", *ENV, f"policy_path={checkpoint(world, kind)}", f"episodes={episodes}",
                  f"num_envs={episodes}", "videos=0", f"out={out}", *extra)
    metrics = evaluate_policy(cfg)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["episodes"] == episodes and 0.0 <= metrics["success_rate"] <= 1.0 and len(metrics["ci95"]) == 2
    return metrics


# -- the interface itself --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_the_policy_keeps_the_whole_contract(world, kind):
    """Everything the other packages call, with the shapes the protocol promises."""
    import sim
    from policies import load_policy
    from vla.data.batch import obs_to_batch
    from vla.types import ChunkPolicy

    policy = load_policy(checkpoint(world, kind))
    assert isinstance(policy, ChunkPolicy)
    assert 1 <= policy.execute_steps <= policy.chunk_len
    assert policy.features["action"] == (policy.action_dim,) and policy.features["observation.state"] == (17,)
    env = sim.make(TASK, obs_mode="both", cameras=["front"], image_size=32)
    obs, _ = env.reset(seed=3)
    ctx = policy.encode(obs_to_batch([obs], "cpu"))
    H, Da = policy.chunk_len, policy.action_dim
    noise = torch.randn(1, 3, H, Da, generator=torch.Generator().manual_seed(0))
    a = policy.sample(ctx, n=3, noise=noise)
    assert a.shape == (1, 3, H, Da) and torch.isfinite(a).all()
    assert torch.allclose(a, policy.sample(ctx, n=3, noise=noise.clone()))
    refined = policy.sample(ctx, n=3, noise=noise, init=a, t_start=0.2)
    assert refined.shape == a.shape and torch.isfinite(refined).all()
    assert policy.sample(ctx, n=3, noise=noise, t_start=0.5).shape == a.shape
    t = policy.sample_time(8, "cpu")
    assert t.shape == (8,) and float(t.min()) >= 0 and float(t.max()) <= 1
    policy.check_compatible({k: s.shape for k, s in env.observation_space.spaces.items() if s.shape} |
                            {"action": env.action_space.shape}, where="env 'reach'")
    with pytest.raises(ShapeError, match=r"observation.state.*\(17,\)|\(17,\).*observation.state"):
        policy.check_compatible({"observation.state": (9,), "observation.images.front": (32, 32, 3),
                                 "action": (Da,)}, where="a robot")
    env.close()


# -- evaluate.py -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_plain_and_reranked(world, kind, tmp_path):
    plain = _evaluate(world, kind, tmp_path / "plain")
    assert plain["critic_path"] is None
    reranked = _evaluate(world, kind, tmp_path / "rerank", f"critic_path={world['critic']}", "rerank.n=3",
                         episodes=1)
    assert reranked["rerank"]["n"] == 3 and reranked["critic_path"] == str(world["critic"])


# -- collect.py source=policy with the scripted intervener ------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_collect_with_the_scripted_intervener(world, kind, tmp_path):
    from policies.pipeline import _collect
    from vla.data import read_journal

    out = tmp_path / "rollouts"
    _collect({"episodes": 1, "task": TASK, "env_overrides": ENV, "seed": 7}, out, "policy",
             [f"policy_path={checkpoint(world, kind)}", f"policy_name={kind}", "intervener=scripted", "video=false"])
    (entry,) = read_journal(out)
    assert entry["source"] == f"policy:{kind}" and entry["seed"] == 7 and entry["length"] >= 1


# -- finetune.py, every algorithm ------------------------------------------------------------------
def _finetune_cases():
    """AWM and APO (the implicit likelihood at caller-given noise and time) on every LeRobot kind by
    default; everything else is slow (tests/scripts/test_finetune.py covers our own kinds)."""
    for kind in KINDS:
        for algo in ALGOS:
            fast = kind in LEROBOT and algo in ("awm", "apo")
            yield pytest.param(kind, algo, id=f"{kind}-{algo}", marks=() if fast else SLOW)


@pytest.mark.parametrize(("kind", "algo"), list(_finetune_cases()))
def test_finetune_every_algorithm(world, kind, algo, tmp_path):
    from policies import load_policy
    from policies.finetune import finetune

    extra = [f"critic_path={world['critic']}", "algo.advantage=critic"] if algo == "awm" else []
    out = finetune(compose("finetune", f"algo={algo}", f"policy_path={checkpoint(world, kind)}", data_arg(world),
                           f"out={tmp_path / 'out'}", "steps=1", "batch_size=4", *TRAIN, *extra))
    tuned = load_policy(out)
    base = load_policy(checkpoint(world, kind))
    assert (type(tuned), tuned.chunk_len, tuned.action_dim) == (type(base), base.chunk_len, base.action_dim)
    before = load_file(str(checkpoint(world, kind) / "model.safetensors"))
    after = load_file(str(out / "checkpoints" / "last" / "pretrained_model" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "fine-tuning left every weight unchanged"


# -- train_critic.py with the policy -----------------------------------------------------------------
@pytest.mark.parametrize("kind", kinds(LEROBOT))
def test_train_critic_with_the_policy(world, kind, tmp_path):
    from critics import load_critic
    from critics.train import train_critic

    out = train_critic(compose("train_critic", "critic=aloe", data_arg(world), f"policy_path={checkpoint(world, kind)}",
                               f"out={tmp_path / 'critic'}", "steps=2", "batch_size=8", "critic.chunk_len=2",
                               "critic.ensemble=2", "critic.hidden=[16]", "critic.n_next=1", "critic.encoder.dim=16",
                               "diagnostics.value_samples=1", "diagnostics.bootstrap=0", *TRAIN))
    critic = load_critic(out)
    assert critic.chunk_len == 2 and critic.action_dim == 4
    assert (out / "diagnostics.json").is_file()


# -- deploy.py in simulation: re-ranked, and the dual system with the kind as System 1 and 2 ----------
@pytest.mark.parametrize("kind", KINDS)
def test_deploy_reranked_and_dual(world, kind, tmp_path):
    from policies.deploy import deploy_sim
    from vla.data import read_journal

    env = compose("deploy", f"env={TASK}", *ENV)["env"]
    common = {"env": env, "policy_path": str(checkpoint(world, kind)), "critic_path": str(world["critic"]),
              "episodes": 1, "seed": 0, "video": False, "progress": False, "feasibility": {"margin": 0.05}}
    reranked = deploy_sim({**common, "rerank": {"n": 3}, "out": str(tmp_path / "rerank")})
    assert reranked["planner"] == "rerank" and reranked["decisions"] >= 1
    dual = deploy_sim({**common, "out": str(tmp_path / "dual"), "dual": {
        "enabled": True, "system1_path": str(checkpoint(world, kind)), "n": 2, "s2_every": 4, "s1_every": 2}})
    assert dual["planner"] == "dual"
    (entry,) = read_journal(tmp_path / "dual")
    systems = entry["decisions"]["system"]
    assert 1 in systems and 2 in systems


# -- the robot server and client over the loopback ---------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_robot_server_and_client(world, kind, tmp_path, monkeypatch):
    from policies.deploy import run_robot
    from real_robot import run as bridge
    from real_robot.server import PolicyServer
    from vla.data import read_journal

    hosted = []
    monkeypatch.setattr(bridge, "serve", lambda cfg, source: hosted.append(source))
    run_robot({"robot": ARM, "role": "server", "policy_path": str(checkpoint(world, kind)),
               "critic_path": str(world["critic"]), "rerank": {"n": 2}, "deploy": {"server": {"port": 0}}})
    (source,) = hosted
    assert source.state_dim == 17 and source.cameras == ["observation.images.front"]
    deploy = {"episodes": 1, "max_steps": 6, "listen_keys": False, "reset_wait_s": 0.0, "seed": 0}
    with PolicyServer(source, port=0) as server:
        summary = run_robot({"robot": ARM, "role": "client", "out": str(tmp_path / "arm"),
                             "deploy": {**deploy, "server": {"url": server.url, "timeout_s": 10.0}}})
        assert server.served >= 2
    assert summary["recorded"] == 1
    assert [e["length"] for e in read_journal(tmp_path / "arm")] == [6]


# -- improve.py: one round ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", kinds(()))  # its stages run above one by one; the loop as a whole is slow
def test_improve_one_round(world, kind, tmp_path):
    from policies import load_policy
    from policies.improve import run_improve

    tiny = compose("demo", "experiment=tiny")
    cfg = compose("improve", f"task={TASK}", f"env_overrides=[{','.join(repr(o) for o in ENV)}]",
                  f"policy_path={checkpoint(world, kind)}", f"data=[{world['demos']}]", f"out={tmp_path / 'run'}",
                  "rounds=1", "rollouts.episodes=1", "rollouts.overrides=['video=false']", "eval.episodes=1",
                  "eval.videos=0")
    cfg["critic"]["overrides"] = [*tiny["critic"]["overrides"], "critic.chunk_len=2"]
    cfg["refine"]["overrides"] = tiny["refine"]["overrides"]
    summary = run_improve(cfg)
    rows = json.loads((summary.parent / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [0, 1] and all(r["eval"]["episodes"] == 1 for r in rows)
    assert type(load_policy(tmp_path / "run" / "round_1" / "policy")) is type(load_policy(checkpoint(world, kind)))


# -- the demo pipeline on a LeRobot base -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lerobot_diffusion", pytest.param("lerobot_smolvla", marks=SLOW)])
def test_pipeline_with_a_lerobot_base(world, kind, tmp_path):
    from policies.pipeline import run_pipeline

    cfg = compose("demo", "experiment=tiny", f"out={tmp_path / 'demo'}", "workers=1", "base.policy=lerobot",
                  f"env_overrides=[{','.join(repr(o) for o in ENV)}]", "demos.episodes=2", "rollouts.episodes=1",
                  "eval.episodes=1", "eval.num_envs=1", "eval.videos=0", "refine.methods=[awm,apo]",
                  "eval.methods=[base,base_rerank,awm,dual]")
    cfg["base"]["overrides"] = [f"policy.path={checkpoint(world, kind)}", "steps=1", "batch_size=4",
                                "train.save_every=1", *TRAIN]
    cfg["critic"]["overrides"].append("critic.chunk_len=2")
    report = run_pipeline(cfg)
    assert report.is_file()
    for method in ("base", "base_rerank", "awm", "dual"):
        assert json.loads((tmp_path / "demo" / "eval" / method / "metrics.json").read_text())["episodes"] == 1
    adapter = json.loads((tmp_path / "demo" / "base" / "checkpoints" / "last" / "pretrained_model"
                          / "vla_adapter.json").read_text())
    assert adapter["policy_type"] == kind.removeprefix("lerobot_")


# -- bad input: one line, non-zero exit, nothing written -------------------------------------------
def test_a_lerobot_checkpoint_for_other_sizes_is_one_line_before_anything_is_written(world, tmp_path):
    import tiny_lerobot

    other = dict(world["ours"], **{"observation.state": (9,)})
    stats = dict(world["lerobot_stats"])
    stats["observation.state"] = {k: v[:9] for k, v in stats["observation.state"].items()}
    path = tiny_lerobot.build_diffusion(other, stats, tmp_path / "other_arm")
    out = tmp_path / "eval"
    line = one_line_error(script("evaluate", f"env={TASK}", *ENV, f"policy_path={path}", "episodes=1", f"out={out}"),
                          "observation.state", "(17,)", "(9,)")
    assert "env 'reach'" in line and not out.exists()
    # no camera in the env: the policy's camera is named (the same check, in-process)
    from scripts.evaluate import evaluate_policy

    with pytest.raises(ShapeError, match="observation.images.front"):
        evaluate_policy(compose("evaluate", f"env={TASK}", "env.obs_mode=state",
                                f"policy_path={world['lerobot_diffusion']}", "episodes=1", f"out={out}"))
    assert not out.exists()
    # data of another arm for fine-tuning: the same, before any training
    from policies.finetune import finetune

    with pytest.raises(ShapeError, match=r"observation.state.*\(17,\).*\(9,\)"):
        finetune(compose("finetune", "algo=bc", f"policy_path={path}", data_arg(world), f"out={tmp_path / 'ft'}",
                         "steps=1", "batch_size=4", *TRAIN))
    assert not (tmp_path / "ft").exists()


def test_a_lerobot_type_without_a_generative_head_says_what_it_can_serve(world, tmp_path):
    """ACT: evaluation works; re-ranking, the dual system, AWM and APO fail in one line that lists them."""
    from policies.finetune import finetune
    from scripts.evaluate import evaluate_policy

    metrics = _evaluate(world, "act", tmp_path / "plain")
    assert metrics["episodes"] == 2
    with pytest.raises(ConfigError, match=r"re-ranking .*'act'.*evaluate.py.*diffusion"):
        evaluate_policy(compose("evaluate", f"env={TASK}", *ENV, f"policy_path={world['act']}",
                                f"critic_path={world['critic']}", "rerank.n=2", "episodes=1",
                                f"out={tmp_path / 'rerank'}"))
    assert not (tmp_path / "rerank").exists()

    with pytest.raises(ConfigError, match=r"APO .*'act'.*finetune.py algo=bc"):
        finetune(compose("finetune", "algo=apo", f"policy_path={world['act']}", data_arg(world),
                         f"out={tmp_path / 'apo'}", "steps=1", "batch_size=4", *TRAIN))
    # what it can serve, it serves: behaviour cloning on the same data
    out = finetune(compose("finetune", "algo=bc", f"policy_path={world['act']}", data_arg(world),
                           f"out={tmp_path / 'bc'}", "steps=1", "batch_size=4", *TRAIN))
    assert (out / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").is_file()


def test_every_lerobot_kind_is_in_the_suite():
    import tiny_lerobot

    assert {f"lerobot_{k}" for k in tiny_lerobot.KINDS} == set(LEROBOT)
