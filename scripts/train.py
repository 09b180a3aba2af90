"""Behaviour cloning of a flow or diffusion policy on recorded episodes.

    python scripts/train.py policy=flow|diffusion env=<task> data=[<dir>,...] out=<dir> \
        [steps=5000 batch_size=64 resume=true train.lr=3e-4 ...]
    accelerate launch --multi_gpu --num_processes 4 scripts/train.py ...   # several GPUs, same code

Options: configs/train.yaml and configs/policy/<policy>.yaml. Checkpoints land in
<out>/checkpoints/<step>/ (``policy_path=<out>`` finds the last one), TensorBoard logs in
<out>/tensorboard. ``resume=true`` continues a stopped run from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from omegaconf import DictConfig, OmegaConf

from vla.errors import VLAError


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from policies import build_policy
    from vla.train import train_policy

    logging.getLogger("vla").setLevel(logging.INFO)
    try:
        out = train_policy(OmegaConf.to_container(cfg, resolve=True), build_policy)
    except VLAError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if os.environ.get("RANK", "0") == "0":  # once, also under accelerate launch
        print(f"trained policy: {out}/checkpoints/last/pretrained_model")


if __name__ == "__main__":
    main()
