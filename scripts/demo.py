"""The main job: the whole post-training loop in simulation, then a report (see policies/pipeline.py).

    python scripts/demo.py [experiment=demo|demo_full|tiny] [out=runs/demo]

Each stage is skipped when its output is complete, so a killed run resumes when run again.
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


@hydra.main(config_path=CONFIGS, config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from policies.pipeline import run_pipeline

    try:
        report = run_pipeline(OmegaConf.to_container(cfg, resolve=True))
    except VLAError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"\nreport: {report.resolve()}")


if __name__ == "__main__":
    main()
