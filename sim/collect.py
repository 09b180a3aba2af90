"""Collection: expert demonstrations, or policy rollouts with a (scripted or human) intervener.

``collect(cfg, agent_factory=None)`` is what ``scripts/collect.py`` calls. ``cfg`` is the
composed ``configs/collect.yaml`` (a DictConfig or a plain dict). For ``source=policy``
the caller passes ``agent_factory(env)`` returning an Agent, or any object with the
policy interface (``vla.types.ChunkPolicy``), which is run by ``vla.agent.ChunkAgent``
with ``execute_steps`` (the script loads the checkpoint; a test passes a deliberately
poor policy). Episodes go into a LeRobot dataset at ``cfg.out``
through ``vla.data.EpisodeWriter`` (created, or resumed and appended to).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sim.expert import make_expert
from sim.intervener import ScriptedIntervener
from sim.registry import _plain, make_from_config
from vla.errors import ConfigError, ShapeError
from vla.rollout import run_episode
from vla.types import SOURCE_DEMO, SOURCE_POLICY_PREFIX, TASK

log = logging.getLogger(__name__)
SOURCES = ("expert", "policy")
INTERVENERS = ("none", "scripted", "teleop")


def expert_options(cfg: dict) -> dict:
    """``expert`` may be a dict (fn, noise, hesitation, wrong_first_attempt) or '<module>:<callable>'."""
    spec = cfg.get("expert")
    if spec is None:
        return {}
    if isinstance(spec, str):
        return {"fn": spec}
    allowed = {"fn", "noise", "hesitation", "wrong_first_attempt"}
    unknown = set(spec) - allowed
    if unknown:
        raise ConfigError(f"expert: unknown option(s) {sorted(unknown)}; known: {sorted(allowed)}")
    return {k: v for k, v in spec.items() if v is not None}


def build_intervener(cfg: dict, env, seed: int | None = None):
    """The intervener named by ``cfg.intervener``, or None."""
    kind = cfg.get("intervener") or "none"
    if kind not in INTERVENERS:
        raise ConfigError(f"intervener must be one of {INTERVENERS}, got '{kind}'")
    if kind == "none":
        return None
    if kind == "scripted":
        opts = expert_options(cfg)
        # the stand-in acts like a good operator: no imitation noise of its own
        expert = make_expert(env, fn=opts.get("fn"), seed=seed)
        return ScriptedIntervener.for_env(env, expert, **dict(cfg.get("scripted") or {}))
    from sim.teleop import KeyEvents, LeRobotTeleopDevice, TeleopIntervener

    teleop = dict(cfg.get("teleop") or {})
    device = teleop.get("device", "viewer")
    if device == "viewer":
        dev = KeyEvents()
    elif device == "keyboard":
        dev = KeyEvents.with_pynput()
    elif device == "gamepad":
        dev = LeRobotTeleopDevice.gamepad()
    else:
        raise ConfigError(f"teleop.device must be viewer, keyboard or gamepad, got '{device}'")
    return TeleopIntervener(env, dev, step=float(teleop.get("step", 0.01)))


def as_agent(obj, cfg: dict, env):
    """An Agent as is; a ChunkPolicy wrapped in a receding-horizon ChunkAgent."""
    from vla.types import ChunkPolicy

    if isinstance(obj, ChunkPolicy):
        from vla.agent import ChunkAgent, execute_steps_for

        if int(obj.action_dim) != action_dim(env):
            raise ShapeError(f"action: the policy makes ({obj.action_dim},), the env takes ({action_dim(env)},)")

        # the same receding horizon as evaluation and deployment: rollouts must show the behaviour
        # that gets deployed, or the corrections recorded in them fix the wrong mistakes
        return ChunkAgent(obj, execute_steps=execute_steps_for(obj, cfg.get("execute_steps")), device=cfg.get("device") or "cpu",
                          seed=cfg.get("seed"))
    if not (callable(getattr(obj, "act", None)) and callable(getattr(obj, "reset", None))):
        raise ConfigError(f"source=policy: {type(obj).__name__} is neither an Agent (reset, act) nor a ChunkPolicy")
    return obj


def obs_spec(env) -> dict[str, tuple]:
    return {k: tuple(s.shape) for k, s in env.observation_space.spaces.items() if k != TASK}


def action_dim(env) -> int:
    return int(getattr(env, "action_dim", None) or np.prod(env.action_space.shape))


def collect(cfg, agent_factory: Callable | None = None, progress: bool | None = None) -> dict:
    """Run ``cfg.episodes`` episodes and record them; returns the summary (also logged)."""
    from vla.data import EpisodeWriter

    cfg = _plain(cfg)
    source = cfg.get("source")
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {SOURCES}, got '{source}'")
    if not cfg.get("out"):
        raise ConfigError("out=<dir> is required (the dataset to create or append to)")
    episodes = int(cfg.get("episodes", 0))
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    env = make_from_config(cfg["env"])
    seed0 = int(cfg.get("seed", 0))
    if source == "expert":
        if (cfg.get("intervener") or "none") != "none":
            raise ConfigError("an intervener applies to source=policy; expert demos need none")
        agent, tag, intervener = make_expert(env, seed=seed0, **expert_options(cfg)), SOURCE_DEMO, None
    else:
        if agent_factory is None:
            raise ConfigError("source=policy needs policy_path=<checkpoint or training out dir>")
        agent = as_agent(agent_factory(env), cfg, env)
        name = cfg.get("policy_name") or Path(str(cfg.get("policy_path") or "policy")).name
        tag = SOURCE_POLICY_PREFIX + name
        intervener = build_intervener(cfg, env, seed=seed0)

    viewer = None
    if cfg.get("viewer") or (intervener is not None and cfg.get("intervener") == "teleop"):
        from sim.teleop import DeskViewer

        viewer = DeskViewer(env, getattr(intervener, "device", None))
        if cfg.get("intervener") == "teleop":
            log.info("teleop: Enter takes over and hands back; arrows move the gripper in x/y, PageUp/PageDown "
                     "in z; G opens/closes it. Close the viewer window to stop.")
    fps = getattr(env.unwrapped, "control_hz", None) or env.metadata.get("render_fps") or 10
    robot = "sim:" + str(cfg["env"].get("name")) if isinstance(cfg["env"], dict) else "sim"
    writer = EpisodeWriter(cfg["out"], fps=int(fps), obs_spec=obs_spec(env), action_dim=action_dim(env),
                           robot_type=robot, use_videos=bool(cfg.get("video", True)))
    start = len(writer)  # appending: continue the seeds where the dataset left off
    results = []
    show = cfg.get("progress", True) if progress is None else progress
    bar = tqdm(range(episodes), desc=f"collect {source}", unit="ep", disable=not show)
    try:
        for i in bar:
            res = run_episode(env, agent, intervener=intervener, writer=writer, seed=seed0 + start + i,
                              source=tag, keep_failures=bool(cfg.get("keep_failures", True)),
                              on_step=viewer.sync if viewer is not None else None)
            results.append(res)
            if viewer is not None and not viewer.handle.is_running():
                log.info("viewer closed: stopping (the interrupted episode was not recorded)")
                break
            bar.set_postfix(success=f"{np.mean([r.success for r in results]):.2f}")
    finally:
        writer.close()
        env.close()
        if viewer is not None:
            viewer.close()
    steps = sum(r.steps for r in results)
    summary = {
        "out": str(cfg["out"]),
        "source": tag,
        "episodes": len(results),
        "recorded": len(writer) - start,
        "success_rate": float(np.mean([r.success for r in results])),
        "steps": steps,
        "intervention_rate": sum(r.interventions for r in results) / max(steps, 1),
        "episodes_with_intervention": sum(r.interventions > 0 for r in results),
        "takeovers": sum(r.takeovers for r in results),
        "dataset_episodes": len(writer),
    }
    log.info(
        "collected %d episodes (%d recorded) into %s: success %.0f%%, %d steps, interventions on %.0f%% of steps "
        "(%d episodes)", summary["episodes"], summary["recorded"], summary["out"], 100 * summary["success_rate"],
        steps, 100 * summary["intervention_rate"], summary["episodes_with_intervention"],
    )
    return summary
