"""Post-train a policy with AWM, APO or a baseline on recorded data.

    python scripts/finetune.py algo=awm policy_path=<ckpt> [critic_path=<ckpt>] data=[<dir>,...] out=<dir>
    python scripts/finetune.py algo=apo|bc|filtered_bc|hg_dagger policy_path=<ckpt> data=[...] out=<dir>

Options: configs/finetune.yaml and configs/algo/<algo>.yaml (e.g. algo.weighting=signed,
steps=500 batch_size=32 train.lr=3e-5 resume=true). The fine-tuned policy lands in
<out>/checkpoints/last/pretrained_model (``policy_path=<out>`` finds it).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig, OmegaConf

from vla.errors import VLAError


@hydra.main(config_path="../configs", config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from policies.finetune import finetune

    logging.getLogger("policies").setLevel(logging.INFO)
    try:
        out = finetune(OmegaConf.to_container(cfg, resolve=True))
    except VLAError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"fine-tuned policy: {out}/checkpoints/last/pretrained_model")


if __name__ == "__main__":
    main()
