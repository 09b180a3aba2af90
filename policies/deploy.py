"""Deployment: a trained policy, best-of-N re-ranked by a critic or run as Hume's dual system.

    deploy_sim(cfg)     episodes in simulation (sim.make) with a receding horizon, each recorded
                        into the LeRobot dataset at ``cfg.out`` with its decision log; a summary back
    run_robot(cfg)      the same agents on an arm through the hardware bridge (real_robot.run):
                        role=server hosts the policy, role=client runs the arm against a server,
                        role=local runs both on one machine
    collect_robot(cfg)  scripts/collect.py robot=<cfg>: teleoperated demos, or policy rollouts with takeover

``cfg`` is the composed configs/deploy.yaml (collect.yaml for ``collect_robot``), a DictConfig
or a plain dict. Decisions (chosen candidate, score spread, ms, held/stale) are kept per episode
in the dataset's journal (``vla.data.read_journal``) as columns, so the next round can read them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from vla.agent import check_env
from vla.errors import ConfigError
from vla.types import SOURCE_POLICY_PREFIX, STATE

log = logging.getLogger(__name__)
DECISION_KEYS = ("step", "system", "chosen", "feasible", "held", "stale", "score_spread", "ms")


# -- agents ------------------------------------------------------------------------------------
class SamplePlanner:
    """One sample of the policy per decision (ChunkAgent's default), timed for the decision log."""

    def __init__(self, policy, seed: int = 0):
        self.policy = policy
        self._gen = torch.Generator().manual_seed(int(seed))

    def reseed(self, seed: int) -> None:
        self._gen.manual_seed(int(seed))

    @torch.no_grad()
    def plan(self, batch, last_action=None) -> tuple[np.ndarray, dict]:
        t0 = time.perf_counter()
        noise = torch.randn(1, 1, self.policy.chunk_len, self.policy.action_dim, generator=self._gen)
        device = batch[STATE].device if STATE in batch else "cpu"
        chunk = self.policy.sample(self.policy.encode(batch), n=1, noise=noise.to(device))[0, 0]
        return chunk.cpu().numpy(), {"ms": 1000 * (time.perf_counter() - t0)}


class HoldingPlanner:
    """A re-ranker that takes the arm's current goal as the last action at an episode start: the
    max_step check then starts from where the arm is, and when no candidate is feasible the arm
    holds (the bare re-ranker refuses to move, having nothing to hold)."""

    def __init__(self, reranker, hold):
        self.reranker, self.hold, self.policy = reranker, hold, reranker.policy

    def reseed(self, seed: int) -> None:
        self.reranker.reseed(seed)

    def plan(self, batch, last_action=None):
        if last_action is None:
            last_action = self.hold(batch)
        return self.reranker.plan(batch, last_action)


def feasibility(cfg: dict, low, high):
    """critics.rerank.Feasibility from action bounds (widened by ``margin`` of each range) and max_step."""
    from critics.rerank import Feasibility

    opts = dict(cfg.get("feasibility") or {})
    unknown = set(opts) - {"bounds", "margin", "max_step"}
    if unknown:
        raise ConfigError(f"feasibility: unknown option(s) {sorted(unknown)}; known: bounds, margin, max_step")
    max_step = None if opts.get("max_step") is None else np.asarray(opts["max_step"], np.float32)
    if not opts.get("bounds", True) or low is None or high is None:
        low = high = None
    else:
        low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            low = high = None  # an unbounded space: nothing to check
        else:
            pad = float(opts.get("margin", 0.0)) * (high - low)
            low, high = low - pad, high + pad
    if low is None and max_step is None:
        return None
    return Feasibility(low=low, high=high, max_step=max_step)


def _plain(cfg) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def _device(cfg: dict) -> str:
    device = cfg.get("device") or "cpu"
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def load_models(cfg: dict, device: str = "cpu"):
    """(policy, critic or None, System 1 policy or None) from policy_path, critic_path, dual.system1_path."""
    from critics import load_critic
    from policies import load_policy

    if not cfg.get("policy_path"):
        raise ConfigError("policy_path=<checkpoint or training out dir> is required")
    dual = cfg.get("dual") or {}
    if dual.get("enabled") and not cfg.get("critic_path"):
        raise ConfigError("dual.enabled=true needs critic_path=<ckpt>: System 2 picks its candidate with it")
    if dual.get("enabled") and not dual.get("system1_path"):
        raise ConfigError("dual.enabled=true needs dual.system1_path=<ckpt>: the small System 1 policy")
    policy = load_policy(cfg["policy_path"], device=device)
    critic = load_critic(cfg["critic_path"], device=device) if cfg.get("critic_path") else None
    system1 = load_policy(dual["system1_path"], device=device) if dual.get("enabled") else None
    return policy, critic, system1


def planner_kind(critic, system1) -> str:
    return "dual" if system1 is not None else "rerank" if critic is not None else "sample"


def make_agent(cfg: dict, policy, critic=None, system1=None, feasible=None, hold=None, device: str = "cpu",
               execute_steps: int | None = None):
    """An Agent: Hume's DualSystemAgent with a System 1, else a receding-horizon ChunkAgent whose
    planner is the re-ranker (with a critic) or one timed sample."""
    from critics.rerank import Reranker
    from vla.agent import ChunkAgent, execute_steps_for

    seed = int(cfg.get("seed") or 0)
    if system1 is not None:
        from policies.hume import DualSystemAgent, DualSystemConfig

        opts = {k: tuple(v) if isinstance(v, list) else v for k, v in (cfg.get("dual") or {}).items()
                if k not in ("enabled", "system1_path") and v is not None}
        try:
            dcfg = DualSystemConfig(**{"seed": seed, **opts})
        except TypeError as e:
            raise ConfigError(f"bad dual options {opts}: {e}") from None
        return DualSystemAgent(policy, critic, system1, dcfg, device=device)
    execute = execute_steps_for(policy, execute_steps)
    if critic is None:
        return ChunkAgent(policy, execute, device=device, seed=seed, planner=SamplePlanner(policy, seed))
    planner = Reranker(policy, critic, rerank_config(cfg, seed), feasible)
    return ChunkAgent(policy, execute, device=device, seed=seed,
                      planner=HoldingPlanner(planner, hold) if hold is not None else planner)


def rerank_config(cfg: dict, seed: int = 0):
    from critics.rerank import RerankConfig

    try:
        return RerankConfig(**{"seed": seed, **(cfg.get("rerank") or {})})
    except TypeError as e:
        raise ConfigError(f"bad rerank options {cfg.get('rerank')}: {e}") from None


def compact_decisions(decisions: list[dict]) -> dict[str, list]:
    """The decision log as columns of the fields that occur, rounded: {"step": [0, 4, ...], "ms": [...]}."""
    keys = [k for k in DECISION_KEYS if any(k in d for d in decisions)]

    def short(x):
        return float(f"{x:.4g}") if isinstance(x, float) else x

    return {k: [short(d.get(k)) for d in decisions] for k in keys}


def decision_stats(logs: list[list[dict]]) -> dict:
    flat = [d for episode in logs for d in episode]
    ms = [d["ms"] for d in flat if d.get("ms") is not None]
    return {"decisions": len(flat), "mean_decision_ms": float(np.mean(ms)) if ms else None,
            "held": sum(bool(d.get("held")) for d in flat), "stale": sum(bool(d.get("stale")) for d in flat)}


def policy_name(cfg: dict) -> str:
    return str(cfg.get("policy_name") or Path(str(cfg.get("policy_path") or "policy")).name)


class DecisionWriter:
    """An EpisodeWriter as run_episode and the robot's control loop see it: each episode's journal
    entry gets the agent's decision log (also kept in ``logs``, one list per recorded episode)."""

    def __init__(self, writer, agent, kind: str):
        self.writer, self.agent, self.kind = writer, agent, kind
        self.logs: list[list[dict]] = []

    def __len__(self) -> int:
        return len(self.writer)

    def add_step(self, *args, **kwargs) -> None:
        self.writer.add_step(*args, **kwargs)

    def discard_episode(self) -> None:
        self.writer.discard_episode()

    def end_episode(self, source: str, seed: int | None = None) -> int:
        decisions = list(self.agent.decisions)  # the agent resets them at the next episode start
        index = self.writer.end_episode(source, seed, extra={"planner": self.kind,
                                                             "decisions": compact_decisions(decisions)})
        self.logs.append(decisions)
        return index

    def close(self) -> None:
        self.writer.close()


# -- simulation --------------------------------------------------------------------------------
def deploy_sim(cfg, progress: bool | None = None) -> dict:
    """Run ``cfg.episodes`` episodes of the deployed agent in ``cfg.env`` and record them into ``cfg.out``."""
    from tqdm import tqdm

    import sim
    from sim.collect import action_dim, build_intervener, obs_spec
    from vla.data import EpisodeWriter
    from vla.rollout import run_episode
    from vla.train import set_threads

    cfg = _plain(cfg)
    if not cfg.get("env"):
        raise ConfigError("set env=<task> (simulation) or robot=<config> (an arm, see real_robot/README.md)")
    if not cfg.get("out"):
        raise ConfigError("out=<dir> is required (the dataset to create or append to)")
    episodes = int(cfg.get("episodes") or 0)
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {cfg.get('episodes')}")
    if (cfg.get("intervener") or "none") not in ("none", "scripted"):
        raise ConfigError(f"deploy: intervener must be none or scripted, got {cfg.get('intervener')!r} "
                          "(a person takes over in scripts/collect.py source=policy intervener=teleop)")
    device = _device(cfg)
    set_threads(int(cfg.get("threads") or 0), device)
    policy, critic, system1 = load_models(cfg, device)  # checkpoint errors before any env starts
    env = sim.make_from_config(cfg["env"])
    name = str(cfg["env"].get("name"))
    writer = agent = None
    try:
        check_env(policy, env, f"env '{name}'")
        if system1 is not None:
            check_env(system1, env, f"env '{name}' (for System 1)")
        space = env.action_space
        feasible = feasibility(cfg, getattr(space, "low", None), getattr(space, "high", None))
        hold_action = getattr(env.unwrapped, "hold_action", None)
        agent = make_agent(cfg, policy, critic, system1, feasible, device=device,
                           hold=(lambda batch: hold_action()) if hold_action is not None else None)
        kind, tag = planner_kind(critic, system1), SOURCE_POLICY_PREFIX + policy_name(cfg)
        seed0 = int(cfg.get("seed") or 0)
        intervener = build_intervener(cfg, env, seed=seed0)
        fps = getattr(env.unwrapped, "control_hz", None) or env.metadata.get("render_fps") or 10
        writer = EpisodeWriter(cfg["out"], fps=int(fps), obs_spec=obs_spec(env), action_dim=action_dim(env),
                               robot_type=f"sim:{name}", use_videos=bool(cfg.get("video", True)))
        start = len(writer)  # appending: continue the seeds where the dataset left off
        recorder = DecisionWriter(writer, agent, kind)
        results = []
        show = cfg.get("progress", True) if progress is None else progress
        bar = tqdm(range(episodes), desc=f"deploy {kind}", unit="ep", disable=not show)
        for i in bar:
            seed = seed0 + start + i
            results.append(run_episode(env, agent, intervener=intervener, writer=recorder, seed=seed, source=tag))
            bar.set_postfix(success=f"{np.mean([r.success for r in results]):.2f}")
    finally:
        if writer is not None:
            writer.close()
        if hasattr(agent, "close"):
            agent.close()  # the dual system's real-time thread
        env.close()
    steps = sum(r.steps for r in results)
    return {"out": str(cfg["out"]), "source": tag, "planner": kind, "episodes": len(results),
            "recorded": len(writer) - start, "success_rate": float(np.mean([r.success for r in results])),
            "steps": steps, **decision_stats(recorder.logs),
            "intervention_rate": sum(r.interventions for r in results) / max(steps, 1),
            "takeovers": sum(r.takeovers for r in results), "dataset_episodes": len(writer)}


# -- the arm (real_robot) ----------------------------------------------------------------------
ROLES = ("server", "client", "local")


def robot_bounds(robot_cfg: dict, robot=None):
    """The arm's (low, high) goals: ``limits.low/high`` of the robot config, else the robot's own
    (a sim arm's action space; built here for a sim arm when no robot is given)."""
    limits = robot_cfg.get("limits") or {}
    low, high = limits.get("low"), limits.get("high")
    if low is not None and high is not None:
        return low, high
    if robot is None and robot_cfg.get("type") == "sim":
        from real_robot.robots import make_robot

        arm = make_robot(robot_cfg)
        try:
            return arm.limits
        finally:
            arm.close()
    return getattr(robot, "limits", (None, None))


def robot_summary(cfg: dict, results, source: str) -> dict:
    recorded = [r.episode_index for r in results if r.episode_index is not None]
    if recorded and cfg.get("out"):  # the name the run recorded (a client learns it from the server)
        from vla.data import read_journal

        source = read_journal(cfg["out"])[recorded[-1]]["source"]
    steps = sum(r.steps for r in results)
    return {"out": cfg.get("out"), "source": source, "episodes": len(results),
            "recorded": len(recorded),
            "success_rate": float(np.mean([r.success for r in results])) if results else 0.0,
            "steps": steps, "intervention_rate": sum(r.interventions for r in results) / max(steps, 1),
            "holds": sum(r.holds for r in results), "ended_by": dict(Counter(r.ended_by for r in results))}


def _local_agent(cfg: dict, robot, policy, critic, system1, device: str):
    from real_robot.run import check_policy

    check_policy(policy, robot)
    low, high = robot_bounds(cfg["robot"], robot)
    execute = (cfg.get("deploy") or {}).get("execute_steps")

    def hold(batch):  # the goal that keeps the arm where it is, from the observed state
        return robot.hold_goal({STATE: batch[STATE][0].cpu().numpy()})

    return make_agent(cfg, policy, critic, system1, feasibility(cfg, low, high), device=device,
                      execute_steps=execute, hold=hold)


def run_robot(cfg) -> dict | None:
    """``role=server``: host the (re-ranked) policy until Ctrl-C; ``role=client``: run the arm against a
    server; ``role=local``: the agent and the arm on this machine. Returns the summary (None for a server)."""
    from real_robot import run
    from real_robot.robots import make_robot
    from vla.train import set_threads

    cfg = _plain(cfg)
    role = cfg.get("role") or "local"
    if role not in ROLES:
        raise ConfigError(f"role must be one of {ROLES}, got {role!r}")
    cfg["deploy"] = dict(cfg.get("deploy") or {})
    if role == "client":
        return robot_summary(cfg, run.deploy_robot(cfg), "policy:remote")  # the server names it
    device = _device(cfg)
    set_threads(int(cfg.get("threads") or 0), device)
    policy, critic, system1 = load_models(cfg, device)
    name = policy_name(cfg)
    if role == "server":
        from real_robot import sources

        if system1 is not None:
            raise ConfigError("dual.enabled: the dual system acts step by step next to the arm; use role=local")
        if critic is None:
            source = sources.from_policy(policy, device=device, name=name)
        else:
            # an episode's first request has no last action: with nothing feasible the server answers
            # an error, the client holds and asks again with the held goal
            feasible = feasibility(cfg, *robot_bounds(cfg["robot"]))
            source = sources.from_reranker(policy, critic, rerank_config(cfg), feasible, device=device,
                                           name=name)
        log.info("serving policy '%s' (%s)", name, planner_kind(critic, None))
        run.serve(cfg, source)
        return None
    robot = make_robot(cfg["robot"])
    kind = planner_kind(critic, system1)
    cfg["deploy"]["policy_name"] = cfg["deploy"].get("policy_name") or name
    try:
        agent = _local_agent(cfg, robot, policy, critic, system1, device)
        writer = run.open_recorder(cfg.get("out"), robot)
    except BaseException:  # nothing moved yet: let go of the arm
        robot.close()
        raise
    recorder = DecisionWriter(writer, agent, kind) if writer is not None else None
    try:
        results = run.deploy_robot(cfg, agent, robot=robot, recorder=recorder)
    finally:
        if hasattr(agent, "close"):
            agent.close()
    logs = recorder.logs if recorder is not None else [list(agent.decisions)]
    return {**robot_summary(cfg, results, "policy:" + cfg["deploy"]["policy_name"]), "planner": kind,
            **decision_stats(logs)}


def collect_robot(cfg) -> dict:
    """scripts/collect.py robot=<cfg>: ``source=teleop`` records demonstrations from the teleoperator;
    ``source=policy`` runs the policy at policy_path with the teleoperator as takeover."""
    from real_robot import run
    from real_robot.robots import make_robot

    cfg = _plain(cfg)
    source = cfg.get("source")
    if source not in ("teleop", "policy"):
        raise ConfigError(f"on an arm, source must be teleop (demos) or policy (rollouts), got {source!r}")
    if not cfg.get("out"):
        raise ConfigError("out=<dir> is required (the dataset to create or append to)")
    cfg["deploy"] = dict(cfg.get("deploy") or {})
    if source == "teleop":
        return robot_summary(cfg, run.record(cfg), "demo")
    device = _device(cfg)
    policy, _, _ = load_models({"policy_path": cfg.get("policy_path")}, device)
    cfg["deploy"]["policy_name"] = cfg["deploy"].get("policy_name") or policy_name(cfg)
    robot = make_robot(cfg["robot"])
    try:
        run.check_policy(policy, robot)
        agent = make_agent(cfg, policy, device=device, execute_steps=cfg["deploy"].get("execute_steps"))
    except BaseException:
        robot.close()
        raise
    return robot_summary(cfg, run.record(cfg, agent, robot=robot), "policy:" + cfg["deploy"]["policy_name"])
