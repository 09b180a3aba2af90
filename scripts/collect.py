"""Collect episodes into a LeRobot dataset: expert demos, or policy rollouts with takeovers.

    python scripts/collect.py env=pick_place source=expert episodes=50 out=data/pp [expert.noise=0.01]
    python scripts/collect.py env=pick_place source=policy policy_path=runs/bc intervener=scripted \\
        episodes=20 out=data/pp_policy
    python scripts/collect.py env=gym env.id=mypkg.envs:Arm-v0 source=expert expert=mypkg.ctrl:act out=...
    python scripts/collect.py robot=so101 source=teleop episodes=20 out=data/so101_demos
    python scripts/collect.py robot=so101 source=policy policy_path=runs/bc out=data/so101_round1

Config: configs/collect.yaml and configs/env/<task>.yaml (configs/robot/<arm>.yaml). The library
functions are sim.collect.collect and, on an arm, policies.deploy.collect_robot (real_robot.run.record).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from vla.errors import VLAError  # noqa: E402


def policy_factory(cfg: DictConfig):
    """For source=policy: the checkpoint at policy_path (collect runs it with a receding horizon)."""

    def factory(env):
        from policies import load_policy

        return load_policy(cfg.policy_path, device=cfg.device)

    return factory if cfg.get("policy_path") else None


# an absolute path, so that the `vla-collect` console script (module scripts.collect) finds it too
@hydra.main(config_path=str(ROOT / "configs"), config_name="collect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from sim.collect import collect

    try:
        if cfg.get("robot"):
            from policies.deploy import collect_robot

            summary = collect_robot(cfg)
        else:
            summary = collect(cfg, agent_factory=policy_factory(cfg))
    except (VLAError, ConnectionError) as e:  # ConnectionError: LeRobot cannot open an arm's port
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
