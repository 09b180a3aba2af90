"""Deploy a policy, best-of-N re-ranked by a critic or as Hume's dual system, in simulation or on an arm.

    python scripts/deploy.py env=<task> policy_path=<ckpt> [critic_path=<ckpt> rerank.n=16] episodes=N out=<dir>
    python scripts/deploy.py env=<task> policy_path=<ckpt> critic_path=<ckpt> dual.enabled=true \\
        dual.system1_path=<ckpt> episodes=N out=<dir> [intervener=scripted]
    python scripts/deploy.py robot=so101 role=server policy_path=<ckpt> critic_path=<ckpt> rerank.n=16
    python scripts/deploy.py robot=so101 role=client deploy.server.url=ws://gpu-box:8765 out=<dir>
    python scripts/deploy.py robot=so101 role=local policy_path=<ckpt> out=<dir>

In simulation every episode is recorded into ``out`` (a LeRobot dataset, source policy:<name>)
with its decision log in the journal. Config: configs/deploy.yaml; the library functions are
policies.deploy.deploy_sim and policies.deploy.run_robot (real_robot/README.md for the arm).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from vla.errors import VLAError  # noqa: E402


def describe(summary: dict) -> str:
    """One line for people; the JSON line after it is for scripts."""
    text = f"{summary['episodes']} episodes of {summary['source']}"
    text += f" ({summary['planner']})" if summary.get("planner") else ""
    text += f": success {summary['success_rate']:.0%}"
    if summary.get("mean_decision_ms") is not None:
        text += f", mean decision {summary['mean_decision_ms']:.1f} ms"
    for key in ("held", "stale", "holds"):
        text += f", {summary[key]} {key}" if summary.get(key) else ""
    return text + (f"; recorded into {summary['out']}" if summary.get("out") else "")


@hydra.main(config_path=str(ROOT / "configs"), config_name="deploy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from policies.deploy import deploy_sim, run_robot

    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
        summary = run_robot(plain) if plain.get("robot") else deploy_sim(plain)
    except (VLAError, ConnectionError) as e:  # ConnectionError: LeRobot cannot open an arm's port
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    if summary is not None:  # a server returns on Ctrl-C only
        print(describe(summary))
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
