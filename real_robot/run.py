"""Library entry points that ``scripts/deploy.py`` and ``scripts/collect.py`` call.

    serve(cfg, source)              policy server on the GPU machine (blocking)
    deploy_robot(cfg, agent=None)   control loop on the robot computer: chunks from the
                                    server (or a local Agent), takeover, safety, recording
    record(cfg, agent=None)         data collection: teleoperated demos (no agent), or an
                                    agent's rollouts with takeover

Config sections read (Hydra, see ``configs/robot/*.yaml`` and ``configs/deploy/robot.yaml``):
``robot`` (the arm, its limits, cameras, task, teleop), ``deploy`` (server, episodes,
keys, watchdog) and ``out`` (dataset directory; every episode is recorded there).
Every collaborator can be passed in (robot, source, intervener, recorder, clock, estop),
which is how tests run the whole pipeline on the MuJoCo stand-in.
"""

from __future__ import annotations

import logging
import threading

from real_robot.cfgutil import cfg_get, to_plain
from real_robot.client import RemoteChunkSource, robot_spec
from real_robot.control import AgentSource, ControlLoop, EpisodeResult, OperatorEvents, SystemClock
from real_robot.guards import EmergencyStop, KeyBindings
from real_robot.safety import SafetyFilter, SafetyLimits
from vla.errors import ConfigError
from vla.types import ChunkPolicy

log = logging.getLogger(__name__)

DEFAULT_KEYS = {"estop": "esc", "success": "s", "failure": "f", "rerecord": "r", "stop": "q"}


def build_safety(robot_cfg, robot, clock=None) -> SafetyFilter:
    """Safety filter from the robot config's ``limits`` (a sim arm defaults to its action space)."""
    limits_cfg = to_plain(cfg_get(robot_cfg, "limits")) or {}
    default_low = default_high = None
    if hasattr(robot, "limits"):
        default_low, default_high = robot.limits
    fk = getattr(robot, "forward_kinematics", None) if cfg_get(limits_cfg, "workspace_low") is not None else None
    limits = SafetyLimits.from_config(limits_cfg, robot.action_dim, forward_kinematics=fk,
                                      default_low=default_low, default_high=default_high)
    return SafetyFilter(limits, period_s=1.0 / robot.fps, clock=(clock or SystemClock()).now)


def open_recorder(out, robot):
    if not out:
        log.warning("no 'out' directory given: episodes are NOT recorded")
        return None
    from vla.data.writer import EpisodeWriter

    return EpisodeWriter(out, fps=int(round(robot.fps)), obs_spec=robot.obs_spec, action_dim=robot.action_dim,
                         robot_type=robot.robot_type)


def make_keys(deploy_cfg, estop: EmergencyStop, events: OperatorEvents) -> KeyBindings:
    names = {**DEFAULT_KEYS, **(to_plain(cfg_get(deploy_cfg, "keys")) or {})}
    keys = KeyBindings()
    keys.bind(names["estop"], lambda: estop.trigger(f"key {names['estop']}"))
    for event in ("success", "failure", "rerecord", "stop"):
        keys.bind(names[event], lambda e=event: events.mark(e))
    return keys


def check_policy(policy: ChunkPolicy, robot) -> None:
    """ShapeError naming the feature where the arm's observation or action disagrees with the policy."""
    policy.check_compatible({**robot.obs_spec, "action": (robot.action_dim,)}, where=f"robot '{robot.robot_type}'")


def check_agent(agent, robot) -> None:
    """A local agent's policy (one that plans with a ChunkPolicy) against the robot, before any motion."""
    policy = getattr(agent, "policy", None)  # agents are of many kinds; a ChunkAgent carries its policy
    if isinstance(policy, ChunkPolicy):
        check_policy(policy, robot)


def remote_source(cfg, robot) -> RemoteChunkSource:
    deploy = cfg_get(cfg, "deploy", {})
    server = cfg_get(deploy, "server", {})
    url = cfg_get(server, "url") or f"ws://{cfg_get(server, 'host', '127.0.0.1')}:{cfg_get(server, 'port', 8765)}"
    return RemoteChunkSource(
        url, robot_spec(robot.obs_spec, robot.action_dim, robot.robot_type, robot.fps), fps=robot.fps,
        token=str(cfg_get(server, "token", "")), execute_steps=cfg_get(deploy, "execute_steps"),
        request_ahead=int(cfg_get(deploy, "request_ahead", 1)), timeout_s=float(cfg_get(server, "timeout_s", 1.0)),
        connect_timeout_s=float(cfg_get(server, "connect_timeout_s", 3.0)),
    )


def _run(cfg, source, episode_source: str, *, robot, intervener, recorder, clock, estop, events, keys,
         listen_keys: bool) -> list[EpisodeResult]:
    deploy = cfg_get(cfg, "deploy", {})
    episodes = int(cfg_get(deploy, "episodes", 1))
    max_steps = int(cfg_get(deploy, "max_steps", 600))
    safety = build_safety(cfg_get(cfg, "robot"), robot, clock)
    loop = ControlLoop(robot, source, safety, robot.fps, watchdog_s=cfg_get(deploy, "watchdog_s"),
                       intervener=intervener, recorder=recorder, estop=estop, events=events, clock=clock,
                       episode_source=episode_source)
    on_main = threading.current_thread() is threading.main_thread()
    if on_main:
        estop.install_signal_handlers()
    if listen_keys:
        keys.start()
    results = []
    try:
        for i in range(episodes):
            if estop.is_set:
                break
            seed = None if cfg_get(deploy, "seed") is None else int(cfg_get(deploy, "seed")) + i
            res = loop.run_episode(max_steps, seed=seed)
            results.append(res)
            if res.ended_by in ("estop", "stop"):
                break
            if i + 1 < episodes:
                log.info("episode %d/%d done; reset the scene (%.0f s)", i + 1, episodes,
                         float(cfg_get(deploy, "reset_wait_s", 0.0)))
                loop.clock.sleep(float(cfg_get(deploy, "reset_wait_s", 0.0)))
    finally:
        keys.stop()
        if on_main:
            estop.uninstall_signal_handlers()
        source.close()
        if recorder is not None:
            recorder.close()
        teleop = getattr(intervener, "teleop", None) or getattr(source, "teleop", None)
        if teleop is not None and getattr(teleop, "is_connected", False):
            teleop.disconnect()
        robot.close()
    return results


def _parts(cfg, robot, clock, estop, events):
    from real_robot.robots import make_robot

    robot = robot if robot is not None else make_robot(cfg_get(cfg, "robot"))
    estop = estop or EmergencyStop()
    events = events or OperatorEvents()
    keys = make_keys(cfg_get(cfg, "deploy", {}), estop, events)
    return robot, clock or SystemClock(), estop, events, keys


def _teleop_intervener(cfg, robot, keys):
    from real_robot.teleop import make_intervener

    teleop_cfg = cfg_get(cfg_get(cfg, "robot"), "teleop")
    if not teleop_cfg:
        return None
    return make_intervener(teleop_cfg, robot.joint_names, keys, hold_goal=robot.hold_goal)


def deploy_robot(cfg, agent=None, *, robot=None, source=None, intervener=None, recorder=None, clock=None,
                 estop=None, events=None) -> list[EpisodeResult]:
    """Run episodes on the configured robot with a remote policy server (or a local ``agent``).

    The policy's action and state sizes are checked against the robot before any motion
    (ShapeError). A teleoperator in the robot config becomes the takeover intervener.
    """
    robot, clock, estop, events, keys = _parts(cfg, robot, clock, estop, events)
    deploy = cfg_get(cfg, "deploy", {})
    name = cfg_get(deploy, "policy_name")  # the episode source is recorded as policy:<name>
    if source is None:
        if agent is not None:
            check_agent(agent, robot)
            source = AgentSource(agent)
            name = name or "local"
        else:
            source = remote_source(cfg, robot)
    if isinstance(source, RemoteChunkSource):
        policy = source.policy or source.connect()  # ShapeError here, before the first motion
        name = name or policy["name"]
    if intervener is None:
        intervener = _teleop_intervener(cfg, robot, keys)
    if recorder is None:
        recorder = open_recorder(cfg_get(cfg, "out"), robot)
    return _run(cfg, source, f"policy:{name or 'remote'}", robot=robot, intervener=intervener, recorder=recorder, clock=clock,
                estop=estop, events=events, keys=keys, listen_keys=bool(cfg_get(deploy, "listen_keys", True)))


def record(cfg, agent=None, *, robot=None, teleop=None, recorder=None, clock=None, estop=None,
           events=None) -> list[EpisodeResult]:
    """Collect on the robot: teleoperated demonstrations (``agent=None``), else the agent's
    rollouts with the configured teleoperator as takeover. Needs ``out``."""
    from real_robot.teleop import TeleopSource, make_mapping, make_teleop

    robot, clock, estop, events, keys = _parts(cfg, robot, clock, estop, events)
    out = cfg_get(cfg, "out")
    if recorder is None and not out:
        raise ConfigError("record: set out=<dataset dir>")
    if agent is not None:
        return deploy_robot(cfg, agent, robot=robot, recorder=recorder, clock=clock, estop=estop, events=events)
    teleop_cfg = cfg_get(cfg_get(cfg, "robot"), "teleop")
    if teleop is None:
        if not teleop_cfg:
            raise ConfigError("record: the robot config has no 'teleop' section (leader arm, keyboard or gamepad)")
        teleop = make_teleop(cfg_get(teleop_cfg, "lerobot"))
    kind = cfg_get(cfg_get(teleop_cfg, "lerobot"), "type", "so101_leader")
    source = TeleopSource(teleop, make_mapping(kind, robot.joint_names, cfg_get(teleop_cfg, "jog")),
                          hold_goal=robot.hold_goal)
    recorder = recorder or open_recorder(out, robot)
    deploy = cfg_get(cfg, "deploy", {})
    return _run(cfg, source, "demo", robot=robot, intervener=None, recorder=recorder, clock=clock, estop=estop,
                events=events, keys=keys, listen_keys=bool(cfg_get(deploy, "listen_keys", True)))


def serve(cfg, source) -> None:
    """Host ``source`` (a ChunkSource, e.g. ``real_robot.sources.from_policy(policy)``) until Ctrl-C."""
    from real_robot.server import PolicyServer

    server_cfg = cfg_get(cfg_get(cfg, "deploy", {}), "server", {})
    PolicyServer(
        source, host=str(cfg_get(server_cfg, "host", "127.0.0.1")), port=int(cfg_get(server_cfg, "port", 8765)),
        token=str(cfg_get(server_cfg, "token", "")) or None,
        max_message_bytes=int(cfg_get(server_cfg, "max_message_bytes", 8 * 1024 * 1024)),
    ).serve_forever()
