"""The improvement loop: R rounds of rollouts with the scripted intervener, critic update and AWM or APO
(see policies/improve.py).

    python scripts/improve.py policy_path=runs/demo/base data=[runs/demo/data/demos] out=runs/improve
    python scripts/improve.py ... algo=apo rounds=5 rollouts.episodes=30

Every round's data, checkpoints and metrics stay in <out>/round_<r>/; a killed run resumes when run again.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig, OmegaConf

from vla.errors import VLAError

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIGS, config_name="improve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from policies.improve import run_improve

    try:
        summary = run_improve(OmegaConf.to_container(cfg, resolve=True))
    except VLAError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"\n{summary.read_text()}\nsummary: {summary.resolve()}")


if __name__ == "__main__":
    main()
